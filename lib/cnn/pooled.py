"""Patient features from a frozen cell encoder: every cell embedded once (the embedding cache, view v0), then
pooled into one row per patient.

Poolings (per patient, over its cells): ``mean`` (the embedding mean), ``quantiles`` (per-dimension 10/50/90th
percentiles beside the mean; ``encoder_table`` gives either to the clinical stage's ``clinical+encoder`` set),
and ``clusters`` (the proportions of the patient's cells in each of k clusters of the training patients' cells:
what a haematologist counts; k-means fitted on the training fold's cells only). The models that read these rows
are the clinical stage's (lib.stages.clinical: the block reduced by lib.models.projection inside each training
fold, then class-balanced logistic regression).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lib.cnn.device import autocast_dtype
from lib.cnn.embedding import EmbedJob, EmbedSpec, code_tag, compute_embeddings, precision_name
from lib.core.errors import DataError
from lib.data.dataset import Dataset
from lib.models.backbones import build_backbone, embed_data_config, resolve_weights, weights_tag

QUANTILES = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class CellEmbeddings:
    """v0 embeddings of every cell (rows of ``array``) with the patient ID of each row."""

    ids: np.ndarray
    array: np.ndarray
    weights_tag: str = ""  # the encoder's content tag (lib.models.backbones.weights_tag)

    def of(self, pids) -> dict[str, np.ndarray]:
        """Each patient's (n_cells, dim) block."""
        wanted = set(pids)
        return {pid: self.array[self.ids == pid] for pid in pd.unique(self.ids) if pid in wanted}


def encoder_embeddings(dataset: Dataset, backbone: str, weights: str, crop: int, input_size: str | int,
                       cache_dir: Path, *, progress: bool = True) -> CellEmbeddings:
    """Embed (or read from the cache) every cell of the dataset under the identity view."""
    model = build_backbone(backbone, resolve_weights(weights, cache_dir), seed=0)
    data_config = embed_data_config(model, crop, input_size)
    device = torch.device("cpu")
    dtype = autocast_dtype("auto", device, training=False)
    spec = EmbedSpec(dataset.name, backbone, weights_tag(model), crop, data_config["input_size"][-1], "light", 0, 0,
                     precision_name(dtype), code_tag())
    emb = compute_embeddings(dataset, spec, EmbedJob(model, data_config, device, dtype, 128, progress), cache_dir,
                             views=["v0"])
    return CellEmbeddings(emb.index["ID"].astype(str).to_numpy(), emb.arrays["v0"].astype(np.float32),
                          spec.weights_tag)


def encoder_table(dataset: Dataset, weights: Path, pooling: str, cache_dir: Path, prefix: str,
                  progress: bool = True) -> tuple[pd.DataFrame, str]:
    """The pooled cells of a pretrained encoder (``weights``: a pretrain_cnn.py run's encoder.pth, its backbone,
    crop and input size read from the encoder.json beside it), one row per patient with columns ``<prefix>*``;
    and the encoder's content tag."""
    from lib.cnn.pretrain import encoder_record
    record = encoder_record(Path(weights))
    if record is None:
        raise DataError(f"{weights}: no encoder.json beside it (a finished pretrain_cnn.py run's encoder.pth)")
    cells = encoder_embeddings(dataset, record["backbone"], str(weights), record["crop"], record["input_size"],
                               cache_dir, progress=progress)
    table = pooled_rows(cells, pooling)
    table.columns = [f"{prefix}{c}" for c in table.columns]
    return table, cells.weights_tag


def pooled_rows(cells: CellEmbeddings, pooling: str) -> pd.DataFrame:
    """One row per patient: the mean embedding, or mean + per-dimension quantiles (``pooling`` mean/quantiles)."""
    rows = {}
    for pid, block in cells.of(pd.unique(cells.ids)).items():
        parts = [block.mean(axis=0)]
        if pooling == "quantiles":
            parts += list(np.quantile(block, QUANTILES, axis=0))
        rows[pid] = np.concatenate(parts)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.columns = [f"e{i}" for i in range(table.shape[1])]
    return table


def cluster_proportions(cells: CellEmbeddings, train_ids, k: int, seed: int, pca_dim: int = 32) -> pd.DataFrame:
    """Per patient, the share of its cells in each of k k-means clusters fitted on the training patients' cells
    (standardised, whitened PCA to ``pca_dim``; fitted on training cells only)."""
    from sklearn.cluster import KMeans

    from lib.models.pca import WhitenedPCA
    blocks = cells.of(pd.unique(cells.ids))
    train = np.concatenate([blocks[p] for p in train_ids if p in blocks])
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    standardised = (train - mean) / std
    pca = WhitenedPCA.fit(standardised, min(pca_dim, train.shape[1]), seed)
    kmeans = KMeans(k, n_init=4, random_state=seed).fit(pca.transform(standardised))
    rows = {pid: np.bincount(kmeans.predict(pca.transform((b - mean) / std)), minlength=k) / len(b)
            for pid, b in blocks.items()}
    return pd.DataFrame.from_dict(rows, orient="index", columns=[f"cluster{c}" for c in range(k)])
