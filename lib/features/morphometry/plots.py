"""Plots to check the morphometry by eye: segmentation contours on cells, pooled features by class (PNG)."""
from pathlib import Path

import numpy as np
import pandas as pd

from lib.core.plots import pyplot, save_figure
from lib.data.dataset import Dataset
from lib.data.images import read_image
from lib.features.morphometry.cache import pooled_morphometry
from lib.features.morphometry.segment import cell_mask, measure_cell, nucleus_mask


def _show_cell(ax, img: np.ndarray) -> None:
    """Show one cell with its cell (cyan) and nucleus (yellow) outlines and a one-line summary."""
    nucleus = nucleus_mask(img)
    ax.imshow(img)
    for mask, colour in ((cell_mask(img, nucleus), "cyan"), (nucleus, "yellow")):
        if mask.any():
            ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.3)
    m = measure_cell(img)
    ax.set_title(f"N {m['nucleus_area']:.0f}px  N/C {m['nc_ratio']:.2f}" if m["ok"] else "no nucleus (ok=0)",
                 fontsize=8)


def plot_segmentation(images: list, path: str | Path, title: str = "", cols: int = 6) -> Path:
    """Grid of cells (arrays or paths) with nucleus (yellow) and cell (cyan) contours, to check by eye."""
    plt = pyplot()
    images = [read_image(i) if isinstance(i, (str, Path)) else i for i in images]
    cols = max(1, min(cols, len(images)))
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 2.7 * rows + 0.5), squeeze=False)
    for ax, img in zip(axes.flat, images):
        _show_cell(ax, img)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"{title}\nnucleus: yellow, cell: cyan; areas in px".strip(), fontsize=10)
    return save_figure(fig, path, dpi=110)


def plot_pooled_by_class(pooled: pd.DataFrame, labels: pd.Series, path: str | Path) -> Path:
    """One box plot (with the patients as points) per pooled feature, reactive (0) vs tumoral (1)."""
    plt = pyplot()
    y = labels.reindex(pooled.index)
    cols = min(4, pooled.shape[1])
    rows = -(-pooled.shape[1] // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False, layout="constrained")
    for ax, name in zip(axes.flat, pooled.columns):
        groups = [pooled.loc[y == k, name].dropna() for k in (0, 1)]
        ax.boxplot(groups, tick_labels=[f"reactive\n(n={len(groups[0])})", f"tumoral\n(n={len(groups[1])})"],
                   showfliers=False)
        for k, g in enumerate(groups):
            ax.scatter(k + 1 + np.random.default_rng(k).uniform(-0.15, 0.15, len(g)), g, s=7, alpha=0.6)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[pooled.shape[1]:]:
        ax.axis("off")
    return save_figure(fig, path, dpi=90)


def write_morphometry_plots(dataset: Dataset, run_dir: Path, cache_dir: Path, n_cells: int = 6) -> list[Path]:
    """Segmentation check of a reactive and a tumoral patient, and the pooled features by class (PNG)."""
    train = dataset.train
    paths = []
    for label in (0, 1):
        pid = train.index[train["LABEL"] == label][0]
        images = [read_image(p) for p in dataset.images[pid][:n_cells]]
        name = "reactive" if label == 0 else "tumoral"
        paths.append(plot_segmentation(images, Path(run_dir) / f"segmentation_{name}_{pid}.png",
                                       f"{pid} ({name}): nucleus and cell contours"))
    pooled = pooled_morphometry(dataset, cache_dir=cache_dir).loc[train.index]
    paths.append(plot_pooled_by_class(pooled, train["LABEL"], Path(run_dir) / "morphometry_by_class.png"))
    return paths
