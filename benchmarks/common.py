"""Benchmark support (beside the benchmarks, not in lib/): dated blocks appended to BENCHMARKS.md atomically
(machine with its CPU model, commit, command, numbers), this machine's measured matmul peak, result lines.

The benchmarks run as ``python -m benchmarks.<name>`` from the repository root (which puts it on ``sys.path``);
they share this module and benchmarks/model_runs.py, never each other. A CNN run's speed figures are
lib/pipeline/speed.py's."""
import fcntl
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np

from lib.core.io import atomic_write_text
from lib.core.machine import cpu_model
from lib.core.metrics import mean_std
from lib.core.paths import REPO_DIR
from lib.core.runs import code_version

BENCHMARKS_FILE = REPO_DIR / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nDated measurements appended by the scripts in benchmarks/ (newest last).\n"


def machine() -> str:
    """CPU model, architecture (``uname -m``), core count and OS of this machine."""
    return f"{cpu_model()}, {platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def matmul_gflops(dtype: str = "fp32", n: int = 2048, seconds: float = 2.0) -> float:
    """This machine's torch matmul throughput now (GFLOP/s), measured for ``seconds`` (``dtype`` fp32 or bf16).

    Measured in the run that reports against it: the machine kind changes between sessions (an Intel Xeon
    with AMX, an AMD EPYC with AVX512-BF16), so no constant is right for long.
    """
    import torch
    kind = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a, b = torch.randn(n, n, dtype=kind), torch.randn(n, n, dtype=kind)
    a @ b  # warm-up
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        a @ b
        count += 1
    return 2 * n ** 3 * count / (time.perf_counter() - began) / 1e9


def commit() -> str:
    """Git commit of the code, marked dirty when the tree has uncommitted changes."""
    version = code_version()
    return f"{version['commit'][:12]}{' (dirty)' if version['dirty'] else ''}"


def benchmark_block(title: str, command: str, lines: list[str]) -> str:
    """Markdown block: title, date, machine, commit, command, then the result lines."""
    head = [f"## {title}", "",
            f"- date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- machine: {machine()}", f"- commit: {commit()}", f"- command: `{command}`"]
    return "\n".join(head + list(lines)) + "\n"


@contextmanager
def _locked(path: Path):
    """Exclusive lock on the file's folder so two benchmarks never lose each other's block."""
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def append_benchmark(title: str, command: str, lines: list[str], path: str | Path = BENCHMARKS_FILE) -> Path:
    """Append a dated benchmark block to BENCHMARKS.md (read, append, atomic replace, under a lock)."""
    path = Path(path)
    with _locked(path):
        text = path.read_text() if path.exists() else HEADER
        text = text.rstrip("\n") + "\n\n" + benchmark_block(title, command, lines)
        return atomic_write_text(text, path)


def publish(title: str, lines: list[str], script: str, argv: list[str] | None, append: bool = True) -> None:
    """Print a benchmark's result lines and (unless ``append`` is false) append them as a dated block.

    The block's command is ``python -m benchmarks.<script's name> <argv>`` (``argv`` None: this process's
    arguments).
    """
    print("\n".join(lines))
    if append:
        args = sys.argv[1:] if argv is None else argv
        command = " ".join(["python", "-m", f"benchmarks.{Path(script).stem}", *args])
        print(f"appended to {append_benchmark(title, command, lines)}")


@contextmanager
def bench_runs_dir(chosen: Path | None, prefix: str):
    """A benchmark's runs directory: ``chosen`` (--runs-dir, kept) when given, else a temporary one removed after."""
    if chosen is not None:
        yield Path(chosen)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def over_seeds(args, prefix: str, run_seed) -> list:
    """``run_seed(args, runs_dir, seed)`` for every fold seed of ``args.seeds`` in the benchmark's runs directory
    (``args.runs_dir``, or a temporary one); the list of its results."""
    per_seed = []
    with bench_runs_dir(args.runs_dir, prefix) as runs_dir:
        for seed in args.seeds:
            per_seed.append(run_seed(args, runs_dir, seed))
            print(f"fold seed {seed}: done", flush=True)
    return per_seed


def finished(run_dir: Path, train) -> dict:
    """The metrics of a finished run (metrics.json), else what ``train`` returns (a kill-then-rerun resumes)."""
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else train()


def encoder_input_args(weights: str | Path) -> list[str]:
    """train_cnn.py options that embed with an encoder of pretrain_cnn.py as it was trained (its crop and input
    size, from encoder.json), whatever the preset's; none for other weights."""
    from lib.cnn.pretrain import encoder_record

    record = encoder_record(Path(weights))
    return [] if record is None else ["--crop", str(record["crop"]), "--input-size", str(record["input_size"])]


def epochs_label(record: dict, unit: str = "ep") -> str:
    """'25 ep', or '50+40 ep' for a run continued from another encoder."""
    from lib.cnn.pretrain import total_epochs

    parent = total_epochs(record) - record["epochs"]
    return f"{parent}+{record['epochs']} {unit}" if parent else f"{record['epochs']} {unit}"


def quality_line(name: str, runs: list[dict], wall: bool = False) -> str:
    """'- name: BA m±s, AUC m±s (per seed BA ...)' from the metrics.json of one run per fold seed.

    ``wall``: add the mean wall time of a run (its ``total_seconds``).
    """
    ba, auc = [r["ba_mean"] for r in runs], [r["auc_mean"] for r in runs]
    line = f"- {name}: BA {mean_std(ba)}, AUC {mean_std(auc)} (per seed BA {', '.join(f'{v:.3f}' for v in ba)})"
    return line + (f"; {np.mean([r['total_seconds'] for r in runs]):.0f} s per 5-fold run" if wall else "")


def blend_line(name: str, nested: list[dict]) -> str:
    """'- blend name: nested BA m±s, AUC m±s (per seed BA ...; at the searched threshold m±s)' from ensemble.py's
    nested estimates, one per fold seed (its threshold policy, and the BA had the threshold been searched)."""
    ba = [n["ba_mean"] for n in nested]
    searched = [n["threshold_policies"]["tuned"]["ba_mean"] for n in nested]
    return (f"- blend {name}: nested BA {mean_std(ba)} at threshold {nested[0]['threshold_policy']}, AUC "
            f"{mean_std([n['auc'] for n in nested])} (per seed BA {', '.join(f'{v:.3f}' for v in ba)}; at the "
            f"searched threshold {mean_std(searched)})")


def bagged_line(name: str, bagged: dict, runs: list[dict]) -> str:
    """'- bagged over the n fold seeds, name: pooled AUC/BA' of the seed-averaged run beside the single seeds'."""
    single_auc, single_ba = np.mean([r["pooled_auc"] for r in runs]), np.mean([r["pooled_ba"] for r in runs])
    return (f"- bagged over the {len(runs)} fold seeds, {name}: pooled AUC {bagged['pooled_auc']:.3f} "
            f"(single seeds {single_auc:.3f}), pooled BA {bagged['pooled_ba']:.3f} (single seeds {single_ba:.3f})")
