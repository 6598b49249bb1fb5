"""train_cnn.py end to end on a tiny synthetic competition directory: both regimes, outputs, determinism,
cache reuse, fold subsets and resume (also of a killed finetune run), anomaly-fit discipline, bad inputs."""
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import yaml
from conftest import make_2024, write_jpg

import lib.cnn.embed_mil as embed_mil
import lib.cnn.finetune
import train_cnn
from lib.cnn.common import clinical_inputs_of, fit_clinical_stats
from lib.core.cli import run_main
from lib.core.errors import DataError
from lib.core.metrics import fold_metrics

N_TRAIN, N_TEST, N_CELLS = 30, 6, 3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """30 train patients (10 reactive) and 6 test patients, 3 distinct 32x32 cells each."""
    root = tmp_path_factory.mktemp("cnn") / "comp"
    train = [(f"P{i}", str(int(i % 3 != 0)), "MF"[i % 2], f"{1 + i % 12}/15/19{40 + i}", f"{4 + i}.5")
             for i in range(N_TRAIN)]
    test = [(f"T{i}", "-1", "MF"[i % 2], f"{1 + i}/3/1950", "7.0") for i in range(N_TEST)]
    make_2024(root, train=train, test=test, n_cells=N_CELLS, size=32)
    for i in range(N_TEST):  # make_2024 seeds images by row position: give test patients their own cells
        for k in range(N_CELLS):
            write_jpg(root / "testset" / f"T{i}" / f"{k:06d}.jpg", seed=10_000 + 100 * i + k, size=32)
    return root


def run(data_dir: Path, tmp_path: Path, experiment: str, *extra: str) -> dict:
    """main() with the tiny settings; caches and runs under tmp_path."""
    argv = ["--data-dir", str(data_dir), "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"),
            "--folds-dir", str(tmp_path / "folds"), "--experiment", experiment, "--backbone", "test_efficientnet", "--weights", "none", "--crop", "24",
            "--epochs", "2", "--bag-size", "3", "--views", "1", "--tta", "1", "--n-folds", "3",
            "--head-args", "{hidden_dim: 16}", "--batch-patients", "4", "--no-progress", *extra]
    return train_cnn.main(argv)


def test_embed_regime_writes_every_output(data_dir, tmp_path):
    metrics = run(data_dir, tmp_path, "e", "--clinical-fusion")
    out = tmp_path / "runs" / "e"
    oof = pd.read_csv(out / "oof.csv", dtype={"ID": str})
    assert metrics == json.loads(json.dumps(fold_metrics(oof, 0.5)))  # the returned metrics are those of oof.csv
    assert len(oof) == N_TRAIN and oof["proba"].between(0, 1).all() and set(oof["fold"]) == {0, 1, 2}
    test = pd.read_csv(out / "test.csv", dtype={"ID": str})
    assert len(test) == N_TEST and {"fold_0", "fold_1", "fold_2", "proba"} <= set(test.columns)
    cells = pd.read_csv(out / "cells.csv", dtype={"ID": str})
    assert list(cells.columns) == ["ID", "split", "path", "weight"]
    assert len(cells) == (N_TRAIN + N_TEST) * N_CELLS and not cells.duplicated(["ID", "path"]).any()
    np.testing.assert_allclose(cells.groupby("ID")["weight"].sum(), 1.0, atol=1e-4)  # attention weights
    log = pd.read_csv(out / "log.csv")
    assert list(log.columns) == ["fold", "epoch", "train_loss", "lr", "seconds"] and len(log) == 3 * 2
    state = torch.load(out / "fold_1" / "head.pt", weights_only=False)
    assert state["head_name"] == "attention" and "prep" in state
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["regime"] == "embed" and config["clinical_fusion"] is True
    assert (out / "code_version.json").exists() and (out / "metrics.json").exists()
    assert json.loads((out / "timings.json").read_text())["embedded_images"] > 0


def test_same_seed_gives_the_same_oof_and_the_second_run_reuses_the_cache(data_dir, tmp_path):
    run(data_dir, tmp_path, "a", "--head", "mean")
    run(data_dir, tmp_path, "b", "--head", "mean")
    first = pd.read_csv(tmp_path / "runs" / "a" / "oof.csv")
    second = pd.read_csv(tmp_path / "runs" / "b" / "oof.csv")
    pd.testing.assert_frame_equal(first, second)
    assert json.loads((tmp_path / "runs" / "b" / "timings.json").read_text())["embedded_images"] == 0
    run(data_dir, tmp_path, "c", "--head", "mean", "--seed", "1")
    assert not pd.read_csv(tmp_path / "runs" / "c" / "oof.csv")["proba"].equals(first["proba"])


def test_fold_subset_then_resume_runs_only_the_missing_folds(data_dir, tmp_path, monkeypatch):
    run(data_dir, tmp_path, "r", "--folds", "0", "1")
    out = tmp_path / "runs" / "r"
    assert (out / "fold_1" / "head.pt").exists() and not (out / "fold_2").exists()
    assert not (out / "oof.csv").exists() and set(pd.read_csv(out / "log.csv")["fold"]) == {0, 1}
    trained = []
    real = embed_mil.train_fold
    monkeypatch.setattr(embed_mil, "train_fold", lambda *a, **kw: trained.append(kw["fold"]) or real(*a, **kw))
    run(data_dir, tmp_path, "r", "--resume")
    assert trained == [2]
    assert len(pd.read_csv(out / "oof.csv")) == N_TRAIN and len(pd.read_csv(out / "cells.csv")) > 0
    with pytest.raises(DataError, match="already exists"):
        run(data_dir, tmp_path, "r")


def test_anomaly_model_is_fitted_on_reactive_training_cells_only(data_dir, tmp_path, monkeypatch):
    seen = []
    real = embed_mil.fit_anomaly_model
    monkeypatch.setattr(embed_mil, "fit_anomaly_model", lambda x, **kw: seen.append(x) or real(x, **kw))
    run(data_dir, tmp_path, "an", "--head", "anomaly", "--folds", "0", "--clinical-fusion")
    assert len(seen) == 1
    emb_dir = next((tmp_path / "cache" / "emb").iterdir())
    v0 = np.load(next(emb_dir.glob("*_v0.npy"))).astype(np.float32)
    owner = pd.read_csv(next(emb_dir.glob("*_v0.csv")), dtype={"ID": str})["ID"].to_numpy()
    matched = {owner[np.flatnonzero((v0 == row).all(axis=1))[0]] for row in seen[0]}
    folds = pd.read_csv(next((tmp_path / "folds").glob("*_k3_*.csv")), dtype={"ID": str})
    labels = {f"P{i}": int(i % 3 != 0) for i in range(N_TRAIN)}
    expected = {pid for pid, k in zip(folds["ID"], folds["fold"]) if k != 0 and labels[pid] == 0}
    assert matched == expected and len(seen[0]) == N_CELLS * len(expected)


def test_clinical_standardisation_uses_training_patients_only(data_2024):
    """The production path of both regimes (fit_clinical_stats on a fold's training IDs, clinical_inputs_of for
    every patient): training patients come out standardised, and a held-out patient's values change nothing."""
    from conftest import TRAIN_ROWS, frame

    from lib.data.dataset import load_dataset
    train_ids = ["P1", "P2", "P3"]
    z = clinical_inputs_of(load_dataset(data_2024), fit_clinical_stats(load_dataset(data_2024), train_ids))
    assert z.loc[train_ids].mean().to_numpy() == pytest.approx(0.0, abs=1e-9)
    assert z.loc[train_ids].std(ddof=0).to_numpy() == pytest.approx(1.0)
    assert clinical_inputs_of(load_dataset(data_2024), None) is None  # no clinical fusion
    held_out = frame(TRAIN_ROWS)
    held_out.loc[held_out["ID"] == "P4", "LYMPH_COUNT"] = "150.0"
    held_out.to_csv(data_2024 / "trainset" / "trainset_true.csv", index=False)
    changed = load_dataset(data_2024)
    again = clinical_inputs_of(changed, fit_clinical_stats(changed, train_ids))
    pd.testing.assert_frame_equal(again.loc[train_ids], z.loc[train_ids])
    assert again.loc["P4"].ne(z.loc["P4"]).any()


@pytest.mark.parametrize("amp", ["off", "bf16"])  # both precisions on every CPU (bf16 is emulated without AVX512-BF16)
def test_finetune_resumes_a_killed_run_from_its_last_epoch(data_dir, tmp_path, monkeypatch, amp):
    finetune = ("--regime", "finetune", "--folds", "0", "--lr", "0.01", "--backbone-lr", "0.01", "--amp", amp)
    run(data_dir, tmp_path, "whole", *finetune)
    epochs_run = []

    def killed(fold, epoch):
        epochs_run.append(epoch)
        if epoch == 0:
            raise KeyboardInterrupt
    monkeypatch.setattr(lib.cnn.finetune, "after_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        run(data_dir, tmp_path, "killed", *finetune)
    out = tmp_path / "runs" / "killed" / "fold_0"
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == 0
    run(data_dir, tmp_path, "killed", *finetune, "--resume")
    assert epochs_run == [0, 1]  # epoch 0 was not trained again
    assert (out / "model.pt").exists() and not (out / "last.pt").exists()
    assert list(pd.read_csv(out / "log.csv")["epoch"]) == [0, 1]
    whole = pd.read_csv(tmp_path / "runs" / "whole" / "folds" / "fold_0.csv")
    resumed = pd.read_csv(tmp_path / "runs" / "killed" / "folds" / "fold_0.csv")
    pd.testing.assert_frame_equal(whole, resumed)
    cells = pd.read_csv(out / "cells.csv", dtype={"ID": str})
    assert set(cells["role"]) == {"valid", "test"} and cells["weight"].between(0, 1).all()


@pytest.mark.parametrize("extra, message", [
    (("--backbone", "no_such_net"), "unknown backbone"),
    (("--crop", "40"), "larger than the 32x32 images"),
    (("--bag-size", "4"), "smallest training bag"),
    (("--regime", "finetune", "--head", "anomaly"), "anomaly"),
    (("--head-args", "{nope: 1}"), "unknown option"),
    (("--tta", "9"), "--tta 9"),
    (("--folds", "0", "3"), "folds are 0..2"),
])
def test_bad_inputs_fail_before_any_work(data_dir, tmp_path, extra, message):
    with pytest.raises(DataError, match=message):
        run(data_dir, tmp_path, "bad", *extra)
    assert not (tmp_path / "runs" / "bad").exists() and not (tmp_path / "cache" / "emb").exists()


def test_weights_that_do_not_match_the_backbone_are_refused(data_dir, tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), path)
    with pytest.raises(DataError, match="do not match"):
        run(data_dir, tmp_path, "bad", "--weights", str(path))
    assert not (tmp_path / "runs" / "bad").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_one_line_error(data_dir, tmp_path, capsys):
    argv = ["--data-dir", str(data_dir), "--runs-dir", str(tmp_path / "runs"), "--folds-dir", str(tmp_path / "folds"),
            "--device", "cuda"]
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: train_cnn.main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --device cuda") and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_eval_bags_average_random_bags_of_the_training_size():
    from lib.cnn.common import eval_subsets, score_bag
    from lib.models.heads import create_head
    rng = np.random.default_rng(0)
    assert [len(s) for s in eval_subsets(10, 4, 3, rng)] == [4, 4, 4]
    assert [len(s) for s in eval_subsets(3, 4, 3, rng)] == [3]  # a bag smaller than the bag size: all cells
    assert [len(s) for s in eval_subsets(10, 4, 0, rng)] == [10]
    head = create_head("mean", 5, hidden_dim=4).eval()
    x = torch.randn(2, 10, 5)  # 2 views x 10 cells
    prob, weights = score_bag(head, x, None, None, [np.array([0, 1, 2, 3]), np.array([2, 3, 4, 5])])
    np.testing.assert_allclose(weights[:6], 0.25)
    np.testing.assert_allclose(weights[6:], 0.0)
    with torch.no_grad():
        expected = torch.sigmoid(head(torch.stack([x[0, :4], x[0, 2:6], x[1, :4], x[1, 2:6]]))["logit"]).mean()
    assert prob == pytest.approx(float(expected), abs=1e-6)


def test_top_k_head_with_eval_bags_runs_end_to_end(data_dir, tmp_path):
    run(data_dir, tmp_path, "tk", "--head", "topk", "--head-args", "{hidden_dim: 8, k: 1}", "--bag-size", "2",
        "--eval-bags", "4", "--folds", "0")
    cells = pd.read_csv(tmp_path / "runs" / "tk" / "fold_0" / "cells.csv")
    assert cells["weight"].between(0, 1).all() and cells["weight"].max() > 0


def test_benchmark_speed_figures_are_read_from_a_run(data_dir, tmp_path):
    """benchmarks/common.py reads embedding img/s (cold run) and head-training speed from a run's timings and log."""
    from lib.pipeline.speed import cnn_run_speed, embed_rate_line, head_training_line
    run(data_dir, tmp_path, "cold", "--head", "mean")
    run(data_dir, tmp_path, "warm", "--head", "mean")
    cold, warm = cnn_run_speed(tmp_path / "runs" / "cold"), cnn_run_speed(tmp_path / "runs" / "warm")
    assert cold["embedded_images"] > 0 and cold["bag_size"] == 3 and cold["epochs_run"] == 3 * 2
    line = embed_rate_line("x", cold, 190.0)
    rate = float(re.search(r"= (\d+) img/s", line).group(1))
    assert ("GFLOP/s" in line) == (cold["gflop_per_image"] is not None)  # a FLOP count only where one is known
    assert rate == pytest.approx(cold["embedded_images"] / cold["embed_seconds"], abs=1)
    assert "reused from the cache" in embed_rate_line("x", warm, 190.0)
    bags = float(re.search(r"(\d+) bags/s", head_training_line("x", [cold, warm], 20)).group(1))
    assert bags == pytest.approx(np.mean([6 * 20 / r["epoch_seconds"] for r in (cold, warm)]), abs=1)


@pytest.mark.parametrize("regime", [("embed",), ("finetune", "--folds", "0", "--epochs", "1")])
def test_gated_clinical_fusion_trains_in_both_regimes(data_dir, tmp_path, regime):
    preset = tmp_path / "gate.yaml"
    preset.write_text("clinical_fusion: gate\n")  # the YAML spelling, checked like the command line
    run(data_dir, tmp_path, "g", "-c", str(preset), "--regime", *regime)
    out = tmp_path / "runs" / "g"
    assert yaml.safe_load((out / "config.yaml").read_text())["clinical_fusion"] == "gate"
    name, key = ("head.pt", "head") if regime[0] == "embed" else ("model.pt", "model")
    state = torch.load(out / "fold_0" / name, weights_only=False)
    assert state["clinical_fusion"] == "gate" and any(k.endswith("gate.weight") for k in state[key])


def test_clinical_fusion_values(data_dir, tmp_path):
    from lib.cnn.settings import clinical_fusion_arg
    assert [clinical_fusion_arg(v) for v in (True, "concat", "gate", False, "none")] == [True, True, "gate", False, False]
    with pytest.raises(DataError, match="expected concat, gate or none"):
        run(data_dir, tmp_path, "bad", "--clinical-fusion", "sum")


def test_a_run_read_back_whole_keeps_the_timings_of_the_run_that_trained_it(data_dir, tmp_path):
    run(data_dir, tmp_path, "timed", "--head", "mean")
    path = tmp_path / "runs" / "timed" / "timings.json"
    first = json.loads(path.read_text())
    assert first["folds_trained"] == [0, 1, 2] and first["train_seconds"] > 0
    run(data_dir, tmp_path, "timed", "--head", "mean", "--resume")  # every fold read back: nothing timed
    assert json.loads(path.read_text()) == first
