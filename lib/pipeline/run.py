"""Running the pipeline: each stage script as its own process in the repository (stopped cleanly by a signal,
resumed by a re-run), fold-seed bagging of the models, and the whole pipeline (``run_pipeline``, pipeline.py's
body)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import yaml

from lib.core.cli import INTERRUPTED
from lib.core.config import yaml_problem
from lib.core.errors import DataError
from lib.core.paths import CONFIGS_DIR, REPO_DIR
from lib.data.dataset import load_dataset
from lib.data.locate import resolve_data_dir
from lib.models.shipped import is_shipped
from lib.pipeline.commands import PipelineSettings, blend_stages, model_stages, models, pretrain_stage
from lib.stages.bagging import bag_runs

Runner = Callable[[list[str]], int]


def run_child(command: list[str]) -> int:
    """Run a stage script in the repository and wait for it; SIGTERM/SIGINT sent to the pipeline are forwarded to
    the stage, which stops cleanly (and resumes on a re-run), and the pipeline waits for it: no orphan is left."""
    child = subprocess.Popen([sys.executable, *command], cwd=REPO_DIR, process_group=0)  # Ctrl-C reaches it once

    def forward(signum, _frame):
        child.send_signal(signum)
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_stage(name: str, command: list[str], seconds: dict[str, float], runner: Runner = run_child) -> None:
    """Run one stage script; stop the pipeline (one line) when it fails or was stopped by a signal."""
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    began = time.perf_counter()
    code = runner(command)
    if code == INTERRUPTED:  # the stage caught Ctrl-C itself (lib.core.cli.run_main): one line, no traceback
        print(f"pipeline: stage {name} stopped by SIGINT; re-run the same command to resume", file=sys.stderr)
        sys.exit(INTERRUPTED)
    if code < 0:
        sys.exit(f"pipeline: stage {name} stopped by {signal.Signals(-code).name}; re-run the same command to resume")
    if code:
        sys.exit(f"pipeline: stage {name} failed (exit {code}); fix it and re-run to resume")
    seconds[name] = time.perf_counter() - began
    print(f"=== {name}: {seconds[name]:.0f} s", flush=True)


def bag_models(name: str, seeds: list[int], settings: PipelineSettings, seconds: dict[str, float],
               names: list[str] | None = None) -> str:
    """Average every model (``names``, default ``models(settings)``) over the fold seeds into
    runs/<name>_bag<seeds>/ (lib.stages.bagging); its tag."""
    tag, began = f"{name}_bag{'-'.join(map(str, seeds))}", time.perf_counter()
    for model in names or models(settings):
        metrics = bag_runs([settings.runs_dir / f"{name}_s{seed}" / model for seed in seeds],
                           settings.runs_dir / tag / model)
        print(f"=== bagged {model} over fold seeds {seeds}: OOF BA {metrics['ba_mean']:.3f}, "
              f"AUC {metrics['auc_mean']:.3f}", flush=True)
    seconds["bag"] = time.perf_counter() - began
    return tag


def check_finetune(settings: PipelineSettings) -> None:
    """Before any stage: the fine-tune preset exists, and its weights do unless the encoder is learnt here."""
    if not settings.with_finetune:
        return
    config = settings.with_finetune
    if not config.is_file():
        raise DataError(f"{config}: --with-finetune config not found")
    if not settings.pretrain_config:
        from lib.models.backbones import resolve_weights  # torch, timm: only with --with-finetune
        try:
            weights = str((yaml.safe_load(config.read_text()) or {}).get("weights", "lite0"))
        except yaml.YAMLError as exc:
            raise DataError(f"{config}: not valid YAML ({yaml_problem(exc)})") from None
        named = weights in ("lite0", "none") or is_shipped(weights)  # resolve_weights' names, not files
        try:  # the stages run in the repository: a relative weights path is relative to it
            resolve_weights(weights if named else str(REPO_DIR / weights), settings.cache_dir)
        except DataError as exc:
            raise DataError(f"{config}: {exc} (learn the encoder in this run with --pretrain-config "
                            f"configs/pretrain_cpu.yaml)") from None


def run_pipeline(settings: PipelineSettings, data_dir: Path | None, seeds: list[int],
                 runner: Runner = run_child) -> dict[str, float]:
    """Every stage on the data directory (None: the demo data) and fold ``seeds`` (several: fold-seed bagging), each
    through ``runner`` (its own process, or ``lib.core.cli.run_in_process``); the wall time of each (seconds)."""
    data_dir = resolve_data_dir(data_dir)
    name = load_dataset(data_dir).name
    start, seconds = time.perf_counter(), {}
    check_finetune(settings)
    settings = replace(settings, cnn_config=settings.cnn_config or CONFIGS_DIR / (
        "cnn_cpu_ssl.yaml" if settings.pretrain_config else "cnn_cpu.yaml"))
    if settings.pretrain_config:
        run_stage(*pretrain_stage(data_dir, name, settings), seconds, runner)
    for seed in seeds:
        for stage, command in model_stages(data_dir, name, seed, settings):
            run_stage(stage if len(seeds) == 1 else f"{stage}_s{seed}", command, seconds, runner)
    tag = f"{name}_s{seeds[0]}" if len(seeds) == 1 else bag_models(name, seeds, settings, seconds)
    for stage, command in blend_stages(data_dir, tag, settings):
        run_stage(stage, command, seconds, runner)
    runs_dir = settings.runs_dir
    print(f"\npipeline: {settings.out} written in {time.perf_counter() - start:.0f} s; "
          f"runs in {runs_dir / tag}, report {runs_dir / tag / 'ensemble' / 'report' / 'index.html'}")
    return seconds
