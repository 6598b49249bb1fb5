"""The CNN stage: input checks (before any work; the options and their ranges are lib.stages.options), the per-fold fit/predict of both regimes, outputs.

Run directory ``runs/<experiment>/``: config.yaml and code version (lib.core.runs), ``folds/fold_<k>.csv``
(lib.stages.cv), ``fold_<k>/`` with ``head.pt`` (embed: head state dict + fitted preprocessing) or ``model.pt``
(finetune: full model; ``last.pt`` while training), ``log.csv`` and ``cells.csv`` of that fold; at the top
``log.csv`` (fold, epoch, train_loss, lr, seconds), ``oof.csv``, ``test.csv``, ``cells.csv`` (ID, split,
path, weight: OOF patients from the fold that held them out, test patients averaged over folds),
``metrics.json`` and ``timings.json``.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from lib.cnn import embed_mil, finetune
from lib.cnn.common import FoldResult
from lib.cnn.device import autocast_dtype, check_bf16_training_shapes, resolve_device, training_autocast_dtype
from lib.cnn.embedding import EmbedJob, EmbedSpec, code_tag, compute_embeddings, precision_name
from lib.cnn.pretrain import encoder_record, encoder_record_path
from lib.cnn.settings import clinical_inputs, finetune_settings, head_settings
from lib.core.errors import DataError
from lib.core.io import atomic_torch_save, atomic_write_csv, atomic_write_json, read_json, read_table
from lib.data.dataset import Dataset
from lib.data.images import load_image_cache, read_image
from lib.models.backbones import (
    build_backbone,
    embed_data_config,
    frozen_modules,
    input_side,
    resolve_weights,
    weights_tag,
)
from lib.models.heads import create_head
from lib.stages.context import Stage
from lib.stages.cv import cross_validate
from lib.stages.options import check_cnn_ranges

log = logging.getLogger(__name__)
FOLD_MODEL = {"embed": "head.pt", "finetune": "model.pt"}  # each fold's saved model, by regime (predict.py reads it)


# ----------------------------------------------------------------------------- checks
@dataclass
class Setup:
    """Resolved, validated inputs shared by the folds."""

    weights: Path | None
    device: torch.device
    data_config: dict
    backbone: torch.nn.Module  # built once, from the run seed: the embed regime's frozen encoder

    def fresh_backbone(self, args: argparse.Namespace) -> torch.nn.Module:
        """A newly built backbone (finetune: every fold starts from the same initial weights)."""
        return build_backbone(args.backbone, self.weights, args.seed)


def check_options(args: argparse.Namespace) -> Setup:
    """Validate everything that needs no data (DataError on the first problem); build the backbone once."""
    device = resolve_device(args.device)
    check_cnn_ranges(args)
    if args.regime == "finetune" and args.head == "anomaly":
        raise DataError("--head anomaly needs per-cell anomaly scores from frozen embeddings: use --regime embed")
    clinical_dim, fusion = clinical_inputs(args.clinical_fusion)
    create_head(args.head, 8, clinical_dim=clinical_dim, fusion=fusion, **(args.head_args or {}))
    if args.regime != "finetune":
        for option, value in (("freeze-blocks", args.freeze_blocks), ("feature-norm", args.feature_norm)):
            if value not in (0, "none"):
                raise DataError(f"--{option} {value} applies to --regime finetune (the embed regime freezes the "
                                f"backbone and standardises the embeddings)")
    weights = resolve_weights(args.weights, args.cache_dir)
    backbone = build_backbone(args.backbone, weights, args.seed)
    frozen_modules(backbone, args.freeze_blocks)  # range check
    config = embed_data_config(backbone, args.crop, args.input_size)
    check_encoder_record(weights, args.backbone, args.crop, input_side(config))
    if args.regime == "finetune":
        check_bf16_training_shapes(backbone, [input_side(config)], training_autocast_dtype(args.amp, device), device,
                                   args.backbone)
    return Setup(weights, device, config, backbone)


def check_encoder_record(weights: Path | None, backbone: str, crop: int, side: int) -> None:
    """Weights made by pretrain_cnn.py carry a JSON record: the encoder must be used as it was trained."""
    record = encoder_record(weights)
    if record is None:
        return
    expected = {"backbone": backbone, "crop": crop, "input_size": side}
    differ = {k: record.get(k) for k, v in expected.items() if record.get(k) != v}
    if differ:
        hint = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in differ.items())
        raise DataError(f"{encoder_record_path(weights)}: the encoder was trained with {differ}, not "
                        f"{ {k: expected[k] for k in differ} }; pass {hint}")


def check_crop(crop: int, dataset: Dataset) -> None:
    """The centre crop must fit in the images (the first image is read; the cache warns about odd sizes)."""
    first = next(iter(dataset.images.values()))[0]
    height, width = read_image(first).shape[:2]
    if crop > min(height, width):
        raise DataError(f"{first}: --crop {crop} is larger than the {height}x{width} images")


def check_data(args: argparse.Namespace, dataset: Dataset) -> None:
    """Data-dependent checks: crop within the images, bag size within the smallest training bag."""
    check_crop(args.crop, dataset)
    sizes = dataset.train["n_images"]
    if args.bag_size > sizes.min():
        raise DataError(f"--bag-size {args.bag_size} is larger than the smallest training bag "
                        f"({sizes.min()} cells, patient {sizes.idxmin()}); use --bag-size <= {sizes.min()} "
                        f"or 0 (all cells)")


# ----------------------------------------------------------------------------- outputs
def fold_dir(run_dir: Path, fold: int) -> Path:
    """Directory of one fold's checkpoint, log and cell weights."""
    return Path(run_dir) / f"fold_{fold}"


def save_fold(run_dir: Path, fold: int, result: FoldResult, checkpoint: str) -> None:
    """Write a fold's checkpoint, log.csv and cells.csv (then drop its resume checkpoint)."""
    where = fold_dir(run_dir, fold)
    where.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(result.state, where / checkpoint)
    atomic_write_csv(result.log, where / "log.csv")
    atomic_write_csv(result.cells.assign(fold=fold), where / "cells.csv")
    (where / "last.pt").unlink(missing_ok=True)


def write_outputs(run_dir: Path, n_folds: int) -> None:
    """Top-level log.csv (folds done so far) and, once every fold is done, cells.csv."""
    dirs = [fold_dir(run_dir, k) for k in range(n_folds)]
    logs = [read_table(d / "log.csv") for d in dirs if (d / "log.csv").exists()]
    if logs:
        atomic_write_csv(pd.concat(logs, ignore_index=True), Path(run_dir) / "log.csv")
    if all((d / "cells.csv").exists() for d in dirs):
        cells = pd.concat([read_table(d / "cells.csv") for d in dirs], ignore_index=True)
        atomic_write_csv(merge_cells(cells), Path(run_dir) / "cells.csv")


def mean_weights(cells: pd.DataFrame) -> pd.DataFrame:
    """Each cell's weight (ID, path, weight) averaged over the fold models that scored it."""
    return cells.groupby(["ID", "path"], sort=False, as_index=False)["weight"].mean()


def merge_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """OOF cell weights as they are (one fold each), test cell weights averaged over folds."""
    valid = cells[cells["role"] == "valid"].assign(split="train")
    test = mean_weights(cells[cells["role"] == "test"])
    merged = pd.concat([valid[["ID", "path", "weight", "split"]], test.assign(split="test")], ignore_index=True)
    return merged[["ID", "split", "path", "weight"]]


# ----------------------------------------------------------------------------- the two regimes
def embed_fit_predict(stage: Stage, setup: Setup, timings: dict):
    """Embed every cell (cache), then return the per-fold head training of lib.cnn.embed_mil."""
    args = stage.args
    dtype = autocast_dtype(args.amp, setup.device, training=False)
    spec = EmbedSpec(stage.dataset.name, args.backbone, weights_tag(setup.backbone), args.crop,
                     setup.data_config["input_size"][-1], args.aug, args.views, args.tta, precision_name(dtype),
                     code_tag())
    job = EmbedJob(setup.backbone, setup.data_config, setup.device, dtype, args.embed_batch, args.progress)
    emb = compute_embeddings(stage.dataset, spec, job, args.cache_dir)
    timings.update({"embed_seconds": emb.seconds, "embedded_images": emb.computed,
                    "embed_img_per_s": emb.computed / emb.seconds if emb.seconds else None})
    settings = head_settings(args)

    def fit_predict(train, valid, test, fold):
        result = embed_mil.train_fold(emb, stage.dataset, settings, train_ids=train, valid_ids=valid, test_ids=test,
                                      fold=fold)
        save_fold(stage.run_dir, fold, result, FOLD_MODEL["embed"])
        return result.valid, result.test
    return fit_predict


def finetune_fit_predict(stage: Stage, setup: Setup, timings: dict):
    """The per-fold end-to-end training of lib.cnn.finetune."""
    args = stage.args
    settings = finetune_settings(args)
    cache = load_image_cache(stage.dataset, args.crop, args.cache_dir, progress=args.progress)

    def fit_predict(train, valid, test, fold):
        result = finetune.train_fold(lambda: setup.fresh_backbone(args), settings, cache=cache,
                                     data_config=setup.data_config, dataset=stage.dataset, device=setup.device,
                                     train_ids=train, valid_ids=valid, test_ids=test, fold=fold,
                                     fold_dir=fold_dir(stage.run_dir, fold))
        save_fold(stage.run_dir, fold, result, FOLD_MODEL["finetune"])
        return result.valid, result.test
    return fit_predict


def run_cnn(stage: Stage, setup: Setup) -> dict:
    """Cross-validate the configured regime; write log.csv, cells.csv and timings.json; return the metrics."""
    args, timings, start = stage.args, {}, time.perf_counter()
    make = embed_fit_predict if args.regime == "embed" else finetune_fit_predict
    fit_predict, trained = make(stage, setup, timings), []

    def counted(*fold_args):
        trained.append(fold_args[-1])
        return fit_predict(*fold_args)
    train_start = time.perf_counter()
    oof, _ = cross_validate(stage, counted, folds_to_run=args.folds)
    timings.update({"train_seconds": time.perf_counter() - train_start, "total_seconds": time.perf_counter() - start,
                    "device": str(setup.device), "torch_threads": torch.get_num_threads(), "folds_trained": trained})
    n_folds = stage.folds["fold"].nunique()
    write_outputs(stage.run_dir, n_folds)
    timings_path = Path(stage.run_dir) / "timings.json"
    if trained or not timings_path.exists():  # a run only read back keeps the timings of the runs that trained it
        atomic_write_json(timings, timings_path)
    metrics_path = Path(stage.run_dir) / "metrics.json"
    if metrics_path.exists():
        return read_json(metrics_path)
    return {"folds_done": sorted(int(k) for k in oof["fold"].unique())}
