"""Visual report of an ensemble run: how good the models are (ROC, confusion, per-fold, calibration)
and why a patient is called tumoral (montages of the cells the CNN weighted most and least).

Entry point: ``lib.stages.report.build.build_report``; ``report.py`` is the command line.
"""
