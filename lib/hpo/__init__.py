"""Hyper-parameter studies of the training scripts (``--study NAME``): search spaces and trial glue.

lib.hpo.options: the study options (light); lib.hpo.space: declaring a search space; lib.hpo.runner: study
mode (each trial a normal run directory); lib.hpo.cnn / lib.hpo.clinical: the search space of train_cnn.py /
train_clinical.py, one place each. Nothing is imported here, so ``import lib.hpo.options`` stays light.
"""
