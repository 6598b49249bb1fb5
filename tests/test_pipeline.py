"""The main job end to end on a small demo directory: every stage runs, the report and submission appear."""
import pandas as pd
import yaml

import pipeline
from lib.data.demo import generate_demo

TINY_CNN = {"regime": "embed", "backbone": "test_efficientnet", "weights": "none", "crop": 32,
            "input_size": "crop", "aug": "light", "views": 1, "tta": 1, "head": "mean", "bag_size": 4,
            "epochs": 2, "lr": 0.001, "weight_decay": 0.01, "batch_patients": 8, "pca": 0,
            "clinical_fusion": True, "device": "cpu", "amp": "off", "embed_batch": 64}


def test_pipeline_writes_report_and_a_valid_submission(tmp_path):
    data = generate_demo(tmp_path / "demo", n_train=18, n_test=4, cells=(16, 18), seed=3, progress=False)
    config = tmp_path / "cnn_tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_CNN))
    out = tmp_path / "submission.csv"
    seconds = pipeline.main(["--data-dir", str(data), "--runs-dir", str(tmp_path / "runs"), "--out", str(out),
                             "--cnn-config", str(config), "--trials", "8",
                             "--folds-dir", str(tmp_path / "folds"), "--cache-dir", str(tmp_path / "cache")])
    assert list(seconds) == ["prepare", "clinical", "morpho", "cnn", "cnn_attention", "ensemble", "report",
                             "submission"]
    submission = pd.read_csv(out, dtype={"Id": str})
    test_ids = pd.read_csv(data / "testset" / "testset_data.csv", dtype=str)["ID"]
    assert sorted(submission["Id"]) == sorted(test_ids) and set(submission["Predicted"]) <= {0, 1}
    report = next((tmp_path / "runs").glob("*/ensemble/report"))
    pngs = {p.name for p in report.glob("*.png")}
    assert {"roc.png", "confusion.png", "folds.png", "calibration.png"} <= pngs
    assert any(name.startswith("patient_") for name in pngs)
    html = (report / "index.html").read_text()
    assert all(p.stat().st_size > 1000 and p.name in html for p in report.glob("*.png"))
