"""Finetune regime: a timm backbone and a MIL head trained end to end on bags of cell images.

Each step takes ``batch_patients`` training patients; each contributes a random subset of
``bag_size`` cells under the train augmentation pipeline; all cells of the step go through the
backbone in one batch, then the head pools each patient's cells. The randomness of an epoch (patient
order, cell subsets, augmentation seeds) derives from (seed, fold, epoch) only, and the global torch
RNG is checkpointed, so a run killed after epoch e and resumed from ``fold_<k>/last.pt`` gives the same
model as an uninterrupted run. Scoring uses every cell of a patient under the dihedral TTA views and
averages probabilities and per-cell weights over the views. On CUDA: autocast (bf16, or fp16 with a
GradScaler) and channels_last.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from lib.cnn.augment import apply_batch, create_transform, dihedral, tta_views
from lib.cnn.common import (
    FoldResult,
    batches,
    cell_table,
    class_weights,
    clinical_inputs_of,
    cosine_schedule,
    eval_subsets,
    fit_clinical_stats,
    fold_seed,
    load_training_state,
    optimizer_step,
    pad_bags,
    patient_rng,
    sample_cells,
    save_training_state,
    score_bag,
    seed_everything,
    weighted_bce,
)
from lib.cnn.device import autocast_dtype, training_autocast_dtype
from lib.cnn.settings import FinetuneSettings, clinical_inputs
from lib.core.progress import tqdm
from lib.data.dataset import Dataset
from lib.data.images import ImageCache, patient_rows
from lib.models.backbones import freeze_blocks
from lib.models.heads import create_head

log = logging.getLogger(__name__)


GRAD_CLIP = 1.0  # max gradient norm of a step


class MILNet(nn.Module):
    """Backbone (cells -> features), an optional feature normalisation, then a MIL head (bag -> patient logit).

    ``feature_norm='batchnorm'`` standardises each feature over the cells of a step (running statistics at
    scoring), as the embed regime standardises its cached embeddings on the training cells: pooled CNN
    features vary far less across cells than their offsets differ across dimensions.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, feature_norm: str = "none") -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        if feature_norm == "batchnorm":
            self.neck = nn.BatchNorm1d(backbone.num_features, affine=False)  # the head's first layer is affine

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Per-cell features (float32), normalised when the net has a neck."""
        feats = self.backbone(images).float()
        return self.neck(feats) if hasattr(self, "neck") else feats

    def forward(self, images: torch.Tensor, sizes: list[int], clinical: torch.Tensor | None = None) -> dict:
        """images (sum(sizes), 3, h, w) of len(sizes) bags -> head outputs for the padded batch."""
        x, mask = pad_bags(list(torch.split(self.features(images), sizes)))
        return self.head(x, clinical=clinical, mask=mask)


class BagDataset(torch.utils.data.Dataset):
    """Items (pid, seed) -> a random augmented subset of the patient's cells (images reopened per worker)."""

    def __init__(self, cache: ImageCache, transform, bag_size: int, items: list[tuple[str, int]]) -> None:
        self.filename, self.shape = cache.array.filename, cache.array.shape
        self.rows = patient_rows(cache.index)
        self.transform, self.bag_size, self.items = transform, bag_size, items
        self._array = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        """Augmented (k, 3, h, w) cells of one patient, deterministic given the item's seed."""
        if self._array is None:
            self._array = np.memmap(self.filename, dtype=np.uint8, mode="r", shape=self.shape)
        pid, seed = self.items[i]
        rows = self.rows[pid]
        chosen = np.sort(rows[sample_cells(len(rows), self.bag_size, np.random.default_rng(seed))])
        self.transform.set_random_seed(seed)
        return apply_batch(self.transform, self._array[chosen]), pid


def collate_bags(items: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, list[int], list[str]]:
    """Concatenate bags into one image batch with their sizes and patient IDs."""
    return torch.cat([x for x, _ in items]), [x.shape[0] for x, _ in items], [pid for _, pid in items]


@dataclass
class Trainer:
    """Model, optimiser state and the fixed inputs of one fold."""

    model: MILNet
    cache: ImageCache
    data_config: dict
    labels: pd.Series
    clinical: pd.DataFrame | None
    s: FinetuneSettings
    device: torch.device
    fold: int

    def __post_init__(self) -> None:
        self.dtype = training_autocast_dtype(self.s.amp, self.device)
        self.eval_dtype = autocast_dtype(self.s.amp, self.device, training=False)
        trainable = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        groups = [{"params": [p for name, p in trainable if name.startswith("backbone.")], "lr": self.s.backbone_lr},
                  {"params": [p for name, p in trainable if not name.startswith("backbone.")], "lr": self.s.lr}]
        self.optimizer = torch.optim.AdamW(groups, weight_decay=self.s.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.train_tf = create_transform(True, self.s.crop, self.s.strength, self.data_config)
        self.eval_tf = create_transform(False, self.s.crop, self.s.strength, self.data_config)

    def clinical_of(self, pids: list[str]) -> torch.Tensor | None:
        """Standardised clinical rows of some patients (None without fusion)."""
        if self.clinical is None:
            return None
        return torch.tensor(self.clinical.loc[pids].to_numpy(), dtype=torch.float32, device=self.device)

    def loader(self, train_ids: list[str], epoch: int) -> DataLoader:
        """This epoch's bags: order, cell subsets and augmentation seeds from (seed, fold, epoch)."""
        rng = np.random.default_rng(fold_seed(self.s.seed, self.fold, epoch))
        order = list(rng.permutation(train_ids))
        items = [(pid, int(seed)) for pid, seed in zip(order, rng.integers(0, 2**31 - 1, size=len(order)))]
        dataset = BagDataset(self.cache, self.train_tf, self.s.bag_size, items)
        return DataLoader(dataset, batch_size=self.s.batch_patients, shuffle=False, num_workers=self.s.workers,
                          collate_fn=collate_bags, pin_memory=self.device.type == "cuda")

    def step(self, images: torch.Tensor, sizes: list[int], pids: list[str], weight_of: dict) -> float:
        """One optimisation step on a batch of bags; returns the loss."""
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        target = torch.tensor(self.labels.loc[pids].to_numpy(dtype=np.float32), device=self.device)
        weights = torch.tensor([weight_of[int(t)] for t in target.tolist()], device=self.device)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            out = self.model(images, sizes, self.clinical_of(pids))
        return optimizer_step(weighted_bce(out["logit"], target, weights), self, GRAD_CLIP)

    def train_epoch(self, train_ids: list[str], epoch: int, weight_of: dict) -> dict:
        """One pass over the training patients; returns the log row."""
        self.model.train()
        start, lr, losses = time.perf_counter(), self.optimizer.param_groups[-1]["lr"], []
        for images, sizes, pids in self.loader(train_ids, epoch):
            losses.append(self.step(images, sizes, pids, weight_of))
        return {"fold": self.fold, "epoch": epoch, "train_loss": float(np.mean(losses)), "lr": lr,
                "seconds": time.perf_counter() - start}

    @torch.inference_mode()
    def score_patient(self, pid: str) -> tuple[float, np.ndarray]:
        """P(tumoral) of a patient with all its cells under every TTA view, and per-cell weights (view mean)."""
        self.model.eval()
        images = self.cache.patient(pid)
        views = tta_views(self.s.n_tta)
        feats = [[] for _ in views]
        for start in range(0, len(images), self.s.eval_batch):
            x = apply_batch(self.eval_tf, images[start:start + self.s.eval_batch]).to(self.device)
            for i, k in enumerate(views):
                with torch.autocast(self.device.type, dtype=self.eval_dtype, enabled=self.eval_dtype is not None):
                    xk = dihedral(x, k).contiguous(memory_format=torch.channels_last)
                    feats[i].append(self.model.features(xk))
        bags = torch.stack([torch.cat(f) for f in feats])
        clinical = self.clinical_of([pid])
        subsets = eval_subsets(len(images), self.s.bag_size, self.s.eval_bags, patient_rng(self.s.seed, self.fold, pid))
        return score_bag(self.model.head, bags, clinical[0] if clinical is not None else None, None, subsets)

    def score(self, pids, role: str) -> tuple[pd.Series, pd.DataFrame]:
        """Probabilities and per-cell weights of a set of patients."""
        probs, tables = {}, []
        paths = self.cache.index.set_index("row")["path"]
        for pid in tqdm(list(pids), desc=f"fold {self.fold} score {role}", disable=not self.s.progress, leave=False):
            probs[pid], weights = self.score_patient(pid)
            tables.append(cell_table(pid, paths.loc[self.cache.rows(pid)].tolist(), weights, role))
        return pd.Series(probs, name="proba").rename_axis("ID"), pd.concat(tables, ignore_index=True)


# ----------------------------------------------------------------------------- checkpoints
def load_checkpoint(trainer: Trainer, path: Path) -> tuple[int, list[dict]]:
    """Restore a checkpoint; returns (next epoch, history so far)."""
    first, history = load_training_state(trainer, path)
    log.info("fold %d: resuming from %s after epoch %d", trainer.fold, path, first - 1)
    return first, history


def after_epoch(fold: int, epoch: int) -> None:
    """Hook called once an epoch's checkpoint is on disk (tests patch it to simulate a kill)."""


def fit(trainer: Trainer, train_ids: list[str], fold_dir: Path) -> pd.DataFrame:
    """Train for the configured epochs, resuming from ``fold_dir/last.pt`` when present."""
    s, last = trainer.s, fold_dir / "last.pt"
    trainer.scheduler = cosine_schedule(trainer.optimizer, s.epochs * len(batches(train_ids, s.batch_patients)))
    weight_of = class_weights(trainer.labels.loc[train_ids].to_numpy(dtype=int))
    first, history = load_checkpoint(trainer, last) if last.exists() else (0, [])
    for epoch in tqdm(range(first, s.epochs), desc=f"fold {trainer.fold} finetune", unit="epoch",
                      initial=first, total=s.epochs, disable=not s.progress):
        history.append(trainer.train_epoch(train_ids, epoch, weight_of))
        save_training_state(trainer, epoch, history, last)
        log.info("fold %d epoch %d: loss %.4f (%.1f s)", trainer.fold, epoch, history[-1]["train_loss"],
                 history[-1]["seconds"])
        after_epoch(trainer.fold, epoch)
    return pd.DataFrame(history, columns=["fold", "epoch", "train_loss", "lr", "seconds"])


def fold_model(backbone: nn.Module, s: FinetuneSettings, fold: int, device: torch.device) -> MILNet:
    """A fold's network: the backbone with its first blocks frozen as configured, and a fresh head."""
    frozen = freeze_blocks(backbone, s.freeze_blocks)
    if frozen:
        log.info("fold %d: %d backbone modules frozen (--freeze-blocks %d)", fold, len(frozen), s.freeze_blocks)
    return build_model(backbone, s).to(device, memory_format=torch.channels_last)


def train_fold(make_backbone, s: FinetuneSettings, *, cache: ImageCache, data_config: dict, dataset: Dataset,
               device: torch.device, train_ids, valid_ids, test_ids, fold: int, fold_dir: Path) -> FoldResult:
    """Finetune a fresh model on a fold's training patients (resuming if possible); score its valid/test patients."""
    seed_everything(fold_seed(s.seed, fold))
    model = fold_model(make_backbone(), s, fold, device)
    stats = fit_clinical_stats(dataset, train_ids) if s.clinical_fusion else None
    state = {"head_name": s.head, "head_args": s.head_args, "clinical_fusion": s.clinical_fusion}
    if stats is not None:
        state["clinical_stats"] = stats
    trainer = Trainer(model, cache, data_config, dataset.patients["LABEL"], clinical_inputs_of(dataset, stats), s,
                      device, fold)
    history = fit(trainer, sorted(train_ids), fold_dir)
    valid, valid_cells = trainer.score(valid_ids, "valid")
    test, test_cells = trainer.score(test_ids, "test")
    state["model"] = model.state_dict()
    return FoldResult(valid, test, pd.concat([valid_cells, test_cells], ignore_index=True), history, state)


def predict_fold(state: dict, backbone: nn.Module, s: FinetuneSettings, *, cache: ImageCache, data_config: dict,
                 dataset: Dataset, device: torch.device, pids, fold: int) -> tuple[pd.Series, pd.DataFrame]:
    """Probabilities and cell weights of new patients from a saved fold (model.pt), scored as at training."""
    model = fold_model(backbone, s, fold, device)
    model.load_state_dict(state["model"])
    trainer = Trainer(model, cache, data_config, dataset.patients["LABEL"],
                      clinical_inputs_of(dataset, state.get("clinical_stats")), s, device, fold)
    return trainer.score(list(pids), "predict")


def build_model(backbone: nn.Module, s: FinetuneSettings) -> MILNet:
    """Backbone + a fresh head sized to its features (clinical fusion adds the clinical features)."""
    clinical_dim, fusion = clinical_inputs(s.clinical_fusion)
    head = create_head(s.head, backbone.num_features, clinical_dim=clinical_dim, fusion=fusion, **s.head_args)
    return MILNet(backbone, head, s.feature_norm)
