"""The pretraining stage: a self-supervised cell encoder (lib.cnn.pretrain) learnt from a data directory's cells.

Run directory ``runs/<experiment>/``: config.yaml, code version and log.txt (lib.core.runs), ``last.pt``
(the resume checkpoint, rewritten after every epoch), ``log.csv`` (epoch, loss, lr, seconds, img_per_s),
``loss.png``, and when done ``encoder.pth`` (the backbone's state dict, timm keys: ``train_cnn.py
--weights runs/<experiment>/encoder.pth`` loads it in both regimes) with ``encoder.json`` beside it:
what produced it (cells fingerprint, backbone, crop, input size, epochs, objective, loss per epoch,
time, precision). Labels are never read: only the image cache's cells (ID, split, path, pixels).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import time
from pathlib import Path

import pandas as pd
import torch

from lib.cnn.device import check_bf16_training_shapes, resolve_device, training_autocast_dtype
from lib.cnn.embedding import precision_name
from lib.cnn.pretrain import (
    PretrainSettings,
    build_pretrainer,
    encoder_record,
    encoder_record_path,
    local_side,
    pretrain,
    total_epochs,
)
from lib.core.errors import DataError
from lib.core.io import atomic_torch_save, atomic_write_csv, atomic_write_json, read_json
from lib.core.plots import pyplot, save_figure
from lib.core.runs import code_version
from lib.data.dataset import Dataset
from lib.data.images import ImageCache, load_image_cache
from lib.models.backbones import build_backbone, embed_data_config, input_side, resolve_weights, weights_tag
from lib.stages.cnn import check_crop
from lib.stages.options import check_pretrain_ranges

log = logging.getLogger(__name__)
ENCODER = "encoder.pth"
OBJECTIVE_NAMES = {"simclr": "SimCLR (NT-Xent)", "dino": "DINO"}


def pretrain_settings(args: argparse.Namespace) -> PretrainSettings:
    """The pretraining settings from the options (the one place they are built)."""
    return PretrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                            temperature=args.temperature, proj_dim=args.proj_dim, hidden_dim=args.hidden_dim,
                            scope=args.scope, seed=args.seed, progress=args.progress,
                            colour=args.colour or "jitter", objective=args.objective, local_crops=args.local_crops,
                            local_size=args.local_size, prototypes=args.prototypes,
                            teacher_temperature=args.teacher_temperature, ema=args.ema)


def check_options(args: argparse.Namespace) -> tuple[torch.nn.Module, dict, torch.device]:
    """Validate everything that needs no data; return the initial backbone, its data config and the device."""
    check_pretrain_ranges(args)
    device = resolve_device(args.device)
    backbone = build_backbone(args.backbone, resolve_weights(args.weights, args.cache_dir), args.seed)
    data_config = embed_data_config(backbone, args.crop, args.input_size)
    sides = [input_side(data_config)]
    if args.objective == "dino" and args.local_crops:
        sides.append(local_side(pretrain_settings(args), data_config))
    check_bf16_training_shapes(backbone, sides, training_autocast_dtype(args.amp, device), device, args.backbone)
    return backbone, data_config, device


def check_data(args: argparse.Namespace, dataset: Dataset) -> None:
    """Crop within the images; enough cells in the scope for one batch."""
    check_crop(args.crop, dataset)
    n_cells = int(dataset.patients["n_images"].sum() if args.scope == "all" else dataset.train["n_images"].sum())
    if n_cells < args.batch_size:
        raise DataError(f"--batch-size {args.batch_size} is larger than the {n_cells} cells of scope '{args.scope}'")


def cells_fingerprint(cache: ImageCache, rows) -> str:
    """Label-free identity of the cells learnt from: patient ID, split and file name of each."""
    index = cache.index.set_index("row").loc[rows]
    lines = sorted(f"{r.ID}:{r.split}:{Path(r.path).name}" for r in index.itertuples())
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()[:12]


def run_pretrain(args: argparse.Namespace, dataset: Dataset, run_dir: Path, backbone: torch.nn.Module,
                 data_config: dict, device: torch.device) -> dict:
    """Pretrain (resuming after a kill), then write encoder.pth, encoder.json, log.csv and loss.png."""
    record_path = encoder_record_path(run_dir / ENCODER)
    if record_path.exists():
        log.info("%s: already done, nothing to train", record_path)
        return read_json(record_path)
    cache = load_image_cache(dataset, args.crop, args.cache_dir, progress=args.progress)
    dtype = training_autocast_dtype(args.amp, device)
    trainer = build_pretrainer(backbone, cache, data_config, pretrain_settings(args), device, dtype)
    log.info("pretraining %s on %d cells (scope %s), %d steps per epoch, precision %s", args.backbone,
             len(trainer.rows), args.scope, trainer.steps_per_epoch, precision_name(dtype))
    start = time.perf_counter()
    history = pretrain(trainer, run_dir / "last.pt")
    encoder = trainer.model.encoder().float().cpu()
    atomic_torch_save(encoder.state_dict(), run_dir / ENCODER)
    atomic_write_csv(history, run_dir / "log.csv")
    plot_loss(history, run_dir / "loss.png", f"{OBJECTIVE_NAMES[args.objective]} {args.backbone}, "
              f"{args.crop}->{input_side(data_config)} px", f"{OBJECTIVE_NAMES[args.objective]} loss")
    record = {"objective": args.objective, **objective_record(trainer.s), "backbone": args.backbone,
              "init_weights": args.weights, **lineage(args.weights, args.epochs), "crop": args.crop,
              "input_size": input_side(data_config), "mean": list(data_config["mean"]), "std": list(data_config["std"]),
              "scope": args.scope, "colour": trainer.s.colour, "n_cells": int(len(trainer.rows)),
              "cells_fingerprint": cells_fingerprint(cache, trainer.rows), "epochs": args.epochs,
              "batch_size": args.batch_size, "temperature": args.temperature, "lr": args.lr,
              "precision": precision_name(dtype), "device": str(device), "torch_threads": torch.get_num_threads(),
              "loss_per_epoch": history["loss"].round(5).tolist(), "seconds": float(history["seconds"].sum()),
              "wall_seconds_this_process": time.perf_counter() - start,
              "img_per_s": float(history["img_per_s"].mean()), "weights_tag": weights_tag(encoder),
              "commit": code_version()["commit"]}
    atomic_write_json(record, record_path)
    (run_dir / "last.pt").unlink(missing_ok=True)
    return record


def lineage(weights: str, epochs: int) -> dict:
    """Continued pretraining (--weights another run's encoder.pth): the parent's tag and the epochs in all."""
    parent = encoder_record(Path(weights)) if weights else None  # None for 'none', 'lite0' and other weights
    if parent is None:
        return {"epochs_total": epochs}
    return {"init_weights_tag": parent["weights_tag"],
            "epochs_total": total_epochs(parent) + epochs}


def objective_record(s) -> dict:
    """The objective's own settings for encoder.json (DINO's; SimCLR's temperature is recorded for both)."""
    if s.objective != "dino":
        return {}
    return {"local_crops": s.local_crops, "local_size": s.local_size, "prototypes": s.prototypes,
            "teacher_temperature": s.teacher_temperature, "ema": s.ema}


def plot_loss(history: pd.DataFrame, path: Path, title: str, ylabel: str = "NT-Xent loss") -> Path:
    """The loss per epoch, with training img/s on a second axis."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(history["epoch"] + 1, history["loss"], "o-", color="tab:blue", ms=3)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    speed = ax.twinx()
    speed.plot(history["epoch"] + 1, history["img_per_s"], color="tab:grey", lw=0.8, ls="--")
    speed.set_ylabel("training img/s (dashed)", color="tab:grey")
    return save_figure(fig, path)
