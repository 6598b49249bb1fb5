"""The search space of ``train_cnn.py --study`` (declared here, in one place) and its trial glue.

Names say what they tune; each maps onto a train_cnn.py option:
mil_head -> --head, mil_topk -> --head-args k (top-k and CHOWDER heads only), mil_lr -> --lr,
mil_weight_decay -> --weight-decay, mil_epochs -> --epochs, mil_bag_size -> --bag-size (sizes above the
smallest training bag are left out; 0 = all cells), aug_strength -> --aug, embed_views -> --views (embed
regime only; views 1-2 of both strengths are what the CPU preset's embedding cache holds, more would be
embedded on first use), clinical_fusion -> --clinical-fusion. Everything else comes from the script's
settings (-c preset + command line), which also make the first, enqueued trial.
"""
from __future__ import annotations

import argparse
import inspect

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from lib.cnn.settings import STRENGTHS
from lib.core.config import with_options
from lib.data.dataset import Dataset
from lib.hpo.runner import StudyPlan
from lib.hpo.space import Param
from lib.models.heads import HEADS
from lib.stages.cnn import check_data, check_options, run_cnn
from lib.stages.context import Stage

MIL_HEADS = ("mean", "attention", "instance_bn", "topk", "chowder")
TOPK_HEADS = ("topk", "chowder")
BAG_SIZES = (8, 16, 32, 0)


def _head_options(head: str) -> dict:
    """Keyword options (with defaults) that a MIL head accepts."""
    params = inspect.signature(HEADS[head].__init__).parameters
    return {n: p.default for n, p in params.items() if n not in ("self", "in_dim", "clinical_dim")}


def uses_topk(values: dict, args: argparse.Namespace) -> bool:
    """The chosen head pools the k most (and least) suspicious cells."""
    return values.get("mil_head", args.head) in TOPK_HEADS


def embed_regime(values: dict, args: argparse.Namespace) -> bool:
    """The study runs the frozen-embedding regime (views are embedding-cache views)."""
    return args.regime == "embed"


def cnn_space(args: argparse.Namespace, dataset: Dataset) -> list[Param]:
    """The CNN search space, in one place."""
    smallest_bag = int(dataset.train["n_images"].min())
    bag_sizes = tuple(b for b in BAG_SIZES if b <= smallest_bag)
    return [
        Param("mil_head", "head", CategoricalDistribution(MIL_HEADS)),
        Param("mil_topk", "head_args.k", IntDistribution(2, 8), active=uses_topk,
              fallback=_head_options("topk")["k"]),
        Param("mil_lr", "lr", FloatDistribution(1e-4, 1e-2, log=True)),
        Param("mil_weight_decay", "weight_decay", FloatDistribution(1e-4, 1.0, log=True)),
        Param("mil_epochs", "epochs", IntDistribution(10, 80, step=10)),
        Param("mil_bag_size", "bag_size", CategoricalDistribution(bag_sizes)),
        Param("aug_strength", "aug", CategoricalDistribution(STRENGTHS)),
        Param("embed_views", "views", IntDistribution(0, 2), active=embed_regime),
        Param("clinical_fusion", "clinical_fusion", CategoricalDistribution((False, True))),
    ]


def drop_foreign_head_args(args: argparse.Namespace) -> argparse.Namespace:
    """The options with only the --head-args keys the chosen head accepts (e.g. no k for the mean head)."""
    accepted = _head_options(args.head)
    return with_options(args, head_args={k: v for k, v in (args.head_args or {}).items() if k in accepted})


def check_trial(args: argparse.Namespace, dataset: Dataset):
    """train_cnn.py's own option and data checks; returns the resolved setup."""
    setup = check_options(args)
    check_data(args, dataset)
    return setup


def train_trial(stage: Stage, setup) -> dict:
    """Cross-validate one trial through train_cnn.py's code path."""
    return run_cnn(stage, setup)


def cnn_plan() -> StudyPlan:
    """What ``train_cnn.py --study`` searches and runs."""
    return StudyPlan(script="train_cnn.py", space=cnn_space, check=check_trial, train=train_trial,
                     fixup=drop_foreign_head_args)
