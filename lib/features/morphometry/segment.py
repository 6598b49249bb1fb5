"""Per-cell morphometry (segmentation and measurement; pooling per patient is lib.features.morphometry.pooling):
what a haematologist looks at (nucleus size and shape, N/C ratio, chromatin, colour).

Segmentation, on a May-Grunwald-Giemsa-like smear with one lymphocyte roughly centred (RGB uint8):
- nucleus: Otsu threshold on HSV saturation (the purple nucleus is far more saturated than the beige
  background, the lilac red cells and the cytoplasm; on 300 real cells its Otsu separability was 0.91
  against 0.76 for a haematoxylin deconvolution channel and 0.71 for 255-G), opened with a 5x5 disk
  (drops thin dark cytoplasm rims), the component (>= 1% of the image) nearest the centre, holes
  filled; a clump of touching lymphocytes (non-convex) is cut by a watershed between distance peaks
  and the central nucleus kept when the cut is a narrow neck or a clearly paler gap;
- cell (nucleus + cytoplasm): foreground = Otsu on YCrCb Cb (cytoplasm and red cells are bluer than
  the cream background; Cb separates them like L*a*b* b* at a tenth of the cost) with red-cell
  pallor holes filled; then an OpenCV watershed (flooding by colour difference) seeded by the
  background, the nucleus (grown past its own edge) and one disk per red cell (distance-transform
  peaks of radius >= RBC_MIN_RADIUS that are not cytoplasm wedged against the nucleus), so touching
  red cells stop at their membrane; capped at CYTOPLASM_REACH nucleus radii from the nucleus (a
  safety net for red cells that got no seed). The cell is segmented at half resolution (CELL_SCALE)
  and scaled back: 4x cheaper, boundary within ~1 px.
Scale: areas and lengths are in pixels of the given image. The competition's cells are 224x224 at a
fixed magnification (a red cell is ~40-45 px across, a nucleus 2200-5000 px: 5-95% of train) and no
micrometre scale is known; the pixel constants below assume that magnification. Resized images
scale areas by the square of the factor.
A cell with no plausible nucleus (blank image, nothing saturated near the centre, too small, too
large or too ragged) gets ``ok = 0`` and NaN measurements: counted and reported, never crashed on.
"""
import multiprocessing as mp
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from skimage.segmentation import watershed

from lib.core.errors import DataError
from lib.core.machine import usable_cores
from lib.core.progress import tqdm

MEASUREMENTS = ["nucleus_area", "cell_area", "nc_ratio", "circularity", "solidity", "axis_ratio",
                "cell_circularity", "chromatin_laplacian", "chromatin_std",
                "nucleus_L", "nucleus_a", "nucleus_b", "cyto_L", "cyto_a", "cyto_b"]
MIN_SIDE = 32                  # smaller images are not measured
MIN_NUCLEUS_FRACTION = 0.01    # of the image area (500 px at 224x224; smaller blobs are debris, platelets)
MAX_NUCLEUS_FRACTION = 0.5
CENTRE_REACH = 0.25            # the nucleus must come within this fraction of the side from the centre
MIN_SOLIDITY = 0.6             # a ragged "nucleus" (noise, debris) is no nucleus; real ones are ~0.95
MIN_CONTRAST = 25.0            # saturation gap (0-255) between nucleus and surroundings
SPLIT_MAX_SOLIDITY = 0.94      # only less convex nuclei are tried as clumps (every clump seen was <= 0.93)
SPLIT_NECK = 0.35              # touching nuclei are cut where the neck is < this x sqrt(piece area) ...
SPLIT_GAP = 0.72               # ... or the cut runs along a gap this much paler (saturation) than the piece;
#                                broad contacts without a clear gap stay merged (a large nucleus looks the same)
RBC_MIN_RADIUS = 11            # px: a red-cell seed is a foreground blob at least this thick ...
MIN_RBC_ROUNDNESS = 0.7        # ... and round (cytoplasm wedged around a nucleus scores 0.5-0.65)
CELL_SCALE = 0.5               # the cell is segmented at half resolution (4x cheaper; boundary +-1 px)
CYTOPLASM_REACH = 1.0          # cytoplasm kept within this many nucleus radii of the nucleus
MIN_CYTO_PIXELS = 20           # fewer cytoplasm pixels: cytoplasm colour is NaN
MIN_PARALLEL = 256             # fewer images are measured in-process (starting workers costs ~2 s)
BACKGROUND_LABEL = 1 << 20     # watershed label of the (already known) background
DISK3, DISK5 = (cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)) for k in (3, 5))


def _check_image(img: np.ndarray) -> None:
    """Raise DataError unless ``img`` is an HxWx3 uint8 array."""
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        shape = getattr(img, "shape", type(img).__name__)
        raise DataError(f"morphometry image {shape}: expected an HxWx3 uint8 RGB array")


def _fill_holes(mask: np.ndarray, max_area: float = np.inf) -> np.ndarray:
    """Mask with its interior holes (smaller than ``max_area`` px) filled."""
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    out = mask.astype(np.uint8)
    if hierarchy is not None:
        holes = [c for c, h in zip(contours, hierarchy[0]) if h[3] >= 0 and cv2.contourArea(c) < max_area]
        cv2.drawContours(out, holes, -1, 1, thickness=-1)
    return out.astype(bool)


@lru_cache(maxsize=8)
def _by_centre_distance(h: int, w: int, max_dist: float) -> np.ndarray:
    """Flat indices of the pixels within ``max_dist`` of the image centre, nearest first."""
    yy, xx = np.mgrid[:h, :w]
    dist = np.hypot(yy - h / 2, xx - w / 2).ravel()
    order = np.argsort(dist, kind="stable")
    return order[dist[order] <= max_dist]


def _nearest_centre(mask: np.ndarray, max_dist: float, min_area: int = 0) -> np.ndarray | None:
    """The component (of at least ``min_area`` px) whose pixels come nearest the centre, within ``max_dist``."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
    big = stats[:, cv2.CC_STAT_AREA] >= min_area
    big[0] = False
    ranked = labels.ravel()[_by_centre_distance(*mask.shape, float(max_dist))]
    hits = big[ranked]
    if n < 2 or not hits.any():
        return None
    return labels == ranked[np.argmax(hits)]


def _central_piece(clump: np.ndarray, sat: np.ndarray) -> np.ndarray | None:
    """The central nucleus of a clump of touching nuclei, or None when the clump looks like one nucleus."""
    x, y, w, h = cv2.boundingRect(clump.astype(np.uint8))
    box = (slice(max(y - 1, 0), y + h + 1), slice(max(x - 1, 0), x + w + 1))
    centre = (clump.shape[0] / 2 - box[0].start, clump.shape[1] / 2 - box[1].start)
    piece = _split_clump(clump[box], cv2.GaussianBlur(sat[box], (3, 3), 0), centre)
    if piece is None:
        return None
    out = np.zeros_like(clump)
    out[box] = piece
    return out


def _split_clump(clump: np.ndarray, sat: np.ndarray, centre: tuple[float, float]) -> np.ndarray | None:
    """_central_piece on a crop; ``centre`` is the image centre (row, col) in crop coordinates."""
    dist = cv2.distanceTransform(clump.astype(np.uint8), cv2.DIST_L2, 5)
    win = max(3, int(dist.max())) | 1
    peaks = (dist >= 0.5 * dist.max()) & (dist == cv2.dilate(dist, np.ones((win, win), np.uint8)))
    n, labels = cv2.connectedComponents(peaks.astype(np.uint8))
    if n < 3:
        return None
    ys, xs = np.nonzero(peaks)
    _, first = np.unique(labels[ys, xs], return_index=True)
    seeds = np.zeros(clump.shape, np.int32)
    for i, (y, x) in enumerate(zip(ys[first], xs[first]), start=1):
        cv2.circle(seeds, (int(x), int(y)), int(0.5 * dist[y, x]), i, -1)
    seeds[~clump] = 0
    pieces = watershed(255 - cv2.GaussianBlur(sat, (0, 0), 2.5), seeds, mask=clump)  # cut along paler gaps
    yy, xx = np.nonzero(pieces)
    nearest = np.argmin(np.hypot(yy - centre[0], xx - centre[1]))
    piece = pieces == pieces[yy[nearest], xx[nearest]]
    border = piece & cv2.dilate((clump & ~piece).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    if not border.any():
        return None
    gap = sat[border].mean() / np.median(sat[piece])
    narrow = border.sum() <= SPLIT_NECK * np.sqrt(piece.sum())
    return piece if narrow or gap <= SPLIT_GAP else None


def nucleus_mask(img: np.ndarray) -> np.ndarray:
    """Boolean nucleus mask of an RGB uint8 cell image; all False when no plausible nucleus is found."""
    _check_image(img)
    empty = np.zeros(img.shape[:2], bool)
    if min(img.shape[:2]) < MIN_SIDE:
        return empty
    sat = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)[..., 1]
    smooth = cv2.GaussianBlur(sat, (5, 5), 0)
    _, dark = cv2.threshold(smooth, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    if dark.all() or not dark.any() or cv2.mean(smooth, dark)[0] - cv2.mean(smooth, 1 - dark)[0] < MIN_CONTRAST:
        return empty
    dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, DISK5)
    comp = _nearest_centre(dark, CENTRE_REACH * min(img.shape[:2]), int(MIN_NUCLEUS_FRACTION * dark.size))
    if comp is None:
        return empty
    for _ in range(2):  # up to three touching nuclei; a clump is never convex
        piece = _central_piece(comp, sat) if _shape(comp)["solidity"] < SPLIT_MAX_SOLIDITY else None
        if piece is None:
            break
        comp = piece
    comp = _fill_holes(comp)
    if not MIN_NUCLEUS_FRACTION <= comp.mean() <= MAX_NUCLEUS_FRACTION or _shape(comp)["solidity"] < MIN_SOLIDITY:
        return empty
    return comp


def _foreground(img: np.ndarray, nucleus: np.ndarray, scale: float) -> np.ndarray:
    """Cells (lymphocyte and red cells) vs cream background: Otsu on blue-difference Cb, pallor holes filled."""
    blue = cv2.GaussianBlur(cv2.cvtColor(img, cv2.COLOR_RGB2YCrCb)[..., 2], (3, 3), 0)
    thr, _ = cv2.threshold(blue[~nucleus].reshape(-1, 1), 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    fg = cv2.morphologyEx(((blue > thr) | nucleus).astype(np.uint8), cv2.MORPH_OPEN, DISK3)
    return _fill_holes(fg, max_area=np.pi * (RBC_MIN_RADIUS * scale) ** 2 * 1.5) | nucleus


def _red_cell_seeds(fg: np.ndarray, nucleus: np.ndarray, to_nucleus: np.ndarray, markers: np.ndarray,
                    scale: float) -> None:
    """Add a disk marker (labels 2, 3, ...) per red cell: thick foreground, round where it touches the nucleus."""
    free = fg & ~nucleus
    dist = cv2.distanceTransform(free.astype(np.uint8), cv2.DIST_L2, 5)
    window = np.ones((int(15 * scale) | 1,) * 2, np.uint8)
    peaks = (dist >= RBC_MIN_RADIUS * scale) & (dist == cv2.dilate(dist, window))
    _, labels = cv2.connectedComponents(peaks.astype(np.uint8))
    ys, xs = np.nonzero(peaks)
    _, first = np.unique(labels[ys, xs], return_index=True)  # one point per plateau
    seeds = np.zeros(markers.shape, np.int32)
    for label, (y, x) in enumerate(zip(ys[first], xs[first]), start=2):
        r = float(dist[y, x])
        if to_nucleus[y, x] <= r + 1.5 * scale and _roundness(free, y, x, r) < MIN_RBC_ROUNDNESS:
            continue  # touches the nucleus and is not round: cytoplasm wedged around it
        cv2.circle(seeds, (int(x), int(y)), int(0.75 * r), label, -1)
    unset = markers == 0
    markers[unset] = seeds[unset]


def _roundness(free: np.ndarray, y: int, x: int, r: float) -> float:
    """Fraction of 48 rays from (y, x) that leave ``free`` within 1.6 r (a red cell is a disk: ~0.8-1)."""
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)[:, None]
    steps = np.arange(0, 1.6 * r, 0.5)[None, :]
    yy, xx = np.round(y + steps * np.sin(angles)).astype(int), np.round(x + steps * np.cos(angles)).astype(int)
    outside = (yy < 0) | (yy >= free.shape[0]) | (xx < 0) | (xx >= free.shape[1])
    blocked = outside | ~free[yy.clip(0, free.shape[0] - 1), xx.clip(0, free.shape[1] - 1)]
    return float(blocked.any(axis=1).mean())


def cell_mask(img: np.ndarray, nucleus: np.ndarray | None = None) -> np.ndarray:
    """Boolean whole-cell mask (nucleus + cytoplasm); all False when there is no nucleus."""
    nucleus = nucleus_mask(img) if nucleus is None else nucleus.astype(bool)
    if not nucleus.any():
        return np.zeros(img.shape[:2], bool)
    return _cell_mask(img, nucleus)


def _cell_mask(img: np.ndarray, nucleus: np.ndarray) -> np.ndarray:
    """cell_mask given a non-empty nucleus mask: segmented at CELL_SCALE, returned at full size."""
    h, w = nucleus.shape
    size = (max(1, round(w * CELL_SCALE)), max(1, round(h * CELL_SCALE)))
    small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    nuc = cv2.resize(nucleus.astype(np.float32), size, interpolation=cv2.INTER_AREA) >= 0.5
    if not nuc.any():
        return nucleus.copy()
    reach = CYTOPLASM_REACH * np.sqrt(nucleus.sum() / np.pi) * CELL_SCALE
    cell = _segment_cell(small, nuc, reach, CELL_SCALE).astype(np.float32)
    up = cv2.GaussianBlur(cv2.resize(cell, (w, h), interpolation=cv2.INTER_LINEAR), (5, 5), 1.0)  # no staircase
    return (up >= 0.5) | nucleus


def _segment_cell(img: np.ndarray, nucleus: np.ndarray, reach: float, scale: float) -> np.ndarray:
    """Watershed of nucleus vs red cells vs background, kept within ``reach`` px of the nucleus."""
    fg = _foreground(img, nucleus, scale)
    to_nucleus = cv2.distanceTransform((~nucleus).astype(np.uint8), cv2.DIST_L2, 5)
    markers = np.where(fg, 0, BACKGROUND_LABEL).astype(np.int32)
    markers[(to_nucleus <= 3 * scale) & fg] = 1
    _red_cell_seeds(fg, nucleus, to_nucleus, markers, scale)
    cv2.watershed(img, markers)  # floods by colour difference
    cell = markers == 1
    cell |= (markers == -1) & fg & cv2.dilate(cell.astype(np.uint8), DISK3).astype(bool)  # its watershed line
    _, labels = cv2.connectedComponents(_fill_holes(cell & (to_nucleus <= reach)).astype(np.uint8))
    best = np.bincount(labels[nucleus]).argmax()  # the piece that holds the nucleus
    return (labels == best) & (best > 0) | nucleus


def _shape(mask: np.ndarray) -> dict[str, float]:
    """Circularity, solidity (largest contour) and minor/major axis ratio (second moments) of a mask."""
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    mask = mask[y:y + h, x:x + w].astype(np.uint8)  # shape is translation-invariant: work on the box
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    area = cv2.contourArea(contour)
    perimeter = cv2.arcLength(cv2.approxPolyDP(contour, 1.0, True), True)  # no pixel-staircase inflation
    hull = cv2.contourArea(cv2.convexHull(contour))
    m = cv2.moments(mask, binaryImage=True)
    spread = np.hypot(m["mu20"] - m["mu02"], 2 * m["mu11"])
    major, minor = m["mu20"] + m["mu02"] + spread, m["mu20"] + m["mu02"] - spread
    return {"circularity": float(min(1.0, 4 * np.pi * area / perimeter ** 2)) if perimeter else np.nan,
            "solidity": float(area / hull) if hull else np.nan,
            "axis_ratio": float(np.sqrt(max(minor, 0) / major)) if major > 0 else np.nan}


def _lab_means(img: np.ndarray, mask: np.ndarray, prefix: str) -> dict[str, float]:
    """L* (0-100), a*, b* (signed) of the mean RGB colour of the masked pixels; NaN when too few."""
    mask = mask.astype(np.uint8)
    if cv2.countNonZero(mask) < MIN_CYTO_PIXELS:
        return {f"{prefix}_{k}": np.nan for k in "Lab"}
    mean = np.float32(cv2.mean(img, mask=mask)[:3]).reshape(1, 1, 3) / 255
    lab = cv2.cvtColor(mean, cv2.COLOR_RGB2LAB)[0, 0]
    return {f"{prefix}_L": float(lab[0]), f"{prefix}_a": float(lab[1]), f"{prefix}_b": float(lab[2])}


def measure_cell(img: np.ndarray) -> dict[str, float]:
    """Morphometry of one RGB uint8 cell image (areas in px); ``ok`` = 0 and NaN when no nucleus is found."""
    nucleus = nucleus_mask(img)
    if not nucleus.any():
        return {**{k: np.nan for k in MEASUREMENTS}, "ok": 0}
    cell = _cell_mask(img, nucleus)
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    inner = cv2.erode(nucleus.astype(np.uint8), DISK5)  # chromatin away from the nuclear edge
    inner = inner if cv2.countNonZero(inner) > 20 else nucleus.astype(np.uint8)
    cyto = cell & ~cv2.dilate(nucleus.astype(np.uint8), DISK5).astype(bool)
    lap_sd = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_32F), mask=inner)[1][0, 0]
    grey_sd = cv2.meanStdDev(grey, mask=inner)[1][0, 0]
    out = {"nucleus_area": float(nucleus.sum()), "cell_area": float(cell.sum()),
           "nc_ratio": float(nucleus.sum() / cell.sum()), **_shape(nucleus),
           "cell_circularity": _shape(cell)["circularity"],
           "chromatin_laplacian": float(lap_sd ** 2), "chromatin_std": float(grey_sd),
           **_lab_means(img, nucleus, "nucleus"), **_lab_means(img, cyto, "cyto")}
    return {**out, "ok": 1}


def _measure_item(item: np.ndarray | str | Path) -> dict[str, float]:
    """measure_cell on an array or an image path (read as RGB)."""
    from lib.data.images import read_image
    return measure_cell(read_image(item) if isinstance(item, (str, Path)) else item)


def measure_cells(images: Iterable, progress: bool = True, desc: str = "morphometry",
                  n_jobs: int | None = None) -> pd.DataFrame:
    """One row per cell (MEASUREMENTS + ok), in input order; ``images`` are RGB arrays or paths.

    ``n_jobs`` worker processes (default: up to 4 of the usable cores, see lib.core.machine) for at least MIN_PARALLEL images; they are
    spawned, not forked (a fork can inherit OpenCV's thread pool mid-lock and hang), so a calling
    script needs the usual ``if __name__ == "__main__":`` guard.
    """
    items = list(images)
    n_jobs = min(4, usable_cores()) if n_jobs is None else n_jobs
    bar = dict(total=len(items), desc=desc, disable=not progress)
    if n_jobs > 1 and len(items) >= MIN_PARALLEL:
        with mp.get_context("spawn").Pool(n_jobs, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
            rows = list(tqdm(pool.imap(_measure_item, items, chunksize=32), **bar))
    else:
        rows = [_measure_item(item) for item in tqdm(items, **bar)]
    return pd.DataFrame(rows, columns=MEASUREMENTS + ["ok"])
