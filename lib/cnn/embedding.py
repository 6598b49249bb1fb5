"""Frozen-backbone cell embeddings, computed once per view into an on-disk cache.

A *view* is one way of showing every cell to the backbone:
- ``v0``: the un-augmented centre crop (all train and test cells);
- ``d<k>``: the k-th dihedral symmetry of v0 (test-time augmentation, all cells; see lib.cnn.augment.dihedral);
- ``<strength>_v<i>`` (i >= 1): a train-pipeline augmentation drawn with the fixed seed i (train cells only).

Each view is stored as
``cache/emb/<dataset>/<backbone>_<weights8>_c<crop>[_in<side>]_<precision>_<code6>_<view>.npy``
(float16, one row per covered cell in image-cache order) with ``.csv`` beside it (ID, file, size and
content digest of each image: its identity, see lib.data.digests) written last. The name holds everything that changes the numbers: ``weights8`` is the first 8 hex digits of
the SHA-1 of the backbone's tensors (``lib.models.backbones.weights_tag``), ``precision`` the autocast
dtype of the forward pass (fp32, bf16, fp16), ``code6`` a hash of the transform code and of the
torch/timm/albumentations versions (``code_tag``). A cache whose index does not match the dataset's
cells (a cell added, removed or replaced) is recomputed, with a warning naming it; so is a damaged view (an
index that cannot be read, an array that cannot be loaded whole, e.g. cut short, or of another shape): never
half-trusted.
"""
from __future__ import annotations

import hashlib
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lib.cnn import augment
from lib.cnn.augment import apply_batch, create_transform, dihedral, tta_views
from lib.core.io import atomic_write_bytes, atomic_write_csv, build_lock, os_problem
from lib.core.paths import CACHE_DIR
from lib.core.progress import tqdm
from lib.data.dataset import Dataset
from lib.data.digests import remember
from lib.data.images import (
    ImageCache,
    cell_keys,
    legacy_index,
    load_image_cache,
    patient_rows,
    read_cell_index,
    same_cells,
)

log = logging.getLogger(__name__)
PRECISIONS = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def precision_name(dtype: torch.dtype | None) -> str:
    """Cache-key name of an autocast dtype (None: plain fp32)."""
    return PRECISIONS[dtype]


def code_tag() -> str:
    """Short hash of what turns a cell into a tensor: lib/cnn/augment.py and the torch/timm/albumentations versions."""
    import albumentations
    import timm
    digest = hashlib.sha1(Path(augment.__file__).read_bytes())
    digest.update(f"{torch.__version__}|{timm.__version__}|{albumentations.__version__}".encode())
    return digest.hexdigest()[:6]


# ----------------------------------------------------------------------------- views
@dataclass(frozen=True)
class EmbedSpec:
    """Everything that determines the content of an embedding cache."""

    dataset: str
    backbone: str
    weights_tag: str
    crop: int
    side: int
    strength: str
    n_views: int
    n_tta: int
    precision: str
    code: str

    @property
    def stem(self) -> str:
        """Common file-name prefix of this spec's views."""
        size = "" if self.side == self.crop else f"_in{self.side}"
        return f"{self.backbone}_{self.weights_tag}_c{self.crop}{size}_{self.precision}_{self.code}"

    @property
    def eval_views(self) -> list[str]:
        """Views of every cell used to score patients: v0 and the dihedral TTA views."""
        return ["v0"] + [f"d{k}" for k in tta_views(self.n_tta)[1:]]

    @property
    def train_views(self) -> list[str]:
        """Views a training bag draws from: the eval views plus the augmented ones."""
        return self.eval_views + [f"{self.strength}_v{i}" for i in range(1, self.n_views + 1)]


def view_transform(view: str, spec: EmbedSpec, data_config: dict):
    """Batch function uint8 (n, crop, crop, 3) -> normalised tensor for one view name."""
    if view == "v0" or view.startswith("d"):
        pipeline = create_transform(False, spec.crop, spec.strength, data_config)
        k = 0 if view == "v0" else int(view[1:])
        return lambda images: dihedral(apply_batch(pipeline, images), k)
    seed = int(view.rsplit("_v", 1)[1])
    pipeline = create_transform(True, spec.crop, spec.strength, data_config, seed=seed)
    return lambda images: apply_batch(pipeline, images)


# ----------------------------------------------------------------------------- embeddings
@dataclass
class Embeddings:
    """Cell embeddings per view; ``arrays[view]`` has one row per image-cache row (NaN where not covered)."""

    index: pd.DataFrame
    arrays: dict[str, np.ndarray]
    spec: EmbedSpec
    seconds: float = 0.0
    computed: int = 0
    _rows: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def dim(self) -> int:
        """Embedding size."""
        return next(iter(self.arrays.values())).shape[1]

    def rows(self, pid: str) -> np.ndarray:
        """Image-cache rows of one patient's cells."""
        if not self._rows:
            self._rows.update(patient_rows(self.index))
        return self._rows[pid]

    def stack(self, pid: str, views: list[str]) -> np.ndarray:
        """(len(views), n_cells, dim) float32 embeddings of one patient."""
        rows = self.rows(pid)
        return np.stack([self.arrays[v][rows] for v in views]).astype(np.float32)


def view_paths(spec: EmbedSpec, view: str, cache_dir: Path) -> tuple[Path, Path]:
    """Array and index paths of one view in the cache."""
    stem = Path(cache_dir) / "emb" / spec.dataset / f"{spec.stem}_{view}"
    return stem.with_suffix(".npy"), stem.with_suffix(".csv")


def covered_cells(index: pd.DataFrame, view: str) -> pd.DataFrame:
    """Cells a view covers: all cells for eval views, train cells only for augmented views."""
    if view == "v0" or view.startswith("d"):
        return index
    return index[index["split"] == "train"]


def _read_view(array_path: Path, index_path: Path, cells: pd.DataFrame, quiet: bool = False) -> np.ndarray | None:
    """A cached view when its index matches these cells and its array is whole, else None (with a warning naming
    the file unless ``quiet``)."""
    if not index_path.exists() or not array_path.exists():
        return None
    saved = read_cell_index(index_path)
    if isinstance(saved, str) or not same_cells(saved, cells):
        if not quiet:
            log.warning("%s: %s, recomputing", index_path, f"unreadable embedding index ({saved})"
                        if isinstance(saved, str) else "cached cells differ from the dataset (added, removed or "
                        "replaced, or an older version's cache)")
        return None
    array = _load_array(array_path, len(cells))
    if isinstance(array, str):
        if not quiet:
            log.warning("%s: %s, recomputing", array_path, array)
        return None
    if legacy_index(saved):  # an earlier version's index, still matching: keyed on the contents from now on
        remember(cell_keys(cells), index_path)
    return array


def _load_array(path: Path, n_cells: int) -> np.ndarray | str:
    """A view's embeddings (n_cells x dim, float16), or why the file is not that (a short text)."""
    try:
        array = np.load(path, allow_pickle=False)
    except OSError as exc:
        return f"unreadable embedding cache ({os_problem(exc)})"
    except (ValueError, EOFError) as exc:  # cut short ("Failed to read all data"), not an .npy file
        return f"damaged embedding cache ({(str(exc).split('. ') or ['unreadable'])[0][:120]})"
    if not isinstance(array, np.ndarray) or array.ndim != 2 or array.shape[0] != n_cells or array.dtype != np.float16:
        shape = getattr(array, "shape", "?")
        return f"damaged embedding cache ({getattr(array, 'dtype', '?')} {shape}, not {n_cells} float16 rows)"
    return array


def _write_view(array: np.ndarray, array_path: Path, index_path: Path, cells: pd.DataFrame) -> None:
    """Write a view atomically: array first, index last (its presence marks a complete view)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(buffer.getvalue(), array_path)
    atomic_write_csv(cell_keys(cells), index_path)


@torch.inference_mode()
def embed_images(model: torch.nn.Module, images: np.ndarray, rows: np.ndarray, to_tensor, *, batch_size: int,
                 device: torch.device, dtype: torch.dtype | None, desc: str, progress: bool = True) -> np.ndarray:
    """Embeddings (len(rows), dim) float16 of image-cache rows, in batches."""
    out = []
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        x = to_tensor(images[rows[start:start + batch_size]]).to(device, memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out.append(model(x).float().cpu().numpy().astype(np.float16))
    return np.concatenate(out) if out else np.zeros((0, getattr(model, "num_features", 0)), np.float16)


@dataclass
class EmbedJob:
    """What ``compute_embeddings`` needs besides the spec."""

    model: torch.nn.Module
    data_config: dict
    device: torch.device
    dtype: torch.dtype | None
    batch_size: int = 128
    progress: bool = True


def compute_embeddings(dataset: Dataset, spec: EmbedSpec, job: EmbedJob, cache_dir: Path = CACHE_DIR,
                       views: list[str] | None = None) -> Embeddings:
    """Load every requested view from the cache, computing (and caching) the missing ones."""
    images = load_image_cache(dataset, spec.crop, cache_dir, progress=job.progress)
    views = views or spec.train_views
    model = job.model.eval().to(job.device, memory_format=torch.channels_last)
    arrays, seconds, computed = {}, 0.0, 0
    for view in tqdm(views, desc="embedding views", unit="view", disable=not job.progress):
        cells = covered_cells(images.index, view)
        array, took = _load_or_embed(images, cells, view, spec=spec, job=job, model=model, cache_dir=cache_dir)
        arrays[view] = _full_rows(array, cells, len(images.index))
        if took is not None:
            seconds, computed = seconds + took, computed + len(cells)
    if computed:
        log.info("embedded %d cell views in %.1f s (%.0f img/s)", computed, seconds, computed / max(seconds, 1e-9))
    return Embeddings(images.index, arrays, spec, seconds, computed)


def _load_or_embed(images: ImageCache, cells: pd.DataFrame, view: str, *, spec: EmbedSpec, job: EmbedJob,
                   model: torch.nn.Module, cache_dir: Path) -> tuple[np.ndarray, float | None]:
    """One view from the cache, or computed and cached (then also its duration)."""
    array_path, index_path = view_paths(spec, view, cache_dir)
    cached = _read_view(array_path, index_path, cells)
    if cached is None:
        with build_lock(array_path):  # a second process on this cold cache waits, then reuses the first's view
            cached = _read_view(array_path, index_path, cells, quiet=True)
            if cached is None:
                return _embed_view(images, cells, view, spec=spec, job=job, model=model, array_path=array_path,
                                   index_path=index_path)
    log.debug("embedding cache hit %s", array_path)
    return cached, None


def _embed_view(images: ImageCache, cells: pd.DataFrame, view: str, *, spec: EmbedSpec, job: EmbedJob,
                model: torch.nn.Module, array_path: Path, index_path: Path) -> tuple[np.ndarray, float]:
    """Embed one view's cells and cache them; returns the array and the seconds it took."""
    start = time.perf_counter()
    to_tensor = view_transform(view, spec, job.data_config)
    array = embed_images(model, images.array, cells["row"].to_numpy(), to_tensor, batch_size=job.batch_size,
                         device=job.device, dtype=job.dtype, desc=f"embed {view}", progress=job.progress)
    took = time.perf_counter() - start
    _write_view(array, array_path, index_path, cells)
    log.info("view %s: %d cells in %.1f s (%.0f img/s) -> %s", view, len(cells), took,
             len(cells) / max(took, 1e-9), array_path)
    return array, took


def _full_rows(array: np.ndarray, cells: pd.DataFrame, n_rows: int) -> np.ndarray:
    """Scatter a view's rows into an (n_rows, dim) array, NaN where the view has no cell."""
    full = np.full((n_rows, array.shape[1]), np.nan, dtype=np.float16)
    full[cells["row"].to_numpy()] = array
    return full
