"""Per-dataset morphometry: every cell measured once (cached), pooled per patient for the tabular model."""
import hashlib
import logging
from pathlib import Path

import pandas as pd

from lib.data import Dataset
from lib.io import atomic_write_csv
from lib.morphometry import DEFAULT_POOLED, measure_cells, pool_patient_features
from lib.paths import CACHE_DIR

log = logging.getLogger(__name__)


def _code_key() -> str:
    """Short hash of the measuring code, so a change to it never reuses stale measurements."""
    return hashlib.sha1(Path(__file__).with_name("morphometry.py").read_bytes()).hexdigest()[:8]


def cell_measurements(dataset: Dataset, cache_dir: Path = CACHE_DIR, progress: bool = True) -> pd.DataFrame:
    """One row per cell (ID, path, measurements, ok), measured on first use and cached per dataset."""
    path = Path(cache_dir) / "morpho" / f"{dataset.name}_{_code_key()}.csv"
    if path.exists():
        return pd.read_csv(path, dtype={"ID": str})
    paths = [(pid, p) for pid in dataset.patients.index for p in dataset.images[pid]]
    cells = measure_cells([p for _, p in paths], progress=progress, desc=f"morphometry {dataset.name}")
    cells.insert(0, "path", [str(p) for _, p in paths])
    cells.insert(0, "ID", [pid for pid, _ in paths])
    atomic_write_csv(cells, path)
    bad = int((cells["ok"] == 0).sum())
    log.info("morphometry: %d cells measured, %d without a nucleus (%.1f%%) -> %s", len(cells), bad,
             100 * bad / len(cells), path)
    return cells


def pooled_morphometry(dataset: Dataset, features: list[str] | None = DEFAULT_POOLED,
                       cache_dir: Path = CACHE_DIR) -> pd.DataFrame:
    """Pooled per-patient morphometry (index ID); NaN where a patient has no measurable cell (imputed in-fold)."""
    pooled = pool_patient_features(cell_measurements(dataset, cache_dir), features)
    if pooled.isna().any().any():
        log.warning("morphometry: patient(s) %s have no measurable cell", list(pooled.index[pooled.isna().any(axis=1)]))
    return pooled


def write_morphometry_plots(dataset: Dataset, run_dir: Path, n_cells: int = 6) -> list[Path]:
    """Segmentation check of a reactive and a tumoral patient, and the pooled features by class (PNG)."""
    from lib.images import read_image
    from lib.morphometry_plots import plot_pooled_by_class, plot_segmentation
    train = dataset.train
    paths = []
    for label in (0, 1):
        pid = train.index[train["LABEL"] == label][0]
        images = [read_image(p) for p in dataset.images[pid][:n_cells]]
        name = "reactive" if label == 0 else "tumoral"
        paths.append(plot_segmentation(images, Path(run_dir) / f"segmentation_{name}_{pid}.png",
                                       f"{pid} ({name}): nucleus and cell contours"))
    pooled = pooled_morphometry(dataset).loc[train.index]
    paths.append(plot_pooled_by_class(pooled, train["LABEL"], Path(run_dir) / "morphometry_by_class.png"))
    return paths
