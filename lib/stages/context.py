"""What every stage does first: the validated data, its committed folds and the run directory, as one object."""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
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


@dataclass(frozen=True)
class RunInputs:
    """What a stage resolves from its options and data, recorded in config.yaml beside the options (never written
    back into them): the data directory (the demo data when --data-dir is unset), the dataset's name, the test
    inputs make_submission.py and report.py check the data against, and the run's name."""

    data_dir: Path
    dataset_name: str
    test_inputs: dict[str, str]
    experiment: str | None = None

    def named(self, experiment: str) -> RunInputs:
        """The same inputs for the run ``experiment``."""
        return replace(self, experiment=experiment)


def run_config(args: argparse.Namespace, inputs: RunInputs) -> dict:
    """A run's config.yaml: the options with the resolved inputs merged in (data_dir and experiment in their
    option's place, dataset_name and test_inputs after the options)."""
    resolved = {"data_dir": inputs.data_dir, "dataset_name": inputs.dataset_name, "test_inputs": inputs.test_inputs}
    if inputs.experiment is not None:
        resolved["experiment"] = inputs.experiment
    return config_dict(args, resolved)


@dataclass
class Stage:
    """Inputs of a stage: settings, validated data, folds, the run directory and the run's name.

    ``on_fold(k, running_oof)``, when set (a study's trial), is called by lib.stages.cv after each fold
    with the OOF table of the folds done so far; it may raise (e.g. ``optuna.TrialPruned``) to stop.
    """

    args: argparse.Namespace
    dataset: Dataset
    folds: pd.DataFrame
    run_dir: Path
    on_fold: OnFold | None = None
    experiment: str | None = None


def load_run_inputs(args: argparse.Namespace) -> tuple[Dataset, RunInputs]:
    """Resolve ``--data-dir`` (the demo data when unset), load the validated dataset and what the run records of it."""
    data_dir = resolve_data_dir(args.data_dir)
    dataset = load_dataset(data_dir)
    inputs = RunInputs(data_dir, dataset.name, dataset.test_inputs())  # test_inputs: what make_submission.py checks
    if reads_cells(args):
        for warning in check_test_cells(dataset):  # another size or grayscale: DataError
            log.warning(warning)
    return dataset, inputs


def load_stage_data(args: argparse.Namespace) -> Dataset:
    """The validated dataset of ``--data-dir`` (see ``load_run_inputs``, which also returns what a run records)."""
    return load_run_inputs(args)[0]


def reads_cells(args: argparse.Namespace) -> bool:
    """Whether a stage's model reads the cell images (the CNN; the clinical model with cell features)."""
    stage = getattr(args, "stage", None)
    return stage == "cnn" or (stage == "clinical" and getattr(args, "feature_set", "clinical") != "clinical")


def open_stage(args: argparse.Namespace, default_experiment: str,
               loaded: tuple[Dataset, RunInputs] | None = None) -> Stage:
    """Read the folds and create (or resume) the run directory with the resolved config.

    ``loaded``: the data and inputs already loaded (and checked) by the caller (``load_run_inputs``); loaded here
    when None.
    """
    dataset, inputs = loaded if loaded is not None else load_run_inputs(args)
    folds = load_folds(dataset, args.n_folds, args.fold_seed, folds_dir(args))
    inputs = inputs.named(args.experiment or default_experiment)
    run_dir = Path(args.runs_dir or RUNS_DIR) / inputs.experiment
    create_run(run_dir, run_config(args, inputs), resume=args.resume)
    if reads_cells(args) and not (run_dir / PROFILE_FILE).exists():
        atomic_write_json(split_profiles(dataset), run_dir / PROFILE_FILE)
    log.info("data %s (%d train, %d test patients); run directory %s",
             dataset.name, len(dataset.train), len(dataset.test), run_dir)
    return Stage(args, dataset, folds, run_dir, experiment=inputs.experiment)


def folds_dir(args: argparse.Namespace) -> Path:
    """Where the fold files are read (and written once): ``--folds-dir``, default folds/."""
    return Path(getattr(args, "folds_dir", None) or FOLDS_DIR)
