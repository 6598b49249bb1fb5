"""Benchmark: overnight.py at a time budget on a data directory (its own processes, as a user runs it); appends
a dated block to BENCHMARKS.md: the plan against the wall time, the honest estimates of the night's blend beside
the default pipeline's on the same fold seeds (not the one that chose the settings), the verdict.

Usage: python -m benchmarks.bench_overnight --budget 1h [--data-dir ../shared/data/lymphocytosis]
       [--runs-dir runs/bench_night] [--summary-only]   # re-publish a finished night's numbers
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import machine, publish
from lib.core.io import read_json
from lib.core.paths import REPO_DIR, SHARED_DATA_DIR
from lib.data.dataset import load_dataset
from lib.night import markers


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", required=True, help="overnight.py --budget")
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA_DIR)
    parser.add_argument("--runs-dir", type=Path, default=REPO_DIR / "runs" / "bench_night")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more overnight.py options")
    parser.add_argument("--summary-only", action="store_true", help="do not run: publish the finished night")
    parser.add_argument("--no-append", action="store_true")
    return parser.parse_args(argv)


def stage_accuracy(night_dir: Path) -> list[str]:
    """The planner's estimates against the actual seconds: in all, and the worst stages."""
    done = [r for r in markers.all_finished(night_dir).values() if r.get("estimate")]
    actual, estimate = sum(r["seconds"] for r in done), sum(r["estimate"] for r in done)
    worst = sorted(done, key=lambda r: -abs(r["seconds"] - r["estimate"]))[:4]
    return [f"- fixed stages: estimated {estimate / 60:.1f} min, took {actual / 60:.1f} min "
            f"(actual / estimate {actual / estimate:.2f}; target within 25%)",
            "- furthest off: " + ", ".join(f"{r['stage']} {r['estimate']:.0f} s -> {r['seconds']:.0f} s" for r in worst)]


def main(argv=None) -> None:
    args = parse_args(argv)
    out = args.runs_dir / "submission.csv"
    command = [sys.executable, "overnight.py", "--data-dir", str(args.data_dir), "--budget", args.budget,
               "--runs-dir", str(args.runs_dir), "--out", str(out), *args.extra]
    began = time.time()
    if not args.summary_only:
        subprocess.run(command, cwd=REPO_DIR, check=True)
    night_dir = args.runs_dir / f"{load_dataset(args.data_dir).name}_night"
    night = read_json(night_dir / "plan.json")
    wall = (time.time() - began) if not args.summary_only else None
    summary = (night_dir / "summary.md").read_text()
    honest = summary[summary.index("| | BA | AUC |"):summary.index("## Stages")].strip()
    lines = [f"Machine: {machine()}; probe: embedding {night['probe']['embed_img_s']:.0f} img/s, pretraining "
             f"{night['probe']['pretrain_img_s']:.0f} cells/s.",
             f"Budget {args.budget} ({night['deadline'] - night['started']:.0f} s)"
             + (f"; wall time of this command {wall / 60:.1f} min" if wall else "") + ".",
             f"Encoder: {night['encoder']['reason']}.", "", *stage_accuracy(night_dir), "", honest]
    publish(f"Overnight, budget {args.budget}", lines, __file__, argv, append=not args.no_append)


if __name__ == "__main__":
    main()
