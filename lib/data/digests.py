"""Content digests of the image files: the identity every cache keys its cells on.

A cell's digest is the SHA-1 of its file's bytes. Reading every file on every start would cost seconds, so the
digests are remembered in ``cache/digests/<dataset>.csv`` by (path, size, mtime_ns), like git's index: a file
whose path and stat are unchanged is not read again; one whose stat changed (a copied, restored or touched data
directory) is read and hashed again. A touched or copied file keeps its digest, so the decoded-image, embedding
and morphometry caches keyed on it stay valid instead of being rebuilt; a file whose bytes changed gets a new
digest and every cache holding it is recomputed.
"""
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from lib.core.errors import DataError
from lib.core.io import atomic_write_csv, os_problem
from lib.core.progress import tqdm

log = logging.getLogger(__name__)
STAT_KEY = ["path", "size", "mtime_ns"]


def digest_store(cache_dir: str | Path, dataset_name: str) -> Path:
    """Where a dataset's remembered digests live."""
    return Path(cache_dir) / "digests" / f"{dataset_name}.csv"


def file_digest(path: str | Path) -> str:
    """SHA-1 of a file's bytes (hex); an unreadable file is a DataError naming it."""
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha1").hexdigest()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({os_problem(exc)})") from None


def file_stats(paths: list[str]) -> pd.DataFrame:
    """path, size and mtime_ns of each file, in order."""
    stats = np.array([_stat(p) for p in paths], dtype=np.int64).reshape(-1, 2)
    return pd.DataFrame({"path": paths, "size": stats[:, 0], "mtime_ns": stats[:, 1]})


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({os_problem(exc)})") from None
    return st.st_size, st.st_mtime_ns


def content_digests(paths: list[str], store: Path, progress: bool = True, workers: int = 2) -> pd.DataFrame:
    """path, size, mtime_ns and digest of each file, in order: remembered ones where the stat matches the store,
    the others read and hashed (then the store is rewritten for exactly these files, atomically)."""
    now = file_stats([str(p) for p in paths])
    known = _read_store(store)
    table = now.merge(known, on=STAT_KEY, how="left") if len(known) else now.assign(digest=None)
    table["digest"] = table["digest"].astype(object)
    missing = np.flatnonzero(table["digest"].isna().to_numpy())
    if len(missing) == 0:
        return table
    if len(known):
        log.info("%s: %d of %d image files changed stat (copied, restored or touched): hashing them again",
                 store, len(missing), len(table))
    todo = table["path"].to_numpy()[missing]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(tqdm(pool.map(file_digest, todo), total=len(todo), desc="hash images", unit="img",
                            disable=not progress or len(todo) < 1000))
    table.loc[missing, "digest"] = digests
    atomic_write_csv(table, store)
    return table


def _read_store(store: Path) -> pd.DataFrame:
    """The remembered digests (empty when absent or unreadable: they are recomputed, never trusted half-read)."""
    try:
        known = pd.read_csv(store, dtype={"path": str, "digest": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return pd.DataFrame(columns=[*STAT_KEY, "digest"])
    if not {*STAT_KEY, "digest"} <= set(known.columns):
        return pd.DataFrame(columns=[*STAT_KEY, "digest"])
    known = known[[*STAT_KEY, "digest"]].dropna()
    whole = known["digest"].str.fullmatch(r"[0-9a-f]{40}") & known["size"].map(_integer) & known["mtime_ns"].map(_integer)
    return known[whole].drop_duplicates(STAT_KEY).astype({"size": np.int64, "mtime_ns": np.int64})


def _integer(value) -> bool:
    """A whole number as read back from a CSV (a cut-off row may leave text or a float)."""
    return isinstance(value, (int, np.integer)) or (isinstance(value, str) and value.isdigit())
