"""The study options of the training scripts (``--study NAME`` ...): light, so a script's parser is built before
Optuna is imported (lib.hpo.runner runs the study)."""
import argparse

from lib.core.storage import HEARTBEAT_INTERVAL_S

STUDY_OPTIONS = ("study", "trials", "storage", "heartbeat", "prune")


def add_study_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--study NAME switches a training script into study mode; the other options tune the study."""
    g = parser.add_argument_group("hyper-parameter study (docs/studies-and-overnight.md)")
    g.add_argument("--study", metavar="NAME",
                   help="run the Optuna study NAME instead of one run; trials go to <runs-dir>/NAME/trial_<n>/")
    g.add_argument("--trials", type=int, default=20,
                   help="study: finished trials wanted in total, all workers together (default 20)")
    g.add_argument("--storage", metavar="URL",
                   help="study: Optuna RDB URL shared by workers, e.g. postgresql://user:pw@host/db "
                        "(default sqlite:///<runs-dir>/NAME/study.db)")
    g.add_argument("--heartbeat", type=int, default=None,
                   help=f"study: seconds between a running trial's heartbeats (default {HEARTBEAT_INTERVAL_S}); "
                        "one silent for twice that (its process died) is marked FAIL")
    g.add_argument("--prune", action=argparse.BooleanOptionalAction, default=None,
                   help="study: median pruning of trials on their running fold score, from the 2nd fold (default on)")
    return parser  # defaults None: run configs made before these options existed still resume
