"""Content digests of the image files: the identity every cache keys its cells on.

A cell's digest is the SHA-1 of its file's bytes. Reading every file on every start would cost seconds, so the
digests are remembered in ``cache/digests/<dataset>.csv`` by (path, size, mtime_ns), like git's index: a file
whose path and stat are unchanged is not read again; one whose stat changed (a copied, restored or touched data
directory) is read and hashed again. A touched or copied file keeps its digest, so the decoded-image, embedding
and morphometry caches keyed on it stay valid instead of being rebuilt; a file whose bytes changed gets a new
digest and every cache holding it is recomputed. A store cut short or damaged is never half-trusted: its
unreadable rows are dropped (with a warning naming it) and their files hashed again.

Every cache table (this store, the decoded-image, embedding and morphometry indexes) is written by
``lib.core.io.atomic_write_csv`` and read by ``read_cache_csv``: a file name that is not valid UTF-8 (e.g. a
Latin-1 ``cell\xe9.jpg`` of an older Windows export, which Python names with a surrogate escape) is stored as its
own bytes and read back as the same name.
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
    the others read and hashed (then the store is rewritten, atomically: these files, and the other files it
    remembered that still exist, e.g. another copy of the data directory)."""
    now = file_stats([str(p) for p in paths])
    known = _read_store(store)
    table = now.merge(known, on=STAT_KEY, how="left")
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
    others = known[~known["path"].isin(table["path"])]
    others = others[[os.path.exists(p) for p in others["path"]]]
    remember(pd.concat([table, others], ignore_index=True), store)
    return table


def read_cache_csv(path: str | Path, **kwargs) -> pd.DataFrame:
    """Read a cache table lib.core.io.atomic_write_csv wrote (pandas.read_csv options in ``kwargs``), file names as
    they were."""
    return pd.read_csv(path, encoding="utf-8", encoding_errors="surrogateescape", **kwargs)


CSV_PROBLEMS = (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError)  # an unreadable cache table


def table_problem(exc: BaseException) -> str:
    """Short text of why a cache table could not be read."""
    if isinstance(exc, pd.errors.EmptyDataError):
        return "empty file"
    return os_problem(exc) if isinstance(exc, OSError) else (str(exc).splitlines() or [type(exc).__name__])[0][:120]


def remember(table: pd.DataFrame, path: Path) -> None:
    """Write a cache file that only saves work (a digest store, an index upgraded in place); a cache directory
    that cannot be written (read-only, another user's) leaves it as it was, with a warning, and the caller goes on
    with what it computed."""
    try:
        atomic_write_csv(table, path)
    except DataError as exc:
        log.warning("%s (not saved: the next run computes it again)", exc)


def _read_store(store: Path) -> pd.DataFrame:
    """The remembered digests (empty when absent or unreadable; a row cut off or damaged is dropped, and its file
    hashed again: never trusted half-read; a warning names the store when it was there but not whole)."""
    empty = pd.DataFrame({"path": pd.Series(dtype=str), "size": pd.Series(dtype=np.int64),
                          "mtime_ns": pd.Series(dtype=np.int64), "digest": pd.Series(dtype=str)})
    if not store.exists():
        return empty
    try:
        known = read_cache_csv(store, dtype=str, keep_default_na=False)  # all text: checked before converting
    except CSV_PROBLEMS as exc:
        log.warning("%s: unreadable digest store (%s), hashing every image again", store, table_problem(exc))
        return empty
    if not {*STAT_KEY, "digest"} <= set(known.columns):
        log.warning("%s: damaged digest store (columns %s), hashing every image again", store,
                    ", ".join(map(ascii, known.columns[:6])))  # garbage bytes shown escaped
        return empty
    whole = (known["digest"].str.fullmatch(r"[0-9a-f]{40}") & known["size"].str.fullmatch(r"\d{1,18}")
             & known["mtime_ns"].str.fullmatch(r"\d{1,19}") & (known["path"] != "")).fillna(False).astype(bool)
    if not whole.all():
        log.warning("%s: %d damaged row(s) in the digest store (cut short or corrupted), hashing their images again",
                    store, int((~whole).sum()))
    known = known.loc[whole, [*STAT_KEY, "digest"]]
    try:
        return known.drop_duplicates(STAT_KEY).astype({"size": np.int64, "mtime_ns": np.int64})
    except (OverflowError, ValueError):  # a number beyond int64: damaged, so nothing of it is trusted
        log.warning("%s: damaged digest store (a size or time beyond 64 bits), hashing every image again", store)
        return empty
