"""The one shared piece of Optuna code: open (or resume) a seeded study, top it up, summarise and plot it.

Storage defaults to ``sqlite:///<run_dir>/study.db``; any Optuna RDB URL is accepted, and ``"memory"``
gives a throw-away in-memory study (fast; for inner studies that a re-run simply repeats). RDB storages
are opened with Optuna's heartbeat, so a trial left RUNNING by a killed process stops beating and, once its
grace period has passed, is marked FAIL when the study is reopened (finished trials are kept).
"""
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from lib.plots import pyplot, save_figure

log = logging.getLogger(__name__)
HEARTBEAT_INTERVAL_S = 30
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
MIN_TRIALS_FOR_IMPORTANCE = 10
MEMORY = "memory"


def default_storage(run_dir: str | Path) -> str:
    """SQLite URL of the study database inside a run directory."""
    return f"sqlite:///{Path(run_dir).resolve() / 'study.db'}"


def open_storage(url: str, heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
                 grace_period: int | None = None) -> optuna.storages.RDBStorage:
    """RDB storage with the heartbeat on (grace period default: twice the interval)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)


def open_study(name: str, storage: str | None, run_dir: str | Path, seed: int, direction: str = "maximize",
               pruner: optuna.pruners.BasePruner | None = None, heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
               grace_period: int | None = None) -> optuna.Study:
    """Create or load a seeded-TPE study; trials of a dead process (stale heartbeat) are marked FAIL."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(run_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress is shown by run_trials' bar instead
    backend = None if url == MEMORY else open_storage(url, heartbeat_interval, grace_period)
    study = optuna.create_study(study_name=name, storage=backend,
                                sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner,
                                direction=direction, load_if_exists=True)
    _fail_stale(study)
    log.log(logging.DEBUG if url == MEMORY else logging.INFO, "study %r in %s: %d finished trial(s)",
            name, url, count_done(study))
    return study


def _fail_stale(study: optuna.Study) -> None:
    """Mark FAIL the RUNNING trials whose heartbeat stopped (their process died); log how many."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    still = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    failed = sorted(running - still)
    if failed:
        log.warning("study %r: trial(s) %s were left RUNNING by a process whose heartbeat stopped; "
                    "marked FAIL (finished trials are kept)", study.study_name, failed)


def count_done(study: optuna.Study) -> int:
    """Number of finished (complete or pruned) trials."""
    return len(study.get_trials(deepcopy=False, states=DONE_STATES))


def best_value(study: optuna.Study) -> float:
    """Best objective value so far (NaN before the first complete trial)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_value if complete else float("nan")


def run_trials(study: optuna.Study, objective: Callable[[optuna.Trial], float], n_trials: int,
               desc: str = "trials") -> optuna.Study:
    """Run trials until the study holds ``n_trials`` finished ones (a resumed study tops up)."""
    done = count_done(study)
    remaining = max(0, n_trials - done)
    with tqdm(total=n_trials, initial=min(done, n_trials), desc=desc, unit="trial") as bar:
        def progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            bar.set_postfix(best=f"{best_value(study):.4f}", refresh=False)
            bar.update(1)
        if remaining:
            study.optimize(objective, n_trials=remaining, callbacks=[progress])
    log.info("%s: %d finished trial(s), best %.4f", desc, count_done(study), best_value(study))
    return study


def top_trials_summary(study: optuna.Study, k: int = 5) -> dict:
    """Best trial (number, value, params) and the mean/std of the top-k values."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return {"best": None, "top_k_mean": float("nan"), "top_k_std": float("nan"), "k": 0}
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    top = sorted(complete, key=lambda t: t.value, reverse=reverse)[:k]
    values = np.array([t.value for t in top])
    best = {"number": top[0].number, "value": float(top[0].value), "params": dict(top[0].params)}
    return {"best": best, "top_k_mean": float(values.mean()), "top_k_std": float(values.std()), "k": len(top)}


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
            ax = optuna_plots.plot_param_importances(study)
            written.append(save_figure(ax.figure, out_dir / "param_importances.png"))
    return written
