"""Model-quality figures of the report: ROC, confusion matrix, per-fold scores, calibration."""
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import confusion_matrix

from lib.core.metrics import fold_metrics
from lib.core.plots import plot_roc, pyplot, save_figure

CLASS_NAMES = ("reactive (0)", "tumoral (1)")


def roc_figure(oofs: dict[str, pd.DataFrame], blend_name: str, threshold: float, path: Path) -> Path:
    """ROC of every model and the blend on OOF predictions, the blend's operating point marked."""
    curves = {name: (oof["target"], oof["proba"]) for name, oof in oofs.items()}
    return plot_roc(curves, path, points={blend_name: threshold},
                    title=f"OOF ROC (dot: {blend_name} at threshold {threshold:.2f})")


def confusion_figure(target, proba, threshold: float, path: Path, title: str) -> Path:
    """Confusion matrix at ``threshold``: counts and the share of each true class."""
    target, pred = np.asarray(target), (np.asarray(proba) >= threshold).astype(int)
    counts = confusion_matrix(target, pred, labels=[0, 1])
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.8), layout="constrained")
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, f"{n}\n({shares[i, j]:.0%})", ha="center", va="center", fontsize=11,
                color="white" if shares[i, j] > 0.6 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES,
           xlabel="predicted", ylabel="true", title=title)
    ax.tick_params(axis="y", labelrotation=90)
    for label in ax.get_yticklabels():
        label.set_va("center")
    return save_figure(fig, path)


def fold_table(oofs: dict[str, pd.DataFrame], thresholds: dict[str, float]) -> pd.DataFrame:
    """Long table model, fold, metric ('BA'/'AUC'), value of every model's OOF predictions."""
    rows = []
    for name, oof in oofs.items():
        for fold, scores in fold_metrics(oof, thresholds[name])["per_fold"].items():
            rows += [(name, fold, "BA", scores["ba"]), (name, fold, "AUC", scores["auc"])]
    return pd.DataFrame(rows, columns=["model", "fold", "metric", "value"])


def fold_figure(table: pd.DataFrame, path: Path) -> Path:
    """Dot plot of BA and AUC per fold and model, the mean over folds as a bar."""
    plt = pyplot()
    models, folds = list(dict.fromkeys(table["model"])), sorted(table["fold"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.4 * len(models) + 4), 3.8), layout="constrained",
                             sharey=True)
    for ax, metric in zip(axes, ("BA", "AUC")):
        _fold_panel(ax, table[table["metric"] == metric], models, folds)
        ax.set(title=f"{metric} per fold (bar: mean)", ylim=(0, 1.02))
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("score")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8, title="fold")
    return save_figure(fig, path)


def _fold_panel(ax, table: pd.DataFrame, models: list[str], folds: list[int]) -> None:
    """One metric: mean bar per model and one jittered dot per fold."""
    cmap = pyplot().get_cmap("tab10")
    for i, model in enumerate(models):
        values = table[table["model"] == model].set_index("fold")["value"]
        ax.bar(i, np.nanmean(values), width=0.6, color="lightgrey", edgecolor="grey")
        for j, fold in enumerate(folds):
            offset = (j - (len(folds) - 1) / 2) * 0.08
            ax.plot(i + offset, values.get(fold, np.nan), "o", ms=5, color=cmap(j % 10),
                    label=str(fold) if i == 0 else None)
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)


def calibration_figure(target, proba, path: Path, n_bins: int = 5, title: str = "") -> Path:
    """Reliability curve (``n_bins`` uniform bins, patients per bin written) over a histogram of scores."""
    target, proba = np.asarray(target), np.asarray(proba, dtype=float)
    true_frac, mean_pred = calibration_curve(target, proba, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0, 1, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], proba), minlength=n_bins)  # calibration_curve's bins
    plt = pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(4.8, 5.6), layout="constrained", sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfectly calibrated")
    ax.plot(mean_pred, true_frac, "o-", label="blend")
    for x, y, n in zip(mean_pred, true_frac, counts[counts > 0]):
        ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set(ylabel="fraction tumoral", xlim=(0, 1), ylim=(-0.03, 1.05), title=title or "Calibration (OOF)")
    ax.legend(loc="upper left", fontsize=8)
    hist.hist([proba[target == 0], proba[target == 1]], bins=edges, stacked=True, label=["reactive", "tumoral"],
              color=["tab:blue", "tab:red"])
    hist.set(xlabel="predicted P(tumoral)", ylabel="patients")
    hist.legend(fontsize=7)
    return save_figure(fig, path)
