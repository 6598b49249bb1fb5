"""Submission writing and validation; make_submission.py from runs and from a tuned ensemble."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import make_2024

import make_submission
from lib.core.errors import DataError
from lib.data.dataset import load_dataset
from lib.fusion.fuse import FusionParams
from lib.fusion.runs import load_runs
from lib.stages.submission import demo_test_ba, proba_path, validate_submission, write_submission

TEST_IDS = ["P7", "P8", "P9"]


def good() -> pd.DataFrame:
    return pd.DataFrame({"Id": TEST_IDS, "Predicted": [0, 1, 1]})


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.iloc[:2], "1 test Id\\(s\\) missing, e.g. P9"),
    (lambda t: pd.concat([t, pd.DataFrame({"Id": ["P99"], "Predicted": [1]})]), "not in the test set, e.g. P99"),
    (lambda t: pd.concat([t, t.iloc[[0]]]), "duplicate Id\\(s\\) P7"),
    (lambda t: t.assign(Predicted=[0, np.nan, 1]), "NaN"),
    (lambda t: t.assign(Predicted=[0, 2, 1]), "must be 0 or 1, found 2"),
    (lambda t: t.assign(Predicted=[0, 0.7, 1]), "must be 0 or 1"),
    (lambda t: t.rename(columns={"Id": "ID"}), "columns must be Id,Predicted"),
])
def test_bad_submissions_are_refused_with_one_line(edit, message):
    validate_submission(good(), TEST_IDS)
    with pytest.raises(DataError, match=message) as err:
        validate_submission(edit(good()), TEST_IDS)
    assert "\n" not in str(err.value)


def test_write_submission_thresholds_and_writes_both_files(tmp_path):
    proba = pd.Series([0.2, 0.6, 0.4], index=TEST_IDS)
    out, out_proba = write_submission(proba, 0.4, TEST_IDS, tmp_path / "submission.csv")
    assert out_proba == proba_path(out) == tmp_path / "submission_proba.csv"
    assert pd.read_csv(out).to_dict("list") == {"Id": TEST_IDS, "Predicted": [0, 1, 1]}
    assert pd.read_csv(out_proba)["Proba"].tolist() == pytest.approx([0.2, 0.6, 0.4])
    assert not list(tmp_path.glob("*.tmp"))


def test_nan_or_wrong_ids_are_never_written(tmp_path):
    out = tmp_path / "submission.csv"
    with pytest.raises(DataError, match="NaN"):
        write_submission(pd.Series([0.2, np.nan, 0.4], index=TEST_IDS), 0.5, TEST_IDS, out)
    with pytest.raises(DataError, match="missing"):
        write_submission(pd.Series([0.2, 0.4], index=TEST_IDS[:2]), 0.5, TEST_IDS, out)
    assert not out.exists() and not proba_path(out).exists()


# --- make_submission.py on the conftest competition dir (train P1..P6, test P7, P8) ---


def write_run(path, data_dir, seed, test_ids=("P7", "P8")):
    """A finished run on the conftest data: OOF over P1..P6 (3 folds), test predictions per fold."""
    rng = np.random.default_rng(seed)
    ids, target = ["P1", "P2", "P3", "P4", "P5", "P6"], [1, 0, 1, 0, 1, 0]
    path.mkdir(parents=True)
    pd.DataFrame({"ID": ids, "fold": [0, 0, 1, 1, 2, 2], "target": target,
                  "proba": rng.uniform(0, 1, 6)}).to_csv(path / "oof.csv", index=False)
    test = pd.DataFrame({"ID": list(test_ids), **{f"fold_{k}": rng.uniform(0, 1, len(test_ids)) for k in range(3)}})
    test.assign(proba=test.filter(like="fold_").mean(axis=1)).to_csv(path / "test.csv", index=False)
    dataset = load_dataset(data_dir)
    config = {"data_dir": str(data_dir), "dataset_name": dataset.name, "test_inputs": dataset.test_inputs()}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def data_dir(tmp_path):
    return make_2024(tmp_path / "comp", n_cells=1, size=16)


def test_equal_weight_submission_from_runs(data_dir, tmp_path, capsys):
    runs = [write_run(tmp_path / "a", data_dir, 0), write_run(tmp_path / "b", data_dir, 1)]
    out = make_submission.main(["--runs", *map(str, runs), "--out", str(tmp_path / "sub.csv")])
    expected = (pd.read_csv(runs[0] / "test.csv")["proba"] + pd.read_csv(runs[1] / "test.csv")["proba"]) / 2
    proba = pd.read_csv(tmp_path / "sub_proba.csv")
    assert proba["Proba"].tolist() == pytest.approx(expected.tolist())
    assert pd.read_csv(out)["Predicted"].tolist() == (expected >= 0.5).astype(int).tolist()
    assert "[demo data only]" not in capsys.readouterr().out


def test_runs_predicting_other_test_ids_are_refused(data_dir, tmp_path):
    run = write_run(tmp_path / "a", data_dir, 0, test_ids=("P7", "P8", "P42"))
    with pytest.raises(DataError, match="not in the test set, e.g. P42"):
        make_submission.main(["--runs", str(run), "--out", str(tmp_path / "sub.csv")])
    assert not (tmp_path / "sub.csv").exists()


def write_ensemble(path, runs, params: FusionParams):
    path.mkdir()
    saved = {**vars(params), "runs": load_runs(runs).signatures()}
    (path / "best_params.json").write_text(json.dumps(saved))
    return path


def test_ensemble_params_are_used_and_changed_runs_refused(data_dir, tmp_path, capsys):
    runs = [write_run(tmp_path / "a", data_dir, 0), write_run(tmp_path / "b", data_dir, 1)]
    ens = write_ensemble(tmp_path / "ens", runs, FusionParams({"a": 1.0, "b": 0.0}, "prob_mean", 0.3))
    make_submission.main(["--ensemble", str(ens), "--out", str(tmp_path / "sub.csv")])
    proba = pd.read_csv(tmp_path / "sub_proba.csv")["Proba"]
    assert proba.tolist() == pytest.approx(pd.read_csv(runs[0] / "test.csv")["proba"].tolist())
    truth = pd.DataFrame({"ID": ["P7", "P8"], "LABEL": [1, 0]})
    truth.to_csv(data_dir / "demo_test_truth.csv", index=False)
    make_submission.main(["--ensemble", str(ens), "--out", str(tmp_path / "sub.csv")])
    assert "[demo data only] test BA" in capsys.readouterr().out
    for run, message in ((runs[1], "folds differ from"), (runs[0], "was tuned on")):
        oof = pd.read_csv(run / "oof.csv")
        oof["fold"] = [0, 1, 2, 0, 1, 2]  # run re-made on other folds since the ensemble was tuned
        oof.to_csv(run / "oof.csv", index=False)
        with pytest.raises(DataError, match=message):
            make_submission.main(["--ensemble", str(ens), "--out", str(tmp_path / "sub2.csv")])
    assert not (tmp_path / "sub2.csv").exists()


@pytest.mark.parametrize("tamper, message", [
    ("flip_test", "predictions \\(oof.csv/test.csv\\) changed"),  # test.csv probabilities edited to 1 - p
    ("remake", "predictions \\(oof.csv/test.csv\\) changed"),  # the run re-made (same IDs, folds, targets)
    ("move", "is not there"),  # moved away: no fall-back to a same-named sibling of the ensemble run
])
def test_ensemble_refuses_runs_whose_predictions_changed(data_dir, tmp_path, tamper, message):
    runs = [write_run(tmp_path / "a", data_dir, 0), write_run(tmp_path / "b", data_dir, 1)]
    (tmp_path / "ensembles").mkdir()
    ens = write_ensemble(tmp_path / "ensembles" / "ens", runs, FusionParams({"a": 0.5, "b": 0.5}, "prob_mean", 0.5))
    if tamper == "flip_test":
        test = pd.read_csv(runs[1] / "test.csv")
        test["proba"] = 1 - test["proba"]
        test.to_csv(runs[1] / "test.csv", index=False)
    elif tamper == "remake":
        shutil.rmtree(runs[1])
        write_run(runs[1], data_dir, seed=7)
    else:
        shutil.move(runs[1], tmp_path / "ensembles" / "b")  # now a same-named sibling of the ensemble run
    with pytest.raises(DataError, match=message):
        make_submission.main(["--ensemble", str(ens), "--out", str(tmp_path / "sub.csv")])
    assert not (tmp_path / "sub.csv").exists()


def test_demo_test_ba(tmp_path):
    pd.DataFrame({"ID": TEST_IDS, "LABEL": [0, 1, 0]}).to_csv(tmp_path / "demo_test_truth.csv", index=False)
    assert demo_test_ba(tmp_path, good()) == pytest.approx(0.75)
    assert demo_test_ba(tmp_path / "nothing", good()) is None


def test_test_patient_missing_from_a_run_names_its_test_csv(data_dir, tmp_path):
    run = write_run(tmp_path / "a", data_dir, 0, test_ids=("P7",))
    with pytest.raises(DataError, match=r"a/test.csv: 1 test patient\(s\) of .* missing, e.g. P8"):
        make_submission.main(["--runs", str(run), "--out", str(tmp_path / "sub.csv")])
    assert not (tmp_path / "sub.csv").exists()


def _count_changed(data_dir):
    csv = data_dir / "testset" / "testset_data.csv"
    table = pd.read_csv(csv, dtype=str)
    table.loc[table["ID"] == "P8", "LYMPH_COUNT"] = "7.5"  # a typo fixed after the runs scored P8
    table.to_csv(csv, index=False)


def _image_replaced(data_dir):
    import cv2
    image = sorted((data_dir / "testset" / "P7").iterdir())[0]
    cv2.imwrite(str(image), np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8))  # re-exported


@pytest.mark.parametrize("change, patient", [(_count_changed, "P8"), (_image_replaced, "P7")])
def test_a_submission_for_changed_test_inputs_is_refused(data_dir, tmp_path, change, patient):
    run = write_run(tmp_path / "a", data_dir, 0)
    change(data_dir)
    with pytest.raises(DataError, match=f"test patient {patient}'s inputs .* differ from those .*a scored.*predict.py"):
        make_submission.main(["--runs", str(run), "--out", str(tmp_path / "sub.csv")])
    assert not (tmp_path / "sub.csv").exists()


def test_a_run_that_records_no_test_inputs_is_refused(data_dir, tmp_path):
    run = write_run(tmp_path / "a", data_dir, 0)
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in config.items() if k != "test_inputs"}))
    with pytest.raises(DataError, match="records no test inputs"):
        make_submission.main(["--runs", str(run), "--out", str(tmp_path / "sub.csv")])


def test_runs_that_scored_other_test_inputs_are_not_blended(data_dir, tmp_path):
    runs = [write_run(tmp_path / "a", data_dir, 0), write_run(tmp_path / "b", data_dir, 1)]
    config = yaml.safe_load((runs[1] / "config.yaml").read_text())
    config["test_inputs"]["P8"] = "0" * 12  # run b was made after P8's inputs changed
    (runs[1] / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(DataError, match="b: scored other inputs of test patient P8 than"):
        load_runs(runs)
