"""Self-supervised cell encoder: SimCLR (NT-Xent on two augmented views of every cell) or DINO (lib.cnn.dino:
self-distillation, multi-crop, no negatives), never reading labels.

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
from lib.cnn.dino import DinoNet
from lib.core.io import read_json
from lib.core.progress import tqdm
from lib.data.images import ImageCache
from lib.models.backbones import input_side
from lib.models.shipped import is_shipped, shipped_path

log = logging.getLogger(__name__)
GRAD_CLIP = 3.0
LOCAL_SCALE = (0.1, 0.4)  # DINO's local views: this fraction of the cell's area (the global ones: 0.35-1)


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
    objective: str = "simclr"  # or "dino" (lib.cnn.dino; ``temperature`` is then the student's)
    local_crops: int = 0  # DINO's small views per cell, beside the two global ones
    local_size: int = 0  # their side in pixels (0: half the input side)
    prototypes: int = 1024
    teacher_temperature: float = 0.04
    ema: float = 0.99  # the teacher's EMA momentum at the start (rises to 1)


class SimCLRNet(nn.Module):
    """Backbone (cells -> pooled features) and the projection MLP the contrastive loss is computed on."""

    def __init__(self, backbone: nn.Module, hidden_dim: int, proj_dim: int, temperature: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = nn.Sequential(nn.Linear(backbone.num_features, hidden_dim), nn.BatchNorm1d(hidden_dim),
                                       nn.ReLU(inplace=True), nn.Linear(hidden_dim, proj_dim))
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    def loss(self, views: list[torch.Tensor], autocast) -> torch.Tensor:
        """NT-Xent of the two views of a batch."""
        with autocast():
            z = self(torch.cat(views))
        return nt_xent(*z.float().chunk(2), self.temperature)

    def after_step(self, progress: float) -> None:
        """Nothing to do after an optimiser step (DINO moves its teacher here)."""

    def encoder(self) -> nn.Module:
        return self.backbone


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

    model: SimCLRNet | DinoNet
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
        crop = self.cache.array.shape[1]
        self.transform = create_contrastive_transform(crop, self.data_config, colour=self.s.colour)
        self.local_transform = create_contrastive_transform(crop, self.data_config, colour=self.s.colour,
                                                            side=local_side(self.s, self.data_config), scale=LOCAL_SCALE)

    def views(self, rows: np.ndarray) -> list[torch.Tensor]:
        """Two independently augmented global views of the cells, then the local ones; channels_last on the device."""
        images = self.cache.array[rows]
        to = dict(device=self.device, memory_format=torch.channels_last)
        transforms = [self.transform] * 2 + [self.local_transform] * self.s.local_crops
        return [apply_batch(t, images).to(**to) for t in transforms]

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def step(self, rows: np.ndarray) -> float:
        """One optimisation step on a batch of cells (then the objective's own update); returns the loss."""
        loss = optimizer_step(self.model.loss(self.views(rows), self.autocast), self, GRAD_CLIP)
        self.model.after_step(self.scheduler.last_epoch / (self.s.epochs * self.steps_per_epoch))
        return loss

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the cells; returns the log row (epoch, loss, lr, seconds, img/s)."""
        self.model.train()
        self.transform.set_random_seed(fold_seed(self.s.seed, 1, epoch))
        self.local_transform.set_random_seed(fold_seed(self.s.seed, 2, epoch))
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
        log.info("epoch %d: %s loss %.4f, lr %.2e, %.0f s (%.0f img/s)", epoch, s.objective, row["loss"], row["lr"],
                 row["seconds"], row["img_per_s"])
        after_epoch(epoch)
    return pd.DataFrame(history, columns=["epoch", "loss", "lr", "seconds", "img_per_s"])


def build_pretrainer(backbone: nn.Module, cache: ImageCache, data_config: dict, s: PretrainSettings,
                     device: torch.device, dtype: torch.dtype | None) -> Pretrainer:
    """A fresh projection head on the backbone (seeded), moved to the device."""
    torch.manual_seed(s.seed)
    if s.objective == "dino":
        model = DinoNet(backbone, s.hidden_dim, s.proj_dim, s.prototypes, temperature=s.temperature,
                        teacher_temperature=s.teacher_temperature, ema=s.ema)
    else:
        model = SimCLRNet(backbone, s.hidden_dim, s.proj_dim, s.temperature)
    return Pretrainer(model.to(device, memory_format=torch.channels_last), cache, data_config, s, device, dtype)


def local_side(s: PretrainSettings, data_config: dict) -> int:
    """The side of DINO's local views: as set, else half the network input."""
    return s.local_size or max(8, input_side(data_config) // 2)


def encoder_record_path(weights: Path) -> Path:
    """The JSON written beside a pretrained encoder's weights file."""
    return Path(weights).with_suffix(".json")


def encoder_record(weights: Path | None) -> dict | None:
    """The record of a pretrained encoder (None for other weights files and for 'none'/'lite0'); a shipped name
    (``lymph-ssl``) reads its card, after checking the weights' content hash."""
    if weights is not None and is_shipped(str(weights)):
        weights = shipped_path(str(weights))
    if weights is None or not encoder_record_path(weights).exists():
        return None
    record = read_json(encoder_record_path(weights))
    return record if isinstance(record, dict) and record.get("objective") else None


def total_epochs(record: dict) -> int:
    """An encoder's pretraining epochs in all (its record; a continued run counts its parent's too)."""
    return int(record.get("epochs_total", record["epochs"]))
