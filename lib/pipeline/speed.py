"""The speed of a finished CNN stage (a train_cnn.py run directory), read from its timings.json, log.csv and
config.yaml, and the lines the benchmarks publish of it: embedding img/s against the machine's matmul peak, head
training bags/s on cached embeddings."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

LITE0_GFLOP_112 = 0.1  # EfficientNet-Lite0 forward at 112x112 (0.39 GFLOP at 224); training ~3x forward


def cnn_run_speed(run_dir: str | Path) -> dict:
    """Throughput of one train_cnn.py run from its timings.json and log.csv.

    The timings (embed_img_per_s is None when the embeddings came from the cache) plus epochs_run and
    epoch_seconds (summed training-epoch times, scoring excluded) and the run's bag_size.
    """
    run_dir = Path(run_dir)
    timings = json.loads((run_dir / "timings.json").read_text())
    log = pd.read_csv(run_dir / "log.csv")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    lite0_112 = config.get("backbone") == "tf_efficientnet_lite0" and config.get("input_size") in ("crop", 112) \
        and config.get("crop") == 112
    return {**timings, "epochs_run": len(log), "epoch_seconds": float(log["seconds"].sum()),
            "bag_size": config["bag_size"], "gflop_per_image": LITE0_GFLOP_112 if lite0_112 else None,
            "embedder": f"{config.get('backbone')} at {config.get('input_size')} px"}


def embed_rate_line(label: str, timings: dict, peak_gflops: float) -> str:
    """'embedding (label): N cell views in S s = R img/s, ~G GFLOP/s of the peak', or the cache note.

    ``peak_gflops``: this machine's fp32 matmul throughput, measured by the same run (benchmarks/common.py's
    ``matmul_gflops``).
    """
    if not timings.get("embedded_images"):
        return f"- embedding ({label}): reused from the cache"
    rate, gflop = timings["embed_img_per_s"], timings["gflop_per_image"]
    flops = (f", ~{rate * gflop:.0f} GFLOP/s of the {peak_gflops:.0f} GFLOP/s fp32 matmul peak measured in this run"
             if gflop else f" ({timings['embedder']}: no FLOP count kept for it)")
    return (f"- embedding ({label}, cold): {timings['embedded_images']} cell views in {timings['embed_seconds']:.0f} s"
            f" = {rate:.0f} img/s{flops}")


def head_training_line(label: str, runs: list[dict], bags_per_epoch: float) -> str:
    """Head training speed on cached embeddings (bags/s, cell embeddings/s), mean over runs."""
    bags = np.array([r["epochs_run"] * bags_per_epoch / r["epoch_seconds"] for r in runs])
    cells = np.array([b * r["bag_size"] for b, r in zip(bags, runs)])
    return (f"- head training on cached embeddings ({label}): {bags.mean():.0f} bags/s (~{cells.mean():.0f} cell "
            f"embeddings/s; a tiny head bound by Python overhead, not FLOPs), torch threads {runs[0]['torch_threads']}")
