"""Benchmark (issue 21, item 5): why the blend does not gain, on a finished overnight.py night (seconds, no
training): per fold seed, the correlation of the models' OOF errors, how often each image model is right on
the patients the clinical model misses, and a stacked logistic model over the models' OOF scores (nested: fitted
on the other folds, scored on the held-out one) against the Optuna blend's nested BA on the same folds.

Usage: python -m benchmarks.bench_blend_analysis --night runs/bench_night/lymphocytosis-ff2a1e3f_night
"""
import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import machine, publish
from lib.core.io import read_json
from lib.core.metrics import mean_std
from lib.core.plots import save_figure


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--night", type=Path, required=True, help="runs/<...>/<dataset>_night")
    parser.add_argument("--plot", type=Path, default=None, help="heatmap PNG (default: <night>/error_correlation.png)")
    parser.add_argument("--no-append", action="store_true")
    return parser.parse_args(argv)


def seed_table(seed_dir: Path, models: list[str]) -> pd.DataFrame:
    """One row per patient: fold, target and each model's OOF probability."""
    tables = [pd.read_csv(seed_dir / m / "oof.csv", dtype={"ID": str}).set_index("ID") for m in models]
    out = tables[0][["fold", "target"]].copy()
    for model, table in zip(models, tables):
        out[model] = table["proba"].loc[out.index]
    return out


def stacked_nested_ba(table: pd.DataFrame, models: list[str]) -> list[float]:
    """Per held-out fold: BA at 0.5 of a class-balanced logistic model on the other folds' OOF logits."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    eps = 1e-4
    x = np.log(table[models].clip(eps, 1 - eps) / (1 - table[models].clip(eps, 1 - eps))).to_numpy()
    y, folds, scores = table["target"].to_numpy(), table["fold"].to_numpy(), []
    for k in np.unique(folds):
        fit = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000).fit(x[folds != k], y[folds != k])
        scores.append(balanced_accuracy_score(y[folds == k], fit.predict(x[folds == k])))
    return scores


def rescued(table: pd.DataFrame, model: str) -> float:
    """Share of the clinical model's misses (at 0.5) that ``model`` classifies right."""
    missed = (table["clinical"] >= 0.5).astype(int) != table["target"]
    return float(((table.loc[missed, model] >= 0.5).astype(int) == table.loc[missed, "target"]).mean()) if missed.any() else float("nan")


def plot(corr: pd.DataFrame, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(corr.to_numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(corr)), corr.columns, rotation=45, ha="right")
    ax.set_yticks(range(len(corr)), corr.index)
    for i in range(len(corr)):
        for j in range(len(corr)):
            ax.text(j, i, f"{corr.iat[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title("Correlation of OOF errors (|target - proba|), mean over fold seeds")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return save_figure(fig, path)


def main(argv=None) -> None:
    args = parse_args(argv)
    seed_dirs = sorted(p for p in args.night.glob("*_s*") if (p / "ensemble_night" / "metrics.json").is_file())
    models = [r["name"] for r in read_json(seed_dirs[0] / "ensemble_night" / "best_params.json")["runs"]]
    corrs, stacked, optuna_ba, rescue = [], [], [], {m: [] for m in models if m.startswith("cnn")}
    for seed_dir in seed_dirs:
        table = seed_table(seed_dir, models)
        errors = (table[models].rsub(table["target"], axis=0)).abs()
        corrs.append(errors.corr())
        stacked.append(float(np.mean(stacked_nested_ba(table, models))))
        optuna_ba.append(read_json(seed_dir / "ensemble_night" / "metrics.json")["nested"]["ba_mean"])
        for m in rescue:
            rescue[m].append(rescued(table, m))
    corr = sum(corrs) / len(corrs)
    png = plot(corr, args.plot or args.night / "error_correlation.png")
    seeds = ", ".join(p.name.rsplit("_s", 1)[-1] for p in seed_dirs)
    clinical_row = corr.loc["clinical"].drop("clinical")
    lines = [f"Machine: {machine()}. Night {args.night} (fold seeds {seeds}, models {', '.join(models)}); heatmap {png}.",
             "", "Correlation of each model's OOF errors with the clinical model's (mean over fold seeds): "
             + ", ".join(f"{m} {v:.2f}" for m, v in clinical_row.items()) + ".",
             "Share of the clinical model's misses (at 0.5) an image model gets right: "
             + ", ".join(f"{m} {mean_std(v)}" for m, v in rescue.items()) + ".",
             f"Nested BA, all models: stacked logistic regression on OOF logits {mean_std(stacked)}, Optuna blend "
             f"{mean_std(optuna_ba)} (mean±std over fold seeds)."]
    publish("Why the blend does not gain (OOF errors, stacking)", lines, __file__, argv, append=not args.no_append)


if __name__ == "__main__":
    main()
