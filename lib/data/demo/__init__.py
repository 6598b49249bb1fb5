"""Synthetic DEMO competition directory, so the toolkit runs end to end without any download.

Layout imitates the 2024 lymphocytosis data: ``trainset/trainset_true.csv``,
``testset/testset_data.csv`` (columns ``ID,LABEL,GENDER,DOB,LYMPH_COUNT``, test LABEL = -1)
and one folder of 224x224 RGB JPEG cells per patient (``P<id>/000000.jpg`` ...).
Real quirks are reproduced: DOB mixes ``M/D/YYYY`` and ``DD-MM-YYYY``; GENDER has an
occasional lowercase ``f``.  DEMO-ONLY: ``demo_test_truth.csv`` (ID,LABEL) holds the test
labels so the demo can score its own submission; the real data has no such file.

Modules: build (``generate_demo``, the marker and truth file names), cells (rendering, OpenCV), cohort
(patient sampling). Nothing is imported here: the generator loads OpenCV only when the demo is built.
"""
