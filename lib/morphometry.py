"""Per-cell morphometry: what a haematologist looks at (nucleus size and shape, N/C ratio, chromatin).

Segmentation, on a May-Grunwald-Giemsa-like smear with one lymphocyte roughly centred:
- nucleus: Otsu threshold on HSV saturation (the purple nucleus is far more saturated than the beige
  background and the lilac red cells; green-channel Otsu was tried and merges red cells), the
  connected component nearest the centre, opened, holes filled;
- cell (nucleus + cytoplasm): Otsu threshold on blue minus red (cytoplasm is bluish, background beige,
  red cells neutral), the component touching the nucleus, kept within 0.6 nucleus radii of the
  nucleus (a lymphocyte's cytoplasm is a rim; without the cap it leaks into touching red cells).
Areas are in pixels of the given image (224x224 in the competition; no physical scale is known).
A cell with no plausible nucleus (blank image, nucleus touching nothing near the centre, too small or
too large) is returned with ``ok = 0`` and NaN measurements: counted and reported, never crashed on.
"""
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

MEASUREMENTS = ["nucleus_area", "cell_area", "nc_ratio", "circularity", "solidity", "axis_ratio",
                "chromatin_laplacian", "chromatin_std", "nucleus_hue", "nucleus_value", "cyto_blue"]
MIN_NUCLEUS_FRACTION = 0.004   # of the image area (200 px at 224x224)
MAX_NUCLEUS_FRACTION = 0.5
CYTOPLASM_REACH = 0.6          # cytoplasm kept within this many nucleus radii (stops leaks into red cells)
MIN_SOLIDITY = 0.6             # a ragged "nucleus" (noise, debris) is no nucleus; real ones are ~0.95
MIN_CONTRAST = 25.0            # saturation gap (0-255) between nucleus and surroundings


def _largest_near_centre(mask: np.ndarray, max_dist: float) -> np.ndarray | None:
    """The connected component whose pixels come nearest the image centre (within ``max_dist``)."""
    n, labels = cv2.connectedComponents(mask.astype(np.uint8))
    if n < 2:
        return None
    h, w = mask.shape
    yy, xx = np.nonzero(labels)
    dist = np.hypot(yy - h / 2, xx - w / 2)
    best = np.argmin(dist)
    if dist[best] > max_dist:
        return None
    return labels == labels[yy[best], xx[best]]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Mask with interior holes filled (external contours drawn filled)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(out, contours, -1, 1, thickness=-1)
    return out.astype(bool)


def nucleus_mask(img: np.ndarray) -> np.ndarray | None:
    """Boolean nucleus mask, or None when no plausible nucleus is found."""
    sat = cv2.GaussianBlur(cv2.cvtColor(img, cv2.COLOR_RGB2HSV)[..., 1], (3, 3), 0)
    _, dark = cv2.threshold(sat, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    if dark.all() or not dark.any():
        return None
    if sat[dark == 1].mean() - sat[dark == 0].mean() < MIN_CONTRAST:
        return None
    dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    comp = _largest_near_centre(dark, max_dist=0.25 * min(img.shape[:2]))
    if comp is None:
        return None
    comp = _fill_holes(comp)
    if not MIN_NUCLEUS_FRACTION <= comp.mean() <= MAX_NUCLEUS_FRACTION:
        return None
    return comp if _shape(comp)["solidity"] >= MIN_SOLIDITY else None


def cell_mask(img: np.ndarray, nucleus: np.ndarray) -> np.ndarray:
    """Boolean whole-cell mask (nucleus + cytoplasm) around a nucleus mask."""
    blue_red = cv2.GaussianBlur((img[..., 2].astype(np.int16) - img[..., 0] + 255).clip(0, 510) // 2, (5, 5), 0)
    _, bluish = cv2.threshold(blue_red.astype(np.uint8), 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    bluish = cv2.morphologyEx(bluish, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    grown = cv2.dilate(nucleus.astype(np.uint8), np.ones((5, 5), np.uint8))
    n, labels = cv2.connectedComponents(bluish | grown)
    cell = labels == labels[nucleus][0] if n > 1 else nucleus
    reach = int(2 * CYTOPLASM_REACH * np.sqrt(nucleus.sum() / np.pi)) | 1
    near = cv2.dilate(nucleus.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (reach, reach)))
    return _fill_holes((cell & near.astype(bool)) | nucleus)


def _shape(mask: np.ndarray) -> dict[str, float]:
    """Circularity, solidity and minor/major axis ratio of the largest contour of a mask."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    area, perimeter = cv2.contourArea(contour), cv2.arcLength(contour, True)
    hull = cv2.contourArea(cv2.convexHull(contour))
    axes = sorted(cv2.fitEllipse(contour)[1]) if len(contour) >= 5 else (1.0, 1.0)
    return {"circularity": float(4 * np.pi * area / perimeter ** 2) if perimeter else np.nan,
            "solidity": float(area / hull) if hull else np.nan,
            "axis_ratio": float(axes[0] / axes[1]) if axes[1] else np.nan}


def measure_cell(img: np.ndarray) -> dict[str, float]:
    """Morphometry of one RGB uint8 cell image; ``ok`` = 0 and NaN measurements when no nucleus is found."""
    if img.ndim != 3 or min(img.shape[:2]) < 16:
        return {**{k: np.nan for k in MEASUREMENTS}, "ok": 0}
    nucleus = nucleus_mask(img)
    if nucleus is None:
        return {**{k: np.nan for k in MEASUREMENTS}, "ok": 0}
    cell = cell_mask(img, nucleus)
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    inner = cv2.erode(nucleus.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    inner = inner if inner.sum() > 20 else nucleus
    cyto = cell & ~nucleus
    lap = cv2.Laplacian(grey, cv2.CV_32F)
    out = {"nucleus_area": float(nucleus.sum()), "cell_area": float(cell.sum()),
           "nc_ratio": float(nucleus.sum() / cell.sum()), **_shape(nucleus),
           "chromatin_laplacian": float(lap[inner].var()), "chromatin_std": float(grey[inner].std()),
           "nucleus_hue": float(hsv[..., 0][nucleus].mean()), "nucleus_value": float(hsv[..., 2][nucleus].mean()),
           "cyto_blue": float((img[..., 2].astype(float) - img[..., 0])[cyto].mean()) if cyto.any() else np.nan}
    return {**out, "ok": 1}


def measure_cells(images: Iterable, progress: bool = True, desc: str = "morphometry") -> pd.DataFrame:
    """One row per cell; ``images`` are arrays or paths (read with lib.images.read_image)."""
    from lib.images import read_image
    rows = []
    for item in tqdm(images, desc=desc, disable=not progress):
        img = read_image(item) if isinstance(item, (str, Path)) else item
        rows.append(measure_cell(img))
    return pd.DataFrame(rows, columns=MEASUREMENTS + ["ok"])


def _q90(values: pd.Series) -> float:
    return float(values.quantile(0.9))


def _iqr(values: pd.Series) -> float:
    return float(values.quantile(0.75) - values.quantile(0.25))


# Fixed before looking at any label-based score: size (mean and the large-cell tail), N/C ratio,
# nuclear shape and chromatin texture, what a haematologist reads on a smear.
DEFAULT_POOLED = ["nucleus_area_mean", "nucleus_area_q90", "cell_area_mean", "nc_ratio_mean",
                  "circularity_mean", "chromatin_laplacian_mean", "nucleus_area_iqr", "frac_bad_cells"]
AGGREGATES = {"mean": "mean", "q90": _q90, "iqr": _iqr}


def pool_patient_features(cells: pd.DataFrame, features: list[str] | None = DEFAULT_POOLED) -> pd.DataFrame:
    """Per-patient pooled measurements (mean, q90, IQR of the good cells) and bad-cell counts; index ID."""
    good = cells[cells["ok"] == 1]
    pooled = good.groupby("ID")[MEASUREMENTS].agg(list(AGGREGATES.values()))
    pooled.columns = [f"{m}_{a}" for m in MEASUREMENTS for a in AGGREGATES]
    counts = cells.groupby("ID")["ok"].agg(n_cells="size", n_good="sum")
    pooled = counts.join(pooled)
    pooled["n_bad_cells"] = pooled["n_cells"] - pooled["n_good"]
    pooled["frac_bad_cells"] = pooled["n_bad_cells"] / pooled["n_cells"]
    return pooled if features is None else pooled[features]


ALL_POOLED = [f"{m}_{a}" for m in MEASUREMENTS for a in AGGREGATES] + ["frac_bad_cells"]


def plot_segmentation(images: list[np.ndarray], path: str | Path, title: str = "") -> Path:
    """Grid of cells with the nucleus (yellow) and cell (cyan) contours drawn, to check by eye."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = min(6, len(images))
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows + 0.4), squeeze=False)
    for ax, img in zip(axes.flat, images):
        ax.imshow(_draw_contours(img))
        m = measure_cell(img)
        ax.set_title(f"N {m['nucleus_area']:.0f}px  N/C {m['nc_ratio']:.2f}" if m["ok"] else "no nucleus", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _draw_contours(img: np.ndarray) -> np.ndarray:
    """Copy of an image with its nucleus and cell contours drawn."""
    out = img.copy()
    nucleus = nucleus_mask(img)
    if nucleus is None:
        return out
    for mask, colour in ((cell_mask(img, nucleus), (0, 220, 255)), (nucleus, (255, 230, 0))):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, colour, 2)
    return out


def plot_pooled_by_class(pooled: pd.DataFrame, labels: pd.Series, path: str | Path) -> Path:
    """One box plot (with points) per pooled feature, reactive vs tumoral."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = min(4, pooled.shape[1])
    rows = -(-pooled.shape[1] // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False, layout="constrained")
    y = labels.loc[pooled.index]
    for ax, name in zip(axes.flat, pooled.columns):
        groups = [pooled.loc[y == k, name].dropna() for k in (0, 1)]
        ax.boxplot(groups, tick_labels=["reactive", "tumoral"], showfliers=False)
        for k, g in enumerate(groups):
            ax.scatter(np.full(len(g), k + 1) + np.linspace(-0.12, 0.12, len(g)), g, s=6, alpha=0.6)
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[pooled.shape[1]:]:
        ax.axis("off")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
