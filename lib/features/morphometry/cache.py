"""Per-dataset morphometry: every cell measured once (cached), pooled per patient for the tabular model."""
import hashlib
import inspect
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from lib.core.io import atomic_write_csv, build_lock
from lib.core.paths import CACHE_DIR
from lib.data.dataset import Dataset
from lib.data.digests import CSV_PROBLEMS, read_cache_csv, remember, table_problem
from lib.data.images import (
    CELL_DTYPES,
    CELL_KEY,
    LEGACY_KEY,
    cell_keys,
    image_index,
    legacy_index,
    read_image,
    same_cells,
)
from lib.features.morphometry import segment
from lib.features.morphometry.pooling import DEFAULT_POOLED, pool_patient_features
from lib.features.morphometry.segment import MEASUREMENTS, measure_cells

log = logging.getLogger(__name__)


def _code_key() -> str:
    """Short hash of the code that computes the measurements: the segmentation module and the image decoder.

    A change to either never reuses stale measurements (the pooling runs on every read, so it is not keyed).
    """
    digest = hashlib.sha1(Path(segment.__file__).read_bytes())
    digest.update(inspect.getsource(read_image).encode())
    return digest.hexdigest()[:8]


def cell_measurements(dataset: Dataset, cache_dir: Path = CACHE_DIR, progress: bool = True) -> pd.DataFrame:
    """One row per cell (ID, path, file, size, digest, measurements, ok), measured on first use and cached.

    The cached cell list (ID, file name, size, content digest) is compared with the dataset's images on every
    read: when a cell was added, removed or replaced, a warning names the cache file and the changed cells are
    measured again (the unchanged ones keep their cached rows). A damaged cache is never half-trusted: a row cut
    short or not numbers is dropped and its cell measured again, a file that cannot be read is measured anew (each
    with a warning naming it).
    """
    path = Path(cache_dir) / "morpho" / f"{dataset.name}_{_code_key()}.csv"
    index = image_index(dataset, cache_dir, progress)
    saved = _read_saved(path)
    if saved is not None and same_cells(saved, index):
        return _reuse(saved, index, path)
    with build_lock(path):  # a second process on this cold cache waits, then reuses the first's measurements
        return _measure(dataset, path, index, progress)


def _reuse(saved: pd.DataFrame, index: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Cached measurements of exactly these cells, with their paths as they are now; an earlier version's cache
    (keyed on file times) is rewritten keyed on the digests."""
    cells = saved.assign(path=index["path"].to_numpy())  # the same cells, wherever the data directory is now
    if legacy_index(saved):
        cells.insert(cells.columns.get_loc("mtime_ns"), "digest", index["digest"].to_numpy())
        cells = cells.drop(columns="mtime_ns")
        remember(cells, path)
    return cells


def _read_saved(path: Path, quiet: bool = False) -> pd.DataFrame | None:
    """The cached measurements, if any: only their whole rows (a warning names the file, unless ``quiet``, when a
    row or the whole file is damaged)."""
    if not path.exists():
        return None
    try:
        typed = read_cache_csv(path, dtype=CELL_DTYPES)
        text = read_cache_csv(path, dtype=str, keep_default_na=False)  # a field missing from a row cut short: NaN
        with open(path, "rb") as fh:
            fh.seek(-1, 2)
            ended = fh.read(1) == b"\n"  # written whole, the last row ends with a newline
    except CSV_PROBLEMS as exc:
        if not quiet:
            log.warning("%s: unreadable morphometry cache (%s), measuring every cell again", path, table_problem(exc))
        return None
    key = LEGACY_KEY if legacy_index(typed) else CELL_KEY
    expected = {"path", *key, *MEASUREMENTS, "ok"}
    if set(typed.columns) != expected:
        if not quiet:
            log.warning("%s: damaged morphometry cache (columns differ from the measurements), measuring every "
                        "cell again", path)
        return None
    bad = _damaged_rows(text, key, ended)
    if bad.any():
        if not quiet:
            log.warning("%s: %d damaged row(s) in the morphometry cache (cut short or corrupted), measuring their "
                        "cells again", path, int(bad.sum()))
        typed = typed.loc[~bad].reset_index(drop=True)
        typed[MEASUREMENTS] = typed[MEASUREMENTS].apply(pd.to_numeric).astype(np.float64)
        typed = typed.astype({"ok": np.int64, "size": np.int64, **({"mtime_ns": np.int64} if key == LEGACY_KEY else {})})
    return typed


def _damaged_rows(text: pd.DataFrame, key: list[str], ended: bool) -> np.ndarray:
    """Rows of a morphometry cache read as text that are not whole: a field missing or not what it holds, or the
    last row when the file does not end with a newline (cut inside it)."""
    bad = text.isna().any(axis=1).to_numpy(bool, copy=True)
    for column in MEASUREMENTS:
        values = text[column].fillna("")
        bad |= ((values != "") & pd.to_numeric(values, errors="coerce").isna()).to_numpy()
    for column in ["size", "mtime_ns"] if key == LEGACY_KEY else ["size"]:
        digits = text[column].fillna("")
        bad |= ~(digits.str.fullmatch(r"\d{1,19}") & ((digits.str.len() < 19) | (digits <= str(2 ** 63 - 1)))
                 ).to_numpy(bool)  # an int64
    bad |= ~text["ok"].fillna("").isin(["0", "1"]).to_numpy()
    if "digest" in key:
        bad |= ~text["digest"].fillna("").str.fullmatch(r"[0-9a-f]{40}").to_numpy(bool)
    if len(bad) and not ended:
        bad[-1] = True
    return bad


def _measure(dataset: Dataset, path: Path, index: pd.DataFrame, progress: bool) -> pd.DataFrame:
    """Under the build lock: reuse what is cached (another process may have just written it), measure the rest."""
    saved = _read_saved(path, quiet=True)
    if saved is not None and same_cells(saved, index):
        return _reuse(saved, index, path)
    now, paths = cell_keys(index), index["path"].tolist()
    reuse, key = pd.DataFrame(), CELL_KEY
    if saved is not None:
        log.warning("%s: cached cells differ from the images of %s (added, removed or replaced, or measured by an "
                    "older version), measuring the changed cells again", path, dataset.root)
        key = LEGACY_KEY if legacy_index(saved) else CELL_KEY  # an earlier version's rows match on file times
        if set(key) <= set(saved.columns):
            reuse = saved.drop(columns=["path"]).drop_duplicates(key)
    if len(reuse):
        keyed = now.assign(mtime_ns=index["mtime_ns"].to_numpy()).merge(reuse, on=key, how="left", indicator=True)
        todo = (keyed["_merge"] == "left_only").to_numpy()
        keyed = keyed.drop(columns=["_merge", "mtime_ns"])
    else:
        keyed, todo = None, None
    todo_paths = [p for i, p in enumerate(paths) if todo is None or todo[i]]
    measured = measure_cells(todo_paths, progress=progress, desc=f"morphometry {dataset.name}")
    if keyed is None:
        cells = pd.concat([now, measured.reset_index(drop=True)], axis=1)
    else:
        cells = keyed.copy()
        if todo.any():
            cells.loc[todo, measured.columns] = measured.to_numpy()
            cells = cells.astype({c: measured.dtypes[c] for c in measured.columns})
    cells.insert(1, "path", paths)
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
