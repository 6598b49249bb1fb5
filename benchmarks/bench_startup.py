"""Benchmark: how fast each script answers ``--help`` and a bad option (a fresh interpreter each time).

Usage: python -m benchmarks.bench_startup [--repeats 5] [--repo DIR] [--label after] [--no-append]
Each script of the repository (``--repo``, default this checkout: point it at an old checkout for a
"before" column) runs ``--help`` and ``--no-such-option`` ``--repeats`` times in a new interpreter; the
median wall time of each is reported with the heavy modules (torch, timm, albumentations, optuna, cv2,
sklearn) that its bad-option path imports. Targets (issue 20): every script <= 1.5 s on a bad option,
the clinical and submission scripts <= 1 s.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import cpu_model, publish

SCRIPTS = ("prepare_data.py", "train_clinical.py", "train_cnn.py", "pretrain_cnn.py", "ensemble.py",
           "report.py", "make_submission.py", "predict.py", "pipeline.py")
TARGET_S = {"train_clinical.py": 1.0, "make_submission.py": 1.0}  # the others: 1.5 s
HEAVY = ("torch", "timm", "albumentations", "optuna", "cv2", "sklearn", "matplotlib", "scipy")
PROBE = """import runpy, sys, json
sys.argv = [{script!r}, "--no-such-option"]
sys.path.insert(0, {repo!r})
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit:
    pass
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), file=sys.__stdout__)
"""


def timed(command: list[str], cwd: Path) -> float:
    """Wall seconds of one fresh-interpreter command (its output discarded)."""
    began = time.perf_counter()
    subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - began


def heavy_modules(script: str, repo: Path) -> list[str]:
    """The heavy modules that the bad-option path of ``script`` imports."""
    code = PROBE.format(script=script, repo=str(repo), heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=False)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(repo: Path, repeats: int) -> dict[str, dict]:
    """Median ``--help`` and bad-option seconds, and the heavy imports, of every script in ``repo``."""
    out = {}
    for script in SCRIPTS:
        if not (repo / script).is_file():
            continue
        help_s = [timed([sys.executable, script, "--help"], repo) for _ in range(repeats)]
        bad_s = [timed([sys.executable, script, "--no-such-option"], repo) for _ in range(repeats)]
        out[script] = {"help": statistics.median(help_s), "bad": statistics.median(bad_s),
                       "heavy": heavy_modules(script, repo)}
        print(f"{script}: --help {out[script]['help']:.2f} s, bad option {out[script]['bad']:.2f} s", flush=True)
    return out


def result_lines(results: dict[str, dict], label: str, repeats: int) -> list[str]:
    """A markdown table of the medians against the targets, then the verdict."""
    lines = [f"- {label}: median of {repeats} fresh interpreters, {cpu_model()}", "",
             "| script | --help (s) | bad option (s) | target (s) | heavy modules on the bad-option path |",
             "|---|---|---|---|---|"]
    misses = []
    for script, r in results.items():
        target = TARGET_S.get(script, 1.5)
        misses += [script] if r["bad"] > target else []
        lines.append(f"| {script} | {r['help']:.2f} | {r['bad']:.2f} | {target} | {', '.join(r['heavy']) or '-'} |")
    lines += ["", f"- targets: {'all met' if not misses else 'missed by ' + ', '.join(misses)}"]
    return lines


def main(argv=None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the checkout whose scripts are timed (default: this one)")
    parser.add_argument("--label", default="this checkout", help="what the measured checkout is (before/after)")
    parser.add_argument("--no-append", action="store_true", help="do not append to BENCHMARKS.md")
    args = parser.parse_args(argv)
    lines = result_lines(measure(args.repo.resolve(), args.repeats), args.label, args.repeats)
    publish("Script start-up: --help and a bad option", lines, __file__, argv, append=not args.no_append)
    return lines


if __name__ == "__main__":
    main()
