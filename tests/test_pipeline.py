"""The main job end to end on a small demo directory: every stage runs, the report and submission appear."""
import pandas as pd


def test_pipeline_writes_report_and_a_valid_submission(demo_pipeline):
    data, runs, out, seconds = demo_pipeline
    assert list(seconds) == ["prepare", "clinical", "morpho", "cnn", "cnn_attention", "ensemble", "report",
                             "submission"]
    submission = pd.read_csv(out, dtype={"Id": str})
    test_ids = pd.read_csv(data / "testset" / "testset_data.csv", dtype=str)["ID"]
    assert sorted(submission["Id"]) == sorted(test_ids) and set(submission["Predicted"]) <= {0, 1}
    report = next(runs.glob("*/ensemble/report"))
    pngs = {p.name for p in report.glob("*.png")}
    assert {"roc.png", "confusion.png", "folds.png", "calibration.png"} <= pngs
    assert any(name.startswith("patient_") for name in pngs)
    assert "scored_distribution.png" in pngs and any(n.startswith("scored_P") for n in pngs)  # the submitted patients
    assert "The submitted test patients" in (report / "index.html").read_text()
    html = (report / "index.html").read_text()
    assert all(p.stat().st_size > 1000 and p.name in html for p in report.glob("*.png"))
