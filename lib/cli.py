"""What every stage script does first: resolve the data, read the folds, open the run directory."""
import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lib.config import config_dict
from lib.data import Dataset, load_dataset
from lib.errors import DataError
from lib.folds import load_folds
from lib.paths import DEMO_DATA_DIR, RUNS_DIR
from lib.runs import create_run

log = logging.getLogger(__name__)


@dataclass
class Stage:
    """Inputs of a stage: settings, validated data, folds and the run directory."""

    args: argparse.Namespace
    dataset: Dataset
    folds: pd.DataFrame
    run_dir: Path


def resolve_data_dir(data_dir: Path | None) -> Path:
    """The given data directory, or the embedded demo data (generated on first use)."""
    if data_dir is not None:
        return Path(data_dir).resolve()
    from lib.demo import generate_demo
    log.info("no --data-dir: using the embedded demo data in %s", DEMO_DATA_DIR)
    return generate_demo(DEMO_DATA_DIR)


def open_stage(args: argparse.Namespace, default_experiment: str) -> Stage:
    """Load data and folds and create (or resume) the run directory with the resolved config."""
    args.data_dir = resolve_data_dir(args.data_dir)
    dataset = load_dataset(args.data_dir)
    folds = load_folds(dataset, args.n_folds, args.fold_seed)
    args.experiment = args.experiment or default_experiment
    args.dataset_name = dataset.name
    run_dir = Path(args.runs_dir or RUNS_DIR) / args.experiment
    create_run(run_dir, config_dict(args), resume=args.resume)
    log.info("data %s (%d train, %d test patients); run directory %s",
             dataset.name, len(dataset.train), len(dataset.test), run_dir)
    return Stage(args, dataset, folds, run_dir)


def run_main(main) -> None:
    """Call ``main()``, turning bad-input errors into a one-line message and exit code 2."""
    try:
        main()
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
