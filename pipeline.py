"""The whole pipeline on one data directory, each stage a script run in turn, up to submission.csv.

Stages: prepare (validate + folds) -> clinical -> clinical+morphometry -> CNN (mean head, the CPU
preset) -> CNN (attention head on the same cached embeddings, whose cell weights the report shows) ->
ensemble -> report -> submission. Re-running it resumes: finished folds and trials are kept.
With ``--fold-seeds 42 43 44`` the model stages run on each committed split, each model's OOF and test
predictions are averaged over the splits (fold-seed bagging, lib/stages/bagging.py) and the ensemble,
report and submission use the averages (runs/<dataset>_bag42-43-44/). With ``--pretrain-config
configs/pretrain_cpu.yaml`` a self-supervised cell encoder is learnt first (runs/<dataset>_ssl/, label-free,
shared by the fold seeds) and the CNN stages embed the cells with it (configs/cnn_cpu_ssl.yaml). With
``--with-finetune`` a CNN fine-tuned end to end (default configs/cnn_cpu_finetune.yaml, initialised from that
encoder) joins the blend as one more model.
"""
import argparse
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from lib.core.cli import run_main
from lib.core.config import ArgParser
from lib.core.errors import DataError, raise_first
from lib.core.paths import CACHE_DIR, CONFIGS_DIR, FOLDS_DIR, REPO_DIR, RUNS_DIR
from lib.data.dataset import load_dataset
from lib.data.locate import resolve_data_dir
from lib.fusion.fuse import DEFAULT_FUSION, FUSIONS
from lib.stages.bagging import bag_runs

MODELS = ("clinical", "morpho", "cnn", "cnn_attention")
FINETUNE_CONFIG = CONFIGS_DIR / "cnn_cpu_finetune.yaml"
PATH_OPTIONS = ("data_dir", "out", "runs_dir", "folds_dir", "cache_dir", "cnn_config", "pretrain_config",
                "with_finetune")  # resolved once against the caller's directory: the stages run in the repository


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="competition directory (default: the embedded demo data)")
    parser.add_argument("--out", type=Path, default=REPO_DIR / "submission.csv")
    parser.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="parent of the run directories")
    parser.add_argument("--fold-seed", type=int, default=42, help="which committed fold file to use")
    parser.add_argument("--fold-seeds", type=int, nargs="+", default=None,
                        help="fold-seed bagging: run the models on each of these committed splits, average each "
                             "patient's OOF and test predictions over them, then blend the averages")
    parser.add_argument("--folds-dir", type=Path, default=FOLDS_DIR, help="where the fold files are")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="decoded-image, weights, embedding and "
                        "morphometry caches")
    parser.add_argument("--cnn-config", type=Path, default=None,
                        help="train_cnn.py preset (default configs/cnn_cpu.yaml; with --pretrain-config "
                             "configs/cnn_cpu_ssl.yaml)")
    parser.add_argument("--pretrain-config", type=Path, default=None,
                        help="first learn a self-supervised cell encoder with pretrain_cnn.py and this preset (e.g. "
                             "configs/pretrain_cpu.yaml, ~25 min on the shared data with native bf16, ~1 h in fp32 "
                             "on AVX2), then embed the cells with it")
    parser.add_argument("--with-finetune", nargs="?", type=Path, const=FINETUNE_CONFIG, default=None, metavar="CONFIG",
                        help="add a CNN fine-tuned end to end to the blend (train_cnn.py --regime finetune preset; "
                             f"the flag alone: {FINETUNE_CONFIG.relative_to(REPO_DIR)}, initialised from the --pretrain-config encoder; "
                             "~7 min per fold seed on 2 CPU cores with the shared data)")
    parser.add_argument("--trials", type=int, default=100, help="ensemble study trials (--fusion study)")
    parser.add_argument("--fusion", choices=FUSIONS, default=DEFAULT_FUSION,
                        help=f"ensemble.py --fusion: equal (equal weights, nothing fitted) or study (Optuna weights); "
                             f"default {DEFAULT_FUSION}")
    args = parser.parse_args(argv)
    raise_first([(args.trials < 1, f"--trials {args.trials} must be >= 1"),
                 (min([args.fold_seed, *(args.fold_seeds or [])]) < 0, "fold seeds must be >= 0"),
                 (len(set(args.fold_seeds or [])) != len(args.fold_seeds or []), f"--fold-seeds {args.fold_seeds}: "
                  "a seed given twice")])
    for option in PATH_OPTIONS:
        value = getattr(args, option)
        setattr(args, option, None if value is None else Path(value).expanduser().resolve())
    return args


def models(args: argparse.Namespace) -> tuple[str, ...]:
    """The blended models' run names."""
    return (*MODELS, "cnn_finetune") if args.with_finetune else MODELS


def check_finetune(args: argparse.Namespace) -> None:
    """Before any stage: the fine-tune preset exists, and its weights do unless the encoder is learnt here."""
    if not args.with_finetune:
        return
    config = args.with_finetune
    if not config.is_file():
        raise DataError(f"{config}: --with-finetune config not found")
    if not args.pretrain_config:
        from lib.models.backbones import resolve_weights  # torch, timm: only with --with-finetune
        weights = str((yaml.safe_load(config.read_text()) or {}).get("weights", "lite0"))
        try:  # the stages run in the repository: a relative weights path is relative to it
            resolve_weights(weights if weights in ("lite0", "none") else str(REPO_DIR / weights), args.cache_dir)
        except DataError as exc:
            raise DataError(f"{config}: {exc} (learn the encoder in this run with --pretrain-config "
                            f"configs/pretrain_cpu.yaml)") from None


def pretrain_stage(data_dir: Path, name: str, args: argparse.Namespace) -> tuple[str, list[str]]:
    """The label-free encoder of the data directory, shared by every fold seed: runs/<dataset>_ssl/."""
    return ("pretrain", ["pretrain_cnn.py", "-c", str(args.pretrain_config), "--data-dir", str(data_dir), "--runs-dir",
                         str(args.runs_dir), "--cache-dir", str(args.cache_dir), "--experiment", f"{name}_ssl",
                         "--resume"])


def encoder_weights(name: str, args: argparse.Namespace) -> list[str]:
    """train_cnn.py's --weights of the pretrained encoder (none without --pretrain-config)."""
    return ["--weights", str(args.runs_dir / f"{name}_ssl" / "encoder.pth")] if args.pretrain_config else []


def run_options(data_dir: Path, seed: int, args: argparse.Namespace) -> list[str]:
    """The data, runs, folds and cache options every training stage of one fold seed takes."""
    return ["--data-dir", str(data_dir), "--runs-dir", str(args.runs_dir), "--fold-seed", str(seed), "--folds-dir",
            str(args.folds_dir), "--cache-dir", str(args.cache_dir)]


def model_stages(data_dir: Path, name: str, seed: int, args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(name, script + arguments) of the stages up to the models, on the folds of one seed (runs/<name>_s<seed>/)."""
    tag = f"{name}_s{seed}"
    data = ["--data-dir", str(data_dir)]
    folds = ["--fold-seed", str(seed), "--folds-dir", str(args.folds_dir)]
    common = [*run_options(data_dir, seed, args), "--resume"]
    cnn = ["train_cnn.py", "-c", str(args.cnn_config), *common, *encoder_weights(name, args)]
    run = {name: f"{tag}/{name}" for name in models(args)}
    finetune = [("cnn_finetune", ["train_cnn.py", "-c", str(args.with_finetune), *common, *encoder_weights(name, args),
                                  "--experiment", run["cnn_finetune"]])] if args.with_finetune else []
    return [
        ("prepare", ["prepare_data.py", *data, *folds]),
        ("clinical", ["train_clinical.py", *common, "--experiment", run["clinical"]]),
        ("morpho", ["train_clinical.py", *common, "--feature-set", "clinical+morpho", "--experiment", run["morpho"]]),
        ("cnn", [*cnn, "--experiment", run["cnn"]]),
        ("cnn_attention", [*cnn, "--head", "attention", "--experiment", run["cnn_attention"]]),
        *finetune,
    ]


def ensemble_command(runs_dir: Path, tag: str, names, experiment: str, trials: int, fusion: str = DEFAULT_FUSION) -> list[str]:
    """ensemble.py over the runs ``names`` under ``runs_dir/tag``, into ``tag/experiment`` (resumed when it exists)."""
    return ["ensemble.py", "--runs", *(str(runs_dir / tag / m) for m in names), "--runs-dir", str(runs_dir),
            "--experiment", f"{tag}/{experiment}", "--trials", str(trials), "--fusion", fusion, "--resume"]


def blend_stages(data_dir: Path, tag: str, args: argparse.Namespace,
                 names: tuple[str, ...] | None = None) -> list[tuple[str, list[str]]]:
    """(name, script + arguments) of the ensemble of the models under ``tag`` (``names``, default ``models(args)``),
    its report and the submission."""
    data = ["--data-dir", str(data_dir)]
    ensemble_dir = str(args.runs_dir / tag / "ensemble")
    return [
        ("ensemble", ensemble_command(args.runs_dir, tag, names or models(args), "ensemble", args.trials, args.fusion)),
        ("report", ["report.py", "--ensemble", ensemble_dir, *data]),
        ("submission", ["make_submission.py", *data, "--ensemble", ensemble_dir, "--out", str(args.out)]),
    ]


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


Runner = Callable[[list[str]], int]


def run_stage(name: str, command: list[str], seconds: dict[str, float], runner: Runner = run_child) -> None:
    """Run one stage script; stop the pipeline (one line) when it fails or was stopped by a signal."""
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    began = time.perf_counter()
    code = runner(command)
    if code < 0:
        sys.exit(f"pipeline: stage {name} stopped by {signal.Signals(-code).name}; re-run the same command to resume")
    if code:
        sys.exit(f"pipeline: stage {name} failed (exit {code}); fix it and re-run to resume")
    seconds[name] = time.perf_counter() - began
    print(f"=== {name}: {seconds[name]:.0f} s", flush=True)


def bag_models(name: str, seeds: list[int], args: argparse.Namespace, seconds: dict[str, float],
               names: list[str] | None = None) -> str:
    """Average every model (``names``, default ``models(args)``) over the fold seeds into runs/<name>_bag<seeds>/
    (lib.stages.bagging); its tag."""
    tag, began = f"{name}_bag{'-'.join(map(str, seeds))}", time.perf_counter()
    for model in names or models(args):
        metrics = bag_runs([args.runs_dir / f"{name}_s{seed}" / model for seed in seeds], args.runs_dir / tag / model)
        print(f"=== bagged {model} over fold seeds {seeds}: OOF BA {metrics['ba_mean']:.3f}, "
              f"AUC {metrics['auc_mean']:.3f}", flush=True)
    seconds["bag"] = time.perf_counter() - began
    return tag


def main(argv=None, runner: Runner = run_child) -> dict[str, float]:
    """Run every stage (``runner``: each as its own process, or ``lib.core.cli.run_in_process``); return the wall time of each
    (seconds)."""
    args = parse_args(argv)
    data_dir = resolve_data_dir(args.data_dir)
    name, seeds = load_dataset(data_dir).name, args.fold_seeds or [args.fold_seed]
    start, seconds = time.perf_counter(), {}
    check_finetune(args)
    args.cnn_config = args.cnn_config or CONFIGS_DIR / ("cnn_cpu_ssl.yaml" if args.pretrain_config else "cnn_cpu.yaml")
    if args.pretrain_config:
        run_stage(*pretrain_stage(data_dir, name, args), seconds, runner)
    for seed in seeds:
        for stage, command in model_stages(data_dir, name, seed, args):
            run_stage(stage if len(seeds) == 1 else f"{stage}_s{seed}", command, seconds, runner)
    tag = f"{name}_s{seeds[0]}" if len(seeds) == 1 else bag_models(name, seeds, args, seconds)
    for stage, command in blend_stages(data_dir, tag, args):
        run_stage(stage, command, seconds, runner)
    print(f"\npipeline: {args.out} written in {time.perf_counter() - start:.0f} s; "
          f"runs in {args.runs_dir / tag}, report {args.runs_dir / tag / 'ensemble' / 'report' / 'index.html'}")
    return seconds


if __name__ == "__main__":
    run_main(main)
