"""Search spaces: each searched hyper-parameter has a self-explaining study name mapped onto a script option.

A ``Param`` says which option of the script it sets (``"lr"``, or ``"head_args.k"`` for a key of a
mapping option), its Optuna distribution, and when it applies (e.g. the top-k size only for the top-k
heads). The same declaration turns a trial into the script's settings (``apply``), and the script's
current settings into the first, enqueued trial (``current_values``).
"""
from __future__ import annotations

import argparse
import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

log = logging.getLogger(__name__)
Active = Callable[[dict, argparse.Namespace], bool]


def always(values: dict, args: argparse.Namespace) -> bool:
    """A parameter searched in every trial."""
    return True


@dataclass(frozen=True)
class Param:
    """One searched hyper-parameter: study name, script option it sets, distribution, when it applies."""

    name: str
    option: str
    distribution: BaseDistribution
    active: Active = always
    fallback: Any = None  # what the script does when the option is left out (None, or a missing mapping key)


def suggest(trial: optuna.Trial, space: list[Param], args: argparse.Namespace) -> dict:
    """Ask the trial for every parameter that applies, in declaration order."""
    values: dict = {}
    for p in space:
        if p.active(values, args):
            values[p.name] = _suggest_one(trial, p.name, p.distribution)
    return values


def _suggest_one(trial: optuna.Trial, name: str, d: BaseDistribution) -> Any:
    """trial.suggest_* matching the distribution type."""
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(name, d.choices)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
    if isinstance(d, FloatDistribution):
        return trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
    raise TypeError(f"unsupported distribution {d!r} for {name}")


def read_option(args: argparse.Namespace, option: str, fallback: Any = None) -> Any:
    """Value of ``option`` ("lr" or "head_args.k") in the settings (``fallback`` when absent or None)."""
    name, _, key = option.partition(".")
    value = getattr(args, name, None)
    value = (value or {}).get(key) if key else value
    return fallback if value is None else value


def apply(args: argparse.Namespace, space: list[Param], values: dict) -> argparse.Namespace:
    """A new (deep-copied) options object with the trial's values in their options; ``args`` is left unchanged."""
    options = copy.deepcopy(vars(args))
    names = {p.name: p.option for p in space}
    for name, value in values.items():
        option, _, key = names[name].partition(".")
        options[option] = {**(options.get(option) or {}), key: value} if key else value
    return argparse.Namespace(**options)


def contains(d: BaseDistribution, value: Any) -> bool:
    """Whether a value lies in a distribution (categorical: one of the choices; numbers: within bounds)."""
    if isinstance(d, CategoricalDistribution):
        return any(value == c and type(value) is type(c) for c in d.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(d, IntDistribution) and (value != int(value) or (value - d.low) % d.step):
        return False
    return d.low <= value <= d.high


def current_values(space: list[Param], args: argparse.Namespace) -> dict:
    """The script's current settings as study values (those outside the space are left to the sampler)."""
    values: dict = {}
    for p in space:
        if not p.active(values, args):
            continue
        value = read_option(args, p.option, p.fallback)
        if contains(p.distribution, value):
            values[p.name] = value
        else:
            log.info("current %s=%r (%s) is outside the search space: the first trial samples it",
                     p.option, value, p.name)
    return values
