"""Self-supervised cell encoder: SimCLR (NT-Xent on two augmented views of every cell), never reading labels.

Each step takes ``batch_size`` cells of the decoded-image cache, draws two independent views of each
(lib.cnn.augment.create_contrastive_transform), passes both through backbone + projection MLP and
minimises the normalised-temperature cross-entropy: each view must pick its partner among the
2 x batch - 1 other views. Only cells (pixels) are read: the cell rows come from the image cache index
(ID, split, path), and the split only decides which cells take part (``scope``: all cells, or the
training patients' only). The randomness of an epoch (cell order, augmentation) derives from (seed,
epoch) only and the global RNG is checkpointed each epoch, so a killed run resumed from its ``last.pt``
ends with the same weights as an uninterrupted one. On CPU with native bf16 (AMX/AVX512-BF16) the
forward/backward runs under bf16 autocast (``--amp auto``), the loss in fp32.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from lib.cnn.augment import apply_batch, create_contrastive_transform
from lib.cnn.common import (
    cosine_schedule,
    fold_seed,
    load_training_state,
    optimizer_step,
    save_training_state,
    seed_everything,
)
from lib.core.errors import DataError
from lib.core.progress import tqdm
from lib.data.images import ImageCache

log = logging.getLogger(__name__)
GRAD_CLIP = 3.0


@dataclass(frozen=True)
class PretrainSettings:
    """Hyper-parameters and runtime options of the pretraining (built from pretrain_cnn.py's options)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    temperature: float
    proj_dim: int
    hidden_dim: int
    scope: str
    seed: int
    progress: bool
    colour: str = "jitter"


class SimCLRNet(nn.Module):
    """Backbone (cells -> pooled features) and the projection MLP the contrastive loss is computed on."""

    def __init__(self, backbone: nn.Module, hidden_dim: int, proj_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = nn.Sequential(nn.Linear(backbone.num_features, hidden_dim), nn.BatchNorm1d(hidden_dim),
                                       nn.ReLU(inplace=True), nn.Linear(hidden_dim, proj_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR loss of two batches of projections whose rows i are the two views of cell i (fp32)."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    similarity = (z @ z.T) / temperature
    similarity.fill_diagonal_(float("-inf"))  # a view is not its own partner
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(similarity, partner)


def scope_rows(cache: ImageCache, scope: str) -> np.ndarray:
    """Image-cache rows of the cells that take part: every cell, or the training patients' cells."""
    index = cache.index if scope == "all" else cache.index[cache.index["split"] == "train"]
    return index["row"].to_numpy()


def epoch_batches(rows: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """This epoch's batches of cell rows (a seeded permutation; the last incomplete batch is dropped)."""
    order = np.random.default_rng(fold_seed(seed, 0, epoch)).permutation(rows)
    n = len(order) // batch_size
    return [np.sort(order[i * batch_size:(i + 1) * batch_size]) for i in range(n)]


@dataclass
class Pretrainer:
    """Model, optimiser and fixed inputs of one pretraining run."""

    model: SimCLRNet
    cache: ImageCache
    data_config: dict
    s: PretrainSettings
    device: torch.device
    dtype: torch.dtype | None

    def __post_init__(self) -> None:
        self.rows = scope_rows(self.cache, self.s.scope)
        self.steps_per_epoch = len(self.rows) // self.s.batch_size
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.s.lr, weight_decay=self.s.weight_decay)
        self.scheduler = cosine_schedule(self.optimizer, self.s.epochs * self.steps_per_epoch, warmup=0.05)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.transform = create_contrastive_transform(self.cache.array.shape[1], self.data_config, colour=self.s.colour)

    def views(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independently augmented views of the cells, channels_last on the device."""
        images = self.cache.array[rows]
        to = dict(device=self.device, memory_format=torch.channels_last)
        return apply_batch(self.transform, images).to(**to), apply_batch(self.transform, images).to(**to)

    def step(self, rows: np.ndarray) -> float:
        """One optimisation step on a batch of cells; returns the loss."""
        x1, x2 = self.views(rows)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            z = self.model(torch.cat([x1, x2]))
        return optimizer_step(nt_xent(*z.float().chunk(2), self.s.temperature), self, GRAD_CLIP)

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the cells; returns the log row (epoch, loss, lr, seconds, img/s)."""
        self.model.train()
        self.transform.set_random_seed(fold_seed(self.s.seed, 1, epoch))
        start, lr, losses = time.perf_counter(), self.optimizer.param_groups[0]["lr"], []
        batches = epoch_batches(self.rows, self.s.batch_size, self.s.seed, epoch)
        bar = tqdm(batches, desc=f"pretrain epoch {epoch}", unit="batch", leave=False, disable=not self.s.progress)
        for rows in bar:
            losses.append(self.step(rows))
            bar.set_postfix(loss=f"{losses[-1]:.3f}", img_s=f"{2 * len(rows) * len(losses) / (time.perf_counter() - start):.0f}",
                            refresh=False)
        seconds = time.perf_counter() - start
        return {"epoch": epoch, "loss": float(np.mean(losses)), "lr": lr, "seconds": seconds,
                "img_per_s": 2 * self.s.batch_size * len(batches) / seconds}


def load_checkpoint(trainer: Pretrainer, path: Path) -> tuple[int, list[dict]]:
    """Restore a checkpoint; returns (next epoch, history so far)."""
    first, history = load_training_state(trainer, path)
    log.info("resuming pretraining from %s after epoch %d", path, first - 1)
    return first, history


def after_epoch(epoch: int) -> None:
    """Hook called once an epoch's checkpoint is on disk (tests patch it to simulate a kill)."""


def pretrain(trainer: Pretrainer, last: Path) -> pd.DataFrame:
    """Train for the configured epochs, resuming from ``last`` when it exists; returns the per-epoch log."""
    s = trainer.s
    first, history = load_checkpoint(trainer, last) if last.exists() else (0, [])
    if not last.exists():
        seed_everything(s.seed)
    for epoch in tqdm(range(first, s.epochs), desc="pretrain", unit="epoch", initial=first, total=s.epochs,
                      disable=not s.progress):
        history.append(trainer.train_epoch(epoch))
        save_training_state(trainer, epoch, history, last)
        row = history[-1]
        log.info("epoch %d: NT-Xent %.4f, lr %.2e, %.0f s (%.0f img/s)", epoch, row["loss"], row["lr"],
                 row["seconds"], row["img_per_s"])
        after_epoch(epoch)
    return pd.DataFrame(history, columns=["epoch", "loss", "lr", "seconds", "img_per_s"])


def build_pretrainer(backbone: nn.Module, cache: ImageCache, data_config: dict, s: PretrainSettings,
                     device: torch.device, dtype: torch.dtype | None) -> Pretrainer:
    """A fresh projection head on the backbone (seeded), moved to the device."""
    torch.manual_seed(s.seed)
    model = SimCLRNet(backbone, s.hidden_dim, s.proj_dim).to(device, memory_format=torch.channels_last)
    return Pretrainer(model, cache, data_config, s, device, dtype)


def encoder_record_path(weights: Path) -> Path:
    """The JSON written beside a pretrained encoder's weights file."""
    return Path(weights).with_suffix(".json")


def encoder_record(weights: Path | None) -> dict | None:
    """The record of a pretrained encoder (None for other weights files and for 'none'/'lite0')."""
    if weights is None or not encoder_record_path(weights).exists():
        return None
    try:
        record = json.loads(encoder_record_path(weights).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{encoder_record_path(weights)}: unreadable encoder record ({exc})") from None
    return record if isinstance(record, dict) and record.get("objective") else None
