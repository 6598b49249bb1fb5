"""Patient montages: the cells the CNN weighted most and least, beside the patient's clinical values."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lib.core.errors import DataError
from lib.core.plots import pyplot, save_figure
from lib.data.images import read_image

MONTAGE_DPI = 100  # ~145 px per 224 px cell: enough to see a nucleus, a few hundred kB per patient


@dataclass
class Chosen:
    """A patient picked for a montage and why."""

    pid: str
    reason: str


def choose_patients(blend: pd.DataFrame, threshold: float, max_errors: int = 12) -> tuple[list[Chosen], int]:
    """Most confident correct tumoral and reactive patients, then misclassified ones (most wrong first, capped).

    Returns the choice and the total number of misclassified patients.
    """
    table = blend.set_index("ID")
    pred = (table["proba"] >= threshold).astype(int)
    right, wrong = table[pred == table["target"]], table[pred != table["target"]]
    chosen = []
    tumoral, reactive = right[right["target"] == 1], right[right["target"] == 0]
    if len(tumoral):
        chosen.append(Chosen(str(tumoral["proba"].idxmax()), "most confident tumoral"))
    if len(reactive):
        chosen.append(Chosen(str(reactive["proba"].idxmin()), "most confident reactive"))
    wrongness = (wrong["proba"] - threshold).abs().sort_values(ascending=False)
    for pid in wrongness.index[:max_errors]:
        kind = "false tumoral" if table.at[pid, "target"] == 0 else "false reactive"
        chosen.append(Chosen(str(pid), f"misclassified ({kind})"))
    return chosen, len(wrong)


def extreme_cells(cells: pd.DataFrame, n: int = 8) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``n`` highest- (highest first) and ``n`` lowest-weighted cells (lowest first); a bag of fewer
    than ``2 n`` cells is split in two halves."""
    ranked = cells.sort_values("weight", ascending=False, kind="stable")
    n_top = min(n, (len(ranked) + 1) // 2)
    top = ranked.head(n_top)
    bottom = ranked.iloc[n_top:].tail(n).iloc[::-1]
    return top, bottom


def resolve_cell_path(path: str, pid: str, images: dict[str, list[Path]] | None, base: Path) -> Path:
    """Where a cells.csv image is now: the dataset's image with that name, else the path itself or under ``base``."""
    name = Path(path).name
    for candidate in (images or {}).get(pid, []):
        if candidate.name == name:
            return candidate
    for candidate in (Path(path), base / path):
        if candidate.exists():
            return candidate
    raise DataError(f"{path}: cell image of patient {pid} not found (pass --data-dir)")


def clinical_lines(pid: str, info: dict) -> list[str]:
    """Text block of a patient: ID, true label, blended probability, clinical values."""
    label = {0: "reactive (0)", 1: "tumoral (1)"}.get(info.get("target"), "?")
    lines = [f"patient {pid}", f"true label: {label}", f"blend P(tumoral): {info['proba']:.3f}",
             f"threshold: {info['threshold']:.2f}"]
    for key, text in (("age", "age: {:.0f} y"), ("LYMPH_COUNT", "lymphocytes: {:g} G/L"),
                      ("GENDER", "gender: {}"), ("n_cells", "cells in bag: {}")):
        if info.get(key) is not None and not (isinstance(info[key], float) and np.isnan(info[key])):
            lines.append(text.format(info[key]))
    return lines


def montage_figure(top: pd.DataFrame, bottom: pd.DataFrame, lines: list[str], title: str, path: Path) -> Path:
    """Clinical text on the left, highest-weighted cells on the top row, lowest-weighted below."""
    plt = pyplot()
    n_cols = max(len(top), len(bottom), 1)
    fig = plt.figure(figsize=(2.6 + 1.45 * n_cols, 4.0), layout="constrained")
    grid = fig.add_gridspec(2, n_cols + 1, width_ratios=[1.5] + [1] * n_cols)
    text = fig.add_subplot(grid[:, 0])
    text.axis("off")
    text.text(0, 1, "\n".join(lines), va="top", ha="left", fontsize=9, family="monospace", transform=text.transAxes)
    for row, (cells, label) in enumerate(((top, "highest weight"), (bottom, "lowest weight"))):
        for col in range(n_cols):
            ax = fig.add_subplot(grid[row, col + 1])
            ax.set_xticks([]), ax.set_yticks([])
            if col < len(cells):
                ax.imshow(read_image(cells["image"].iat[col]))
                ax.set_title(f"w={cells['weight'].iat[col]:.3g}", fontsize=8)
            else:
                ax.axis("off")
            if col == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, dpi=MONTAGE_DPI)


def uniform_note(cells: pd.DataFrame) -> str:
    """A warning when the model gave every cell of the bag the same weight (e.g. mean pooling)."""
    weights = cells["weight"].to_numpy(dtype=float)
    return " (all cells weighted equally: the ranking is arbitrary)" if np.ptp(weights) < 1e-12 else ""
