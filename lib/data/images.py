"""Image decoding and the decoded-image cache (a uint8 memmap per dataset and crop size).

Decoding a 224x224 JPEG costs more than reading a cached crop, and every later epoch and script
reads the same cells, so the first use decodes each image once into
``cache/<dataset>_c<crop>.u8`` (N x crop x crop x 3, RGB) with an index CSV beside it.
"""
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from lib.core.progress import tqdm

from lib.data.dataset import Dataset
from lib.core.errors import DataError
from lib.core.io import atomic_write_csv
from lib.core.paths import CACHE_DIR

log = logging.getLogger(__name__)


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file into an RGB uint8 array; a file that fails to decode is an error."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise DataError(f"{path}: cannot decode image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def center_crop(img: np.ndarray, size: int | None) -> np.ndarray:
    """Central ``size`` x ``size`` crop (None keeps the image)."""
    if size is None:
        return img
    h, w = img.shape[:2]
    if size > min(h, w):
        raise DataError(f"crop {size} is larger than the {h}x{w} images")
    top, left = (h - size) // 2, (w - size) // 2
    return img[top:top + size, left:left + size]


def image_index(dataset: Dataset) -> pd.DataFrame:
    """One row per image: ID, split, path and its row number in a cache."""
    rows = [(pid, split, str(path)) for pid, split in dataset.patients["split"].items()
            for path in dataset.images[pid]]
    table = pd.DataFrame(rows, columns=["ID", "split", "path"])
    return table.assign(row=np.arange(len(table)))


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
    index = image_index(dataset)
    if not index_path.exists():
        _build(index, crop, array_path, workers, progress)
        atomic_write_csv(index, index_path)
    elif not _same_cells(pd.read_csv(index_path, dtype={"ID": str}), index):
        raise DataError(f"{index_path}: cache does not match the images of {dataset.root}; delete it")
    array = np.memmap(array_path, dtype=np.uint8, mode="r", shape=(len(index), crop, crop, 3))
    return ImageCache(array=array, index=index)


def _same_cells(saved: pd.DataFrame, index: pd.DataFrame) -> bool:
    """Same cells in the same rows: patient ID and file name, not the directory (a moved data dir matches)."""
    def keys(table: pd.DataFrame) -> list[tuple[str, str]]:
        return list(zip(table["ID"].astype(str), (Path(p).name for p in table["path"])))
    return keys(saved) == keys(index)


def _build(index: pd.DataFrame, crop: int, array_path: Path, workers: int, progress: bool) -> None:
    """Decode every image into a temporary memmap, then rename it into place."""
    array_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = array_path.with_suffix(".u8.tmp")
    out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(len(index), crop, crop, 3))

    def load(row: int) -> None:
        out[row] = center_crop(read_image(index["path"].iat[row]), crop)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(load, range(len(index)))
        for _ in tqdm(jobs, total=len(index), desc=f"decode -> cache (crop {crop})", disable=not progress):
            pass
    out.flush()
    del out
    tmp.replace(array_path)
    log.info("wrote decoded cache %s", array_path)
