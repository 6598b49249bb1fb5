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
from pathlib import Path

from lib.core.cli import run_main
from lib.core.config import ArgParser, with_options
from lib.core.errors import raise_first
from lib.core.paths import CACHE_DIR, FOLDS_DIR, REPO_DIR, RUNS_DIR
from lib.fusion.fuse import DEFAULT_FUSION, FUSIONS
from lib.pipeline.commands import FINETUNE_CONFIG, PipelineSettings
from lib.pipeline.run import Runner, run_child, run_pipeline

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
    return with_options(args, **{option: _absolute(getattr(args, option)) for option in PATH_OPTIONS})


def _absolute(value: Path | None) -> Path | None:
    """A path option as an absolute path (None stays None)."""
    return None if value is None else Path(value).expanduser().resolve()


def main(argv=None, runner: Runner = run_child) -> dict[str, float]:
    """Run every stage (``runner``: each as its own process, or ``lib.core.cli.run_in_process``); return the wall time of each
    (seconds)."""
    args = parse_args(argv)
    settings = PipelineSettings(runs_dir=args.runs_dir, folds_dir=args.folds_dir, cache_dir=args.cache_dir,
                                out=args.out, cnn_config=args.cnn_config, pretrain_config=args.pretrain_config,
                                with_finetune=args.with_finetune, trials=args.trials, fusion=args.fusion)
    return run_pipeline(settings, args.data_dir, args.fold_seeds or [args.fold_seed], runner)


if __name__ == "__main__":
    run_main(main)
