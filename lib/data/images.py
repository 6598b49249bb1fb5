"""Image decoding and the decoded-image cache (a uint8 memmap per dataset and crop size).

Decoding a 224x224 JPEG costs more than reading a cached crop, and every later epoch and script
reads the same cells, so the first use decodes each image once into
``cache/<dataset>_c<crop>.u8`` (N x crop x crop x 3, RGB) with an index CSV beside it.
The index records each cell's identity (ID, file name, size and the SHA-1 of the file's bytes, see
lib.data.digests) and is compared with the images on every read: when a cell was added, removed or replaced,
the cache is rebuilt (with a warning naming it), never silently reused; a copied or touched file is the same cell.
A damaged cache is rebuilt the same way, never trusted: an index that cannot be read, an array whose length is not
that of the index's cells (cut short by a full disk or a copy), or one that cannot be opened.
Decoding is bounded: an image whose header declares more than lib.data.jpeg.MAX_PIXELS is never decoded.
"""
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from lib.core.errors import DataError
from lib.core.io import atomic_write_csv, build_lock, make_dirs, os_problem
from lib.core.paths import CACHE_DIR
from lib.core.progress import tqdm
from lib.data.dataset import Dataset
from lib.data.digests import (
    CSV_PROBLEMS,
    content_digests,
    digest_store,
    read_cache_csv,
    remember,
    table_problem,
)
from lib.data.jpeg import declared_size_problem

log = logging.getLogger(__name__)


def decode_image(path: str | Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """Decode an image file with OpenCV ``flags`` (BGR, or as stored with IMREAD_UNCHANGED); a file that fails to
    decode is an error, and so is one whose header declares a size no cell image has (a decompression bomb: refused
    before the decoder allocates it). Read as bytes: a path that is not UTF-8 works too (cv2.imread crashes on it)."""
    data = np.fromfile(str(path), dtype=np.uint8)
    if problem := declared_size_problem(data):
        raise DataError(f"{path}: {problem}, not decoded")
    img = cv2.imdecode(data, flags) if data.size else None
    if img is None:
        raise DataError(f"{path}: cannot decode image")
    return img


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file into an RGB uint8 array (``decode_image``'s checks)."""
    return cv2.cvtColor(decode_image(path), cv2.COLOR_BGR2RGB)


def center_crop(img: np.ndarray, size: int | None, path: str | Path | None = None) -> np.ndarray:
    """Central ``size`` x ``size`` crop (None keeps the image); ``path`` names the image in errors."""
    if size is None:
        return img
    h, w = img.shape[:2]
    if size > min(h, w):
        where = f"{path}: " if path is not None else ""
        raise DataError(f"{where}crop {size} is larger than the {h}x{w} images")
    top, left = (h - size) // 2, (w - size) // 2
    return img[top:top + size, left:left + size]


CELL_KEY = ["ID", "file", "size", "digest"]  # what identifies a cell's content in every cache index
CELL_DTYPES = {"ID": str, "file": str, "digest": str}  # how a cache index is read back (a digest is text)


def cell_keys(cells: pd.DataFrame) -> pd.DataFrame:
    """Location-independent identity of cells (CELL_KEY) from an image index (ID, path, size, digest)."""
    return pd.DataFrame({"ID": cells["ID"].astype(str).to_numpy(), "file": [Path(p).name for p in cells["path"]],
                         "size": cells["size"].to_numpy(np.int64), "digest": cells["digest"].astype(str).to_numpy()})


LEGACY_KEY = ["ID", "file", "size", "mtime_ns"]  # the identity of earlier versions' indexes (file times)


def same_cells(saved: pd.DataFrame, cells: pd.DataFrame) -> bool:
    """Whether a cache index ``saved`` describes exactly these cells (an image index), in order.

    An index of an earlier version (keyed on size and mtime_ns, no digests; see ``legacy_index``) matches while
    those file times still do: its caller rewrites it with the digests, so a later copy or touch keeps it valid."""
    key = LEGACY_KEY if legacy_index(saved) else CELL_KEY
    if not set(key) <= set(saved.columns) or len(saved) != len(cells):
        return False
    now, old = cells.assign(ID=cells["ID"].astype(str)), saved[key]
    try:
        return all((old[k].to_numpy(np.int64) == now[k].to_numpy(np.int64)).all() if k in ("size", "mtime_ns") else
                   (old[k].astype(str).to_numpy() == now[k].to_numpy()).all() for k in key)
    except (ValueError, TypeError, OverflowError):  # a damaged number (cut short, not a number): not these cells
        return False


def read_cell_index(path: Path) -> pd.DataFrame | str:
    """A cache index (``atomic_write_csv``) as written, or why it cannot be read (a short text)."""
    try:
        return read_cache_csv(path, dtype=CELL_DTYPES)
    except CSV_PROBLEMS as exc:
        return table_problem(exc)


def legacy_index(saved: pd.DataFrame) -> bool:
    """A cache index written by an earlier version: keyed on file times instead of content digests."""
    return "digest" not in saved.columns


def image_index(dataset: Dataset, cache_dir: Path = CACHE_DIR, progress: bool = True) -> pd.DataFrame:
    """One row per image: ID, split, path, file, size, mtime_ns, digest (its content) and its row number in a cache."""
    rows = [(pid, split, str(path)) for pid, split in dataset.patients["split"].items()
            for path in dataset.images[pid]]
    table = pd.DataFrame(rows, columns=["ID", "split", "path"])
    make_dirs(cache_dir)  # a cache directory that cannot exist is an error before any work (one that is read-only is not)
    content = content_digests(table["path"].tolist(), digest_store(cache_dir, dataset.name), progress)
    return table.assign(file=[Path(p).name for p in table["path"]], size=content["size"].to_numpy(),
                        mtime_ns=content["mtime_ns"].to_numpy(), digest=content["digest"].to_numpy(),
                        row=np.arange(len(table)))


def patient_rows(index: pd.DataFrame) -> dict[str, np.ndarray]:
    """Cache rows of every patient's cells, from an index with ID and row columns."""
    return {pid: rows.to_numpy() for pid, rows in index.groupby("ID", sort=False)["row"]}


@dataclass
class ImageCache:
    """Decoded crops of every image of a dataset, and where each patient's cells are."""

    array: np.ndarray
    index: pd.DataFrame
    _rows: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def rows(self, pid: str) -> np.ndarray:
        """Cache rows of one patient's cells."""
        if not self._rows:
            self._rows.update(patient_rows(self.index))
        return self._rows[pid]

    def patient(self, pid: str) -> np.ndarray:
        """All cells of one patient (n x crop x crop x 3)."""
        return self.array[self.rows(pid)]


def cache_paths(dataset: Dataset, crop: int, cache_dir: Path = CACHE_DIR) -> tuple[Path, Path]:
    """Memmap and index paths for a dataset and crop size."""
    stem = Path(cache_dir) / f"{dataset.name}_c{crop}"
    return stem.with_suffix(".u8"), stem.with_suffix(".csv")


def load_image_cache(dataset: Dataset, crop: int, cache_dir: Path = CACHE_DIR,
                     workers: int = 2, progress: bool = True) -> ImageCache:
    """Open the dataset's decoded cache, building it first if absent, stale or damaged (the index is written last)."""
    array_path, index_path = cache_paths(dataset, crop, cache_dir)
    index = image_index(dataset, cache_dir, progress)
    if _stale(array_path, index_path, index, crop, dataset) is not None:
        with build_lock(array_path):  # a second process on this cold cache waits, then reuses the first's
            reason = _stale(array_path, index_path, index, crop, dataset)
            if reason is not None:
                if reason:
                    log.warning("%s, rebuilding the decoded cache", reason)
                index_path.unlink(missing_ok=True)  # the index is written last: without it the array is incomplete
                _build(index, crop, array_path, workers, progress)
                atomic_write_csv(index, index_path)
    try:
        array = np.memmap(array_path, dtype=np.uint8, mode="r", shape=(len(index), crop, crop, 3))
    except (OSError, ValueError) as exc:  # changed since it was checked (another process, a full disk)
        reason = os_problem(exc) if isinstance(exc, OSError) else str(exc)
        raise DataError(f"{array_path}: cannot read the decoded-image cache ({reason})") from None
    return ImageCache(array=array, index=index)


def _stale(array_path: Path, index_path: Path, index: pd.DataFrame, crop: int, dataset: Dataset) -> str | None:
    """None when the cache holds exactly these cells, whole; else why not: '' when it is not there (or its build
    was cut short: no index), the warning's text when it is there but stale or damaged."""
    if not index_path.exists():
        return ""
    saved = read_cell_index(index_path)
    if isinstance(saved, str):
        return f"{index_path}: unreadable index of the decoded cache ({saved})"
    if not same_cells(saved, index):
        return (f"{index_path}: cached cells differ from the images of {dataset.root} (added, removed or replaced, "
                f"or cached by an older version)")
    expected = len(index) * crop * crop * 3
    try:
        size = array_path.stat().st_size
        with open(array_path, "rb"):
            pass
    except OSError as exc:
        return f"{array_path}: unreadable decoded cache ({os_problem(exc)})"
    if size != expected:
        return (f"{array_path}: {size} bytes where its index's {len(index)} cells of {crop}x{crop} take {expected} "
                f"(cut short or damaged)")
    if legacy_index(saved):  # an earlier version's index, still matching: keyed on the contents from now on
        remember(index, index_path)
    return None


def _build(index: pd.DataFrame, crop: int, array_path: Path, workers: int, progress: bool) -> None:
    """Decode every image into a preallocated temporary memmap, then rename it into place.

    The file is allocated up front (``posix_fallocate``) so that a full disk is a DataError naming it, not a
    SIGBUS while writing the memmap; the temporary file is removed on any failure.
    """
    make_dirs(array_path.parent)
    tmp = array_path.with_name(f".{array_path.name}.{os.getpid()}.tmp")  # never another process's file
    nbytes = len(index) * crop * crop * 3
    try:
        _preallocate(tmp, nbytes)
        out = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=(len(index), crop, crop, 3))
        shapes = {}

        def load(row: int, target: np.memmap = out) -> None:
            path = index["path"].iat[row]
            img = read_image(path)
            shapes[row] = img.shape[:2]
            target[row] = center_crop(img, crop, path)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            jobs = pool.map(load, range(len(index)))
            for _ in tqdm(jobs, total=len(index), desc=f"decode -> cache (crop {crop})", disable=not progress):
                pass
        out.flush()
        del load, out
        _warn_odd_sizes(index, shapes)
        tmp.replace(array_path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{array_path}: cannot write the decoded-image cache ({os_problem(exc)})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("wrote decoded cache %s", array_path)


def _preallocate(path: Path, nbytes: int) -> None:
    """Create ``path`` with ``nbytes`` really allocated on disk (OSError, e.g. ENOSPC, if they are not there)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if nbytes:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, nbytes)
            else:  # pragma: no cover - platforms without posix_fallocate
                os.ftruncate(fd, nbytes)
    finally:
        os.close(fd)


def _warn_odd_sizes(index: pd.DataFrame, shapes: dict[int, tuple[int, int]]) -> None:
    """Warn (naming one) when images differ in size from the first: the cache centre-crops each of them."""
    if not shapes:
        return
    first = shapes[min(shapes)]
    odd = [row for row, shape in sorted(shapes.items()) if shape != first]
    if odd:
        h, w = shapes[odd[0]]
        log.warning("%s: %dx%d differs from the first image's %dx%d (%d image(s) of another size, each "
                    "centre-cropped)", index["path"].iat[odd[0]], h, w, first[0], first[1], len(odd))
