"""Benchmark: a short real-data Optuna study of train_cnn.py's embed regime (cached embeddings), best and spread.

Usage: python -m benchmarks.bench_study [--data-dir ../shared/data/lymphocytosis] [--trials 20]
       [--config configs/cnn_cpu.yaml] [--runs-dir DIR] [--no-append]
Runs ``train_cnn.py -c <config> --study bench_cnn_study --trials N`` in a fresh directory (a temp dir unless
--runs-dir), reusing the embedding cache under cache/emb/ (embed_views and aug_strength stay within the views
the CPU preset caches). Prints the best trial, the top-5 mean±std, the preset's own trial and the time per
trial, and appends a dated block to BENCHMARKS.md (unless --no-append). On a shared CPU, run it with
OMP_NUM_THREADS=1: the MIL head is tiny and two spinning OpenMP threads on two busy cores are far slower.
"""
import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np
import optuna
import torch

import train_cnn
from benchmarks.common import bench_runs_dir, publish
from lib.core.paths import CONFIGS_DIR, SHARED_DATA_DIR
from lib.core.study import default_storage

STUDY = "bench_cnn_study"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Benchmark options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA_DIR)
    parser.add_argument("--config", type=Path, default=CONFIGS_DIR / "cnn_cpu.yaml")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep the study here (default: a temp dir)")
    parser.add_argument("--no-append", action="store_true", help="do not append to BENCHMARKS.md")
    return parser.parse_args(argv)


def run_study(args: argparse.Namespace, runs_dir: Path) -> tuple[dict, float]:
    """The study through train_cnn.py's study mode; its summary and wall time."""
    start = time.perf_counter()
    summary = train_cnn.main(["-c", str(args.config), "--data-dir", str(args.data_dir), "--runs-dir", str(runs_dir),
                              "--study", STUDY, "--trials", str(args.trials)])
    return summary, time.perf_counter() - start


def trial_seconds(runs_dir: Path) -> dict[str, list[float]]:
    """Seconds of each finished trial (its cross-validation), by state."""
    study = optuna.load_study(study_name=STUDY, storage=default_storage(runs_dir / STUDY))
    seconds: dict[str, list[float]] = {}
    for t in study.trials:
        if "seconds" in t.user_attrs:
            seconds.setdefault(t.state.name.lower(), []).append(float(t.user_attrs["seconds"]))
    return seconds


def result_lines(summary: dict, seconds: dict[str, list[float]], wall: float) -> list[str]:
    """Markdown lines of the benchmark block."""
    best, top, current = summary["best"], summary["top_k"], summary["current_settings"]
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(summary["states"].items()))
    per_state = "; ".join(f"{s}: {np.mean(v):.1f} s mean, {np.median(v):.1f} s median, {np.max(v):.1f} s max"
                          for s, v in sorted(seconds.items()))
    return [f"- study: {summary['trials_requested']} trials of the embed regime (cached embeddings), seeded TPE, "
            f"median pruner from the 2nd fold; {states}",
            "- objective: CV BA = mean over the 5 committed folds of the per-fold BA at 0.5",
            f"- best: trial {best['number']}, CV BA {best['value']:.4f} ({params})",
            f"- top-{top['k']} CV BA: {top['mean']:.4f}±{top['std']:.4f} (mean±std); "
            f"values {', '.join(f'{v:.4f}' for v in top['values'])}",
            f"- preset (cnn_cpu.yaml, trial {current['number']}): CV BA {current['value']:.4f}"
            if current else "- preset trial: did not complete",
            f"- time per trial: {per_state}; wall {wall:.0f} s for the study "
            f"({wall / max(summary['finished'], 1):.1f} s per finished trial, loading included)",
            f"- torch intra-op threads: {torch.get_num_threads()} "
            f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); on this shared 2-core machine "
            f"2 threads made head training ~20x slower than 1 while other jobs ran",
            f"- {summary['warning']}"]


def main(argv: list[str] | None = None) -> list[str]:
    """Run the study, print the numbers, append them to BENCHMARKS.md."""
    args = parse_args(argv)
    with bench_runs_dir(args.runs_dir, "bench_study_") as runs_dir:
        summary, wall = run_study(args, runs_dir)
        lines = result_lines(summary, trial_seconds(runs_dir), wall)
    logging.getLogger().handlers.clear()
    publish("Optuna study: train_cnn.py embed regime", lines, __file__, argv, append=not args.no_append)
    return lines


if __name__ == "__main__":
    main()
