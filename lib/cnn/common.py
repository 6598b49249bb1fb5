"""Pieces shared by the CNN trainers: seeding and RNG checkpoints, class-balanced loss, bag sampling and padding,
LR schedule, clinical standardisation and patient scoring."""
from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from lib.data.dataset import Dataset
from lib.features.tables import clinical_table


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict:
    """Global RNG states (python, numpy, torch, CUDA)."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restore what ``rng_states`` saved."""
    random.setstate(tuple(states["python"]))
    kind, key, *rest = states["numpy"]  # the key comes back from a checkpoint as a tensor
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), *rest))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def fold_seed(seed: int, fold: int, *more: int) -> int:
    """A per-fold (and per-epoch...) integer seed derived from the run seed, stable across runs."""
    return int(np.random.SeedSequence([seed, fold, *more]).generate_state(1)[0])


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Balanced sample weights per class: N / (2 N_c) (the loss then matches balanced accuracy)."""
    labels = np.asarray(labels, dtype=int)
    return {c: len(labels) / (2.0 * max((labels == c).sum(), 1)) for c in (0, 1)}


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Class-weighted binary cross-entropy, normalised by the sum of weights."""
    losses = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return (losses * weights).sum() / weights.sum()


def sample_cells(n_cells: int, bag_size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of a random subset of ``bag_size`` cells without replacement (all cells, shuffled, when 0)."""
    size = n_cells if bag_size <= 0 else bag_size
    return rng.choice(n_cells, size=size, replace=False)


def pad_bags(bags: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack bags (n_i, ...) into a zero-padded (B, max n, ...) tensor and a (B, max n) bool mask."""
    longest = max(b.shape[0] for b in bags)
    x = bags[0].new_zeros((len(bags), longest, *bags[0].shape[1:]))
    mask = torch.zeros((len(bags), longest), dtype=torch.bool, device=bags[0].device)
    for i, bag in enumerate(bags):
        x[i, :bag.shape[0]] = bag
        mask[i, :bag.shape[0]] = True
    return x, mask


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int,
                    warmup: float = 0.05) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` of the steps, then cosine decay to zero."""
    warm = max(1, int(round(warmup * total_steps)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total_steps - warm))))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batches(ids: list[str], size: int) -> list[list[str]]:
    """Consecutive chunks of at most ``size`` IDs."""
    return [ids[i:i + size] for i in range(0, len(ids), max(1, size))]


@dataclass
class FoldResult:
    """What a fold produces: probabilities, per-cell weights, a training log and the state to save."""

    valid: pd.Series
    test: pd.Series
    cells: pd.DataFrame
    log: pd.DataFrame
    state: dict = field(default_factory=dict)


def cell_table(pid: str, paths: list[str], weights: np.ndarray, role: str) -> pd.DataFrame:
    """Per-cell weights of one scored patient."""
    return pd.DataFrame({"ID": pid, "role": role, "path": paths, "weight": np.asarray(weights, dtype=float)})


def clinical_stats(table: pd.DataFrame, train_ids) -> dict[str, pd.Series]:
    """Mean and std (0 -> 1) of the clinical columns over the training patients only."""
    train = table.loc[list(train_ids)]
    return {"mean": train.mean(), "std": train.std(ddof=0).replace(0.0, 1.0)}


def apply_clinical_stats(table: pd.DataFrame, stats: dict) -> pd.DataFrame:
    """Z-score clinical columns with given stats ({"mean", "std"}: Series or the dicts a checkpoint holds)."""
    mean, std = (pd.Series(stats[k]) for k in ("mean", "std"))
    return (table - mean) / std


def fit_clinical_stats(dataset: Dataset, train_ids) -> dict[str, dict]:
    """A fold's clinical standardisation, fitted on its training patients, in the form a checkpoint stores."""
    return {k: v.to_dict() for k, v in clinical_stats(clinical_table(dataset), train_ids).items()}


def clinical_inputs_of(dataset: Dataset, stats: dict | None) -> pd.DataFrame | None:
    """Every patient's clinical features standardised with a fold's stats (None without clinical fusion)."""
    return None if stats is None else apply_clinical_stats(clinical_table(dataset), stats)


def patient_rng(seed: int, fold: int, pid: str) -> np.random.Generator:
    """Generator of one patient's evaluation bags: depends on (seed, fold, ID) only, not on the scoring order."""
    return np.random.default_rng(fold_seed(seed, fold, zlib.crc32(pid.encode())))


def eval_subsets(n_cells: int, bag_size: int, n_bags: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Cell subsets scored at evaluation: every cell at once, or ``n_bags`` random bags of ``bag_size`` cells."""
    if n_bags <= 0 or bag_size <= 0 or n_cells <= bag_size:
        return [np.arange(n_cells)]
    return [np.sort(rng.choice(n_cells, size=bag_size, replace=False)) for _ in range(n_bags)]


def score_bag(head: torch.nn.Module, x: torch.Tensor, clinical: torch.Tensor | None, anomaly: torch.Tensor | None,
              subsets: list[np.ndarray]) -> tuple[float, np.ndarray]:
    """Mean P(tumoral) over views x cell subsets of one patient, and each cell's mean weight where it was scored.

    x: (views, n, dim); clinical: (c,) or None; anomaly: (views, n) or None.
    """
    n_views, n_cells = x.shape[:2]
    idx = torch.as_tensor(np.stack(subsets))  # (S, k)
    bags = x[:, idx.to(x.device)].flatten(0, 1)  # (views * S, k, dim)
    extra = {"anomaly": anomaly[:, idx.to(anomaly.device)].flatten(0, 1) if anomaly is not None else None,
             "clinical": clinical.expand(bags.shape[0], -1) if clinical is not None else None}
    out = head(bags, **extra)
    prob = float(torch.sigmoid(out["logit"].detach().float()).mean())
    weights = torch.zeros(n_cells, dtype=torch.float64)
    counts = torch.zeros(n_cells, dtype=torch.float64)
    flat_idx = idx.repeat(n_views, 1).flatten()
    weights.index_add_(0, flat_idx, out["weights"].detach().double().cpu().flatten())
    counts.index_add_(0, flat_idx, torch.ones_like(flat_idx, dtype=torch.float64))
    return prob, (weights / counts.clamp_min(1)).numpy()


def optimizer_step(loss: torch.Tensor, trainer, clip: float) -> float:
    """Backward, unscale, clip the gradient norm, step optimiser, scaler and LR schedule; returns the loss.

    ``trainer`` holds ``model``, ``optimizer``, ``scaler`` (a GradScaler, active for fp16 only) and ``scheduler``.
    """
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scaler.scale(loss).backward()
    trainer.scaler.unscale_(trainer.optimizer)
    torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), clip)
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.scheduler.step()
    return float(loss.item())


def save_training_state(trainer, epoch: int, history: list[dict], path) -> None:
    """Atomically write what resuming after ``epoch`` needs: model, optimiser, schedule, scaler, RNG states."""
    from lib.core.io import atomic_torch_save
    atomic_torch_save({"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                       "scheduler": trainer.scheduler.state_dict(), "scaler": trainer.scaler.state_dict(),
                       "epoch": epoch, "history": history, "rng": rng_states()}, path)


def load_training_state(trainer, path) -> tuple[int, list[dict]]:
    """Restore what ``save_training_state`` wrote; returns (next epoch, history so far)."""
    from lib.core.io import read_checkpoint
    state = read_checkpoint(path, map_location="cpu")  # plain data only; RNG states must stay CPU tensors
    for name in ("model", "optimizer", "scheduler", "scaler"):
        getattr(trainer, name).load_state_dict(state[name])
    set_rng_states(state["rng"])
    return state["epoch"] + 1, state["history"]
