"""Study mode of the training scripts: every trial is a normal run of the script with the trial's settings.

``run_study`` loads the data and folds once, opens (or resumes) the study through lib.core.study, enqueues the
script's current settings as the first trial, then runs trials until the study (all workers together)
holds ``--trials`` finished ones. A trial applies its values to the settings, passes the script's own
checks, creates ``runs/<study>/trial_<n>/`` with lib.core.runs.create_run (config.yaml, code version,
log.txt) and cross-validates through the script's own code; the objective is the mean over the folds of
the per-fold balanced accuracy at 0.5 (``ba_mean`` of metrics.json). After each fold the running mean is
reported and Optuna's median pruner may stop the trial (from the second fold on: one fold of ~7 reactive
patients is too noisy to judge by).

Outputs in ``runs/<study>/``: study.db (default storage), log.txt, trial_<n>/ (+ trial.json), best.yaml
(``<script> -c best.yaml`` reproduces the best trial), study_summary.json, trials.csv and the plots.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import yaml
from optuna.trial import TrialState

from lib.core.config import with_options
from lib.core.errors import DataError
from lib.core.io import atomic_write_csv, atomic_write_json, atomic_write_text
from lib.core.metrics import fold_metrics
from lib.core.paths import RUNS_DIR
from lib.core.runs import NOT_COMPARED_ON_RESUME, attach_log_file, create_run
from lib.core.storage import HEARTBEAT_INTERVAL_S, check_storage
from lib.core.study import (
    SurplusTrial,
    count_done,
    default_storage,
    open_study,
    run_trials,
    safe_url,
    save_study_plots,
    top_trials_summary,
    worker_id,
)
from lib.data.dataset import Dataset
from lib.data.folds import load_folds
from lib.hpo.options import STUDY_OPTIONS
from lib.hpo.space import Param, apply, current_values, suggest
from lib.stages.context import OnFold, RunInputs, Stage, folds_dir, load_run_inputs, run_config

log = logging.getLogger(__name__)
NOT_EXPORTED = {"help", "config", "experiment", "runs_dir", "folds_dir", "resume", "verbose", "progress", "folds", *STUDY_OPTIONS}
NOT_COMPARED = set(NOT_COMPARED_ON_RESUME) | set(STUDY_OPTIONS) | {"experiment", "runs_dir", "folds_dir", "data_dir", "cache_dir"}
TOP_K = 5
PRUNER_STARTUP_TRIALS = 5
CAUGHT = (ValueError, RuntimeError)  # a trial failing with these is marked FAIL and the study goes on
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _same(args: argparse.Namespace) -> argparse.Namespace:
    """No settings fix-up."""
    return args


@dataclass(frozen=True)
class StudyPlan:
    """What a script's study searches (space), how a trial's settings are checked and trained."""

    script: str
    space: Callable[[argparse.Namespace, Dataset], list[Param]]
    check: Callable[[argparse.Namespace, Dataset], Any]
    train: Callable[[Stage, Any], dict]
    fixup: Callable[[argparse.Namespace], argparse.Namespace] = _same


# ----------------------------------------------------------------------------- study
def run_study(args: argparse.Namespace, parser: argparse.ArgumentParser, plan: StudyPlan) -> dict:
    """Run (or resume, or join) the study; write best.yaml, the summary and plots; return the summary."""
    _check_study_args(args)
    dataset, inputs, folds = _load_data(args)
    study_dir = Path(args.runs_dir or RUNS_DIR) / args.study
    study_dir.mkdir(parents=True, exist_ok=True)
    attach_log_file(study_dir / "log.txt")
    plan.check(args, dataset)  # the script's settings must be valid before any trial runs
    space = plan.space(args, dataset)
    pruner = make_pruner(args.prune is not False)
    study = open_study(args.study, args.storage, study_dir, args.seed, pruner=pruner,
                       heartbeat_interval=args.heartbeat or HEARTBEAT_INTERVAL_S)
    _check_same_base(study, base_config(args, inputs), args.storage or default_storage(study_dir))
    enqueue_current(study, space, args)
    objective = make_objective(args, inputs, dataset=dataset, folds=folds, plan=plan, space=space,
                               study_dir=study_dir)
    run_trials(study, objective, args.trials, desc=f"study {args.study}", catch=CAUGHT)
    return finish_study(study, args, inputs, parser=parser, plan=plan, space=space, dataset=dataset,
                        study_dir=study_dir)


def _check_study_args(args: argparse.Namespace) -> None:
    """Study options within their ranges; single-run options that make no sense in a study."""
    if not NAME_PATTERN.fullmatch(args.study):
        raise DataError(f"--study {args.study!r}: use letters, digits, '.', '_' or '-' (it names runs/<study>/)")
    if args.trials < 1 or (args.heartbeat is not None and args.heartbeat < 1):
        raise DataError(f"--trials {args.trials} and --heartbeat {args.heartbeat} must be >= 1")
    check_storage(args.storage)
    if getattr(args, "folds", None):
        raise DataError("--folds cannot be used with --study: a trial's score is the CV over every committed fold")
    if args.experiment or args.resume:
        log.warning("--experiment/--resume are not used with --study: trials go to runs/%s/trial_<n>/ and "
                    "the same command resumes the study", args.study)


def _load_data(args: argparse.Namespace) -> tuple[Dataset, RunInputs, pd.DataFrame]:
    """Data, what a run records of it and the committed folds, loaded once for every trial (the same loaders as
    lib.stages.context.open_stage)."""
    dataset, inputs = load_run_inputs(args)
    return dataset, inputs, load_folds(dataset, args.n_folds, args.fold_seed, folds_dir(args))


def make_pruner(prune: bool) -> optuna.pruners.BasePruner:
    """Median pruner judging from the second fold on (step 1), after a few complete trials."""
    if not prune:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=1)


def base_config(args: argparse.Namespace, inputs: RunInputs) -> dict:
    """Settings every trial of a study shares (machine-specific paths and study options left out)."""
    config = {k: v for k, v in run_config(args, inputs).items() if k not in NOT_COMPARED}
    return json.loads(json.dumps(config, default=str))


def _check_same_base(study: optuna.Study, base: dict, where: str) -> None:
    """A study is resumed or joined only with the settings it was started with (kept in the storage)."""
    saved = study.user_attrs.get("base_config")
    if saved is None:
        study.set_user_attr("base_config", base)
        return
    changed = sorted(k for k in set(saved) | set(base) if saved.get(k) != base.get(k))
    if changed:
        raise DataError(f"study {study.study_name!r} in {safe_url(where)} was started with other settings "
                        f"({', '.join(changed)}): use the same ones or another --study name")


def enqueue_current(study: optuna.Study, space: list[Param], args: argparse.Namespace) -> None:
    """The script's current settings become the first trial (again if that trial failed)."""
    current = [t for t in study.trials if t.user_attrs.get("current_settings") and t.state != TrialState.FAIL]
    if not current:
        study.enqueue_trial(current_values(space, args), user_attrs={"current_settings": True})


def skip_duplicate_current(trial: optuna.Trial) -> None:
    """Two workers starting together may both enqueue the current settings: the later copy is skipped."""
    if not trial.user_attrs.get("current_settings"):
        return
    earlier = [t.number for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number
               and t.user_attrs.get("current_settings") and t.state != TrialState.FAIL]
    if earlier:
        trial.set_user_attr("surplus", True)
        raise SurplusTrial(f"trial {trial.number}: the current settings are already trial {earlier[0]}")


# ----------------------------------------------------------------------------- one trial
def make_objective(args: argparse.Namespace, inputs: RunInputs, *, dataset: Dataset, folds: pd.DataFrame,
                   plan: StudyPlan, space: list[Param], study_dir: Path) -> Callable[[optuna.Trial], float]:
    """Objective: the CV BA (mean over folds) of the trial's settings, run as a normal run directory."""
    def objective(trial: optuna.Trial) -> float:
        skip_duplicate_current(trial)
        trial_args = trial_settings(args, plan, space, suggest(trial, space, args))
        setup = plan.check(trial_args, dataset)
        stage = open_trial_stage(trial, trial_args, inputs.named(f"{args.study}/trial_{trial.number}"),
                                 dataset=dataset, folds=folds, run_dir=study_dir / f"trial_{trial.number}")
        run_dir = stage.run_dir
        start, outcome = time.perf_counter(), ("FAIL", None, "interrupted")
        try:
            metrics = plan.train(stage, setup)
            outcome = ("COMPLETE", metrics["ba_mean"], "")
        except optuna.TrialPruned as pruned:
            outcome = ("PRUNED", None, str(pruned))
            raise
        except Exception as error:
            outcome = ("FAIL", None, repr(error))
            raise
        finally:
            attach_log_file(study_dir / "log.txt")
            record_trial(trial, run_dir, *outcome, seconds=time.perf_counter() - start)
        for key in ("ba_std", "auc_mean", "pooled_ba", "pooled_auc"):
            trial.set_user_attr(key, metrics[key])
        return metrics["ba_mean"]
    return objective


def trial_settings(args: argparse.Namespace, plan: StudyPlan, space: list[Param], values: dict) -> argparse.Namespace:
    """New options: the script's settings with the trial's values applied (``args`` is left unchanged)."""
    trial_args = plan.fixup(apply(args, space, values))
    quiet = {"progress": False} if hasattr(trial_args, "progress") else {}  # the study's bar and the fold bar are enough
    return with_options(trial_args, storage=safe_url(args.storage), **quiet)


def open_trial_stage(trial: optuna.Trial, trial_args: argparse.Namespace, inputs: RunInputs, *, dataset: Dataset,
                     folds: pd.DataFrame, run_dir: Path) -> Stage:
    """Create the trial's run directory (as open_stage does for a run, named ``inputs.experiment``) and its
    fold-reporting stage."""
    trial.set_user_attr("run_dir", run_dir.name)
    trial.set_user_attr("worker", worker_id())
    create_run(run_dir, run_config(trial_args, inputs))
    log.info("trial %d: run directory %s", trial.number, run_dir)
    return Stage(trial_args, dataset, folds, run_dir, on_fold=pruning_hook(trial, int(folds["fold"].nunique())),
                 experiment=inputs.experiment)


def pruning_hook(trial: optuna.Trial, n_folds: int) -> OnFold:
    """lib.stages.cv fold hook: report the running mean fold BA; prune (before the last fold) when the pruner says so."""
    def on_fold(k: int, running_oof: pd.DataFrame) -> None:
        step = int(running_oof["fold"].nunique()) - 1
        score = fold_metrics(running_oof, 0.5)["ba_mean"]
        trial.report(score, step)
        if step < n_folds - 1 and trial.should_prune():
            raise optuna.TrialPruned(f"running BA {score:.3f} after {step + 1} of {n_folds} folds: "
                                     f"stopped by the {type(trial.study.pruner).__name__}")
    return on_fold


def record_trial(trial: optuna.Trial, run_dir: Path, state: str, value: float | None, note: str,
                 seconds: float) -> None:
    """trial.json (number, state, value, parameters) next to the run's outputs, and one study log line."""
    trial.set_user_attr("seconds", seconds)
    atomic_write_json({"study": trial.study.study_name, "number": trial.number, "state": state, "value": value,
                       "params": trial.params, "seconds": seconds, "note": note}, run_dir / "trial.json")
    score = f"CV BA {value:.4f}" if value is not None else note
    log.info("trial %d %s in %.1f s: %s (%s)", trial.number, state, seconds, score,
             ", ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items()))


# ----------------------------------------------------------------------------- results
def finish_study(study: optuna.Study, args: argparse.Namespace, inputs: RunInputs, *,
                 parser: argparse.ArgumentParser, plan: StudyPlan, space: list[Param], dataset: Dataset,
                 study_dir: Path) -> dict:
    """Write best.yaml, study_summary.json, trials.csv and the plots; print the summary; return it."""
    summary = study_summary(study, args, dataset, study_dir, plan.script)
    if summary["best"] is not None:
        best = plan.fixup(apply(args, space, summary["best"]["params"]))
        write_best_yaml(run_config(best, inputs), parser, summary, study_dir / "best.yaml")
        summary["best_yaml"] = str(study_dir / "best.yaml")
    atomic_write_csv(study.trials_dataframe(), study_dir / "trials.csv")
    summary["plots"] = [p.name for p in save_study_plots(study, study_dir)]
    atomic_write_json(summary, study_dir / "study_summary.json")
    print("\n".join(summary_lines(summary)))
    return summary


def study_summary(study: optuna.Study, args: argparse.Namespace, dataset: Dataset, study_dir: Path,
                  script: str) -> dict:
    """Counts by state, the best trial, the spread of the top trials and the small-data warning."""
    top = top_trials_summary(study, TOP_K)
    labels = dataset.train["LABEL"].astype(int)
    n_reactive, n_tumoral = int((labels == 0).sum()), int((labels == 1).sum())
    summary = {"study": study.study_name, "script": script, "dataset": dataset.name,
               "storage": safe_url(args.storage or default_storage(study_dir)),
               "trials_requested": args.trials, "finished": count_done(study),
               "states": pd.Series([_state(t) for t in study.trials]).value_counts().to_dict(),
               "objective": "CV BA: mean over folds of the per-fold BA at 0.5",
               "best": _best_trial(study, top["best"], study_dir),
               "top_k": {"k": top["k"], "mean": top["top_k_mean"], "std": top["top_k_std"], "values": top["values"]},
               "current_settings": _current_settings(study),
               "one_patient_ba": {"reactive": 0.5 / max(n_reactive, 1), "tumoral": 0.5 / max(n_tumoral, 1)},
               "best_yaml": None}
    summary["warning"] = small_data_warning(summary, n_reactive, n_tumoral)
    return summary


def _best_trial(study: optuna.Study, best: dict | None, study_dir: Path) -> dict | None:
    """The best trial's number, value and params, with its run directory, worker and AUC."""
    if best is None:
        return None
    attrs = study.trials[best["number"]].user_attrs
    return {**best, "run_dir": str(study_dir / attrs.get("run_dir", f"trial_{best['number']}")),
            "worker": attrs.get("worker"), "auc_mean": attrs.get("auc_mean")}


def _current_settings(study: optuna.Study) -> dict | None:
    """Number and score of the trial of the script's own settings, once complete."""
    done = [t for t in study.trials if t.user_attrs.get("current_settings") and t.state == TrialState.COMPLETE]
    return {"number": done[0].number, "value": done[0].value} if done else None


def _state(trial: optuna.trial.FrozenTrial) -> str:
    """Trial state; SKIPPED for a trial failed at once as surplus (beyond the total, or a duplicate)."""
    return "SKIPPED" if trial.state == TrialState.FAIL and trial.user_attrs.get("surplus") else trial.state.name


def small_data_warning(summary: dict, n_reactive: int, n_tumoral: int) -> str:
    """One line: how much one patient moves the BA, and that the best of N trials is optimistic."""
    one = summary["one_patient_ba"]
    return (f"small data: {n_reactive} reactive / {n_tumoral} tumoral patients, so one reactive patient moves the "
            f"CV BA by ~{one['reactive']:.3f} (one tumoral by ~{one['tumoral']:.3f}); the best of "
            f"{summary['finished']} trials is optimistic: treat gaps within the top-{summary['top_k']['k']} "
            f"spread or below ~{2 * one['reactive']:.2f} as noise")


def exported_settings(config: dict, parser: argparse.ArgumentParser) -> dict:
    """The options of a run's config (parser options only), without run location, study and display options."""
    dests = {a.dest for a in parser._actions} - NOT_EXPORTED
    return {k: v for k, v in config.items() if k in dests}


def write_best_yaml(best: dict, parser: argparse.ArgumentParser, summary: dict, path: Path) -> Path:
    """best.yaml: the best trial's full settings (its run config ``best``), a YAML config that reproduces its run."""
    b = summary["best"]
    header = (f"# Best trial {b['number']} of study {summary['study']!r}: CV BA {b['value']:.4f} (mean over folds, "
              f"threshold 0.5); its run: {b['run_dir']}\n"
              f"# Reproduce: python {summary['script']} -c {path} --experiment NAME\n")
    return atomic_write_text(header + yaml.safe_dump(exported_settings(best, parser), sort_keys=True), path)


def summary_lines(summary: dict) -> list[str]:
    """The printed summary of a study."""
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(summary["states"].items()))
    lines = [f"study {summary['study']}: {summary['finished']} finished trial(s) of {summary['trials_requested']} "
             f"({states}) in {summary['storage']}"]
    best, top = summary["best"], summary["top_k"]
    if best is None:
        return lines + ["no complete trial yet"]
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())
    lines.append(f"best: trial {best['number']}, CV BA {best['value']:.4f} ({params}) -> {best['run_dir']}")
    lines.append(f"top-{top['k']} CV BA: {top['mean']:.4f}±{top['std']:.4f} (mean±std)")
    if summary["current_settings"]:
        lines.append(f"current settings (trial {summary['current_settings']['number']}): "
                     f"CV BA {summary['current_settings']['value']:.4f}")
    lines.append(f"warning: {summary['warning']}")
    lines.append(f"best settings: {summary['best_yaml']} (python {summary['script']} -c {summary['best_yaml']} "
                 f"--experiment NAME reproduces the best trial)")
    return lines


def _fmt(value: Any) -> str:
    """Compact parameter value."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
