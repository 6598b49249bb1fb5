"""Benchmark: bf16 autocast training numerics of the CPU fine-tune preset against fp32, on the demo data.

Usage: python -m benchmarks.bench_bf16 [--epochs 12] [--runs-dir DIR] [--no-append]
Three runs of configs/cnn_cpu_finetune.yaml from a random ResNet-10-T on fold 0 of the embedded demo data
(no encoder needed): fp32 (--amp off) with seed 0, bf16 (--amp bf16) with seed 0, and fp32 with seed 1.
bf16 passes when its per-epoch training loss stays as close to fp32's as two fp32 seeds are to each other
(the noise): mean |bf16 - fp32| <= mean |fp32 seed 1 - fp32 seed 0|. Also reported: the speed of each
precision and the fold-0 validation probabilities' agreement. The loss curves go to --plot.
"""
import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import train_cnn
from benchmarks.common import bench_runs_dir, publish
from lib.cnn.device import cpu_has_bf16
from lib.core.paths import CONFIGS_DIR, RUNS_DIR
from lib.core.plots import pyplot, save_figure
from lib.data.locate import resolve_data_dir

RUNS = {"fp32 seed 0": ("off", 0), "bf16 seed 0": ("bf16", 0), "fp32 seed 1": ("off", 1)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--plot", type=Path, default=RUNS_DIR / "bench_bf16_loss.png", help="the loss curves (PNG)")
    parser.add_argument("--no-append", action="store_true")
    return parser.parse_args(argv)


def train(args, runs_dir: Path, label: str) -> dict:
    """One fold-0 run; its loss per epoch, training img/s and validation probabilities."""
    amp, seed = RUNS[label]
    name = label.replace(" ", "_")
    train_cnn.main(["-c", str(CONFIGS_DIR / "cnn_cpu_finetune.yaml"), "--weights", "none", "--data-dir",
                    str(resolve_data_dir(None)), "--runs-dir", str(runs_dir), "--cache-dir", str(runs_dir / "cache"),
                    "--folds", "0", "--epochs", str(args.epochs), "--amp", amp, "--seed", str(seed),
                    "--experiment", name, "--no-progress"])
    run = runs_dir / name
    log = pd.read_csv(run / "fold_0" / "log.csv")
    cells = pd.read_csv(run / "fold_0" / "cells.csv")
    n_train = cells.loc[cells["role"] == "valid", "ID"].nunique() * 4  # 5 folds: 4 training patients per valid one
    return {"loss": log["train_loss"].to_numpy(), "img_per_s": len(log) * n_train * 16 / log["seconds"].sum(),
            "valid": pd.read_csv(run / "folds" / "fold_0.csv").set_index("ID")["proba"]}


def plot(results: dict, path: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for label, r in results.items():
        ax.plot(np.arange(1, len(r["loss"]) + 1), r["loss"], marker="o", label=label)
    ax.set(xlabel="epoch", ylabel="training loss (weighted BCE)", title="CPU fine-tune preset, demo fold 0")
    ax.legend()
    save_figure(fig, path)


def result_lines(results: dict) -> list[str]:
    fp32, bf16, other = (results[k] for k in RUNS)
    gap, noise = np.abs(bf16["loss"] - fp32["loss"]).mean(), np.abs(other["loss"] - fp32["loss"]).mean()
    agree = np.abs(bf16["valid"] - fp32["valid"].loc[bf16["valid"].index]).max()
    verdict = "within noise" if gap <= noise else "NOT within noise"
    return [f"- data: the embedded demo data, fold 0 of 5; configs/cnn_cpu_finetune.yaml from a random ResNet-10-T, "
            f"{len(fp32['loss'])} epochs; CPU native bf16: {cpu_has_bf16()}",
            *(f"- {label}: loss per epoch {' '.join(f'{v:.3f}' for v in r['loss'])}; {r['img_per_s']:.0f} training img/s"
              for label, r in results.items()),
            f"- bf16 vs fp32 (same seed): mean |loss gap| {gap:.4f}; fp32 seed 1 vs seed 0 (the noise): {noise:.4f} "
            f"-> {verdict}; largest validation probability difference {agree:.3f}",
            f"- speed: bf16 {bf16['img_per_s'] / fp32['img_per_s']:.2f}x fp32 in training"]


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    with bench_runs_dir(args.runs_dir, "bench_bf16_") as runs_dir:
        results = {label: train(args, runs_dir, label) for label in RUNS}
        plot(results, args.plot)
        lines = result_lines(results)
    lines.append(f"- torch intra-op threads: {torch.get_num_threads()}; loss curves: {args.plot}")
    publish("bf16 vs fp32 training numerics (CPU fine-tune preset, demo)", lines, __file__, argv,
            append=not args.no_append)
    return lines


if __name__ == "__main__":
    main()
