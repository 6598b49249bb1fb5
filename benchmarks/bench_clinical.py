"""Benchmark: repeated 5-fold CV of the clinical model (fold seeds 42..46), BA and AUC mean±std.

Usage: python -m benchmarks.bench_clinical [--data-dir ../shared/data/lymphocytosis] [--seeds 42 43 44 45 46]
       [--feature-sets clinical clinical+morpho clinical+morpho-shuffled]
Several feature sets are run on the same folds, the first being the baseline of the block.
Each seed's fold file is read from folds/ (created once on first use). Prints the numbers and appends a
dated block to BENCHMARKS.md (unless --no-append).
"""
import argparse
import time
from pathlib import Path

import train_clinical
from benchmarks.common import bench_runs_dir, publish
from lib.core.metrics import mean_std
from lib.core.paths import SHARED_DATA_DIR
from lib.features.tables import FEATURE_SETS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Benchmark options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA_DIR)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46], help="fold seeds")
    parser.add_argument("--n-folds", type=int, default=5)
    parser.add_argument("--feature-sets", nargs="+", default=["clinical"], choices=sorted(FEATURE_SETS))
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--no-append", action="store_true", help="do not append to BENCHMARKS.md")
    return parser.parse_args(argv)


def run_seed(args: argparse.Namespace, feature_set: str, seed: int, runs_dir: Path) -> dict:
    """One cross-validation of the clinical model on the folds of one seed; its metrics.

    Each run's log.txt handler replaces the previous one (lib.core.runs.attach_log_file), so runs in one
    process never write into each other's logs.
    """
    return train_clinical.main(["--data-dir", str(args.data_dir), "--fold-seed", str(seed),
                                "--n-folds", str(args.n_folds), "--feature-set", feature_set,
                                "--runs-dir", str(runs_dir), "--experiment", f"bench_{feature_set}_s{seed}"])


def summary_lines(results: dict[int, dict], feature_set: str, seconds: float) -> list[str]:
    """Result lines: mean±std over repetitions of the fold-mean, over all folds, and pooled."""
    lines = [f"- model: clinical logistic regression, feature set {feature_set}, threshold 0.5; "
             f"{len(results)} repetitions of {len(next(iter(results.values()))['per_fold'])}-fold CV "
             f"(fold seeds {', '.join(map(str, results))}); {seconds:.0f} s"]
    for key, label in (("ba", "BA"), ("auc", "AUC")):
        reps = [r[f"{key}_mean"] for r in results.values()]
        folds = [f[key] for r in results.values() for f in r["per_fold"].values()]
        pooled = [r[f"pooled_{key}"] for r in results.values()]
        lines.append(f"- {label}: {mean_std(reps)} (mean±std over repetitions of the per-repetition fold mean); "
                     f"{mean_std(folds)} over all {len(folds)} folds; pooled OOF {mean_std(pooled)}; "
                     f"per repetition {', '.join(f'{v:.3f}' for v in reps)}")
    return lines


def main(argv: list[str] | None = None) -> list[str]:
    """Run every seed, print the summary and append it to BENCHMARKS.md."""
    args = parse_args(argv)
    lines = [f"- data: {args.data_dir}"]
    with bench_runs_dir(args.runs_dir, "bench_clinical_") as runs_dir:
        for feature_set in args.feature_sets:
            began = time.perf_counter()
            results = {seed: run_seed(args, feature_set, seed, runs_dir) for seed in args.seeds}
            lines += summary_lines(results, feature_set, time.perf_counter() - began)
    publish("Clinical model, repeated CV", lines, __file__, argv, append=not args.no_append)
    return lines


if __name__ == "__main__":
    main()
