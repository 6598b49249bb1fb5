"""Fusion and ensemble.py on synthetic run directories: compatibility checks, fusing methods, the study."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import ensemble
import lib.fusion.fuse as fusion
import lib.fusion.tune as tuning
from lib.core.errors import DataError
from lib.fusion.fuse import FusionParams, ecdf, fuse, fused_ba
from lib.fusion.runs import load_runs

N = 30
IDS = [f"P{i}" for i in range(N)]
TEST_IDS = ["T1", "T2", "T3", "T4"]
TARGET = np.array([0, 1] * (N // 2))
FOLDS = np.arange(N) % 5


def write_run(path: Path, seed: int, *, ids=IDS, target=TARGET, folds=FOLDS, test_ids=TEST_IDS,
              config: dict | None = None, noise: float = 0.35) -> Path:
    """A run directory with oof.csv, test.csv and config.yaml; probabilities informative about the target."""
    rng = np.random.default_rng(seed)
    proba = np.clip(0.5 + (np.asarray(target) - 0.5) * 0.6 + rng.normal(0, noise, len(ids)), 0.01, 0.99)
    path.mkdir(parents=True)
    pd.DataFrame({"ID": ids, "fold": folds, "target": target, "proba": proba}).to_csv(path / "oof.csv", index=False)
    test = pd.DataFrame({"ID": test_ids, **{f"fold_{k}": rng.uniform(0, 1, len(test_ids)) for k in range(5)}})
    test["proba"] = test.filter(like="fold_").mean(axis=1)
    test.to_csv(path / "test.csv", index=False)
    (path / "config.yaml").write_text(yaml.safe_dump(config or {"dataset_name": "toy-1234", "stage": "cnn"}))
    return path


@pytest.fixture
def two_runs(tmp_path):
    return [write_run(tmp_path / "clin", 0, config={"dataset_name": "toy-1234", "stage": "clinical"}),
            write_run(tmp_path / "cnn", 1)]


def test_load_runs_aligns_predictions(two_runs):
    runs = load_runs(two_runs)
    assert runs.names == ["clin", "cnn"] and list(runs.oof.columns) == ["clin", "cnn"]
    assert runs.n_folds == 5 and set(runs.test.index) == set(TEST_IDS)
    assert runs.target.loc["P1"] == 1 and runs.fold.loc["P7"] == 2


@pytest.mark.parametrize("change, message", [
    (dict(ids=IDS[:-1] + ["X9"]), "patient set differs"),
    (dict(target=1 - TARGET), "targets differ"),
    (dict(folds=(FOLDS + 1) % 5), "folds differ"),
    (dict(test_ids=["T1", "T2", "T3", "T9"]), "test patient set differs"),
    (dict(config={"dataset_name": "other-9999"}), "trained on dataset"),
])
def test_incompatible_runs_are_refused(tmp_path, change, message):
    a = write_run(tmp_path / "a", 0)
    b = write_run(tmp_path / "b", 1, **change)
    with pytest.raises(DataError, match=message):
        load_runs([a, b])


def test_nan_duplicate_names_and_bad_probabilities_are_refused(tmp_path):
    a = write_run(tmp_path / "a", 0)
    with pytest.raises(DataError, match="distinct names"):
        load_runs([a, a])
    b = write_run(tmp_path / "b", 1)
    oof = pd.read_csv(b / "oof.csv")
    oof.loc[3, "proba"] = np.nan
    oof.to_csv(b / "oof.csv", index=False)
    with pytest.raises(DataError, match="NaN"):
        load_runs([a, b])
    oof.loc[3, "proba"] = 1.5
    oof.to_csv(b / "oof.csv", index=False)
    with pytest.raises(DataError, match="outside"):
        load_runs([a, b])


def test_fusing_methods():
    probas = pd.DataFrame({"a": [0.2, 0.9, 0.6], "b": [0.4, 0.5, 0.1]}, index=["x", "y", "z"])
    mean = fuse(probas, FusionParams({"a": 3.0, "b": 1.0}, "prob_mean"))
    assert mean.tolist() == pytest.approx([0.25, 0.8, 0.475])
    logit = fuse(probas, FusionParams({"a": 1.0, "b": 0.0}, "logit_mean"))
    assert logit.tolist() == pytest.approx(probas["a"].tolist())
    equal = fuse(probas, FusionParams({"a": 0.0, "b": 0.0}))  # all-zero weights -> equal weights
    assert equal.tolist() == pytest.approx(probas.mean(axis=1).tolist())
    ranks = fuse(probas, FusionParams({"a": 1.0, "b": 0.0}, "rank_mean"))
    assert ranks.tolist() == pytest.approx([1 / 6, 5 / 6, 3 / 6])  # mid-rank ECDF of the OOF itself


def test_rank_mean_is_defined_on_new_scores_via_the_reference_ecdf():
    reference = np.array([0.1, 0.2, 0.3, 0.4])
    assert ecdf(reference, np.array([0.0, 0.25, 0.3, 0.9])).tolist() == pytest.approx([0.0, 0.5, 0.625, 1.0])
    oof = pd.DataFrame({"a": reference})
    test = pd.DataFrame({"a": [0.35]}, index=["t"])
    assert fuse(test, FusionParams({"a": 1.0}, "rank_mean"), reference=oof).iloc[0] == pytest.approx(0.75)


def test_ensemble_writes_params_metrics_and_plots_and_enqueues_equal_weights(two_runs, tmp_path, capsys):
    result = ensemble.main(["--runs", *map(str, two_runs), "--runs-dir", str(tmp_path / "runs"),
                            "--experiment", "ens", "--fusion", "study", "--trials", "6", "--nested-trials", "3"])
    run_dir = tmp_path / "runs" / "ens"
    best = json.loads((run_dir / "best_params.json").read_text())
    assert set(best["weights"]) == {"clin", "cnn"} and sum(best["weights"].values()) == pytest.approx(1)
    assert best["method"] in fusion.METHODS and 0.05 <= best["threshold"] <= 0.95
    assert [r["name"] for r in best["runs"]] == ["clin", "cnn"] and all(len(r["oof_hash"]) == 12 for r in best["runs"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["nested"]["per_fold_ba"]) == {str(k) for k in range(5)}
    assert metrics["clinical_runs"] == ["clin"] and "nested_tuned_threshold_ba_mean" in metrics["models"]["clin"]
    assert metrics["in_sample"]["pooled_ba"] == pytest.approx(result["metrics"]["top_trials"]["best"]["value"])
    for name in ("study.db", "roc.png", "optimization_history.png", "oof.csv"):
        assert (run_dir / name).exists(), name
    study = fusion_study(run_dir)
    assert study.trials[0].params == tuning.equal_trial_params(["clin", "cnn"])
    assert "honest" in capsys.readouterr().out


def fusion_study(run_dir: Path):
    import optuna
    return optuna.load_study(study_name="ens", storage=f"sqlite:///{run_dir / 'study.db'}")


def test_existing_ensemble_is_refused_and_resume_tops_up(two_runs, tmp_path):
    args = ["--runs", *map(str, two_runs), "--runs-dir", str(tmp_path / "runs"), "--experiment", "ens",
            "--fusion", "study", "--nested-trials", "2"]
    ensemble.main(args + ["--trials", "3"])
    with pytest.raises(DataError, match="already exists"):
        ensemble.main(args + ["--trials", "3"])
    ensemble.main(args + ["--trials", "5", "--resume"])
    assert len(fusion_study(tmp_path / "runs" / "ens").trials) == 5


def test_mismatched_runs_are_refused_before_a_run_dir_is_made(tmp_path):
    a = write_run(tmp_path / "a", 0)
    b = write_run(tmp_path / "b", 1, folds=(FOLDS + 2) % 5)
    with pytest.raises(DataError, match="folds differ"):
        ensemble.main(["--runs", str(a), str(b), "--runs-dir", str(tmp_path / "runs"), "--trials", "2"])
    assert not (tmp_path / "runs").exists()


def test_nested_estimate_never_tunes_on_the_fold_it_scores(two_runs, tmp_path, monkeypatch):
    runs = load_runs(two_runs)
    tuned_on, real_tune = [], tuning.tune
    monkeypatch.setattr(tuning, "tune", lambda probas, *a: tuned_on.append(set(probas.index)) or real_tune(probas, *a))
    result = tuning.nested_estimate(runs, tmp_path, "n", n_trials=8, seed=0, fusion="study")
    assert len(tuned_on) == 5
    for k, ids in enumerate(tuned_on):
        held = set(runs.fold.index[runs.fold == k])
        assert ids.isdisjoint(held) and ids | held == set(IDS)
    assert not (tmp_path / "study.db").exists()
    for k, params in result["params_per_fold"].items():  # each fold is scored with the fusion tuned without it
        held, rest = runs.fold.index[runs.fold == k], runs.fold.index[runs.fold != k]
        expected = fused_ba(runs.oof.loc[held], runs.target, FusionParams(**params), reference=runs.oof.loc[rest])
        assert result["per_fold_ba"][k] == pytest.approx(expected)
    assert result["ba_mean"] == pytest.approx(np.mean(list(result["per_fold_ba"].values())))
    assert result["ba_mean"] > 0.6  # both runs are informative (about 0.8 BA alone): far above chance
    policies = result["threshold_policies"]
    assert set(policies) == {"tuned", "0.5", "prevalence"} and policies["tuned"]["per_fold_ba"] == result["per_fold_ba"]
    assert all(0.0 <= v["ba_mean"] <= 1.0 for v in policies.values()) and 0.6 < result["auc"] <= 1.0


def test_threshold_policies_use_the_tuning_patients_only():
    scores = pd.Series(np.linspace(0.0, 0.9, 10), index=[f"P{i}" for i in range(10)])
    target = pd.Series([0, 0, 0, 1, 1, 1, 1, 1, 1, 1], index=scores.index)  # 70 % tumoral
    assert tuning.policy_threshold("tuned", 0.37, scores, target) == 0.37
    assert tuning.policy_threshold("0.5", 0.37, scores, target) == 0.5
    prevalence = tuning.policy_threshold("prevalence", 0.37, scores, target)
    assert (scores >= prevalence).mean() == pytest.approx(0.7)  # calls the tuning patients' share tumoral


def test_model_baseline_threshold_is_tuned_on_other_folds_only():
    target = pd.Series(TARGET, index=IDS)
    fold = pd.Series(FOLDS, index=IDS)
    perfect = pd.Series(np.where(TARGET == 1, 0.3, 0.1), index=IDS)  # separable, but below 0.5
    b = tuning.model_baseline(perfect, target, fold)
    assert b["ba_at_0.5_mean"] == 0.5 and b["pooled_ba_at_tuned_threshold"] == 1.0
    assert b["nested_tuned_threshold_ba_mean"] == 1.0 and 0.1 < b["tuned_threshold"] <= 0.3


def test_vectorised_balanced_accuracy_matches_sklearn():
    from sklearn.metrics import balanced_accuracy_score
    rng = np.random.default_rng(0)
    y, score = rng.integers(0, 2, 25), rng.uniform(size=25)
    grid = np.array([0.1, 0.4, 0.77])
    expected = [balanced_accuracy_score(y, (score >= t).astype(int)) for t in grid]
    assert fusion.balanced_accuracy(y, score, grid) == pytest.approx(expected)
    assert fusion.balanced_accuracy(y, score, 0.4) == pytest.approx(expected[1])


def test_killed_ensemble_study_resumes_whatever_the_moment_of_the_kill(two_runs, tmp_path):
    """ensemble.py killed (SIGKILL or SIGTERM) at random moments, from the first second on, then resumed:
    never hangs on the killed trial, and ends with exactly the requested number of finished trials."""
    import random
    import signal
    import subprocess
    import sys
    import time
    repo = Path(__file__).resolve().parent.parent
    command = [sys.executable, "ensemble.py", "--runs", *map(str, two_runs), "--runs-dir", str(tmp_path / "runs"),
               "--experiment", "ens", "--fusion", "study", "--trials", "30", "--nested-trials", "10", "--resume"]
    rng, db = random.Random(0), tmp_path / "runs" / "ens" / "study.db"
    for round_ in range(4):  # 2 in the first second, 2 mid-trial; SIGKILL and SIGTERM alternate (each path once)
        process = subprocess.Popen(command, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if round_ < 2:  # in the first second: before or while the run directory and study are made
            time.sleep(rng.uniform(0.0, 1.0))
        else:  # in the middle of the trials: a short random moment after the study has started
            deadline = time.time() + 30
            while not db.exists() and process.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.6))
        process.send_signal(signal.SIGKILL if round_ % 2 == 0 else signal.SIGTERM)
        process.wait(timeout=60)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=300)
    assert time.perf_counter() - start < 45, "waited for a dead worker's trial"
    assert done.returncode == 0, done.stderr[-2000:]
    study = fusion_study(tmp_path / "runs" / "ens")
    finished = [t for t in study.trials if t.state in (optuna_states().COMPLETE, optuna_states().PRUNED)]
    assert len(finished) == 30 and not [t for t in study.trials if t.state == optuna_states().RUNNING]


def optuna_states():
    from optuna.trial import TrialState
    return TrialState


def test_a_run_that_records_no_dataset_is_refused(tmp_path):
    """The dataset check is never skipped: a run without dataset_name in its config.yaml cannot be fused."""
    a = write_run(tmp_path / "a", 0)
    b = write_run(tmp_path / "b", 1, config={"stage": "cnn"})
    with pytest.raises(DataError, match="records no dataset_name"):
        load_runs([a, b])


def test_a_fixed_threshold_policy_is_submitted_and_estimated_the_same_way(two_runs, tmp_path):
    argv = ["--runs", *map(str, two_runs), "--runs-dir", str(tmp_path), "--fusion", "study", "--trials", "6",
            "--nested-trials", "3"]
    ensemble.main([*argv, "--experiment", "fixed", "--threshold", "0.5"])
    saved = json.loads((tmp_path / "fixed" / "best_params.json").read_text())
    metrics = json.loads((tmp_path / "fixed" / "metrics.json").read_text())
    assert saved["threshold"] == 0.5 and metrics["nested"]["threshold_policy"] == "0.5"
    assert metrics["nested"]["per_fold_ba"] == metrics["nested"]["threshold_policies"]["0.5"]["per_fold_ba"]
    assert all(p["threshold"] == 0.5 for p in metrics["nested"]["params_per_fold"].values())


def test_equal_fusion_fits_no_weights_and_its_honest_estimate_is_the_plain_cv_score(two_runs, tmp_path):
    result = ensemble.main(["--runs", *map(str, two_runs), "--runs-dir", str(tmp_path), "--experiment", "equal",
                            "--fusion", "equal", "--threshold", "0.5"])
    run_dir = tmp_path / "equal"
    saved = json.loads((run_dir / "best_params.json").read_text())
    assert saved["weights"] == {"clin": 0.5, "cnn": 0.5} and saved["method"] == "prob_mean" and saved["threshold"] == 0.5
    assert not (run_dir / "study.db").exists() and (run_dir / "roc.png").exists()
    runs = load_runs(two_runs)
    mean = runs.oof.mean(axis=1)
    by_hand = [fusion.balanced_accuracy(runs.target[runs.fold == k], mean[runs.fold == k], 0.5) for k in range(5)]
    nested = result["metrics"]["nested"]
    assert nested["ba_mean"] == pytest.approx(np.mean(by_hand))  # nothing fitted: the honest score is the CV score
    assert result["metrics"]["fusion"] == "equal" and result["metrics"]["n_trials"] == 0
    tuned = nested["params_per_fold"]  # with --threshold tuned the threshold alone is searched, on the other folds
    assert all(p["weights"] == {"clin": 0.5, "cnn": 0.5} for p in tuned.values())
    searched = ensemble.main(["--runs", *map(str, two_runs), "--runs-dir", str(tmp_path), "--experiment", "equal_t",
                              "--fusion", "equal", "--threshold", "tuned"])["metrics"]["nested"]
    for k, params in searched["params_per_fold"].items():
        rest = runs.fold != int(k)
        assert params["threshold"] == fusion.best_threshold(runs.target[rest], mean[rest])


def test_an_ensemble_made_before_the_fusion_option_resumes_as_a_study_only(two_runs, tmp_path):
    argv = ["--runs", *map(str, two_runs), "--runs-dir", str(tmp_path), "--experiment", "old", "--trials", "3",
            "--nested-trials", "2"]
    ensemble.main([*argv, "--fusion", "study"])
    saved = tmp_path / "old" / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    saved.write_text(yaml.safe_dump({k: v for k, v in config.items() if k != "fusion"}))  # as an older version wrote it
    assert ensemble.main([*argv, "--resume", "--fusion", "study", "--trials", "4"])["metrics"]["n_trials"] == 4
    saved.write_text(yaml.safe_dump({k: v for k, v in config.items() if k != "fusion"}))
    with pytest.raises(DataError, match=r"fusion: 'study' then, 'equal' now\); pass the run's settings \(--fusion study\)"):
        ensemble.main([*argv, "--resume"])
