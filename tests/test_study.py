"""lib.core.study: seeded resumable studies, top-up, stale (killed) trials marked FAIL, summaries and plots."""
import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lib.core.study import count_done, fail_orphaned, open_study, run_trials, save_study_plots, top_trials_summary

REPO = Path(__file__).resolve().parent.parent


def quadratic(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -2.0, 2.0)
    y = trial.suggest_float("y", -2.0, 2.0)
    return -(x - 1.0) ** 2 - y ** 2


def test_default_storage_is_sqlite_in_the_run_dir_and_sampling_is_seeded(tmp_path):
    a = run_trials(open_study("s", None, tmp_path / "a", seed=3), quadratic, 4)
    b = run_trials(open_study("s", "memory", tmp_path / "b", seed=3), quadratic, 4)
    assert (tmp_path / "a" / "study.db").exists()
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    c = run_trials(open_study("s", f"sqlite:///{tmp_path / 'other.db'}", tmp_path / "c", seed=4), quadratic, 4)
    assert (tmp_path / "other.db").exists() and not (tmp_path / "c" / "study.db").exists()
    assert [t.params for t in c.trials] != [t.params for t in a.trials]


def test_run_trials_tops_up_a_reopened_study(tmp_path):
    run_trials(open_study("s", None, tmp_path, seed=0), quadratic, 3)
    study = open_study("s", None, tmp_path, seed=0)
    assert count_done(study) == 3
    run_trials(study, quadratic, 5)
    assert count_done(open_study("s", None, tmp_path, seed=0)) == 5
    run_trials(study, quadratic, 5)  # already complete: nothing more
    assert len(study.trials) == 5


KILLED_WORKER = """
import os, sys, time
sys.path.insert(0, {repo!r})
from lib.core.study import open_study, run_trials

def objective(trial):
    x = trial.suggest_float("x", 0, 1)
    if trial.number == 2:
        time.sleep(0.5)   # the heartbeat thread records a beat as the trial starts
        os._exit(9)       # the process dies mid-trial: trial 2 stays RUNNING in the database
    return x

run_trials(open_study("k", None, {run_dir!r}, seed=0, heartbeat_interval=1, grace_period=1), objective, 5)
"""


def test_trial_of_a_killed_process_is_marked_fail_and_the_study_resumes(tmp_path, caplog):
    script = textwrap.dedent(KILLED_WORKER.format(repo=str(REPO), run_dir=str(tmp_path)))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stderr
    time.sleep(2.5)  # heartbeat now older than the 1 s grace period
    with caplog.at_level(logging.WARNING, logger="lib.core.study"):
        study = open_study("k", None, tmp_path, seed=0, heartbeat_interval=1, grace_period=1)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    assert "marked FAIL" in caplog.text and "[2]" in caplog.text
    run_trials(study, lambda t: t.suggest_float("x", 0, 1), 4)
    assert count_done(study) == 4 and study.trials[2].state == TrialState.FAIL


DIES_BEFORE_FIRST_HEARTBEAT = """
import os, sys
sys.path.insert(0, {repo!r})
from lib.core.study import open_study
study = open_study("o", None, {run_dir!r}, seed=0, heartbeat_interval=60)
study.ask()  # the trial exists (RUNNING) and names its owner, but no heartbeat was ever recorded
os._exit(9)
"""


def test_trial_killed_before_its_first_heartbeat_is_failed_at_once(tmp_path):
    """Optuna's heartbeat check never fails a trial without a heartbeat row: it would stay RUNNING forever."""
    script = textwrap.dedent(DIES_BEFORE_FIRST_HEARTBEAT.format(repo=str(REPO), run_dir=str(tmp_path)))
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120).returncode == 9
    start = time.perf_counter()
    study = open_study("o", None, tmp_path, seed=0, heartbeat_interval=60)  # grace 120 s: not waited for
    assert [t.state for t in study.trials] == [TrialState.FAIL] and time.perf_counter() - start < 30
    run_trials(study, lambda t: t.suggest_float("x", 0, 1), 2)
    assert count_done(study) == 2


def test_ownerless_running_trial_is_failed_after_the_grace_period(tmp_path):
    """A trial created by a process that recorded no owner (e.g. killed inside ask) fails once it is old."""
    study = open_study("n", None, tmp_path, seed=0, heartbeat_interval=60)
    optuna.load_study(study_name="n", storage=study._storage, sampler=optuna.samplers.RandomSampler()).ask()
    assert fail_orphaned(study, grace_period=60) == []  # young: it may still be starting
    assert fail_orphaned(study, grace_period=0) == [0] and study.trials[0].state == TrialState.FAIL


def test_running_trial_with_fresh_heartbeat_is_left_alone(tmp_path):
    study = open_study("r", None, tmp_path, seed=0, heartbeat_interval=60)
    with pytest.warns(UserWarning, match="Heartbeat"):
        trial = study.ask()
    study._storage.record_heartbeat(trial._trial_id)
    again = open_study("r", None, tmp_path, seed=0, heartbeat_interval=60)
    assert again.trials[0].state == TrialState.RUNNING


def test_top_trials_summary_and_plots(tmp_path):
    study = run_trials(open_study("p", "memory", tmp_path, seed=0), quadratic, 12)
    summary = top_trials_summary(study, k=3)
    values = sorted((t.value for t in study.trials), reverse=True)
    assert summary["best"]["value"] == pytest.approx(values[0]) == pytest.approx(study.best_value)
    assert summary["top_k_mean"] == pytest.approx(sum(values[:3]) / 3)
    written = save_study_plots(study, tmp_path / "plots")
    assert {p.name for p in written} == {"optimization_history.png", "param_importances.png"}
    assert all(p.stat().st_size > 1000 for p in written)


def test_memory_storage_leaves_no_file(tmp_path):
    study = run_trials(open_study("m", "memory", tmp_path, seed=0), quadratic, 3)
    assert count_done(study) == 3 and not (tmp_path / "study.db").exists()
