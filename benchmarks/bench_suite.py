"""Benchmark: the default test suite's wall time (issue 20: <= 2 min on a 2-core machine, 150 s at worst).

Usage: python -m benchmarks.bench_suite [--repeats 2] [--no-append] [-- extra pytest arguments]
Runs ``./run_tests.sh`` ``--repeats`` times on this checkout (run it on an idle machine: another heavy job on
the 2 cores stretches every test) and reports each run's wall time, pytest's own count and time, the load
average before each run, and the slowest tests of the last run (pytest's --durations, set in pyproject.toml).
"""
import argparse
import os
import re
import subprocess
import time

from benchmarks.common import machine, publish
from lib.core.paths import REPO_DIR

TARGET_S, BOUND_S = 120, 150
SUMMARY = re.compile(r"^=*\s*(\d+ passed.*?) in ([0-9.]+)s", re.M)  # '-q': no '=' around the closing line
DURATION = re.compile(r"^\s*([0-9.]+)s (call|setup|teardown)\s+(\S+)", re.M)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--slowest", type=int, default=8, help="slowest tests listed in the block")
    parser.add_argument("--no-append", action="store_true")
    parser.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --)")
    return parser.parse_args(argv)


def one_run(extra: list[str]) -> dict:
    """One ./run_tests.sh: wall seconds, pytest's summary and seconds, the load before, the durations table."""
    load = os.getloadavg()[0]
    began = time.perf_counter()
    done = subprocess.run(["./run_tests.sh", *extra], cwd=REPO_DIR, capture_output=True, text=True)
    wall = time.perf_counter() - began
    out = done.stdout + done.stderr
    summary = SUMMARY.findall(out)
    if done.returncode != 0 or not summary:
        raise SystemExit(f"./run_tests.sh failed (exit {done.returncode}):\n{out[-3000:]}")
    return {"wall": wall, "summary": summary[-1][0], "pytest_s": float(summary[-1][1]), "load": load,
            "durations": DURATION.findall(out)}


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    runs = []
    for i in range(args.repeats):
        runs.append(one_run(args.pytest_args))
        print(f"run {i + 1}: {runs[-1]['wall']:.1f} s wall, {runs[-1]['summary']}", flush=True)
    best = min(r["wall"] for r in runs)
    verdict = ("met" if best <= TARGET_S else "within the bound" if best <= BOUND_S else "missed")
    lines = [f"- machine: {machine()}; pytest-xdist workers: {os.environ.get('LYMPH_TEST_WORKERS', 'auto')}",
             *[f"- run {i + 1}: {r['wall']:.1f} s wall (pytest {r['pytest_s']:.1f} s), {r['summary']}; load average "
               f"{r['load']:.2f} before" for i, r in enumerate(runs)],
             f"- target {TARGET_S} s (bound {BOUND_S} s): {verdict} (best run {best:.1f} s)",
             "- slowest of the last run: " + "; ".join(f"{name.split('::')[-1]} ({kind}) {float(s):.1f} s"
                                                       for s, kind, name in runs[-1]["durations"][:args.slowest])]
    publish("Test suite time (issue 20)", lines, __file__, argv, append=not args.no_append)
    return lines


if __name__ == "__main__":
    main()
