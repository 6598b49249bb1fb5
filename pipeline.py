"""The whole pipeline on one data directory, each stage a script run in turn, up to submission.csv.

Stages: prepare (validate + folds) -> clinical -> clinical+morphometry -> CNN (mean head, the CPU
preset) -> CNN (attention head on the same cached embeddings, whose cell weights the report shows) ->
ensemble -> report -> submission. Re-running it resumes: finished folds and trials are kept.
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

from lib.core.cli import run_main
from lib.core.config import ArgParser
from lib.data.locate import resolve_data_dir
from lib.data.dataset import load_dataset
from lib.core.paths import CACHE_DIR, FOLDS_DIR, REPO_DIR, RUNS_DIR

MODELS = ("clinical", "morpho", "cnn", "cnn_attention")


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="competition directory (default: the embedded demo data)")
    parser.add_argument("--out", type=Path, default=REPO_DIR / "submission.csv")
    parser.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="parent of the run directories")
    parser.add_argument("--fold-seed", type=int, default=42, help="which committed fold file to use")
    parser.add_argument("--folds-dir", type=Path, default=FOLDS_DIR, help="where the fold files are")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="decoded-image, weights, embedding and "
                        "morphometry caches")
    parser.add_argument("--cnn-config", default="configs/cnn_cpu.yaml", help="train_cnn.py preset")
    parser.add_argument("--trials", type=int, default=100, help="ensemble study trials")
    return parser.parse_args(argv)


def stages(data_dir: Path, tag: str, args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(name, script + arguments) of every stage, in order."""
    data = ["--data-dir", str(data_dir)]
    folds = ["--fold-seed", str(args.fold_seed), "--folds-dir", str(args.folds_dir)]
    common = [*data, "--runs-dir", str(args.runs_dir), *folds, "--cache-dir", str(args.cache_dir), "--resume"]
    run = {name: f"{tag}/{name}" for name in (*MODELS, "ensemble")}
    ensemble_dir = str(args.runs_dir / run["ensemble"])
    return [
        ("prepare", ["prepare_data.py", *data, *folds]),
        ("clinical", ["train_clinical.py", *common, "--experiment", run["clinical"]]),
        ("morpho", ["train_clinical.py", *common, "--feature-set", "clinical+morpho", "--experiment", run["morpho"]]),
        ("cnn", ["train_cnn.py", "-c", args.cnn_config, *common, "--experiment", run["cnn"]]),
        ("cnn_attention", ["train_cnn.py", "-c", args.cnn_config, *common, "--head", "attention",
                           "--experiment", run["cnn_attention"]]),
        ("ensemble", ["ensemble.py", "--runs", *(str(args.runs_dir / run[m]) for m in MODELS),
                      "--runs-dir", str(args.runs_dir), "--experiment", run["ensemble"],
                      "--trials", str(args.trials), "--resume"]),
        ("report", ["report.py", "--ensemble", ensemble_dir, *data]),
        ("submission", ["make_submission.py", *data, "--ensemble", ensemble_dir, "--out", str(args.out)]),
    ]


def main(argv=None) -> dict[str, float]:
    """Run every stage; return the wall time of each (seconds)."""
    args = parse_args(argv)
    args.runs_dir = args.runs_dir.resolve()
    data_dir = resolve_data_dir(args.data_dir)
    tag = f"{load_dataset(data_dir).name}_s{args.fold_seed}"
    start, seconds = time.perf_counter(), {}
    for name, command in stages(data_dir, tag, args):
        print(f"\n=== {name}: {' '.join(command)}", flush=True)
        began = time.perf_counter()
        done = subprocess.run([sys.executable, *command], cwd=REPO_DIR)
        if done.returncode:
            sys.exit(f"pipeline: stage {name} failed (exit {done.returncode}); fix it and re-run to resume")
        seconds[name] = time.perf_counter() - began
        print(f"=== {name}: {seconds[name]:.0f} s", flush=True)
    print(f"\npipeline: {args.out} written in {time.perf_counter() - start:.0f} s; "
          f"runs in {args.runs_dir / tag}, report {args.runs_dir / tag / 'ensemble' / 'report' / 'index.html'}")
    return seconds


if __name__ == "__main__":
    run_main(main)
