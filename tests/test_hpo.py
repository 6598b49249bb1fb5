"""Study mode of train_clinical.py / train_cnn.py (lib.hpo): search-space mapping, pruning, best.yaml that
reproduces the best trial, resume after a SIGKILL mid-trial, two concurrent workers on SQLite and PostgreSQL."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
import yaml
from conftest import cohort_rows, make_2024, write_jpg
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

import lib.hpo.clinical
import lib.hpo.cnn
import lib.hpo.runner
import train_clinical
import train_cnn
from lib.core.config import config_dict, parse_config
from lib.core.errors import DataError
from lib.core.paths import CONFIGS_DIR
from lib.core.study import default_storage, open_study, run_trials, with_installed_driver
from lib.hpo.space import Param, apply, current_values

REPO = Path(__file__).resolve().parent.parent
NO_MORPHO = ("clinical", "clinical+ncells")  # morphometry would be computed into the repository's cache/
PG_URL = os.environ.get("LYMPH_TEST_PG_URL")  # e.g. postgresql://lymph@127.0.0.1:5432/lymph_test


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """30 train patients (10 reactive), 4 test patients, 3 tiny distinct cells each."""
    root = tmp_path_factory.mktemp("hpo") / "comp"
    train, test = cohort_rows(n_test=4, tumoral_every=(2, 3))
    make_2024(root, train=train, test=test, n_cells=3, size=32)
    for i, row in enumerate(test):
        for k in range(3):
            write_jpg(root / "testset" / row[0] / f"{k:06d}.jpg", seed=10_000 + 100 * i + k, size=32)
    return root


@pytest.fixture(scope="module")
def folds_dir(cohort) -> Path:
    """Fold files of the synthetic data go beside it (every argv names it with --folds-dir)."""
    return cohort.parent / "folds"


@pytest.fixture(autouse=True)
def no_morpho(monkeypatch):
    """The clinical space leaves out morphometry (slow to compute for a test)."""
    monkeypatch.setattr(lib.hpo.clinical, "FEATURE_SET_CHOICES", NO_MORPHO)


def clinical_argv(cohort: Path, runs: Path, study: str, trials: int, *extra: str) -> list[str]:
    return ["--data-dir", str(cohort), "--runs-dir", str(runs), "--n-folds", "3", "--inner-folds", "3",
            "--folds-dir", str(cohort.parent / "folds"), "--study", study, "--trials", str(trials), *extra]


def load(runs: Path, study: str, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=with_installed_driver(storage or default_storage(runs / study)))


# ----------------------------------------------------------------------------- lib.core.study additions
def test_trial_number_seeds_the_sampler_whatever_came_before(tmp_path):
    def objective(trial):
        return trial.suggest_float("x", 0, 1)
    a = run_trials(open_study("a", "memory", tmp_path, seed=0), objective, 4)
    b = open_study("b", "memory", tmp_path, seed=0)
    b.enqueue_trial({"x": 0.5})  # another history (a worker's trial 0 elsewhere): trials 1-3 draw the same
    run_trials(b, objective, 4)
    assert [t.params for t in b.trials[1:]] == [t.params for t in a.trials[1:]]
    assert len({t.params["x"] for t in a.trials}) == 4


def test_failed_trials_do_not_count_and_three_in_a_row_stop_the_study(tmp_path):
    def flaky(trial):
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 1:
            raise ValueError("diverged")
        return x

    def broken(trial):
        raise ValueError("always")
    study = run_trials(open_study("f", "memory", tmp_path, seed=0), flaky, 3, catch=(ValueError,))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, *[TrialState.COMPLETE] * 2]
    with pytest.raises(DataError, match=r"3 trials in a row failed \(last: trial 6: ValueError\('always'\)\)"):
        run_trials(study, broken, 10, catch=(ValueError,))
    with pytest.raises(KeyError):  # not in catch: the error stops the study at once
        run_trials(study, lambda trial: {}["missing"], 10, catch=(ValueError,))


# ----------------------------------------------------------------------------- search space
def test_cnn_space_maps_onto_train_cnn_options_and_enqueues_the_preset():
    args = parse_config(train_cnn.build_parser(), ["-c", str(CONFIGS_DIR / "cnn_cpu.yaml")])
    dataset = SimpleNamespace(train=pd.DataFrame({"n_images": [16, 90]}))
    space = lib.hpo.cnn.cnn_space(args, dataset)
    assert [p.name for p in space] == ["mil_head", "mil_topk", "mil_lr", "mil_weight_decay", "mil_epochs",
                                       "mil_bag_size", "aug_strength", "embed_views", "clinical_fusion"]
    assert space[5].distribution.choices == (8, 16, 0)  # 32 > the smallest bag (16 cells)
    current = current_values(space, args)
    assert current == {"mil_head": "mean", "mil_lr": 0.001, "mil_weight_decay": 0.01, "mil_epochs": 40,
                       "mil_bag_size": 16, "aug_strength": "heavy", "embed_views": 2, "clinical_fusion": True}
    assert config_dict(apply(args, space, current)) == config_dict(args)  # the first trial is the preset itself
    topk = lib.hpo.cnn.drop_foreign_head_args(apply(args, space, {**current, "mil_head": "chowder", "mil_topk": 3}))
    assert topk.head == "chowder" and topk.head_args == {"hidden_dim": 64, "dropout": 0.25, "k": 3}
    assert args.head_args == {"hidden_dim": 64, "dropout": 0.25}  # the settings are copied, never changed
    back = lib.hpo.cnn.drop_foreign_head_args(apply(topk, space, {"mil_head": "mean"}))
    assert back.head_args == {"hidden_dim": 64, "dropout": 0.25}


def test_study_refuses_other_base_settings_and_single_run_options(cohort, tmp_path):
    train_clinical.main(clinical_argv(cohort, tmp_path, "s", 1, "--no-prune"))
    with pytest.raises(DataError, match=r"other settings \(inner_folds\)"):
        train_clinical.main(clinical_argv(cohort, tmp_path, "s", 2, "--inner-folds", "2"))
    with pytest.raises(DataError, match="--folds cannot be used with --study"):
        train_cnn.main(["--data-dir", str(cohort), "--folds-dir", str(cohort.parent / "folds"), "--study", "x",
                        "--folds", "0"])


def test_runs_made_before_the_study_options_existed_still_resume(cohort, tmp_path):
    argv = ["--data-dir", str(cohort), "--runs-dir", str(tmp_path), "--n-folds", "3", "--experiment", "old",
            "--folds-dir", str(cohort.parent / "folds")]
    train_clinical.main(argv)
    saved = tmp_path / "old" / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    assert all(config[k] is None for k in ("C", "penalty", "study", "storage", "heartbeat", "prune"))
    older = {k: v for k, v in config.items() if k not in ("C", "penalty", "study", "storage", "heartbeat", "prune")}
    saved.write_text(yaml.safe_dump(older))
    (tmp_path / "old" / "folds" / "fold_2.csv").unlink()
    assert train_clinical.main([*argv, "--resume"])["ba_mean"] > 0.5
    cnn = vars(parse_config(train_cnn.build_parser(), []))
    assert [cnn[k] for k in ("study", "storage", "heartbeat", "prune")] == [None] * 4


# ----------------------------------------------------------------------------- pruning and export
class PruneNcells(optuna.pruners.BasePruner):
    """Deliberately bad part of the space: every clinical+ncells trial is hopeless from its 2nd fold on."""

    def prune(self, study, trial) -> bool:
        return trial.params.get("feature_set") == "clinical+ncells" and trial.last_step >= 1


def test_clinical_study_prunes_summarises_and_best_yaml_reproduces(cohort, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lib.hpo.runner, "make_pruner", lambda prune: PruneNcells())
    summary = train_clinical.main(clinical_argv(cohort, tmp_path, "clin", 8))
    study, out = load(tmp_path, "clin"), tmp_path / "clin"
    states = [t.state for t in study.trials]
    assert states.count(TrialState.PRUNED) >= 1 and states.count(TrialState.COMPLETE) >= 2
    assert len(study.trials) == 8 and summary["finished"] == 8
    assert study.trials[0].params == {"feature_set": "clinical", "logreg_penalty": "l2", "logreg_C": "cv"}
    pruned = next(t for t in study.trials if t.state == TrialState.PRUNED)
    assert sorted(pruned.intermediate_values) == [0, 1]  # reported after each fold, stopped after the 2nd of 3
    pruned_dir = out / f"trial_{pruned.number}"
    assert json.loads((pruned_dir / "trial.json").read_text())["state"] == "PRUNED"
    assert not (pruned_dir / "oof.csv").exists() and not (pruned_dir / "folds" / "fold_2.csv").exists()
    best = study.best_trial
    assert summary["best"]["number"] == best.number and summary["best"]["value"] == best.value
    values = sorted((t.value for t in study.trials if t.state == TrialState.COMPLETE), reverse=True)[:5]
    assert summary["top_k"]["mean"] == pytest.approx(sum(values) / len(values))
    saved = json.loads((out / "study_summary.json").read_text())
    assert saved["one_patient_ba"]["reactive"] == pytest.approx(0.05)  # 10 reactive patients
    assert "one reactive patient moves the CV BA by ~0.050" in saved["warning"]
    printed = capsys.readouterr().out
    assert "top-5 CV BA" in printed and "warning: small data" in printed
    assert (out / "optimization_history.png").stat().st_size > 1000 and (out / "trials.csv").exists()
    config = yaml.safe_load((out / "best.yaml").read_text())
    assert not {"study", "trials", "storage", "experiment", "runs_dir"} & set(config)
    metrics = train_clinical.main(["-c", str(out / "best.yaml"), "--runs-dir", str(tmp_path), "--experiment", "again",
                                   "--folds-dir", str(cohort.parent / "folds")])
    assert metrics["ba_mean"] == best.value
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again" / "oof.csv"),
                                  pd.read_csv(out / f"trial_{best.number}" / "oof.csv"))
    assert (tmp_path / "again" / "roc.png").is_file() and not (out / f"trial_{best.number}" / "roc.png").exists()


def test_cnn_study_best_yaml_reproduces_the_best_trial(cohort, tmp_path, monkeypatch):
    tiny_space = [Param("mil_head", "head", CategoricalDistribution(("mean", "attention"))),
                  Param("mil_lr", "lr", FloatDistribution(1e-3, 3e-2, log=True))]
    monkeypatch.setattr(lib.hpo.cnn, "cnn_space", lambda args, dataset: tiny_space)
    tiny = ["--data-dir", str(cohort), "--runs-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache"),
            "--backbone", "test_efficientnet", "--weights", "none", "--crop", "24", "--epochs", "2",
            "--bag-size", "3", "--views", "1", "--tta", "1", "--n-folds", "3", "--head-args", "{hidden_dim: 8}",
            "--batch-patients", "4", "--head", "mean", "--no-progress", "--folds-dir", str(cohort.parent / "folds")]
    summary = train_cnn.main([*tiny, "--study", "cnn", "--trials", "3", "--no-prune"])
    best = summary["best"]
    assert summary["finished"] == 3 and best is not None
    assert yaml.safe_load((tmp_path / "cnn" / "trial_0" / "config.yaml").read_text())["head"] == "mean"
    metrics = train_cnn.main(["-c", str(tmp_path / "cnn" / "best.yaml"), "--runs-dir", str(tmp_path),
                              "--experiment", "again", "--folds-dir", str(cohort.parent / "folds")])
    assert metrics["ba_mean"] == best["value"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again" / "oof.csv"),
                                  pd.read_csv(tmp_path / "cnn" / f"trial_{best['number']}" / "oof.csv"))


# ----------------------------------------------------------------------------- workers in subprocesses
WORKER = """
import functools, os, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
import lib.hpo.clinical, lib.stages.clinical as clinical_stage
lib.hpo.clinical.FEATURE_SET_CHOICES = {choices!r}
real = clinical_stage.make_fit_predict

def patched(features, labels, run_dir, *rest):
    fit_predict = real(features, labels, run_dir, *rest)
    def fold(train, valid, test, k):
        hook(Path(run_dir).name, k)
        return fit_predict(train, valid, test, k)
    return fold
clinical_stage.make_fit_predict = patched
{hook}
import train_clinical
train_clinical.main({argv!r})
"""

DIE_IN_TRIAL_2 = """
def hook(trial, k):
    if trial == "trial_2" and k == 1:  # mid-trial: fold 0 of trial 2 is done
        Path({marker!r}).write_text("trial 2, fold 1")
        time.sleep(300)
"""

MEET_THEN_SLOW = """
def hook(trial, k):
    time.sleep(0.15)
    me = Path({marker!r}) / str(os.getpid())
    if not me.exists():  # first fold of this worker: wait until the other worker is also inside a trial
        me.touch()
        deadline = time.time() + 60
        while len(list(Path({marker!r}).iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.05)
"""


def worker(cohort: Path, folds_dir: Path, argv: list[str], hook: str, marker: Path) -> subprocess.Popen:
    """A train_clinical.py study worker in its own process (fold hook injected)."""
    script = textwrap.dedent(WORKER).format(repo=str(REPO), folds=str(folds_dir), choices=NO_MORPHO, argv=argv,
                                            hook=textwrap.dedent(hook).format(marker=str(marker)))
    return subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.time() < deadline, "worker never reached the marker"
        time.sleep(0.05)


def test_sigkill_mid_trial_then_the_same_command_resumes(cohort, folds_dir, tmp_path):
    argv = clinical_argv(cohort, tmp_path, "k", 5, "--heartbeat", "1")
    marker = tmp_path / "in_trial_2"
    process = worker(cohort, folds_dir, argv, DIE_IN_TRIAL_2, marker)
    wait_for(marker, process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    before = load(tmp_path, "k").trials
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
    train_clinical.main(argv)  # the same command again, right away: the dead trial goes stale, then FAIL
    after = load(tmp_path, "k").trials
    assert [t.value for t in after[:2]] == [t.value for t in before[:2]]  # finished trials kept
    assert after[2].state == TrialState.FAIL
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in after) == 5
    assert (tmp_path / "k" / "trial_2" / "folds" / "fold_0.csv").exists()
    assert not (tmp_path / "k" / "trial_2" / "oof.csv").exists()


def run_two_workers(cohort: Path, folds_dir: Path, tmp_path: Path, storage: str | None, study: str) -> optuna.Study:
    """Two concurrent workers on one study of 6 trials; return the study."""
    extra = ("--storage", storage) if storage else ()
    argv = clinical_argv(cohort, tmp_path, study, 6, "--heartbeat", "2", *extra)
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    processes = [worker(cohort, folds_dir, argv, MEET_THEN_SLOW, meeting) for _ in range(2)]
    outputs = [p.communicate(timeout=180)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    return load(tmp_path, study, storage)


def check_shared(study: optuna.Study) -> None:
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    assert all(t.user_attrs.get("surplus") for t in study.trials if t.state == TrialState.FAIL)
    workers = {t.user_attrs["worker"] for t in finished}
    assert len(workers) == 2, workers  # both did some of the work
    current = [t for t in study.trials if t.user_attrs.get("current_settings") and t.state != TrialState.FAIL]
    assert len(current) == 1  # the enqueued settings ran once, not once per worker


def test_two_workers_share_a_sqlite_study(cohort, folds_dir, tmp_path):
    check_shared(run_two_workers(cohort, folds_dir, tmp_path, None, "pair"))
    assert (tmp_path / "pair" / "best.yaml").exists()


def test_two_workers_share_a_postgresql_study(cohort, folds_dir, tmp_path):
    if not PG_URL:
        pytest.skip("no PostgreSQL server: set LYMPH_TEST_PG_URL (.ci/run starts one)")
    name = f"pair_{uuid.uuid4().hex[:8]}"
    from sqlalchemy.engine import make_url
    secret = f"pw-{uuid.uuid4().hex[:8]}"  # the CI server trusts loopback: any password is accepted
    url = make_url(PG_URL).set(password=secret).render_as_string(hide_password=False)
    try:
        check_shared(run_two_workers(cohort, folds_dir, tmp_path, url, name))
        leaks = [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
        assert not leaks, f"the storage password is written in {leaks}"
    finally:
        optuna.delete_study(study_name=name, storage=with_installed_driver(PG_URL))
