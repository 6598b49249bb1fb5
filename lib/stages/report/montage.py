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


TILE_GAP = 12  # px between cells of the mosaic
LABEL_BAND = 34  # px above each row of cells for the weights


def cell_mosaic(rows: list[pd.DataFrame], n_cols: int) -> tuple[np.ndarray, int]:
    """The cells of each row side by side on white, a label band above each row (one image: one axes to lay out,
    where a grid of subplots costs a second per montage); returns it and the tile size."""
    images = [[read_image(path) for path in cells["image"]] for cells in rows]
    tile = max([max(im.shape[:2]) for row in images for im in row] or [64])
    width, height = n_cols * tile + (n_cols - 1) * TILE_GAP, len(rows) * (tile + LABEL_BAND)
    mosaic = np.full((height, width, 3), 255, dtype=np.uint8)
    for r, row in enumerate(images):
        for c, im in enumerate(row):
            y, x = r * (tile + LABEL_BAND) + LABEL_BAND, c * (tile + TILE_GAP)
            mosaic[y:y + im.shape[0], x:x + im.shape[1]] = im[..., :3]
    return mosaic, tile


def montage_figure(top: pd.DataFrame, bottom: pd.DataFrame, lines: list[str], title: str, path: Path) -> Path:
    """Clinical text on the left, highest-weighted cells on the top row, lowest-weighted below."""
    plt = pyplot()
    n_cols = max(len(top), len(bottom), 1)
    fig = plt.figure(figsize=(2.6 + 1.45 * n_cols, 4.0))
    text_share = 2.6 / (2.6 + 1.45 * n_cols)
    text = fig.add_axes((0.01, 0.0, text_share - 0.01, 0.9))
    text.axis("off")
    text.text(0, 1, "\n".join(lines), va="top", ha="left", fontsize=9, family="monospace", transform=text.transAxes)
    ax = fig.add_axes((text_share, 0.0, 1 - text_share, 0.9))
    mosaic, tile = cell_mosaic([top, bottom], n_cols)
    ax.imshow(mosaic, interpolation="antialiased")
    ax.axis("off")
    for r, (cells, label) in enumerate(((top, "highest weight"), (bottom, "lowest weight"))):
        y = r * (tile + LABEL_BAND)
        ax.text(-TILE_GAP, y + LABEL_BAND + tile / 2, label, rotation=90, ha="right", va="center", fontsize=9)
        for c in range(len(cells)):
            ax.text(c * (tile + TILE_GAP) + tile / 2, y + LABEL_BAND - 6, f"w={cells['weight'].iat[c]:.3g}",
                    ha="center", va="bottom", fontsize=8)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, dpi=MONTAGE_DPI, tight=False)


def uniform_note(cells: pd.DataFrame) -> str:
    """A warning when the model gave every cell of the bag the same weight (e.g. mean pooling)."""
    weights = cells["weight"].to_numpy(dtype=float)
    return " (all cells weighted equally: the ranking is arbitrary)" if np.ptp(weights) < 1e-12 else ""
