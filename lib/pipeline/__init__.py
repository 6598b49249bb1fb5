"""The default pipeline (pipeline.py), one stage script after another up to submission.csv.

lib.pipeline.commands: its settings (``PipelineSettings``) and the command line of every stage, also the
night's building blocks (lib.night); lib.pipeline.run: running the stages (a process each, signals forwarded),
fold-seed bagging and the whole pipeline (``run_pipeline``); lib.pipeline.speed: the speed figures of a finished
CNN stage. Nothing is imported here, so each stays as light as it is.
"""
