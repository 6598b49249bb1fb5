"""The one shared piece of Optuna code: open (or resume) a seeded study, top it up, summarise and plot it.

Storage defaults to ``sqlite:///<run_dir>/study.db``; any Optuna RDB URL is accepted, and ``"memory"``
gives a throw-away in-memory study (fast; for inner studies that a re-run simply repeats). RDB storages
are opened with Optuna's heartbeat, so a trial left RUNNING by a killed process stops beating and, once its
grace period has passed, is marked FAIL when the study is reopened (finished trials are kept).

Several processes (on one machine or several, sharing one RDB URL) can work on the same study:
``run_trials``' ``n_trials`` is the study total, a worker waits while the last trials run elsewhere (and
takes over one whose process died), and a trial asked for beyond the total is failed at once, so the
study ends with exactly ``n_trials`` finished trials. The TPE sampler draws each trial from a random
state derived from (seed, trial number): a study is reproducible, and two workers never propose the
same random start-up configuration.
"""
import datetime
import logging
import os
import random
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from lib.core.errors import DataError
from lib.core.plots import pyplot, save_figure
from lib.core.progress import tqdm
from lib.core.storage import HEARTBEAT_INTERVAL_S, MEMORY, default_storage, safe_url, with_installed_driver

log = logging.getLogger(__name__)
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
MIN_TRIALS_FOR_IMPORTANCE = 10
SQLITE_LOCK_TIMEOUT_S = 60
OPEN_ATTEMPTS = 5
POLL_INTERVAL_S = 2.0
MAX_FAILURES_IN_A_ROW = 3


class SurplusTrial(Exception):
    """A trial asked for after the study already had its total of finished or running trials."""


class TrialSeededTPE(optuna.samplers.BaseSampler):
    """TPE drawing each trial from a random state derived from (seed, trial number), on Optuna's public API.

    Every trial gets its own ``TPESampler(seed=derived)``: TPE keeps no state between trials but its
    random generator, so this is TPE with a per-trial seed. ``before_trial`` also records which process
    owns the trial (a study attribute ``worker_<number>`` = host:pid), so that a trial whose process was
    killed before its first heartbeat can still be recognised as orphaned (see ``fail_orphaned``).
    """

    def __init__(self, seed: int, **kwargs) -> None:
        self._seed, self._kwargs, self._per_trial = seed, kwargs, {}

    def _tpe(self, trial: optuna.trial.FrozenTrial) -> optuna.samplers.TPESampler:
        """The trial's own TPE (made on first use, dropped after the trial)."""
        if trial.number not in self._per_trial:
            seed = int(np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0])
            self._per_trial[trial.number] = optuna.samplers.TPESampler(seed=seed, **self._kwargs)
        return self._per_trial[trial.number]

    def infer_relative_search_space(self, study, trial):
        return self._tpe(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._tpe(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._tpe(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Record the owner of the trial, then let its TPE prepare."""
        study.set_user_attr(worker_key(trial.number), worker_id())
        self._tpe(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._tpe(trial).after_trial(study, trial, state, values)
        self._per_trial.pop(trial.number, None)

    def reseed_rng(self) -> None:
        """Nothing to do: every trial's generator is derived from (seed, trial number)."""


def worker_id() -> str:
    """This process as host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_key(number: int) -> str:
    """Study attribute naming the process that owns trial ``number``."""
    return f"worker_{number}"


def open_storage(url: str, heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
                 grace_period: int | None = None) -> optuna.storages.RDBStorage:
    """RDB storage with the heartbeat on (grace period default: twice the interval)."""
    from sqlalchemy.exc import SQLAlchemyError
    url = with_installed_driver(url)
    engine_kwargs = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}} if url.startswith("sqlite") else None
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                  heartbeat_interval=heartbeat_interval, grace_period=grace_period)
        except SQLAlchemyError as error:  # e.g. two workers creating the tables of a new database at once
            if attempt == OPEN_ATTEMPTS:
                raise
            log.info("opening %s: %s; retrying", safe_url(url), type(error).__name__)
            time.sleep(0.2 * attempt + random.random())


def open_study(name: str, storage: str | None, run_dir: str | Path, seed: int, *, direction: str = "maximize",
               pruner: optuna.pruners.BasePruner | None = None, heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
               grace_period: int | None = None) -> optuna.Study:
    """Create or load a seeded-TPE study; trials of a dead process (stale heartbeat) are marked FAIL."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(run_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress is shown by run_trials' bar instead
    backend = None if url == MEMORY else open_storage(url, heartbeat_interval, grace_period)
    study = optuna.create_study(study_name=name, storage=backend, sampler=TrialSeededTPE(seed), pruner=pruner,
                                direction=direction, load_if_exists=True)
    _fail_stale(study)
    log.log(logging.DEBUG if url == MEMORY else logging.INFO, "study %r in %s: %d finished trial(s)",
            name, safe_url(url), count_done(study))
    return study


def _fail_stale(study: optuna.Study) -> None:
    """Mark FAIL the RUNNING trials whose process died (stale heartbeat, or orphaned); log which."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    fail_orphaned(study)
    still = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    failed = sorted(running - still)
    if failed:
        log.warning("study %r: trial(s) %s were left RUNNING by a process that died; marked FAIL "
                    "(finished trials are kept)", study.study_name, failed)


def fail_orphaned(study: optuna.Study, grace_period: float | None = None) -> list[int]:
    """FAIL the RUNNING trials that no live process owns, also those killed before their first heartbeat.

    Optuna's heartbeat check skips a trial that never recorded a heartbeat (its process was killed
    between creating the trial and the heartbeat thread's first beat), so such a trial would stay
    RUNNING forever and a resumed study would wait for it. A trial is orphaned when its recorded owner
    (``TrialSeededTPE.before_trial``) is a process of this host that no longer exists, or when no owner
    was recorded and it started more than the grace period ago. Owners on other hosts are left to the
    heartbeat. Failing goes through ``Study.tell``; returns the trial numbers failed.
    """
    grace = HEARTBEAT_INTERVAL_S * 2 if grace_period is None else grace_period
    attrs, host, failed = study.user_attrs, socket.gethostname(), []
    now = datetime.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = attrs.get(worker_key(trial.number))
        if owner is None:
            orphan = trial.datetime_start is not None and (now - trial.datetime_start).total_seconds() > grace
        else:
            owner_host, _, pid = owner.rpartition(":")
            orphan = owner_host == host and int(pid) != os.getpid() and not _alive(int(pid))
        if orphan:
            try:
                study.tell(trial.number, state=TrialState.FAIL)
                failed.append(trial.number)
            except (ValueError, RuntimeError):  # finished meanwhile by its owner or another worker
                pass
    return failed


def _alive(pid: int) -> bool:
    """Whether a process of this host with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def count_done(study: optuna.Study) -> int:
    """Number of finished (complete or pruned) trials."""
    return len(study.get_trials(deepcopy=False, states=DONE_STATES))


def best_value(study: optuna.Study) -> float:
    """Best objective value so far (NaN before the first complete trial)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_value if complete else float("nan")


def is_surplus(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Whether trial ``number`` comes after ``n_trials`` earlier finished or running trials (a race lost)."""
    states = DONE_STATES + (TrialState.RUNNING,)
    return sum(t.number < number for t in study.get_trials(deepcopy=False, states=states)) >= n_trials


def _within_total(objective: Callable[[optuna.Trial], float], n_trials: int,
                  errors: list[str]) -> Callable[[optuna.Trial], float]:
    """The objective, refusing (SurplusTrial) a trial that other workers' trials make surplus; errors noted."""
    def guarded(trial: optuna.Trial) -> float:
        if is_surplus(trial.study, trial.number, n_trials):
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"trial {trial.number}: the study already has {n_trials} finished or running trials")
        try:
            return objective(trial)
        except optuna.TrialPruned:
            raise
        except Exception as error:
            errors.append(f"trial {trial.number}: {error!r}")
            raise
    return guarded


def run_trials(study: optuna.Study, objective: Callable[[optuna.Trial], float], n_trials: int,
               desc: str = "trials", catch: tuple[type[Exception], ...] = (),
               poll_interval: float = POLL_INTERVAL_S) -> optuna.Study:
    """Run trials until the study holds ``n_trials`` finished ones, all workers' counted (a resumed study tops up).

    Exceptions in ``catch`` fail the trial and the study goes on, unless MAX_FAILURES_IN_A_ROW trials of
    this process fail in a row (DataError). While the other workers' running trials would complete the
    total, this worker waits (polling), taking over if one of them dies (stale heartbeat -> FAIL).
    """
    errors: list[str] = []
    guarded = _within_total(objective, n_trials, errors)
    failures = 0
    with tqdm(total=n_trials, initial=min(count_done(study), n_trials), desc=desc, unit="trial") as bar:
        while True:
            done, running = _refresh(study, bar, n_trials)
            if done >= n_trials:
                break
            if done + running >= n_trials:
                time.sleep(poll_interval)  # the last trials are running in other workers
                continue
            ran: list[optuna.trial.FrozenTrial] = []
            study.optimize(guarded, n_trials=1, catch=catch + (SurplusTrial,), callbacks=[lambda s, t, ran=ran: ran.append(t)])
            failed = any(t.state == TrialState.FAIL and not t.user_attrs.get("surplus") for t in ran)
            failures = failures + 1 if failed else 0
            if failures >= MAX_FAILURES_IN_A_ROW:
                raise DataError(f"study {study.study_name!r}: {failures} trials in a row failed "
                                f"(last: {errors[-1] if errors else 'unknown'})")
    log.info("%s: %d finished trial(s), best %.4f", desc, count_done(study), best_value(study))
    return study


def _refresh(study: optuna.Study, bar: tqdm, n_trials: int) -> tuple[int, int]:
    """Fail stale trials; show the study's finished count and best value; return (finished, running)."""
    _fail_stale(study)
    trials = study.get_trials(deepcopy=False)
    done = sum(t.state in DONE_STATES for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    values = [t.value for t in trials if t.state == TrialState.COMPLETE]
    if values:
        best = max(values) if study.direction == optuna.study.StudyDirection.MAXIMIZE else min(values)
        bar.set_postfix(best=f"{best:.4f}", running=running, refresh=False)
    bar.update(min(done, n_trials) - bar.n)  # redrawn at the bar's own pace: sparse lines in a log file
    return done, running


def top_trials_summary(study: optuna.Study, k: int = 5) -> dict:
    """Best trial (number, value, params), the top-k values and their mean/std."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return {"best": None, "top_k_mean": float("nan"), "top_k_std": float("nan"), "k": 0, "values": []}
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    top = sorted(complete, key=lambda t: t.value, reverse=reverse)[:k]
    values = np.array([t.value for t in top])
    best = {"number": top[0].number, "value": float(top[0].value), "params": dict(top[0].params)}
    return {"best": best, "top_k_mean": float(values.mean()), "top_k_std": float(values.std()), "k": len(top),
            "values": [float(v) for v in values]}


def save_study_plots(study: optuna.Study, out_dir: str | Path) -> list[Path]:
    """Optimisation history PNG, and parameter importances when >=2 params and enough trials."""
    from optuna.visualization import matplotlib as optuna_plots
    pyplot()  # select the Agg backend before optuna imports pyplot
    out_dir, written = Path(out_dir), []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return written
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = optuna_plots.plot_optimization_history(study)
        written.append(save_figure(ax.figure, out_dir / "optimization_history.png"))
        n_params = len({name for t in complete for name in t.params})
        if n_params >= 2 and len(complete) >= MIN_TRIALS_FOR_IMPORTANCE:
            try:
                ax = optuna_plots.plot_param_importances(study)
            except (ValueError, RuntimeError) as error:  # e.g. too few trials sharing a parameter
                log.warning("parameter importances not plotted: %s", error)
            else:
                written.append(save_figure(ax.figure, out_dir / "param_importances.png"))
    return written
