"""What every stage does first: the validated data, its committed folds and the run directory, as one object."""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lib.core.config import config_dict
from lib.core.io import atomic_write_json
from lib.core.paths import FOLDS_DIR, RUNS_DIR
from lib.core.runs import create_run
from lib.data.dataset import Dataset, load_dataset
from lib.data.folds import load_folds
from lib.data.locate import resolve_data_dir
from lib.data.profile import PROFILE_FILE, check_test_cells, split_profiles

log = logging.getLogger(__name__)
OnFold = Callable[[int, pd.DataFrame], None]


@dataclass
class Stage:
    """Inputs of a stage: settings, validated data, folds and the run directory.

    ``on_fold(k, running_oof)``, when set (a study's trial), is called by lib.stages.cv after each fold
    with the OOF table of the folds done so far; it may raise (e.g. ``optuna.TrialPruned``) to stop.
    """

    args: argparse.Namespace
    dataset: Dataset
    folds: pd.DataFrame
    run_dir: Path
    on_fold: OnFold | None = None


def load_stage_data(args: argparse.Namespace) -> Dataset:
    """Resolve ``args.data_dir`` (the demo data when unset) and load the validated dataset."""
    args.data_dir = resolve_data_dir(args.data_dir)
    dataset = load_dataset(args.data_dir)
    args.dataset_name = dataset.name
    args.test_inputs = dataset.test_inputs()  # what make_submission.py and report.py check the data against
    if reads_cells(args):
        for warning in check_test_cells(dataset):  # another size or grayscale: DataError
            log.warning(warning)
    return dataset


def reads_cells(args: argparse.Namespace) -> bool:
    """Whether a stage's model reads the cell images (the CNN; the clinical model with cell features)."""
    stage = getattr(args, "stage", None)
    return stage == "cnn" or (stage == "clinical" and getattr(args, "feature_set", "clinical") != "clinical")


def open_stage(args: argparse.Namespace, default_experiment: str, dataset: Dataset | None = None) -> Stage:
    """Read the folds and create (or resume) the run directory with the resolved config.

    ``dataset``: the data already loaded (and checked) by the caller; loaded here when None.
    """
    dataset = dataset if dataset is not None else load_stage_data(args)
    folds = load_folds(dataset, args.n_folds, args.fold_seed, folds_dir(args))
    args.experiment = args.experiment or default_experiment
    run_dir = Path(args.runs_dir or RUNS_DIR) / args.experiment
    create_run(run_dir, config_dict(args), resume=args.resume)
    if reads_cells(args) and not (run_dir / PROFILE_FILE).exists():
        atomic_write_json(split_profiles(dataset), run_dir / PROFILE_FILE)
    log.info("data %s (%d train, %d test patients); run directory %s",
             dataset.name, len(dataset.train), len(dataset.test), run_dir)
    return Stage(args, dataset, folds, run_dir)


def folds_dir(args: argparse.Namespace) -> Path:
    """Where the fold files are read (and written once): ``--folds-dir``, default folds/."""
    return Path(getattr(args, "folds_dir", None) or FOLDS_DIR)
