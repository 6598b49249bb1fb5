"""Shipping a pretrained encoder: a pretrain_cnn.py run's ``encoder.pth`` written into ``weights/<name>.safetensors``
(fp16 when its embeddings agree with the fp32 ones within the fp16 rounding the embedding cache applies anyway)
with its card ``weights/<name>.json`` (lib.models.shipped): the run's encoder record, the lineage of records it
was continued from, the commands that made it, the machine, the code version, the fp16 check and the SHA-256.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from lib.cnn.embedding import EmbedSpec, embed_images, view_transform
from lib.cnn.pretrain import encoder_record
from lib.core.errors import DataError
from lib.core.io import atomic_write_bytes, atomic_write_json, read_checkpoint, read_json
from lib.core.machine import cpu_model
from lib.core.runs import code_version
from lib.data.dataset import Dataset
from lib.data.images import load_image_cache
from lib.models import shipped
from lib.models.backbones import build_backbone, embed_data_config
from lib.models.shipped import file_sha256

log = logging.getLogger(__name__)
CHECK_CELLS = 512  # cells embedded by both the fp32 and the fp16 weights


def lineage(record: dict) -> list[dict]:
    """The encoder records this one was continued from (``init_weights``), oldest first, then its own."""
    chain, weights = [record], record.get("init_weights")
    while weights and (parent := encoder_record(Path(weights))) is not None:
        chain.insert(0, parent)
        weights = parent.get("init_weights")
    return chain


def trained_with(run_dir: Path) -> dict:
    """The code version the run started with (its code_version.json: commit, uncommitted changes or not)."""
    path = Path(run_dir) / "code_version.json"
    saved = read_json(path) if path.exists() else {}
    return {"commit": saved.get("commit", "unknown"), "dirty": bool(saved.get("dirty"))}


def fp16_check(state: dict, record: dict, dataset: Dataset, cache_dir: Path) -> dict:
    """Relative distance between the embeddings of the fp32 and the fp16-rounded weights (both run in fp32) on a
    fixed sample of cells, against the distance the fp16 embedding cache itself introduces."""
    models = {}
    for dtype in (torch.float32, torch.float16):
        model = build_backbone(record["backbone"], None, seed=0)
        model.load_state_dict({k: v.to(dtype).float() for k, v in state.items()})
        models[dtype] = model.eval()
    data_config = embed_data_config(models[torch.float32], record["crop"], record["input_size"])
    cache = load_image_cache(dataset, record["crop"], cache_dir, progress=False)
    rows = np.random.default_rng(0).choice(len(cache.index), min(CHECK_CELLS, len(cache.index)), replace=False)
    spec = EmbedSpec(dataset.name, record["backbone"], "", record["crop"], record["input_size"], "light", 0, 0, "fp32", "")
    to_tensor = view_transform("v0", spec, data_config)

    def embed(weights_dtype: torch.dtype) -> np.ndarray:
        return embed_images(models[weights_dtype], cache.array, np.sort(rows), to_tensor, batch_size=128,
                            device=torch.device("cpu"), dtype=None, desc="fp16 check", progress=False).astype(np.float32)

    with torch.no_grad():
        e32, e16 = embed(torch.float32), embed(torch.float16)
    # embed_images stores float16: both sides carry the cache's own rounding, which is the noise floor here
    scale = np.linalg.norm(e32, axis=1) + 1e-12
    distance = np.linalg.norm(e16 - e32, axis=1) / scale
    floor = float(np.finfo(np.float16).eps)
    return {"cells": len(rows), "max_relative_distance": round(float(distance.max()), 6),
            "mean_relative_distance": round(float(distance.mean()), 6), "fp16_rounding": round(floor, 6),
            "agree": bool(distance.max() <= floor)}


def ship_encoder(run_dir: Path, name: str, dataset: Dataset, cache_dir: Path, commands: list[str]) -> Path:
    """Write ``weights/<name>.safetensors`` and its card from a finished pretraining run; return the card's path."""
    from safetensors.torch import save as safetensors_bytes

    record = encoder_record(run_dir / "encoder.pth")
    if record is None:
        raise DataError(f"{run_dir}: no finished pretrain_cnn.py run (encoder.pth with encoder.json)")
    state = read_checkpoint(run_dir / "encoder.pth")
    check = fp16_check(state, record, dataset, cache_dir)
    dtype = torch.float16 if check["agree"] else torch.float32
    weights = shipped.WEIGHTS_DIR / f"{name}.safetensors"
    atomic_write_bytes(safetensors_bytes({k: v.to(dtype).contiguous() for k, v in state.items()}), weights)
    chain = lineage(record)
    card = {**record, "name": name, "file": weights.name, "dtype": str(dtype).removeprefix("torch."),
            "sha256": file_sha256(weights), "size_bytes": weights.stat().st_size, "fp16_check": check,
            "epochs_by_stage": [{"input_size": r["input_size"], "epochs": r["epochs"], "seconds": round(r["seconds"]),
                                 "img_per_s": round(r["img_per_s"]), "precision": r["precision"]} for r in chain],
            "wall_seconds": round(sum(r["seconds"] for r in chain)), "commands": commands, "machine": cpu_model(),
            "trained_with_code": trained_with(run_dir),
            "shipped_from": str(run_dir), "shipped_at": time.strftime("%Y-%m-%d"),
            "shipped_by_commit": code_version()["commit"]}
    log.info("%s: %s weights, %.1f MB, fp16 check %s", weights, card["dtype"], card["size_bytes"] / 1e6, check)
    return atomic_write_json(card, shipped.WEIGHTS_DIR / f"{name}.json")
