"""Frozen-backbone cell embeddings, computed once per view into an on-disk cache.

A *view* is one way of showing every cell to the backbone:
- ``v0``: the un-augmented centre crop (all train and test cells);
- ``d<k>``: the k-th dihedral symmetry of v0 (test-time augmentation, all cells; see lib.augment.dihedral);
- ``<strength>_v<i>`` (i >= 1): a train-pipeline augmentation drawn with the fixed seed i (train cells only).

Each view is stored as ``cache/emb/<dataset>/<backbone>_<weights8>_c<crop>[_in<side>]_<view>.npy``
(float16, one row per covered cell in image-cache order) with ``.csv`` beside it (ID, file) written
last; ``weights8`` is the first 8 hex digits of the SHA-1 of the backbone's tensors (see ``weights_tag``).
A cache whose index does not match the dataset's cells is recomputed.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lib.augment import apply_batch, create_transform, dihedral, native_data_config, tta_views
from lib.data import Dataset
from lib.errors import DataError
from lib.images import ImageCache, load_image_cache
from lib.io import atomic_write_bytes, atomic_write_csv
from lib.models import create_backbone, ensure_timm_lite0_weights, resolve_data_config
from lib.paths import CACHE_DIR

log = logging.getLogger(__name__)
WEIGHT_SHORTCUTS = ("lite0",)


# ----------------------------------------------------------------------------- backbone and device
def resolve_weights(weights: str | None, cache_dir: Path = CACHE_DIR) -> Path | None:
    """``None``/'none' -> random init, 'lite0' -> offline ImageNet Lite0 (converted once), else a file."""
    if weights in (None, "", "none"):
        return None
    if weights == "lite0":
        return ensure_timm_lite0_weights(Path(cache_dir) / "weights")
    path = Path(weights)
    if not path.is_file():
        raise DataError(f"{path}: weights file not found (give a file, 'lite0' or 'none')")
    return path


def weights_tag(model: torch.nn.Module) -> str:
    """Cache-key tag of a backbone's weights: SHA-1 prefix of its parameters and buffers (names, shapes, values).

    Hashing the tensors rather than the weights file keeps the key stable when the same weights are
    re-serialised (torch.save archives embed the temporary file name, so their bytes differ).
    """
    digest = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:8]


def build_backbone(name: str, weights: Path | None, seed: int) -> torch.nn.Module:
    """timm backbone (pooled features) with local weights, or seeded random init when weights is None."""
    torch.manual_seed(seed)
    return create_backbone(name, pretrained=False, weights=weights)


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available else cpu; 'cuda' without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DataError(f"--device {device}: CUDA is not available on this machine")
    if device != "cpu" and not device.startswith("cuda"):
        raise DataError(f"--device {device}: expected auto, cpu or cuda[:N]")
    return torch.device(device)


def cpu_has_bf16() -> bool:
    """True when the CPU has native bfloat16 matmul (AVX512-BF16 or AMX): bf16 inference is then ~3x faster."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def autocast_dtype(amp: str, device: torch.device, training: bool) -> torch.dtype | None:
    """Autocast dtype of ``--amp``; auto: CUDA bf16 (fp16 if unsupported), CPU bf16 for inference only (if native)."""
    if amp == "off":
        return None
    if amp in ("bf16", "fp16"):
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if (not training and cpu_has_bf16()) else None


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

    @property
    def stem(self) -> str:
        """Common file-name prefix of this spec's views."""
        size = "" if self.side == self.crop else f"_in{self.side}"
        return f"{self.backbone}_{self.weights_tag}_c{self.crop}{size}"

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
            self._rows.update({k: g.to_numpy() for k, g in self.index.groupby("ID")["row"]})
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


def _cell_keys(cells: pd.DataFrame) -> pd.DataFrame:
    """Location-independent identity of cells: patient ID and file name."""
    return pd.DataFrame({"ID": cells["ID"].to_numpy(), "file": [Path(p).name for p in cells["path"]]})


def _read_view(array_path: Path, index_path: Path, cells: pd.DataFrame) -> np.ndarray | None:
    """A cached view when its index matches these cells, else None."""
    if not index_path.exists() or not array_path.exists():
        return None
    saved = pd.read_csv(index_path, dtype={"ID": str, "file": str})
    if not saved.equals(_cell_keys(cells)):
        log.warning("%s: cached cells differ from the dataset, recomputing", index_path)
        return None
    return np.load(array_path)


def _write_view(array: np.ndarray, array_path: Path, index_path: Path, cells: pd.DataFrame) -> None:
    """Write a view atomically: array first, index last (its presence marks a complete view)."""
    import io
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(buffer.getvalue(), array_path)
    atomic_write_csv(_cell_keys(cells), index_path)


@torch.inference_mode()
def embed_images(model: torch.nn.Module, images: np.ndarray, rows: np.ndarray, to_tensor, batch_size: int,
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
        array, took = _load_or_embed(images, cells, view, spec, job, model, cache_dir)
        arrays[view] = _full_rows(array, cells, len(images.index))
        if took is not None:
            seconds, computed = seconds + took, computed + len(cells)
    if computed:
        log.info("embedded %d cell views in %.1f s (%.0f img/s)", computed, seconds, computed / max(seconds, 1e-9))
    return Embeddings(images.index, arrays, spec, seconds, computed)


def _load_or_embed(images: ImageCache, cells: pd.DataFrame, view: str, spec: EmbedSpec, job: EmbedJob,
                   model: torch.nn.Module, cache_dir: Path) -> tuple[np.ndarray, float | None]:
    """One view from the cache, or computed and cached (then also its duration)."""
    array_path, index_path = view_paths(spec, view, cache_dir)
    cached = _read_view(array_path, index_path, cells)
    if cached is not None:
        log.debug("embedding cache hit %s", array_path)
        return cached, None
    start = time.perf_counter()
    to_tensor = view_transform(view, spec, job.data_config)
    array = embed_images(model, images.array, cells["row"].to_numpy(), to_tensor, job.batch_size,
                         job.device, job.dtype, f"embed {view}", job.progress)
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


def embed_data_config(model: torch.nn.Module, crop: int, input_size: str | int) -> dict:
    """The backbone's data config (mean, std) with input size 'crop' (native pixels), 'model' or an int."""
    config = resolve_data_config(model)
    if input_size == "model":
        return config
    side = crop if input_size in ("crop", None, 0) else int(input_size)
    return native_data_config(config, side)
