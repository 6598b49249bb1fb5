"""Synthetic DEMO competition directory, so the toolkit runs end to end without any download.

Layout imitates the 2024 lymphocytosis data: ``trainset/trainset_true.csv``,
``testset/testset_data.csv`` (columns ``ID,LABEL,GENDER,DOB,LYMPH_COUNT``, test LABEL = -1)
and one folder of 224x224 RGB JPEG cells per patient (``P<id>/000000.jpg`` ...).
Real quirks are reproduced: DOB mixes ``M/D/YYYY`` and ``DD-MM-YYYY``; GENDER has an
occasional lowercase ``f``.  DEMO-ONLY: ``demo_test_truth.csv`` (ID,LABEL) holds the test
labels so the demo can score its own submission; the real data has no such file.
"""
from lib.data.demo.build import GENERATOR_VERSION, MARKER_NAME, TRUTH_NAME, generate_demo
from lib.data.demo.cells import IMAGE_SIZE, noise_bank, render_cell
from lib.data.demo.cohort import PatientSpec, sample_patients

__all__ = [
    "GENERATOR_VERSION",
    "IMAGE_SIZE",
    "MARKER_NAME",
    "PatientSpec",
    "TRUTH_NAME",
    "generate_demo",
    "noise_bank",
    "render_cell",
    "sample_patients",
]
