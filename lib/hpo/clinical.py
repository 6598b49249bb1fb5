"""The search space of ``train_clinical.py --study`` (declared here, in one place) and its trial glue.

feature_set -> --feature-set (the shuffled-morphometry control is not a candidate), logreg_penalty ->
--penalty (l2, or sparse l1), logreg_C -> --C: ``cv`` (chosen by inner CV on each training fold, the
script's default) or one fixed value of a log grid 1e-3..1e2.
"""
from __future__ import annotations

import argparse

from optuna.distributions import CategoricalDistribution

from lib.data.dataset import Dataset
from lib.hpo.runner import StudyPlan
from lib.hpo.space import Param
from lib.stages.clinical import train_clinical
from lib.stages.context import Stage

FEATURE_SET_CHOICES = ("clinical", "clinical+ncells", "clinical+morpho")
PENALTY_CHOICES = ("l2", "l1")
C_CHOICES = ("cv", 0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


def clinical_space(args: argparse.Namespace, dataset: Dataset) -> list[Param]:
    """The clinical search space, in one place."""
    return [
        Param("feature_set", "feature_set", CategoricalDistribution(FEATURE_SET_CHOICES)),
        Param("logreg_penalty", "penalty", CategoricalDistribution(PENALTY_CHOICES), fallback="l2"),
        Param("logreg_C", "C", CategoricalDistribution(C_CHOICES), fallback="cv"),
    ]


def check_trial(args: argparse.Namespace, dataset: Dataset) -> None:
    """Nothing to resolve: argparse and the feature registry validate the clinical options."""
    return None


def train_trial(stage: Stage, setup: None) -> dict:
    """Cross-validate one trial through train_clinical.py's code path, without its figures (a study's trials are
    read from trials.csv and its plots; best.yaml re-run as a plain run draws them)."""
    return train_clinical(stage, plots=False)


def clinical_plan() -> StudyPlan:
    """What ``train_clinical.py --study`` searches and runs."""
    return StudyPlan(script="train_clinical.py", space=clinical_space, check=check_trial, train=train_trial)
