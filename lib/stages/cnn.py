"""The CNN stage: options, input checks (before any work), the per-fold fit/predict of both regimes, outputs.

Run directory ``runs/<experiment>/``: config.yaml and code version (lib.core.runs), ``folds/fold_<k>.csv``
(lib.stages.cv), ``fold_<k>/`` with ``head.pt`` (embed: head state dict + fitted preprocessing) or ``model.pt``
(finetune: full model; ``last.pt`` while training), ``log.csv`` and ``cells.csv`` of that fold; at the top
``log.csv`` (fold, epoch, train_loss, lr, seconds), ``oof.csv``, ``test.csv``, ``cells.csv`` (ID, split,
path, weight: OOF patients from the fold that held them out, test patients averaged over folds),
``metrics.json`` and ``timings.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import yaml

from lib.cnn import embed_mil, finetune
from lib.cnn.augment import MAX_TTA, STRENGTHS
from lib.cnn.common import FoldResult
from lib.cnn.device import autocast_dtype, resolve_device
from lib.cnn.pretrain import encoder_record, encoder_record_path
from lib.cnn.embedding import EmbedJob, EmbedSpec, code_tag, compute_embeddings, precision_name
from lib.cnn.settings import clinical_fusion_arg, clinical_inputs, finetune_settings, head_settings
from lib.core.errors import DataError
from lib.core.io import atomic_torch_save, atomic_write_csv, atomic_write_json
from lib.data.dataset import Dataset
from lib.data.images import load_image_cache, read_image
from lib.models import HEAD_NAMES, create_head
from lib.models.backbones import (build_backbone, embed_data_config, frozen_modules, input_side, resolve_weights,
                                  weights_tag)
from lib.stages.context import Stage
from lib.stages.cv import cross_validate

log = logging.getLogger(__name__)
REGIMES = ("embed", "finetune")
FOLD_MODEL = {"embed": "head.pt", "finetune": "model.pt"}  # each fold's saved model, by regime (predict.py reads it)


# ----------------------------------------------------------------------------- options
def _mapping(text: str) -> dict:
    """A YAML/JSON mapping given on the command line, e.g. '{hidden_dim: 64, dropout: 0.25}'."""
    try:
        value = yaml.safe_load(text) if isinstance(text, str) else text
    except yaml.YAMLError as exc:
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise argparse.ArgumentTypeError(f"not valid YAML ({problem}): {text!r}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping like '{{hidden_dim: 64}}', got {text!r}")
    return value


def input_size_arg(text: str) -> str | int:
    """'crop' (native pixels), 'model' (the backbone's data config) or a side in pixels."""
    if text in ("crop", "model"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected crop, model or an integer, got {text!r}") from None


def add_cnn_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of train_cnn.py (YAML keys are the option names with '_' for '-')."""
    a = parser.add_argument
    a("--regime", choices=REGIMES, default="embed",
      help="embed: frozen backbone + cached embeddings; finetune: end to end")
    a("--backbone", default="tf_efficientnet_lite0", help="timm model name")
    a("--weights", default="lite0", help="backbone weights: a local file, 'lite0' (offline ImageNet Lite0) or 'none'")
    a("--crop", type=int, default=112, help="centre crop of the cell images, in pixels")
    a("--input-size", type=input_size_arg, default="crop",
      help="network input side: crop (no resizing), model (the backbone's data config) or pixels")
    a("--aug", choices=STRENGTHS, default="light", help="train augmentation preset")
    a("--views", type=int, default=2, help="embed: augmented views per training cell (besides v0 and TTA views)")
    a("--tta", type=int, default=1, help=f"dihedral test-time views besides the identity (0..{MAX_TTA})")
    a("--head", choices=HEAD_NAMES, default="attention", help="MIL pooling head")
    a("--head-args", type=_mapping, default={}, help="head options as a YAML mapping, e.g. '{hidden_dim: 64}'")
    a("--bag-size", type=int, default=16, help="cells sampled per training bag (<= smallest bag); 0 = all cells")
    a("--epochs", type=int, default=40)
    a("--lr", type=float, default=1e-3, help="learning rate of the head")
    a("--backbone-lr", type=float, default=1e-4, help="finetune: learning rate of the backbone")
    a("--freeze-blocks", type=int, default=0,
      help="finetune: freeze the backbone's first N blocks of timm's coarse groups (1 = the stem, 2 = stem + "
           "first stage, ...): no gradients, BatchNorm statistics kept as loaded")
    a("--feature-norm", choices=("none", "batchnorm"), default="none",
      help="finetune: standardise the per-cell features before the head (BatchNorm1d over the step's cells)")
    a("--weight-decay", type=float, default=1e-2)
    a("--batch-patients", type=int, default=8, help="bags per optimisation step")
    a("--eval-bags", type=int, default=0,
      help="score a patient as the mean over this many random bags of --bag-size cells (0 = all cells at once); "
           "keeps max/top-k/CHOWDER scores on the bag size they were trained on")
    a("--pca", type=int, default=0, help="embed: PCA components of the standardised embeddings (0 = off)")
    a("--no-clinical-fusion", dest="clinical_fusion", action="store_const", const=False,
      help="images only (the default)")
    a("--clinical-fusion", nargs="?", const=True, type=clinical_fusion_arg, default=False, metavar="concat|gate",
      help="use the clinical features (standardised on the training folds): concat (the flag alone) feeds them "
           "to the head; gate mixes an image expert and a clinical expert by a gate on the clinical values")
    a("--folds", type=int, nargs="+", default=None, help="run only these folds (default all)")
    a("--device", default="auto", help="auto, cpu or cuda[:N]")
    a("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
      help="autocast: auto = bf16 on CUDA (fp16 if unsupported), and on CPUs with native bf16 (AMX/AVX512-BF16) "
           "for inference and finetune training; fp32 elsewhere")
    a("--workers", type=int, default=0, help="finetune: data-loading worker processes")
    a("--embed-batch", type=int, default=128, help="images per inference batch")
    a("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bars")
    parser.set_defaults(stage="cnn")
    return parser


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
    _check_ranges(args)
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


def _check_ranges(args: argparse.Namespace) -> None:
    """Numeric options within their ranges."""
    problems = [(args.crop < 8, f"--crop {args.crop} must be >= 8"),
                (not 0 <= args.tta <= MAX_TTA, f"--tta {args.tta} must be in 0..{MAX_TTA}"),
                (args.views < 0, f"--views {args.views} must be >= 0"),
                (args.bag_size < 0, f"--bag-size {args.bag_size} must be >= 0 (0 = all cells)"),
                (args.epochs < 1, f"--epochs {args.epochs} must be >= 1"),
                (args.freeze_blocks < 0, f"--freeze-blocks {args.freeze_blocks} must be >= 0"),
                (args.batch_patients < 1, f"--batch-patients {args.batch_patients} must be >= 1"),
                (args.pca < 0, f"--pca {args.pca} must be >= 0"),
                (args.eval_bags < 0, f"--eval-bags {args.eval_bags} must be >= 0"),
                (args.embed_batch < 1, f"--embed-batch {args.embed_batch} must be >= 1"),
                (any(not 0 <= k < args.n_folds for k in args.folds or []),
                 f"--folds {args.folds}: folds are 0..{args.n_folds - 1}")]
    for bad, message in problems:
        if bad:
            raise DataError(message)


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
    logs = [pd.read_csv(d / "log.csv") for d in dirs if (d / "log.csv").exists()]
    if logs:
        atomic_write_csv(pd.concat(logs, ignore_index=True), Path(run_dir) / "log.csv")
    if all((d / "cells.csv").exists() for d in dirs):
        cells = pd.concat([pd.read_csv(d / "cells.csv", dtype={"ID": str}) for d in dirs], ignore_index=True)
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
        result = embed_mil.train_fold(emb, stage.dataset, settings, train, valid, test, fold)
        save_fold(stage.run_dir, fold, result, FOLD_MODEL["embed"])
        return result.valid, result.test
    return fit_predict


def finetune_fit_predict(stage: Stage, setup: Setup, timings: dict):
    """The per-fold end-to-end training of lib.cnn.finetune."""
    args = stage.args
    settings = finetune_settings(args)
    cache = load_image_cache(stage.dataset, args.crop, args.cache_dir, progress=args.progress)

    def fit_predict(train, valid, test, fold):
        result = finetune.train_fold(lambda: setup.fresh_backbone(args), cache, setup.data_config, stage.dataset,
                                     settings, setup.device, train, valid, test, fold, fold_dir(stage.run_dir, fold))
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
        return json.loads(metrics_path.read_text())
    return {"folds_done": sorted(int(k) for k in oof["fold"].unique())}
