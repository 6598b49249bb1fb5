"""Settings of the two CNN regimes, built in one place from train_cnn.py's resolved options.

The defaults live in one place only: the options of ``lib.stages.options.add_cnn_args`` (a ``-c`` YAML preset
overrides them, the command line overrides both). These dataclasses carry no second set of defaults:
``head_settings`` / ``finetune_settings`` fill every field from the options. Light (no torch): the option
parsers take their choices from here.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from lib.data.clinical import CLINICAL_FEATURES

STRENGTHS = ("light", "heavy")  # augmentation presets (lib.cnn.augment)
MAX_TTA = 7  # the 7 non-identity dihedral symmetries of a square
COLOURS = ("jitter", "stain")  # colour augmentation of the SimCLR views (lib.cnn.augment)
OBJECTIVES = ("simclr", "dino")  # self-supervised objectives of pretrain_cnn.py (lib.cnn.pretrain, lib.cnn.dino)
SCOPES = ("all", "train")  # pretraining cells: train + test (transductive), or training patients only


@dataclass(frozen=True)
class MILSettings:
    """Hyper-parameters both regimes share (names as train_cnn.py's options)."""

    head: str
    head_args: dict
    bag_size: int
    epochs: int
    lr: float
    weight_decay: float
    batch_patients: int
    eval_bags: int
    clinical_fusion: bool | str  # False, True (concatenated to the head's input) or 'gate'
    seed: int
    progress: bool


@dataclass(frozen=True)
class HeadSettings(MILSettings):
    """Embed regime: head training on cached embeddings, plus an optional PCA of them."""

    pca: int


@dataclass(frozen=True)
class FinetuneSettings(MILSettings):
    """Finetune regime: end-to-end training of backbone and head."""

    backbone_lr: float
    freeze_blocks: int
    feature_norm: str
    crop: int
    strength: str
    n_tta: int
    amp: str
    workers: int
    eval_batch: int


def clinical_fusion_arg(text) -> bool | str:
    """--clinical-fusion value: true/concat (early fusion, the default of the flag), gate, or false/none."""
    value = str(text).strip().lower()
    if value in ("true", "concat", "yes", "1"):
        return True
    if value in ("false", "none", "no", "0", "off"):
        return False
    if value == "gate":
        return "gate"
    raise argparse.ArgumentTypeError(f"expected concat, gate or none (true/false), got {text!r}")


clinical_fusion_arg.accepts_bool = True  # YAML true/false are the historic spellings of concat/none


def clinical_inputs(clinical_fusion: bool | str) -> tuple[int, str]:
    """(clinical_dim, fusion) of a head for a --clinical-fusion value."""
    if not clinical_fusion:
        return 0, "concat"
    return len(CLINICAL_FEATURES), "gate" if clinical_fusion == "gate" else "concat"


def _shared(args: argparse.Namespace) -> dict:
    """The MILSettings fields, by option name."""
    values = {f.name: getattr(args, f.name) for f in fields(MILSettings)}
    return {**values, "head_args": dict(args.head_args or {})}


def head_settings(args: argparse.Namespace) -> HeadSettings:
    """Embed-regime settings from the options."""
    return HeadSettings(**_shared(args), pca=args.pca)


def finetune_settings(args: argparse.Namespace) -> FinetuneSettings:
    """Finetune-regime settings from the options (--aug is the strength, --tta the view count)."""
    return FinetuneSettings(**_shared(args), backbone_lr=args.backbone_lr, freeze_blocks=args.freeze_blocks,
                            feature_norm=args.feature_norm, crop=args.crop, strength=args.aug, n_tta=args.tta,
                            amp=args.amp, workers=args.workers, eval_batch=args.embed_batch)
