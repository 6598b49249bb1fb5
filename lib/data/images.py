"""Image decoding and the decoded-image cache (a uint8 memmap per dataset and crop size).

Decoding a 224x224 JPEG costs more than reading a cached crop, and every later epoch and script
reads the same cells, so the first use decodes each image once into
``cache/<dataset>_c<crop>.u8`` (N x crop x crop x 3, RGB) with an index CSV beside it.
The index records each cell's identity (ID, file name, size and the SHA-1 of the file's bytes, see
lib.data.digests) and is compared with the images on every read: when a cell was added, removed or replaced,
the cache is rebuilt (with a warning naming it), never silently reused; a copied or touched file is the same cell.
"""
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from lib.core.progress import tqdm

from lib.data.dataset import Dataset
from lib.data.digests import content_digests, digest_store, remember
from lib.core.errors import DataError
from lib.core.io import atomic_write_csv, build_lock, make_dirs, os_problem
from lib.core.paths import CACHE_DIR

log = logging.getLogger(__name__)


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file into an RGB uint8 array; a file that fails to decode is an error."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise DataError(f"{path}: cannot decode image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


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
    return all((old[k].to_numpy(np.int64) == now[k].to_numpy(np.int64)).all() if k in ("size", "mtime_ns") else
               (old[k].astype(str).to_numpy() == now[k].to_numpy()).all() for k in key)


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
    """Open the dataset's decoded cache, building it first if absent (the index is written last)."""
    array_path, index_path = cache_paths(dataset, crop, cache_dir)
    index = image_index(dataset, cache_dir, progress)
    if not _fresh(array_path, index_path, index):
        with build_lock(array_path):  # a second process on this cold cache waits, then reuses the first's
            if not _fresh(array_path, index_path, index):
                if index_path.exists():
                    log.warning("%s: cached cells differ from the images of %s (added, removed or replaced, "
                                "or cached by an older version), rebuilding the decoded cache", index_path, dataset.root)
                    index_path.unlink(missing_ok=True)  # the index is written last: without it the array is incomplete
                _build(index, crop, array_path, workers, progress)
                atomic_write_csv(index, index_path)
    array = np.memmap(array_path, dtype=np.uint8, mode="r", shape=(len(index), crop, crop, 3))
    return ImageCache(array=array, index=index)


def _fresh(array_path: Path, index_path: Path, index: pd.DataFrame) -> bool:
    """Whether the cache holds exactly these cells (array and index both there, the index matching)."""
    return index_path.exists() and array_path.exists() and _read_index(index_path, index)


def _read_index(index_path: Path, index: pd.DataFrame) -> bool:
    """Whether the saved index describes exactly these cells (a moved data dir still matches)."""
    try:
        saved = pd.read_csv(index_path, dtype=CELL_DTYPES)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return False
    if not same_cells(saved, index):
        return False
    if legacy_index(saved):  # an earlier version's index, still matching: keyed on the contents from now on
        remember(index, index_path)
    return True


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

        def load(row: int) -> None:
            path = index["path"].iat[row]
            img = read_image(path)
            shapes[row] = img.shape[:2]
            out[row] = center_crop(img, crop, path)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            jobs = pool.map(load, range(len(index)))
            for _ in tqdm(jobs, total=len(index), desc=f"decode -> cache (crop {crop})", disable=not progress):
                pass
        out.flush()
        del out
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
