"""Per-dataset morphometry: every cell measured once (cached), pooled per patient for the tabular model."""
import hashlib
import inspect
import logging
from pathlib import Path

import pandas as pd

from lib.data.dataset import Dataset
from lib.core.io import atomic_write_csv
from lib.data.images import read_image
from lib.features.morphometry import segment
from lib.features.morphometry.segment import DEFAULT_POOLED, measure_cells, pool_patient_features
from lib.core.paths import CACHE_DIR

log = logging.getLogger(__name__)


def _code_key() -> str:
    """Short hash of the code that computes the measurements: the segmentation module and the image decoder.

    A change to either never reuses stale measurements (the pooling runs on every read, so it is not keyed).
    """
    digest = hashlib.sha1(Path(segment.__file__).read_bytes())
    digest.update(inspect.getsource(read_image).encode())
    return digest.hexdigest()[:8]


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
