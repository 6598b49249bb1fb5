"""Spend a time budget (a night) on a better submission, resumably, and say whether it paid.

  python overnight.py --data-dir ../shared/data/lymphocytosis --budget 8h

It measures this machine, prints the plan (each stage, its estimate, its finish time), then in runs/<dataset>_night/:
continues the shipped encoder lymph-ssl when enough epochs fit (--encoder-init none: learns one from scratch), runs the
Optuna studies on --select-seed, trains the default pipeline's models and the night's on --bag-seeds, bags them, and
writes the final blend, report, submission and summary.md (honest estimates beside the default pipeline's, and whether
the night won). Killed, the same command resumes; --storage URL lets several machines share the studies.
Details: docs/studies-and-overnight.md (lib/night/ does the work).
"""
from pathlib import Path

from lib.core.cli import run_main
from lib.core.config import ArgParser
from lib.core.errors import DataError, raise_first
from lib.core.paths import CACHE_DIR, CONFIGS_DIR, FOLDS_DIR, REPO_DIR, RUNS_DIR
from lib.core.storage import check_storage
from lib.models.shipped import SHIPPED, shipped_path
from lib.night import plan
from lib.night.run import run_night
from lib.night.settings import NightSettings
from lib.pipeline.run import Runner, run_child

PATHS = ("data_dir", "out", "runs_dir", "folds_dir", "cache_dir", "cnn_config", "ssl_cnn_config", "pretrain_config")


def parse_args(argv=None) -> NightSettings:
    """The command line as the night's settings, every option checked before any work."""
    parser = ArgParser(description=__doc__.splitlines()[0])
    a = parser.add_argument
    a("--budget", type=plan.parse_budget, required=True, help="wall time to spend, e.g. 8h, 90m, 1h30m")
    a("--data-dir", type=Path, help="competition directory (default: the embedded demo data)")
    a("--out", type=Path, default=REPO_DIR / "submission.csv", help="submission; summary.md is written beside it")
    a("--runs-dir", type=Path, default=RUNS_DIR, help="parent of the night's directory <dataset>_night/")
    a("--folds-dir", type=Path, default=FOLDS_DIR)
    a("--cache-dir", type=Path, default=CACHE_DIR)
    a("--select-seed", type=int, default=42, help="fold seed the studies select settings on")
    a("--bag-seeds", type=int, nargs="+", default=[43, 44, 45],
      help="fold seeds of the final models (bagged) and of the honest estimates: none may be --select-seed")
    a("--encoder", choices=("auto", "on", "off"), default="auto",
      help="the label-free encoder: auto = learnt when >= 25 epochs fit 40%% of the budget at the measured rate")
    a("--encoder-scope", choices=("all", "train"), default="all",
      help="cells the encoder learns from: all (train + test, no labels) or train only")
    a("--encoder-init", choices=(*SHIPPED, "none"), default=SHIPPED[0],
      help=f"the night starts from the shipped encoder (default {SHIPPED[0]}: continued when the encoder is on, used as "
           f"it is when off) or none (learnt from scratch, >= 25 epochs)")
    a("--storage", metavar="URL", help="Optuna RDB shared by several machines (default: sqlite in the night dir)")
    a("--ensemble-trials", type=int, default=100, help="Optuna trials of each blend")
    a("--cnn-config", type=Path, default=CONFIGS_DIR / "cnn_cpu.yaml", help="the default CNN preset")
    a("--ssl-cnn-config", type=Path, default=CONFIGS_DIR / "cnn_cpu_ssl.yaml", help="CNN preset on the encoder")
    a("--pretrain-config", type=Path, default=CONFIGS_DIR / "pretrain_cpu.yaml", help="the encoder's preset")
    a("--plan-only", action="store_true", help="measure, print the plan and stop")
    args = parser.parse_args(argv)
    bag = args.bag_seeds
    raise_first([(min([args.select_seed, *bag]) < 0, "fold seeds must be >= 0"),
                 (len(set(bag)) != len(bag), f"--bag-seeds {bag}: a seed given twice"),
                 (args.select_seed in bag, f"--bag-seeds {bag} include --select-seed {args.select_seed}: the honest "
                  "estimates need fold seeds that chose nothing"),
                 (args.ensemble_trials < 1, f"--ensemble-trials {args.ensemble_trials} must be >= 1")])
    paths = {o: None if getattr(args, o) is None else Path(getattr(args, o)).expanduser().resolve() for o in PATHS}
    settings = NightSettings(**{**vars(args), **paths})
    for option in ("cnn_config", "ssl_cnn_config", "pretrain_config"):
        if not getattr(settings, option).is_file():
            raise DataError(f"{getattr(settings, option)}: --{option.replace('_', '-')} not found")
    check_storage(settings.storage)
    if settings.encoder_init != "none":
        shipped_path(settings.encoder_init)  # its card and content hash
    return settings


def main(argv=None, runner: Runner = run_child, measure=None) -> Path | None:
    """Plan and run the night (``measure``: the machine probe, lib.night.probe.probe by default); return the summary."""
    return run_night(parse_args(argv), runner, measure)


if __name__ == "__main__":
    run_main(main)
