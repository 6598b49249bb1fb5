"""Scoring patients of any data directory with the saved fold models of an ensemble's runs (no retraining).

Every run of the ensemble is re-applied fold by fold, exactly as it scored its own test patients, and
the folds are averaged as in its ``test.csv``:
- clinical runs (train_clinical.py): each fold's fitted model as plain numbers (``folds/model_<k>.json``) on the run's
  feature set computed for the new patients (morphometry measured on their cells);
- CNN runs of the embed regime (train_cnn.py): the run's frozen backbone embeds the new cells under the
  run's evaluation views (same weights, crop, input size, precision and transform code, or a one-line
  error), then each fold's head with its fitted preprocessing (``fold_<k>/head.pt``);
- CNN runs of the finetune regime: each fold's whole network (``fold_<k>/model.pt``: backbone, feature norm,
  head and clinical standardisation) on the new cells under the run's TTA views, as it scored its test
  patients (the initial weights file is not needed: the fold model holds every weight).
The fused score uses the ensemble's weights, method and threshold (rank_mean is anchored on the tuned
OOF predictions, as for the submission).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from lib.cnn import embed_mil, finetune
from lib.cnn.device import autocast_dtype, resolve_device
from lib.cnn.embedding import EmbedJob, EmbedSpec, code_tag, compute_embeddings, precision_name
from lib.cnn.settings import finetune_settings, head_settings
from lib.core.errors import DataError
from lib.core.io import read_checkpoint, read_json, read_table
from lib.core.runs import fold_test_table
from lib.data.dataset import Dataset
from lib.data.images import load_image_cache
from lib.fusion.fuse import FusionParams, fuse
from lib.fusion.runs import RunSet, read_run_config
from lib.models import clinical as estimator
from lib.models.backbones import build_backbone, embed_data_config, resolve_weights, weights_tag
from lib.stages.bagging import bagged_sources
from lib.stages.clinical import model_path, stage_features
from lib.stages.cnn import FOLD_MODEL, check_crop, fold_dir, mean_weights

log = logging.getLogger(__name__)


def n_folds_of(run_dir: Path) -> int:
    """Number of folds of a finished run (the fold columns of its test.csv)."""
    columns = read_table(Path(run_dir) / "test.csv", nrows=0).columns
    return sum(c.startswith("fold_") for c in columns)


def fold_table(per_fold: dict[int, pd.Series]) -> pd.DataFrame:
    """Per-fold probabilities and their mean as ``proba``, indexed by ID (a run's test.csv, lib.core.runs)."""
    return fold_test_table(per_fold).set_index("ID")


def predict_clinical(run_dir: Path, config: dict, dataset: Dataset, pids: list[str], cache_dir: Path,
                     progress: bool = False) -> pd.DataFrame:
    """The clinical run's fold models on the new patients' features (an encoder set's cells embedded by the same
    encoder, checked by its content tag)."""
    features, encoder = stage_features(dataset, config, cache_dir, progress)
    features = features.loc[pids]
    per_fold = {}
    for k in range(n_folds_of(run_dir)):
        params = read_json(model_path(run_dir, k))
        if encoder or "encoder" in params:
            _check_same(run_dir, "the encoder", params.get("encoder", {}).get("weights_tag"),
                        encoder.get("weights_tag"), f"the file {config.get('encoder')} changed since: re-run "
                        "train_clinical.py")
        per_fold[k] = estimator.proba_from_dict(params, features)
    return fold_table(per_fold)


def _load_heads(run_dir: Path) -> list[dict]:
    """Every fold's head.pt of an embed-regime run."""
    return [read_checkpoint(fold_dir(run_dir, k) / FOLD_MODEL["embed"]) for k in range(n_folds_of(run_dir))]


def _check_same(run_dir: Path, what: str, saved, now, fix: str) -> None:
    """One-line refusal when the run's recorded value differs from what predicting would use now."""
    if saved != now:
        raise DataError(f"{run_dir}: its embeddings used {what} {saved}, now {now}; {fix}")


def embed_job(run_dir: Path, config: dict, saved: dict, cache_dir: Path, progress: bool) -> EmbedJob:
    """The run's frozen backbone, checked to be the one (and used the way) it was trained with."""
    weights = resolve_weights(config["weights"], cache_dir)
    backbone = build_backbone(config["backbone"], weights, config["seed"])
    _check_same(run_dir, "weights", saved["weights_tag"], weights_tag(backbone),
                f"the weights file {weights} changed since: re-run train_cnn.py")
    _check_same(run_dir, "transform code", saved["code"], code_tag(), "the code changed since: re-run train_cnn.py")
    device = resolve_device(config.get("device") or "auto")
    dtype = autocast_dtype(config["amp"], device, training=False)
    _check_same(run_dir, "precision", saved["precision"], precision_name(dtype), "predict on a machine like the run's")
    data_config = embed_data_config(backbone, config["crop"], config["input_size"])
    return EmbedJob(backbone, data_config, device, dtype, config["embed_batch"], progress)


def predict_embed(run_dir: Path, config: dict, dataset: Dataset, pids: list[str], cache_dir: Path,
                  progress: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The embed run's fold heads on the new patients' embeddings; (probabilities, cell weights)."""
    states = _load_heads(run_dir)
    saved = states[0]["embedding"]
    spec = EmbedSpec(**{**saved, "dataset": dataset.name})
    emb = compute_embeddings(dataset, spec, embed_job(run_dir, config, saved, cache_dir, progress), cache_dir,
                             views=spec.eval_views)
    settings = head_settings(argparse.Namespace(**{**config, "progress": progress}))
    per_fold, cells = {}, []
    for k, state in enumerate(states):
        per_fold[k], fold_cells = embed_mil.predict_fold(state, emb, dataset, settings, pids, k)
        cells.append(fold_cells)
    return fold_table(per_fold), mean_weights(pd.concat(cells))


def predict_finetune(run_dir: Path, config: dict, dataset: Dataset, pids: list[str], cache_dir: Path,
                     progress: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The finetune run's fold networks on the new patients' cells; (probabilities, cell weights)."""
    settings = finetune_settings(argparse.Namespace(**{**config, "progress": progress}))
    device = resolve_device(config.get("device") or "auto")
    cache = load_image_cache(dataset, config["crop"], cache_dir, progress=progress)
    per_fold, cells = {}, []
    for k in range(n_folds_of(run_dir)):
        state = read_checkpoint(fold_dir(run_dir, k) / FOLD_MODEL["finetune"], map_location=device)
        backbone = build_backbone(config["backbone"], None, config["seed"])  # every weight comes from model.pt
        data_config = embed_data_config(backbone, config["crop"], config["input_size"])
        per_fold[k], fold_cells = finetune.predict_fold(state, backbone, settings, cache=cache, data_config=data_config,
                                                        dataset=dataset, device=device, pids=pids, fold=k)
        cells.append(fold_cells)
    return fold_table(per_fold), mean_weights(pd.concat(cells))


def run_kind(run_dir: Path, config: dict) -> str:
    """'clinical', 'embed' or 'finetune'; any other run is refused with one line."""
    if config.get("stage") == "clinical":
        return "clinical"
    if config.get("stage") == "cnn" and config.get("regime") in ("embed", "finetune"):
        return config["regime"]
    raise DataError(f"{run_dir}: predict.py scores clinical and CNN runs; this run is "
                    f"{config.get('stage')}/{config.get('regime')}")


def check_runs(paths: list[Path], configs: list[dict], dataset: Dataset) -> None:
    """Before any work: every run is of a kind predict.py scores, has its fold models, and fits the images."""
    for path, config in zip(paths, configs):
        sources = bagged_sources(config)
        if sources:
            check_runs(sources, [read_run_config(p) for p in sources], dataset)
            continue
        kind, n_folds = run_kind(Path(path), config), n_folds_of(path)
        models = [model_path(path, k) if kind == "clinical" else fold_dir(path, k) / FOLD_MODEL[kind]
                  for k in range(n_folds)]
        missing = [m for m in models if not m.exists()]
        if missing and missing[0].with_suffix(".pkl").exists():
            raise DataError(f"{missing[0].with_suffix('.pkl')}: a pickled fold model, which predict.py does not load "
                            f"(unpickling can run code); re-run train_clinical.py to save it as {missing[0].name}")
        if missing:
            raise DataError(f"{missing[0]}: fold model not found (re-run the stage that made {path})")
        if kind != "clinical":
            check_crop(config["crop"], dataset)
        elif config.get("encoder") and not Path(config["encoder"]).is_file():
            raise DataError(f"{config['encoder']}: the encoder of run {path} is not there (its pooled cells are "
                            "features of that run)")


def predict_bagged(sources: list[Path], dataset: Dataset, pids: list[str], cache_dir: Path,
                   progress: bool) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """A fold-seed-bagged run: each seed's run scores the patients, the seeds are averaged (as its test.csv)."""
    tables, cells = [], []
    for source in sources:
        table, weights = predict_run(source, read_run_config(source), dataset, pids, cache_dir, progress)
        tables.append(table[[c for c in table.columns if c.startswith("fold_")]].add_prefix(f"{source.name}_"))
        cells += [weights] if weights is not None else []
    table = pd.concat(tables, axis=1)
    table["proba"] = table.mean(axis=1)
    return table, mean_weights(pd.concat(cells)) if cells else None


def predict_run(run_dir: Path, config: dict, dataset: Dataset, pids: list[str], cache_dir: Path,
                progress: bool) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """One run's per-fold and mean probabilities for the patients (and cell weights for CNN runs)."""
    if bagged_sources(config):
        return predict_bagged(bagged_sources(config), dataset, pids, cache_dir, progress)
    kind = run_kind(run_dir, config)
    if kind == "clinical":
        return predict_clinical(run_dir, config, dataset, pids, cache_dir, progress), None
    predict = predict_embed if kind == "embed" else predict_finetune
    return predict(run_dir, config, dataset, pids, cache_dir, progress)


def predict_patients(runs: RunSet, params: FusionParams, dataset: Dataset, pids: list[str], cache_dir: Path,
                     progress: bool = True) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Per-model probabilities and the fused score (column ``blend``) of the patients; and CNN cell weights."""
    check_runs(runs.paths, runs.configs, dataset)
    probas, cells = {}, {}
    for name, path, config in zip(runs.names, runs.paths, runs.configs):
        log.info("scoring %d patient(s) with run %s", len(pids), path)
        table, weights = predict_run(Path(path), config, dataset, pids, cache_dir, progress)
        probas[name] = table["proba"]
        if weights is not None:
            cells[name] = weights
    table = pd.DataFrame(probas).loc[pids]
    table["blend"] = fuse(table[runs.names], params, reference=runs.oof[runs.names])
    return table.rename_axis("ID"), cells
