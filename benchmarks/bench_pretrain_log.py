"""Benchmark: the pretraining time of a finished pretrain_cnn.py run (or a shipped encoder's), from its own per-epoch
log: wall time, seconds an epoch and cells/s, with the epochs slowed by other jobs on the machine told apart.

Usage: python -m benchmarks.bench_pretrain_log --run runs/lymph_ssl_a64 [--no-append]
An epoch counts as contended when it took more than 1.5x the median epoch (other jobs shared the cores then); the
uncontended median is the machine's rate for this recipe. Reads only the run's log.csv and encoder.json.
"""
import argparse
import json
from pathlib import Path

import pandas as pd

from benchmarks.common import publish
from lib.core.machine import cpu_model

CONTENDED = 1.5  # an epoch this many times the median: other jobs shared the machine


def native_bf16() -> str:
    from lib.cnn.device import cpu_has_bf16  # torch
    return "yes, AVX512-BF16 or AMX" if cpu_has_bf16() else "no"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished pretrain_cnn.py run directory")
    parser.add_argument("--no-append", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    log = pd.read_csv(args.run / "log.csv")
    record = json.loads((args.run / "encoder.json").read_text())
    median = float(log["seconds"].median())
    quiet = log[log["seconds"] <= CONTENDED * median]
    cells = record["n_cells"]
    lines = [f"- run: {args.run}: {record['objective']} {record['backbone']}, {record['crop']}->{record['input_size']} "
             f"px, batch {record['batch_size']}, {record['epochs']} epochs ({record.get('epochs_total', record['epochs'])} "
             f"in all), {cells} cells (scope {record['scope']}), precision {record['precision']}, "
             f"{record['torch_threads']} torch threads; CPU: {cpu_model()} (native bf16: {native_bf16()})",
             f"- wall time of the epochs: {log['seconds'].sum() / 60:.0f} min in all; {len(log) - len(quiet)} of "
             f"{len(log)} epochs contended (> {CONTENDED}x the median: other jobs shared the 2 cores)",
             f"- uncontended: {quiet['seconds'].median():.0f} s an epoch, {quiet['img_per_s'].median():.0f} img/s "
             f"({quiet['img_per_s'].median() / 2:.0f} cells/s, two views each); the recipe alone: "
             f"~{quiet['seconds'].median() * len(log) / 60:.0f} min",
             f"- NT-Xent loss: {log['loss'].iloc[0]:.3f} (epoch 1) -> {log['loss'].iloc[-1]:.3f} (epoch {len(log)})"]
    publish("Pretraining time of an encoder run", lines, __file__, argv, append=not args.no_append)
    return lines


if __name__ == "__main__":
    main()
