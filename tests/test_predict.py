"""predict.py: the saved models of an ensemble score any directory's patients without retraining."""
import shutil
from pathlib import Path

import cv2
import pandas as pd
import pytest

import predict
from lib.core.cli import run_in_process
from lib.core.errors import DataError

NEW_IDS = {0: "N1", 1: "N2", 2: "N3"}


def ensemble_dir(runs: Path) -> Path:
    return next(runs.glob("*/ensemble"))


def run_predict(demo_pipeline, data: Path, out: Path, *extra: str) -> pd.DataFrame:
    _, runs, _, _ = demo_pipeline
    return predict.main(["--ensemble", str(ensemble_dir(runs)), "--data-dir", str(data), "--out", str(out),
                         "--cache-dir", str(runs.parent / "cache"), "--no-progress", *extra])


def files_under(path: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


def test_on_the_training_directory_it_reproduces_every_run_and_the_submission(demo_pipeline, tmp_path):
    data, runs, submission, _ = demo_pipeline
    before = files_under(runs)
    table = run_predict(demo_pipeline, data, tmp_path / "pred.csv")
    assert (tmp_path / "pred.csv").read_bytes() == submission.read_bytes()
    assert (tmp_path / "pred_proba.csv").read_bytes() == submission.with_name("submission_proba.csv").read_bytes()
    for name in ("clinical", "morpho", "cnn", "cnn_attention"):
        test = pd.read_csv(next(runs.glob(f"*/{name}")) / "test.csv", dtype={"ID": str}).set_index("ID")["proba"]
        assert (table[name] - test.loc[table.index]).abs().max() == 0.0, name  # exactly, not within a tolerance
    models = pd.read_csv(tmp_path / "pred_models.csv", dtype={"ID": str})
    assert list(models.columns) == ["ID", "clinical", "morpho", "cnn", "cnn_attention", "blend"]
    assert files_under(runs) == before  # nothing retrained, nothing rewritten
    report = tmp_path / "pred_report"
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert "scored_distribution.png" in pngs and len(pngs) == 1 + 4  # 4 test patients, all near enough to show
    html = (report / "index.html").read_text()
    assert all(name in html for name in pngs) and all((report / n).stat().st_size > 1000 for n in pngs)


def copy_patients(data: Path, root: Path, size: int | None = None, drop_column: str | None = None) -> Path:
    """A new directory of three of the demo's test patients under new IDs, without any training patient."""
    table = pd.read_csv(data / "testset" / "testset_data.csv", dtype=str).iloc[list(NEW_IDS)]
    (root / "testset").mkdir(parents=True)
    for i, old in enumerate(table["ID"]):
        shutil.copytree(data / "testset" / old, root / "testset" / NEW_IDS[i])
        if size:
            for image in (root / "testset" / NEW_IDS[i]).glob("*.jpg"):
                cv2.imwrite(str(image), cv2.resize(cv2.imread(str(image)), (size, size)))
    renamed = table.assign(ID=[NEW_IDS[i] for i in range(len(table))])
    renamed.drop(columns=[drop_column] if drop_column else []).to_csv(root / "testset" / "testset_data.csv", index=False)
    return root


def test_new_patients_under_new_ids_get_the_probabilities_of_the_originals(demo_pipeline, tmp_path):
    data, _, _, _ = demo_pipeline
    original = run_predict(demo_pipeline, data, tmp_path / "all.csv")
    new = run_predict(demo_pipeline, copy_patients(data, tmp_path / "new"), tmp_path / "new.csv")
    old_ids = pd.read_csv(data / "testset" / "testset_data.csv", dtype=str)["ID"].iloc[list(NEW_IDS)].tolist()
    expected = original.loc[old_ids].set_axis([NEW_IDS[i] for i in range(3)])
    # embeddings of the copies are computed in other batches: float16-rounded features may differ in the last bit
    pd.testing.assert_frame_equal(new, expected.rename_axis("ID"), atol=1e-3, rtol=0)
    assert list(pd.read_csv(tmp_path / "new.csv")["Id"]) == ["N1", "N2", "N3"]


@pytest.mark.parametrize("change, message", [
    (dict(size=24), "cells are 24x24 px where the training cells were"),  # smaller: refused by the cells profile
    (dict(drop_column="LYMPH_COUNT"), "missing column"),
])
def test_mismatched_data_is_a_one_line_error(demo_pipeline, tmp_path, change, message):
    data, _, _, _ = demo_pipeline
    with pytest.raises(DataError, match=message):
        run_predict(demo_pipeline, copy_patients(data, tmp_path / "new", **change), tmp_path / "p.csv")
    assert not (tmp_path / "p.csv").exists()


def test_a_missing_model_file_is_a_one_line_error(demo_pipeline, tmp_path, capsys):
    """Through the script's entry (tests/test_imports.py runs predict.py itself as a process)."""
    data, runs, _, _ = demo_pipeline
    model = next(runs.glob("*/clinical")) / "folds" / "model_0.json"
    model.rename(model.with_suffix(".moved"))
    try:
        code = run_in_process(["predict.py", "--ensemble", str(ensemble_dir(runs)), "--data-dir", str(data),
                               "--out", str(tmp_path / "p.csv"), "--cache-dir", str(runs.parent / "cache"),
                               "--no-progress"])
    finally:
        model.with_suffix(".moved").rename(model)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: {model}: fold model not found")
