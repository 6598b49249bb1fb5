"""The whole pipeline on one data directory, each stage a script run in turn, up to submission.csv.

Re-running it resumes: finished folds and trials are kept, only missing work is done.
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

from lib.cli import resolve_data_dir, run_main
from lib.data import load_dataset
from lib.paths import REPO_DIR, RUNS_DIR


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, help="competition directory (default: the embedded demo data)")
    parser.add_argument("--out", type=Path, default=REPO_DIR / "submission.csv")
    parser.add_argument("--cnn-config", default="configs/cnn_cpu.yaml", help="train_cnn.py preset")
    parser.add_argument("--trials", type=int, default=100, help="ensemble study trials")
    return parser.parse_args(argv)


def stages(data_dir: Path, tag: str, args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(name, script + arguments) of every stage, in order."""
    data = ["--data-dir", str(data_dir)]
    runs = {name: f"{tag}/{name}" for name in ("clinical", "morpho", "cnn", "ensemble")}
    return [
        ("prepare", ["prepare_data.py", *data]),
        ("clinical", ["train_clinical.py", *data, "--experiment", runs["clinical"], "--resume"]),
        ("morpho", ["train_clinical.py", *data, "--feature-set", "clinical+morpho",
                    "--experiment", runs["morpho"], "--resume"]),
        ("cnn", ["train_cnn.py", "-c", args.cnn_config, *data, "--experiment", runs["cnn"], "--resume"]),
        ("ensemble", ["ensemble.py", "--runs", *(str(RUNS_DIR / runs[n]) for n in ("clinical", "morpho", "cnn")),
                      "--experiment", runs["ensemble"], "--trials", str(args.trials), "--resume"]),
        ("report", ["report.py", "--ensemble", str(RUNS_DIR / runs["ensemble"]), *data]),
        ("submission", ["make_submission.py", *data, "--ensemble", str(RUNS_DIR / runs["ensemble"]),
                        "--out", str(args.out)]),
    ]


def main(argv=None) -> None:
    args = parse_args(argv)
    data_dir = resolve_data_dir(args.data_dir)
    tag = load_dataset(data_dir).name
    start = time.perf_counter()
    for name, command in stages(data_dir, tag, args):
        print(f"\n=== {name}: {' '.join(command)}", flush=True)
        began = time.perf_counter()
        done = subprocess.run([sys.executable, *command], cwd=REPO_DIR)
        if done.returncode:
            sys.exit(f"pipeline: stage {name} failed (exit {done.returncode}); fix it and re-run to resume")
        print(f"=== {name}: {time.perf_counter() - began:.0f} s", flush=True)
    print(f"\npipeline: {args.out} written in {time.perf_counter() - start:.0f} s; runs in {RUNS_DIR / tag}")


if __name__ == "__main__":
    run_main(main)
