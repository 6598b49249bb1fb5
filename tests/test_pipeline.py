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


def test_pipeline_with_fold_seed_bagging(demo_pipeline, tmp_path):
    """--fold-seeds: the models run on each split, are averaged per patient, and the blend uses the averages."""
    import yaml

    import pipeline
    from conftest import TINY_CNN
    data, _, _, _ = demo_pipeline
    config = tmp_path / "cnn_tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_CNN))
    out = tmp_path / "submission.csv"
    seconds = pipeline.main(["--data-dir", str(data), "--runs-dir", str(tmp_path / "runs"), "--out", str(out),
                             "--cnn-config", str(config), "--trials", "4", "--fold-seeds", "42", "43",
                             "--folds-dir", str(tmp_path / "folds"), "--cache-dir", str(tmp_path / "cache")])
    assert "bag" in seconds and "clinical_s43" in seconds and out.exists()
    bagged = next((tmp_path / "runs").glob("*_bag42-43"))
    singles = [pd.read_csv(next((tmp_path / "runs").glob(f"*_s{s}")) / "cnn" / "oof.csv").set_index("ID") for s in (42, 43)]
    oof = pd.read_csv(bagged / "cnn" / "oof.csv").set_index("ID")
    pd.testing.assert_series_equal(oof["proba"], ((singles[0]["proba"] + singles[1]["proba"]) / 2).loc[oof.index],
                                   check_names=False)
    assert (bagged / "ensemble" / "best_params.json").exists()


def test_pipeline_with_a_pretrained_encoder(demo_pipeline, tmp_path):
    """--pretrain-config: the label-free encoder is learnt once, then the CNN stages embed with it."""
    import yaml

    import pipeline
    from conftest import TINY_CNN
    data, _, _, _ = demo_pipeline
    pretrain = {"backbone": "test_efficientnet", "crop": 32, "input_size": 32, "epochs": 1, "batch_size": 32,
                "hidden_dim": 16, "proj_dim": 8, "device": "cpu"}
    (tmp_path / "pretrain.yaml").write_text(yaml.safe_dump(pretrain))
    (tmp_path / "cnn.yaml").write_text(yaml.safe_dump(TINY_CNN))
    seconds = pipeline.main(["--data-dir", str(data), "--runs-dir", str(tmp_path / "runs"), "--out",
                             str(tmp_path / "submission.csv"), "--cnn-config", str(tmp_path / "cnn.yaml"),
                             "--pretrain-config", str(tmp_path / "pretrain.yaml"), "--trials", "4",
                             "--folds-dir", str(tmp_path / "folds"), "--cache-dir", str(tmp_path / "cache")])
    assert list(seconds)[:2] == ["pretrain", "prepare"]
    encoder = next((tmp_path / "runs").glob("*_ssl")) / "encoder.pth"
    config = yaml.safe_load((next((tmp_path / "runs").glob("*_s42")) / "cnn" / "config.yaml").read_text())
    assert config["weights"] == str(encoder) and (tmp_path / "submission.csv").exists()


def test_pipeline_with_a_fine_tuned_cnn_in_the_blend(demo_pipeline, tmp_path):
    """--with-finetune CONFIG: one more model, trained end to end, joins the ensemble."""
    import json

    import yaml

    import pipeline
    from conftest import TINY_CNN
    data, _, _, _ = demo_pipeline
    (tmp_path / "cnn.yaml").write_text(yaml.safe_dump(TINY_CNN))
    finetune = {**TINY_CNN, "regime": "finetune", "epochs": 1, "head": "instance_bn", "clinical_fusion": False}
    (tmp_path / "finetune.yaml").write_text(yaml.safe_dump(finetune))
    seconds = pipeline.main(["--data-dir", str(data), "--runs-dir", str(tmp_path / "runs"), "--out",
                             str(tmp_path / "submission.csv"), "--cnn-config", str(tmp_path / "cnn.yaml"),
                             "--with-finetune", str(tmp_path / "finetune.yaml"), "--trials", "4",
                             "--folds-dir", str(tmp_path / "folds"), "--cache-dir", str(tmp_path / "cache")])
    assert list(seconds)[4:6] == ["cnn_attention", "cnn_finetune"] and (tmp_path / "submission.csv").exists()
    seed_dir = next((tmp_path / "runs").glob("*_s42"))
    config = yaml.safe_load((seed_dir / "cnn_finetune" / "config.yaml").read_text())
    assert config["regime"] == "finetune"
    params = json.loads((seed_dir / "ensemble" / "best_params.json").read_text())
    assert any("cnn_finetune" in str(run) for run in params["runs"])


def test_pipeline_with_finetune_needs_its_encoder_before_any_stage(demo_pipeline, tmp_path, capsys):
    import pytest

    import pipeline
    from lib.core.cli import run_main
    data, _, _, _ = demo_pipeline
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: pipeline.main(["--data-dir", str(data), "--runs-dir", str(tmp_path / "runs"), "--with-finetune",
                                 "--folds-dir", str(tmp_path / "folds"), "--cache-dir", str(tmp_path / "cache")]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "cnn_cpu_finetune.yaml" in err and "encoder.pth" in err and "--pretrain-config" in err
    assert not (tmp_path / "runs").exists()
