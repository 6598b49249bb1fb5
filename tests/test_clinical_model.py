"""Clinical model, the CV driver's fold discipline and resume, feature sets, and the end-to-end pipeline."""
import argparse
import json

import numpy as np
import pandas as pd
import pytest
from conftest import cohort_rows, make_2024

import ensemble
import lib.data.folds
import lib.models.clinical as clinical_model
import lib.stages.clinical as clinical_stage
import make_submission
import train_clinical
from lib.core.errors import DataError
from lib.data.dataset import load_dataset
from lib.features.tables import feature_table
from lib.stages.context import Stage
from lib.stages.cv import check_unseen, cross_validate, fold_path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    train, test = cohort_rows()
    return make_2024(tmp_path_factory.mktemp("cohort") / "comp", train=train, test=test, n_cells=2, size=16)


def train_args(cohort, runs_dir, *extra):
    """Fold files and caches go beside the cohort, never into the repository."""
    return ["--data-dir", str(cohort), "--runs-dir", str(runs_dir), "--experiment", "clin", "--inner-folds", "3",
            "--folds-dir", str(cohort.parent / "folds"), "--cache-dir", str(cohort.parent / "cache"), *extra]


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("runs")
    metrics = train_clinical.main(train_args(cohort, runs_dir))
    return runs_dir / "clin", metrics


def make_stage(cohort, tmp_path) -> Stage:
    dataset = load_dataset(cohort)
    folds = lib.data.folds.load_folds(dataset, 5, 42, folds_dir=tmp_path / "folds")
    return Stage(argparse.Namespace(), dataset, folds, tmp_path / "run")


def test_driver_never_scores_a_patient_the_model_was_fitted_on(cohort, tmp_path):
    stage, calls = make_stage(cohort, tmp_path), []

    def spy(train, valid, test, fold):
        calls.append((set(train), set(valid), set(test)))
        return pd.Series(0.5, index=valid), pd.Series(0.5, index=test)

    oof, test_per_fold = cross_validate(stage, spy)
    train_ids = set(stage.dataset.train.index)
    assert len(calls) == 5 and sorted(test_per_fold) == [0, 1, 2, 3, 4]
    for seen, scored, test in calls:
        assert seen.isdisjoint(scored) and seen.isdisjoint(test) and seen | scored == train_ids
    assert sorted(i for _, scored, _ in calls for i in scored) == sorted(train_ids)  # each scored exactly once
    assert sorted(oof["ID"]) == sorted(train_ids) and list(oof.columns) == ["ID", "fold", "target", "proba"]
    with pytest.raises(AssertionError, match="P3"):
        check_unseen(pd.Index(["P1", "P3"]), pd.Index(["P3"]), pd.Index(["P9"]), 0)


def test_clinical_model_fits_only_on_the_training_patients(cohort, tmp_path, monkeypatch):
    stage, fitted_on = make_stage(cohort, tmp_path), []
    real_make = clinical_model.make_model

    def spying_make(*args):
        model = real_make(*args)
        real_fit = model.fit

        def fit(X, y):
            fitted_on.append(set(X.index))
            del model.fit  # the fitted model is pickled as the fold's model: no spy left on it
            return real_fit(X, y)
        model.fit = fit
        return model

    monkeypatch.setattr(clinical_model, "make_model", spying_make)
    features = feature_table(stage.dataset, "clinical")
    fit_predict = clinical_stage.make_fit_predict(features, stage.dataset.train["LABEL"], stage.run_dir,
                                                  clinical_stage.ClinicalFit(seed=0, n_inner=3))
    cross_validate(stage, fit_predict, folds_to_run=[1, 3])
    folds = stage.folds.set_index("ID")["fold"]
    assert len(fitted_on) == 2
    for k, ids in zip([1, 3], fitted_on):
        assert ids == set(folds.index[folds != k])
    assert not (stage.run_dir / "oof.csv").exists()  # written only once every fold is done


def test_nan_predictions_are_refused(cohort, tmp_path):
    stage = make_stage(cohort, tmp_path)
    with pytest.raises(DataError, match="fold 0 validation: predictions contain NaN"):
        cross_validate(stage, lambda tr, va, te, k: (pd.Series(np.nan, index=va), pd.Series(0.5, index=te)))
    assert not fold_path(stage.run_dir, 0).exists()


def test_stale_fold_file_from_other_folds_is_refused_on_resume(cohort, tmp_path):
    stage = make_stage(cohort, tmp_path)
    path = fold_path(stage.run_dir, 2)
    path.parent.mkdir(parents=True)
    pd.DataFrame({"ID": ["P0", "P30"], "role": ["valid", "test"], "proba": [0.5, 0.5]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"fold_2.csv: fold 2 held other patients .* the fold file changed since"):
        cross_validate(stage, lambda tr, va, te, k: (pd.Series(0.5, index=va), pd.Series(0.5, index=te)))


def test_train_clinical_writes_the_run(trained, cohort):
    run_dir, metrics = trained
    oof, test = pd.read_csv(run_dir / "oof.csv"), pd.read_csv(run_dir / "test.csv")
    assert list(oof.columns) == ["ID", "fold", "target", "proba"] and len(oof) == 30
    assert list(test.columns) == ["ID", *(f"fold_{k}" for k in range(5)), "proba"] and len(test) == 6
    assert test["proba"].to_numpy() == pytest.approx(test.filter(like="fold_").mean(axis=1).to_numpy())
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert set(saved["per_fold"]) == {str(k) for k in range(5)} and saved["auc_mean"] == metrics["auc_mean"]
    assert metrics["pooled_auc"] > 0.75  # the cohort's signal is learnt
    coef = pd.read_csv(run_dir / "coefficients.csv")
    assert list(coef.columns) == ["fold", "C", "intercept", "age", "log_lymph", "gender_m"] and len(coef) == 5
    assert (coef["log_lymph"] > 0).all() and coef["C"].isin(clinical_model.C_GRID).all()
    for name in ("roc.png", "config.yaml", "code_version.json", "log.txt"):
        assert (run_dir / name).exists(), name
    assert "stage: clinical" in (run_dir / "config.yaml").read_text()


def test_existing_experiment_is_refused_and_resume_reruns_only_missing_folds(trained, cohort, monkeypatch):
    run_dir, _ = trained
    with pytest.raises(DataError, match="already exists"):
        train_clinical.main(train_args(cohort, run_dir.parent))
    before = pd.read_csv(run_dir / "oof.csv")
    fold_path(run_dir, 3).unlink()
    (run_dir / "oof.csv").unlink()
    fits, real_make = [], clinical_model.make_model
    monkeypatch.setattr(clinical_model, "make_model", lambda *a: fits.append(a) or real_make(*a))
    train_clinical.main(train_args(cohort, run_dir.parent, "--resume"))
    assert len(fits) == 1 and fold_path(run_dir, 3).exists()
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "oof.csv"), before)
    with pytest.raises(DataError, match="different settings"):
        train_clinical.main(train_args(cohort, run_dir.parent, "--resume", "--feature-set", "clinical+ncells"))


def test_feature_sets(cohort, monkeypatch):
    dataset = load_dataset(cohort)
    assert list(feature_table(dataset, "clinical").columns) == ["age", "log_lymph", "gender_m"]
    ncells = feature_table(dataset, "clinical+ncells")
    assert ncells["log_n_images"].to_numpy() == pytest.approx(np.log(2.0))
    with pytest.raises(DataError, match="feature set 'bogus' is unknown"):
        feature_table(dataset, "bogus")
    import lib.features.morphometry.cache
    fake = pd.DataFrame({"area_mean": np.arange(len(dataset.patients), dtype=float)}, index=dataset.patients.index)
    monkeypatch.setattr(lib.features.morphometry.cache, "pooled_morphometry", lambda ds, **kw: fake)
    morpho = feature_table(dataset, "clinical+morpho")
    assert list(morpho.columns) == ["age", "log_lymph", "gender_m", "area_mean"] and len(morpho) == 36


def test_end_to_end_train_ensemble_submission(trained, cohort, tmp_path, capsys):
    run_dir, _ = trained
    ensemble.main(["--runs", str(run_dir), "--runs-dir", str(tmp_path), "--experiment", "ens",
                   "--trials", "4", "--nested-trials", "2"])
    truth = pd.DataFrame({"ID": [f"P{i}" for i in range(30, 36)], "LABEL": [1, 1, 1, 0, 0, 1]})
    truth.to_csv(cohort / "demo_test_truth.csv", index=False)
    try:
        out = make_submission.main(["--ensemble", str(tmp_path / "ens"), "--out", str(tmp_path / "sub.csv")])
    finally:
        (cohort / "demo_test_truth.csv").unlink()
    submission = pd.read_csv(out, dtype={"Id": str})
    assert list(submission.columns) == ["Id", "Predicted"]
    assert set(submission["Id"]) == set(truth["ID"]) and set(submission["Predicted"]) <= {0, 1}
    assert (tmp_path / "sub_proba.csv").exists()
    printed = capsys.readouterr().out
    assert "OOF BA honest" in printed and "[demo data only] test BA" in printed


@pytest.mark.parametrize("C, penalty", [(None, None), (0.5, "l1")])
def test_the_saved_numbers_score_like_the_fitted_pipeline(C, penalty):
    estimator = clinical_model
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(40, 3)), columns=["age", "log_lymph", "gender_m"])
    y = pd.Series((X["age"] + rng.normal(size=40) > 0).astype(int))
    X.iloc[3, 1] = np.nan  # imputed with the training median
    model = estimator.make_model(estimator.inner_splits(y, 3), 0, C, penalty).fit(X, y)
    params = estimator.to_dict(model, list(X.columns))
    new = X.sample(frac=1.0, random_state=1)[["gender_m", "age", "log_lymph"]]  # other column order
    new.iloc[0, 0] = np.nan
    expected = estimator.positive_proba(model, new[list(X.columns)])
    assert np.abs(estimator.proba_from_dict(params, new) - expected).max() < 1e-12
