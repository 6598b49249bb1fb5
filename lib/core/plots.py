"""Small generic report plots, saved atomically as PNG (matplotlib, no display needed)."""
import io
from pathlib import Path

import numpy as np

from lib.core.io import atomic_write_bytes


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported only when plotting)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str | Path, dpi: int = 120, tight: bool = True) -> Path:
    """Render a matplotlib figure to PNG and write it atomically, then close it. ``tight`` crops to the drawn
    artists (a second draw); a figure laid out by hand inside its canvas does not need it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    pyplot().close(fig)
    return atomic_write_bytes(buffer.getvalue(), path)


def plot_roc(curves: dict[str, tuple], path: str | Path, points: dict[str, float] | None = None,
             title: str = "ROC") -> Path:
    """ROC curves ``{name: (y, p)}`` with AUC in the legend; ``points`` marks ``{name: threshold}``."""
    from sklearn.metrics import roc_auc_score, roc_curve
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (y, p) in curves.items():
        y, p = np.asarray(y), np.asarray(p, dtype=float)
        fpr, tpr, _ = roc_curve(y, p)
        line, = ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
        if points and name in points:
            _mark_threshold(ax, y, p, points[name], line.get_color())
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def _mark_threshold(ax, y: np.ndarray, p: np.ndarray, threshold: float, color: str) -> None:
    """Dot at the (FPR, TPR) of predicting positive when ``p >= threshold``."""
    pred = p >= threshold
    tpr = pred[y == 1].mean() if (y == 1).any() else np.nan
    fpr = pred[y == 0].mean() if (y == 0).any() else np.nan
    ax.plot([fpr], [tpr], "o", color=color, ms=6)
    ax.annotate(f"t={threshold:.2f}", (fpr, tpr), textcoords="offset points", xytext=(6, -10), fontsize=7)
