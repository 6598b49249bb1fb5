"""The options of the stage scripts and their range checks, light (no torch, timm, albumentations, optuna or
scikit-learn): every script parses and checks its command line before it imports what does the work.

train_cnn.py: ``add_cnn_args`` / ``check_cnn_ranges``; pretrain_cnn.py: ``add_pretrain_args`` /
``check_pretrain_ranges``; train_clinical.py: ``add_clinical_args`` / ``check_clinical_options``.
YAML keys of a ``-c`` preset are the option names with '_' for '-'.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import yaml

from lib.cnn.settings import COLOURS, MAX_TTA, OBJECTIVES, SCOPES, STRENGTHS, clinical_fusion_arg
from lib.core.config import common_problems
from lib.core.errors import raise_first
from lib.features.tables import ENCODER_POOLINGS, ENCODER_SETS, FEATURE_SETS, uses_encoder
from lib.models.options import HEAD_NAMES, PENALTIES, parse_c
from lib.models.shipped import is_shipped, shipped_path

REGIMES = ("embed", "finetune")


def positive(value: float) -> bool:
    """A finite number > 0 (NaN and inf are not)."""
    return math.isfinite(value) and value > 0


def non_negative(value: float) -> bool:
    """A finite number >= 0."""
    return math.isfinite(value) and value >= 0


def mapping_arg(text: str) -> dict:
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
        side = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected crop, model or an integer, got {text!r}") from None
    if side < 8:
        raise argparse.ArgumentTypeError(f"an input side in pixels must be >= 8, got {text!r}")
    return side


def add_cnn_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of train_cnn.py (YAML keys are the option names with '_' for '-')."""
    a = parser.add_argument
    a("--regime", choices=REGIMES, default="embed",
      help="embed: frozen backbone + cached embeddings; finetune: end to end")
    a("--backbone", default="tf_efficientnet_lite0", help="timm model name")
    a("--weights", default="lite0", help="backbone weights: a local file, 'lite0' (offline ImageNet Lite0), 'lymph-ssl' "
                                          "(the shipped cell encoder, weights/) or 'none'")
    a("--crop", type=int, default=112, help="centre crop of the cell images, in pixels")
    a("--input-size", type=input_size_arg, default="crop",
      help="network input side: crop (no resizing), model (the backbone's data config) or pixels")
    a("--aug", choices=STRENGTHS, default="light", help="train augmentation preset")
    a("--views", type=int, default=2, help="embed: augmented views per training cell (besides v0 and TTA views)")
    a("--tta", type=int, default=1, help=f"dihedral test-time views besides the identity (0..{MAX_TTA})")
    a("--head", choices=HEAD_NAMES, default="attention", help="MIL pooling head")
    a("--head-args", type=mapping_arg, default={}, help="head options as a YAML mapping, e.g. '{hidden_dim: 64}'")
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


def check_cnn_ranges(args: argparse.Namespace) -> None:
    """train_cnn.py's numeric options within their ranges (DataError on the first problem)."""
    problems = [*common_problems(args), (args.crop < 8, f"--crop {args.crop} must be >= 8"),
                (not positive(args.lr), f"--lr {args.lr} must be a finite number > 0"),
                (not non_negative(args.backbone_lr), f"--backbone-lr {args.backbone_lr} must be a finite number >= 0"),
                (not non_negative(args.weight_decay), f"--weight-decay {args.weight_decay} must be a finite number >= 0"),
                (args.workers < 0, f"--workers {args.workers} must be >= 0"),
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
    raise_first(problems)


def add_pretrain_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of pretrain_cnn.py (YAML keys are the option names with '_' for '-')."""
    a = parser.add_argument
    a("--backbone", default="resnet10t", help="timm model name (dense convolutions train fastest under bf16)")
    a("--weights", default="none",
      help="initial weights: 'none' (from scratch), 'lite0', 'lymph-ssl' (continue the shipped encoder) or a local file")
    a("--crop", type=int, default=112, help="centre crop of the cell images, in pixels")
    a("--input-size", type=input_size_arg, default=64,
      help="network input side: crop (no resizing), model (the backbone's data config) or pixels")
    a("--scope", choices=SCOPES, default="all",
      help="all: every cell of train and test patients (transductive, no labels); train: training patients only")
    a("--epochs", type=int, default=30)
    a("--colour", choices=COLOURS, default=None,
      help="colour augmentation of the views: jitter (SimCLR's, the default) or stain (stain-matrix augmentation)")
    a("--batch-size", type=int, default=256, help="cells per step (2 views each)")
    a("--lr", type=float, default=2e-3)
    a("--weight-decay", type=float, default=1e-4)
    a("--objective", choices=OBJECTIVES, default="simclr",
      help="simclr (contrastive, needs large batches) or dino (self-distillation, no negatives, multi-crop)")
    a("--temperature", type=float, default=0.2, help="NT-Xent temperature (dino: the student's, e.g. 0.1)")
    a("--proj-dim", type=int, default=128, help="projection output size (dino: the head's bottleneck)")
    a("--hidden-dim", type=int, default=512, help="projection hidden size")
    a("--local-crops", type=int, default=0, help="dino: small views per cell beside the two global ones")
    a("--local-size", type=int, default=0, help="dino: side of the local views in pixels (0: half the input)")
    a("--prototypes", type=int, default=1024, help="dino: output prototypes of the head")
    a("--teacher-temperature", type=float, default=0.04, help="dino: the teacher's sharpening temperature")
    a("--ema", type=float, default=0.99, help="dino: the teacher's EMA momentum at the start (rises to 1)")
    a("--device", default="auto", help="auto, cpu or cuda[:N]")
    a("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
      help="autocast: auto = bf16 on CUDA (fp16 if unsupported) and on CPUs with native bf16, else fp32")
    a("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    parser.set_defaults(stage="pretrain")
    return parser


def check_pretrain_ranges(args: argparse.Namespace) -> None:
    """pretrain_cnn.py's numeric options within their ranges (DataError on the first problem)."""
    raise_first([*common_problems(args), (args.crop < 8, f"--crop {args.crop} must be >= 8"),
                 (args.epochs < 1, f"--epochs {args.epochs} must be >= 1"),
                 (args.batch_size < 2, f"--batch-size {args.batch_size} must be >= 2"),
                 (not positive(args.temperature), f"--temperature {args.temperature} must be a finite number > 0"),
                 (not positive(args.lr), f"--lr {args.lr} must be a finite number > 0"),
                 (not non_negative(args.weight_decay), f"--weight-decay {args.weight_decay} must be a finite number >= 0"),
                 (args.proj_dim < 1 or args.hidden_dim < 1, "--proj-dim and --hidden-dim must be >= 1"),
                 *dino_problems(args)])


def dino_problems(args: argparse.Namespace) -> list[tuple[bool, str]]:
    """The DINO options in range, and none of them given to SimCLR (which would ignore them)."""
    dino = args.objective == "dino"
    return [(args.local_crops < 0, f"--local-crops {args.local_crops} must be >= 0"),
            (not dino and args.local_crops > 0, "--local-crops needs --objective dino (SimCLR takes two views)"),
            (args.local_size != 0 and args.local_size < 8, f"--local-size {args.local_size} must be 0 or >= 8"),
            (args.prototypes < 2, f"--prototypes {args.prototypes} must be >= 2"),
            (not positive(args.teacher_temperature),
             f"--teacher-temperature {args.teacher_temperature} must be a finite number > 0"),
            (not (math.isfinite(args.ema) and 0 <= args.ema < 1), f"--ema {args.ema} must be in [0, 1)")]


def add_clinical_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of train_clinical.py."""
    parser.add_argument("--feature-set", default="clinical", choices=sorted(FEATURE_SETS),
                        help="patient features (see lib/features/tables.py)")
    parser.add_argument("--inner-folds", type=int, default=5, help="inner CV folds used to choose C")
    parser.add_argument("--C", type=parse_c, default=None,
                        help="inverse regularisation: a number, or 'cv' (default: inner CV per training fold)")
    parser.add_argument("--penalty", choices=sorted(PENALTIES), default=None, help="l1 (sparse) or l2 (default)")
    parser.add_argument("--encoder", type=Path, default=None,
                        help="for --feature-set clinical+encoder: lymph-ssl (the shipped encoder) or a pretrain_cnn.py "
                             "run's encoder.pth (frozen; "
                             "its cells embedded once, cached)")
    parser.add_argument("--encoder-pooling", choices=ENCODER_POOLINGS, default="quantiles",
                        help="per patient: the mean embedding, or mean + 10/50/90th percentiles (default)")
    parser.add_argument("--encoder-pca", type=int, default=8,
                        help="principal components of the pooled block, fitted inside each training fold")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="progress bars (embedding the cells of an encoder set)")
    parser.set_defaults(stage="clinical")
    return parser


def check_clinical_options(args) -> None:
    """Options of the clinical stage within their ranges, and the encoder files of an encoder feature set (before
    any run directory is created)."""
    raise_first([*common_problems(args), (args.inner_folds < 2, f"--inner-folds {args.inner_folds} must be >= 2"),
                 *encoder_problems(args)])


def encoder_problems(args) -> list[tuple[bool, str]]:
    """--encoder given exactly when the feature set reads it, its weights and encoder.json there, --encoder-pca >= 1."""
    encoder, wanted = args.encoder, uses_encoder(args.feature_set)
    problems = [(wanted and encoder is None,
                 f"--feature-set {args.feature_set} needs --encoder (a pretrain_cnn.py run's encoder.pth)"),
                (not wanted and encoder is not None, f"--encoder is read only by --feature-set "
                 f"{' / '.join(sorted(ENCODER_SETS))} (got --feature-set {args.feature_set})"),
                (args.encoder_pca < 1, f"--encoder-pca {args.encoder_pca} must be >= 1")]
    if wanted and encoder is not None and is_shipped(str(encoder)):
        shipped_path(str(encoder))  # its card and content hash (a one-line DataError when damaged)
    elif wanted and encoder is not None:
        encoder = Path(encoder)
        record = encoder.with_suffix(".json")
        problems += [(not encoder.is_file(), f"{encoder}: --encoder weights file not found"),
                     (encoder.is_file() and not record.is_file(),
                      f"{record}: missing (--encoder must be a finished pretrain_cnn.py run's encoder.pth)")]
    return problems
