"""Embed regime: MIL heads trained on cached frozen-backbone embeddings, one fold at a time.

Inside a fold everything fitted from data sees the training patients only: the per-dimension
standardisation (and optional PCA) of the embeddings, the anomaly model (reactive training patients
only) and the clinical standardisation. Each epoch every training patient contributes one bag: a random
subset of ``bag_size`` cells, each shown under a random training view. There is no early stopping on
the validation fold: the epoch count is fixed. Scoring uses all cells under every evaluation view
(v0 + dihedral TTA) and averages the probabilities (and the per-cell weights) over views.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

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
    pad_bags,
    patient_rng,
    sample_cells,
    score_bag,
    seed_everything,
    weighted_bce,
)
from lib.cnn.embedding import Embeddings
from lib.cnn.settings import HeadSettings, clinical_inputs
from lib.core.progress import tqdm
from lib.data.dataset import Dataset
from lib.models.anomaly import AnomalyModel, anomaly_scores, fit_anomaly_model
from lib.models.heads import create_head
from lib.models.pca import WhitenedPCA

log = logging.getLogger(__name__)


@dataclass
class CellPrep:
    """Per-dimension standardisation then optional PCA, fitted on training cells."""

    mean: np.ndarray
    std: np.ndarray
    pca: WhitenedPCA | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Transform (..., dim) embeddings."""
        z = (x - self.mean) / self.std
        if self.pca is not None:
            shape = z.shape
            z = self.pca.transform(z.reshape(-1, shape[-1])).reshape(*shape[:-1], -1)
        return z.astype(np.float32)

    def to_dict(self) -> dict:
        """Plain arrays, for a head.pt (see ``from_dict``)."""
        return {"mean": self.mean, "std": self.std, **({"pca": self.pca.to_dict()} if self.pca is not None else {})}

    @classmethod
    def from_dict(cls, state: dict) -> CellPrep:
        """Rebuild from ``state()``."""
        pca = WhitenedPCA.from_dict(state["pca"]) if "pca" in state else None
        return cls(np.asarray(state["mean"]), np.asarray(state["std"]), pca)


def fit_prep(train_cells: np.ndarray, pca_dim: int, seed: int) -> CellPrep:
    """Fit the standardisation (and PCA to ``pca_dim`` components when > 0) on training cells."""
    mean, std = train_cells.mean(axis=0), train_cells.std(axis=0)
    prep = CellPrep(mean, np.where(std > 1e-6, std, 1.0))
    if pca_dim > 0:
        n_comp = min(pca_dim, train_cells.shape[0] - 1, train_cells.shape[1])
        prep.pca = WhitenedPCA.fit(prep(train_cells), n_comp, seed)
    return prep


@dataclass
class FoldData:
    """Tensors of one fold: per patient (views, cells, dim) features, anomaly (views, cells), clinical, label."""

    x: dict[str, torch.Tensor]
    anomaly: dict[str, torch.Tensor] | None
    clinical: dict[str, torch.Tensor] | None
    labels: pd.Series
    fitted: dict = field(default_factory=dict)


def reactive_train_cells(emb: Embeddings, dataset: Dataset, train_ids) -> np.ndarray:
    """v0 embeddings of the cells of REACTIVE training patients (the anomaly model's only data)."""
    reactive = [pid for pid in train_ids if dataset.patients.at[pid, "LABEL"] == 0]
    return np.concatenate([emb.stack(pid, ["v0"])[0] for pid in reactive])


def prepare_fold(emb: Embeddings, dataset: Dataset, s: HeadSettings, *, train_ids, score_ids, seed: int,
                 with_anomaly: bool) -> FoldData:
    """Fit the fold's preprocessing on training patients and build every patient's tensors."""
    raw = {pid: emb.stack(pid, emb.spec.train_views) for pid in train_ids}
    raw.update({pid: emb.stack(pid, emb.spec.eval_views) for pid in score_ids})
    fitted = {"prep": fit_prep(np.concatenate([raw[pid][0] for pid in train_ids]), s.pca, seed)}
    if with_anomaly:
        fitted["anomaly_model"] = fit_anomaly_model(reactive_train_cells(emb, dataset, train_ids), seed=seed)
    if s.clinical_fusion:
        fitted["clinical_stats"] = fit_clinical_stats(dataset, train_ids)
    return FoldData(*fitted_tensors(raw, fitted, dataset), dataset.patients["LABEL"], fitted)


def fitted_tensors(raw: dict[str, np.ndarray], fitted: dict, dataset: Dataset) -> tuple[dict, dict | None, dict | None]:
    """Per patient (views, cells, dim) features, anomaly scores and clinical vector, with a fold's fitted parts
    (``prep``, optional ``anomaly_model`` and ``clinical_stats``; a head.pt holds the same keys)."""
    x = {pid: torch.from_numpy(fitted["prep"](a)) for pid, a in raw.items()}
    anomaly = None
    if "anomaly_model" in fitted:
        model = fitted["anomaly_model"]
        anomaly = {pid: torch.from_numpy(anomaly_scores(model, a.reshape(-1, a.shape[-1])).reshape(a.shape[:2]))
                   for pid, a in raw.items()}
    table, clinical = clinical_inputs_of(dataset, fitted.get("clinical_stats")), None
    if table is not None:
        clinical = {pid: torch.tensor(table.loc[pid].to_numpy(), dtype=torch.float32) for pid in raw}
    return x, anomaly, clinical


def training_batch(data: FoldData, pids: list[str], bag_size: int, rng: np.random.Generator) -> dict:
    """Padded batch of bags: random cell subset, each cell under a random training view."""
    xs, anomalies = [], []
    for pid in pids:
        n_views, n_cells = data.x[pid].shape[:2]
        cells = torch.from_numpy(sample_cells(n_cells, bag_size, rng))
        views = torch.from_numpy(rng.integers(0, n_views, size=len(cells)))
        xs.append(data.x[pid][views, cells])
        if data.anomaly is not None:
            anomalies.append(data.anomaly[pid][views, cells])
    x, mask = pad_bags(xs)
    batch = {"x": x, "mask": mask, "anomaly": pad_bags(anomalies)[0] if anomalies else None}
    batch["clinical"] = torch.stack([data.clinical[p] for p in pids]) if data.clinical else None
    return batch


def train_head(head: torch.nn.Module, data: FoldData, train_ids: list[str], s: HeadSettings,
               rng: np.random.Generator, fold: int) -> pd.DataFrame:
    """Fixed-epoch AdamW training with class-balanced BCE; returns the per-epoch log."""
    y = data.labels.loc[train_ids].to_numpy(dtype=int)
    weight_of = class_weights(y)
    optimizer = torch.optim.AdamW(head.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    steps_per_epoch = len(batches(train_ids, s.batch_patients))
    scheduler = cosine_schedule(optimizer, s.epochs * steps_per_epoch)
    rows = []
    for epoch in tqdm(range(s.epochs), desc=f"fold {fold} head", unit="epoch", disable=not s.progress, leave=False):
        start, losses = time.perf_counter(), []
        head.train()
        lr = optimizer.param_groups[0]["lr"]
        for pids in batches(list(rng.permutation(train_ids)), s.batch_patients):
            batch = training_batch(data, pids, s.bag_size, rng)
            target = torch.tensor(data.labels.loc[pids].to_numpy(dtype=np.float32))
            weights = torch.tensor([weight_of[int(t)] for t in target], dtype=torch.float32)
            out = head(batch["x"], clinical=batch["clinical"], anomaly=batch["anomaly"], mask=batch["mask"])
            loss = weighted_bce(out["logit"], target, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        rows.append({"fold": fold, "epoch": epoch, "train_loss": float(np.mean(losses)), "lr": lr,
                     "seconds": time.perf_counter() - start})
    return pd.DataFrame(rows)


@torch.inference_mode()
def score_patient(head: torch.nn.Module, data: FoldData, pid: str, s: HeadSettings,
                  fold: int) -> tuple[float, np.ndarray]:
    """P(tumoral) averaged over evaluation views (and eval bags), and per-cell weights averaged likewise."""
    x = data.x[pid]
    subsets = eval_subsets(x.shape[1], s.bag_size, s.eval_bags, patient_rng(s.seed, fold, pid))
    clinical = data.clinical[pid] if data.clinical else None
    anomaly = data.anomaly[pid] if data.anomaly is not None else None
    return score_bag(head, x, clinical, anomaly, subsets)


def score_patients(head: torch.nn.Module, data: FoldData, emb: Embeddings, s: HeadSettings, *, pids, role: str,
                   fold: int) -> tuple[pd.Series, pd.DataFrame]:
    """Probabilities (Series by ID) and per-cell weight table of a set of patients."""
    head.eval()
    probs, tables = {}, []
    paths = emb.index.set_index("row")["path"]
    for pid in pids:
        probs[pid], weights = score_patient(head, data, pid, s, fold)
        tables.append(cell_table(pid, paths.loc[emb.rows(pid)].tolist(), weights, role))
    return pd.Series(probs, name="proba").rename_axis("ID"), pd.concat(tables, ignore_index=True)


def train_fold(emb: Embeddings, dataset: Dataset, s: HeadSettings, *, train_ids, valid_ids, test_ids,
               fold: int) -> FoldResult:
    """Fit a head on the training patients of a fold; score its validation and test patients."""
    seed = fold_seed(s.seed, fold)
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    train_ids = list(train_ids)
    data = prepare_fold(emb, dataset, s, train_ids=train_ids, score_ids=list(valid_ids) + list(test_ids), seed=seed,
                        with_anomaly=s.head == "anomaly")
    in_dim = next(iter(data.x.values())).shape[-1]
    clinical_dim, fusion = clinical_inputs(s.clinical_fusion)
    head = create_head(s.head, in_dim, clinical_dim=clinical_dim, fusion=fusion, **s.head_args)
    history = train_head(head, data, train_ids, s, rng, fold)
    valid, valid_cells = score_patients(head, data, emb, s, pids=valid_ids, role="valid", fold=fold)
    test, test_cells = score_patients(head, data, emb, s, pids=test_ids, role="test", fold=fold)
    log.info("fold %d: head %s trained %d epochs in %.1f s (last loss %.3f)", fold, s.head, s.epochs,
             history["seconds"].sum(), history["train_loss"].iloc[-1])
    state = {"head": head.state_dict(), "head_name": s.head, "head_args": s.head_args, "in_dim": in_dim,
             "clinical_fusion": s.clinical_fusion,
             "embedding": emb.spec.__dict__, **fitted_to_dict(data.fitted)}
    return FoldResult(valid, test, pd.concat([valid_cells, test_cells], ignore_index=True), history, state)


def fitted_to_dict(fitted: dict) -> dict:
    """A fold's fitted preprocessing as plain arrays and numbers (what a head.pt holds; see ``fitted_from_dict``)."""
    state = {k: v for k, v in fitted.items() if k == "clinical_stats"}
    state.update({k: fitted[k].to_dict() for k in ("prep", "anomaly_model") if k in fitted})
    return state


def fitted_from_dict(state: dict) -> dict:
    """The fitted preprocessing of a head.pt (the inverse of ``fitted_to_dict``)."""
    fitted = {k: v for k, v in state.items() if k == "clinical_stats"}
    fitted["prep"] = CellPrep.from_dict(state["prep"])
    if "anomaly_model" in state:
        fitted["anomaly_model"] = AnomalyModel.from_dict(state["anomaly_model"])
    return fitted


def head_from_state(state: dict) -> torch.nn.Module:
    """The trained head of a fold's head.pt, in eval mode."""
    clinical_dim, fusion = clinical_inputs(state.get("clinical_fusion", "clinical_stats" in state))
    head = create_head(state["head_name"], state["in_dim"], clinical_dim=clinical_dim, fusion=fusion, **state["head_args"])
    head.load_state_dict(state["head"])
    return head.eval()


def fold_data_from_state(state: dict, emb: Embeddings, dataset: Dataset, pids) -> FoldData:
    """Scoring tensors of some patients with a trained fold's fitted preprocessing (no refitting)."""
    raw = {pid: emb.stack(pid, emb.spec.eval_views) for pid in pids}
    fitted = fitted_from_dict(state)
    return FoldData(*fitted_tensors(raw, fitted, dataset), dataset.patients["LABEL"], fitted)


def predict_fold(state: dict, emb: Embeddings, dataset: Dataset, s: HeadSettings, pids,
                 fold: int) -> tuple[pd.Series, pd.DataFrame]:
    """Probabilities and cell weights of new patients from a saved fold (head.pt), exactly as at training."""
    pids = list(pids)
    data = fold_data_from_state(state, emb, dataset, pids)
    return score_patients(head_from_state(state), data, emb, s, pids=pids, role="predict", fold=fold)
