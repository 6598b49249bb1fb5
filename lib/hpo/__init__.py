"""Hyper-parameter studies of the training scripts (``--study NAME``): search spaces and trial glue.

lib.hpo.space: declaring a search space; lib.hpo.runner: study mode (each trial a normal run directory);
lib.hpo.cnn / lib.hpo.clinical: the search space of train_cnn.py / train_clinical.py, one place each.
"""
from lib.hpo.runner import StudyPlan, add_study_args, run_study

__all__ = ["StudyPlan", "add_study_args", "run_study"]
