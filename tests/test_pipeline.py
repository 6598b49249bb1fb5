"""The main job end to end on a small demo directory: every stage runs, the report and submission appear."""
from pathlib import Path

import pandas as pd
import pytest


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


@pytest.fixture(scope="session")  # session: the xdist worker may interleave this module with the other demo files
def variant_pipeline(demo_pipeline, tmp_path_factory):
    """The pipeline once with the label-free encoder (--pretrain-config) and a fine-tuned CNN in the blend
    (--with-finetune), on the demo directory and with the folds and caches of the session's plain run. Fold-seed
    bagging is tested below without training (stage list, averaging) and end to end by tests/test_overnight.py."""
    import yaml
    from conftest import TINY_CNN

    import pipeline
    from lib.core.cli import run_in_process
    data, runs, _, _ = demo_pipeline
    root = tmp_path_factory.mktemp("variants")
    pretrain = {"backbone": "test_efficientnet", "crop": 32, "input_size": 32, "epochs": 1, "batch_size": 32,
                "hidden_dim": 16, "proj_dim": 8, "device": "cpu"}
    finetune = {**TINY_CNN, "regime": "finetune", "epochs": 1, "head": "instance_bn", "clinical_fusion": False}
    for name, config in (("pretrain", pretrain), ("cnn", TINY_CNN), ("finetune", finetune)):
        (root / f"{name}.yaml").write_text(yaml.safe_dump(config))
    shared = runs.parent
    seconds = pipeline.main(["--data-dir", str(data), "--runs-dir", str(root / "runs"), "--out",
                             str(root / "submission.csv"), "--cnn-config", str(root / "cnn.yaml"),
                             "--pretrain-config", str(root / "pretrain.yaml"), "--with-finetune",
                             str(root / "finetune.yaml"), "--trials", "4",
                             "--folds-dir", str(shared / "folds"), "--cache-dir", str(shared / "cache")],
                            runner=run_in_process)
    return root, seconds


def test_fold_seed_bagging_runs_the_models_on_each_seed_then_blends_the_averages(demo_pipeline, tmp_path, monkeypatch):
    """--fold-seeds: every model stage once per seed (the encoder once for all), then one bagging step, then the
    blend, report and submission of the bagged runs (the stages recorded, not trained)."""
    from conftest import REPO

    import lib.pipeline.run
    import pipeline
    from lib.pipeline.commands import MODELS
    data, _, _, _ = demo_pipeline
    ran, bagged = [], []
    monkeypatch.setattr(lib.pipeline.run, "bag_models", lambda name, seeds, args, seconds: bagged.append(seeds) or "NAME_bag")
    seconds = pipeline.main(["--data-dir", str(data), "--runs-dir", str(tmp_path / "runs"), "--fold-seeds", "42", "43",
                             "--pretrain-config", str(REPO / "configs" / "pretrain_cpu.yaml"), "--folds-dir", str(tmp_path / "f"),
                             "--cache-dir", str(tmp_path / "c")], runner=lambda command: ran.append(command) or 0)
    models = ["prepare", "clinical", "morpho", "cnn", "cnn_attention"]
    assert list(seconds) == ["pretrain", *(f"{m}_s{s}" for s in (42, 43) for m in models), "ensemble", "report",
                             "submission"]
    assert bagged == [[42, 43]] and ran[6][ran[6].index("--fold-seed") + 1] == "43"
    ensemble = ran[-3]
    assert [Path(r).parts[-2:] for r in ensemble[2:6]] == [("NAME_bag", m) for m in MODELS]


def test_bag_models_averages_each_model_over_the_seeds(tmp_path):
    from test_bagging import write_run

    from lib.pipeline.commands import MODELS, PipelineSettings
    from lib.pipeline.run import bag_models
    for seed, oof in ((42, [0.9, 0.2, 0.6, 0.4]), (43, [0.7, 0.4, 0.8, 0.0])):
        for model in MODELS:
            write_run(tmp_path / f"toy_s{seed}" / model, seed, [0, 0, 1, 1], oof, {"fold_0": [0.5, 0.5]})
    seconds = {}
    settings = PipelineSettings(runs_dir=tmp_path, folds_dir=tmp_path / "folds", cache_dir=tmp_path / "cache",
                                out=tmp_path / "submission.csv")
    tag = bag_models("toy", [42, 43], settings, seconds)
    assert tag == "toy_bag42-43" and "bag" in seconds
    for model in MODELS:
        oof = pd.read_csv(tmp_path / tag / model / "oof.csv")
        assert oof["proba"].round(6).tolist() == [0.8, 0.3, 0.7, 0.2], model


def test_pipeline_with_a_pretrained_encoder(variant_pipeline):
    """--pretrain-config: the label-free encoder is learnt first, then the CNN stages embed with it."""
    import yaml
    root, seconds = variant_pipeline
    assert list(seconds)[:2] == ["pretrain", "prepare"]
    encoder = next((root / "runs").glob("*_ssl")) / "encoder.pth"
    config = yaml.safe_load((next((root / "runs").glob("*_s42")) / "cnn" / "config.yaml").read_text())
    assert config["weights"] == str(encoder)
    assert (root / "submission.csv").exists()


def test_pipeline_with_a_fine_tuned_cnn_in_the_blend(variant_pipeline):
    """--with-finetune CONFIG: one more model, trained end to end, joins the ensemble."""
    import json

    import yaml
    root, seconds = variant_pipeline
    assert list(seconds)[5:7] == ["cnn_attention", "cnn_finetune"]
    seed_dir = next((root / "runs").glob("*_s42"))
    config = yaml.safe_load((seed_dir / "cnn_finetune" / "config.yaml").read_text())
    assert config["regime"] == "finetune"
    params = json.loads((seed_dir / "ensemble" / "best_params.json").read_text())
    assert any("cnn_finetune" in str(run) for run in params["runs"])


def test_pipeline_with_finetune_needs_its_encoder_before_any_stage(demo_pipeline, tmp_path, capsys):
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


def test_paths_are_resolved_against_the_callers_directory(tmp_path, monkeypatch):
    """The stages run in the repository: every path option is made absolute where the user typed it, so
    ``--out sub.csv`` from another folder lands there, and ``--with-finetune`` alone names the repo's preset."""
    import pipeline
    from lib.core.paths import REPO_DIR
    monkeypatch.chdir(tmp_path)
    args = pipeline.parse_args(["--out", "sub.csv", "--runs-dir", "r", "--folds-dir", "f", "--cache-dir", "c",
                                "--cnn-config", "cnn.yaml", "--pretrain-config", "p.yaml", "--data-dir", "d"])
    for option, name in (("out", "sub.csv"), ("runs_dir", "r"), ("folds_dir", "f"), ("cache_dir", "c"),
                         ("cnn_config", "cnn.yaml"), ("pretrain_config", "p.yaml"), ("data_dir", "d")):
        assert getattr(args, option) == tmp_path / name, option
    finetune = pipeline.parse_args(["--with-finetune"]).with_finetune
    assert finetune == REPO_DIR / "configs" / "cnn_cpu_finetune.yaml" and finetune.is_file()
    assert pipeline.parse_args(["--with-finetune", "mine.yaml"]).with_finetune == tmp_path / "mine.yaml"


STOPPED = """
import sys
sys.path.insert(0, {repo!r})
from lib.pipeline.run import run_stage
run_stage("sleeper", ["-c", "import os, time; open({pid!r}, 'w').write(str(os.getpid())); time.sleep(60)"], {{}})
"""


def test_sigterm_reaches_the_running_stage_and_the_pipeline_waits_for_it(tmp_path):
    """pipeline.py stopped by SIGTERM (timeout, a batch scheduler) forwards it to its stage and exits after it:
    no orphan stage keeps the run directory."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO
    pid_file = tmp_path / "stage.pid"
    outer = subprocess.Popen([sys.executable, "-c", STOPPED.format(repo=str(REPO), pid=str(pid_file))],
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    stage = int(pid_file.read_text())
    outer.send_signal(signal.SIGTERM)
    _, err = outer.communicate(timeout=30)
    assert outer.returncode == 1 and "stage sleeper stopped by SIGTERM" in err, err
    try:
        os.kill(stage, 0)
    except ProcessLookupError:
        return  # the stage is gone
    raise AssertionError(f"stage {stage} is still running after the pipeline stopped")


def test_the_finetune_presets_weights_are_checked_by_name_or_file(tmp_path):
    """--with-finetune's weights before any stage: a shipped name or 'lite0' resolves, a missing file and a damaged
    preset are one-line errors naming the preset."""
    from lib.core.errors import DataError
    from lib.pipeline.commands import PipelineSettings
    from lib.pipeline.run import check_finetune
    preset = tmp_path / "finetune.yaml"
    settings = PipelineSettings(runs_dir=tmp_path, folds_dir=tmp_path, cache_dir=tmp_path / "cache", out=tmp_path / "s.csv",
                                with_finetune=preset)
    preset.write_text("weights: lymph-ssl\n")
    check_finetune(settings)  # the shipped encoder, by name (its content hash checked)
    for text, message in (("weights: nowhere.pth\n", "weights file not found"), ("weights: [\n", "not valid YAML")):
        preset.write_text(text)
        with pytest.raises(DataError, match=message) as error:
            check_finetune(settings)
        assert str(error.value).startswith(f"{preset}: ") and "\n" not in str(error.value)
