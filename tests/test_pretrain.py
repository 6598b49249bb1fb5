"""pretrain_cnn.py: SimCLR and DINO on a tiny cohort in seconds, label-free, resumable after a kill, loadable by
train_cnn.py."""
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import REPO, cohort_rows, make_2024, write_jpg

import lib.cnn.pretrain
import pretrain_cnn
import train_cnn
from lib.cnn.dino import DinoNet, dino_loss, teacher_momentum
from lib.cnn.pretrain import nt_xent
from lib.core.errors import DataError

TINY = ["--backbone", "test_efficientnet", "--crop", "24", "--input-size", "24", "--epochs", "3", "--batch-size", "16",
        "--hidden-dim", "16", "--proj-dim", "8", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """30 train and 6 test patients, 3 distinct 32x32 cells each."""
    root = tmp_path_factory.mktemp("pretrain") / "comp"
    train, test = cohort_rows()
    make_2024(root, train=train, test=test, n_cells=3, size=32)
    for i, row in enumerate(test):  # make_2024 seeds images by row position: give test patients their own cells
        for k in range(3):
            write_jpg(root / "testset" / row[0] / f"{k:06d}.jpg", seed=10_000 + 100 * i + k, size=32)
    return root


def pretrain(data: Path, tmp_path: Path, name: str, *extra: str) -> dict:
    return pretrain_cnn.main(["--data-dir", str(data), "--runs-dir", str(tmp_path / "runs"), "--cache-dir",
                              str(tmp_path / "cache"), "--experiment", name, *TINY, *extra])


def encoder(tmp_path: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(tmp_path / "runs" / name / "encoder.pth", weights_only=True)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nt_xent_is_low_when_the_views_agree_and_high_when_they_do_not():
    generator = torch.Generator().manual_seed(0)
    z, other = torch.randn(16, 64, generator=generator), torch.randn(16, 64, generator=generator)
    assert nt_xent(z, z + 0.01 * other, 0.2) < 0.5 < 2.5 < nt_xent(z, other, 0.2)


def test_pretraining_writes_the_encoder_and_its_record(cohort, tmp_path):
    record = pretrain(cohort, tmp_path, "ssl")
    out = tmp_path / "runs" / "ssl"
    saved = json.loads((out / "encoder.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["objective"] == "simclr" and saved["backbone"] == "test_efficientnet" and saved["epochs"] == 3
    assert saved["crop"] == 24 and saved["input_size"] == 24 and saved["n_cells"] == 36 * 3 and saved["scope"] == "all"
    assert len(saved["loss_per_epoch"]) == 3 and saved["img_per_s"] > 0 and saved["precision"] in ("fp32", "bf16")
    log = pd.read_csv(out / "log.csv")
    assert list(log["epoch"]) == [0, 1, 2] and log["loss"].notna().all()
    assert (out / "loss.png").stat().st_size > 1000 and not (out / "last.pt").exists()
    assert pretrain(cohort, tmp_path, "train_only", "--scope", "train")["n_cells"] == 30 * 3


def test_continued_pretraining_starts_from_the_parent_and_counts_its_epochs(cohort, tmp_path):
    parent = pretrain(cohort, tmp_path, "ssl")
    weights = tmp_path / "runs" / "ssl" / "encoder.pth"
    child = pretrain(cohort, tmp_path, "more", "--weights", str(weights), "--epochs", "2")
    assert parent["epochs_total"] == 3 and "init_weights_tag" not in parent
    assert child["epochs"] == 2 and child["epochs_total"] == 5 and child["init_weights_tag"] == parent["weights_tag"]
    assert child["weights_tag"] != parent["weights_tag"]
    assert pretrain(cohort, tmp_path, "again", "--weights", str(tmp_path / "runs" / "more" / "encoder.pth"),
                    "--epochs", "1")["epochs_total"] == 6


def test_labels_are_never_read(cohort, tmp_path):
    """The same cells with every label flipped give bit-identical weights."""
    flipped = tmp_path / "flipped"
    shutil.copytree(cohort, flipped)
    table = pd.read_csv(flipped / "trainset" / "trainset_true.csv", dtype=str)
    table["LABEL"] = (1 - table["LABEL"].astype(int)).astype(str)
    table.to_csv(flipped / "trainset" / "trainset_true.csv", index=False)
    a, b = pretrain(cohort, tmp_path, "a"), pretrain(flipped, tmp_path, "b")
    assert same_weights(encoder(tmp_path, "a"), encoder(tmp_path, "b"))
    assert a["cells_fingerprint"] == b["cells_fingerprint"]


KILLED = """
import os, sys
sys.path.insert(0, {repo!r})
import lib.cnn.pretrain, pretrain_cnn
lib.cnn.pretrain.after_epoch = lambda epoch: os._exit(9) if epoch == 1 else None
pretrain_cnn.main({argv!r})
"""


@pytest.mark.parametrize("amp", ["off", "bf16"])  # both precisions on every CPU (bf16 is emulated without AVX512-BF16)
def test_a_killed_run_resumes_from_its_last_epoch_to_the_same_weights(cohort, tmp_path, amp):
    pretrain(cohort, tmp_path, "whole", "--amp", amp)
    argv = ["--data-dir", str(cohort), "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"),
            "--experiment", "killed", *TINY, "--amp", amp]
    script = textwrap.dedent(KILLED.format(repo=str(REPO), argv=argv))
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    assert done.returncode == 9, done.stderr[-2000:]  # SIGKILL-like death after epoch 1's checkpoint
    assert torch.load(tmp_path / "runs" / "killed" / "last.pt", weights_only=False)["epoch"] == 1
    record = pretrain(cohort, tmp_path, "killed", "--resume", "--amp", amp)
    assert len(record["loss_per_epoch"]) == 3 and record["precision"] == {"off": "fp32", "bf16": "bf16"}[amp]
    assert same_weights(encoder(tmp_path, "whole"), encoder(tmp_path, "killed"))


def cnn(cohort: Path, tmp_path: Path, name: str, weights: Path, *extra: str) -> dict:
    argv = ["--data-dir", str(cohort), "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"),
            "--folds-dir", str(tmp_path / "folds"), "--experiment", name, "--backbone", "test_efficientnet",
            "--weights", str(weights), "--crop", "24", "--input-size", "24", "--epochs", "2", "--bag-size", "3",
            "--views", "1", "--tta", "1", "--n-folds", "3", "--head", "mean", "--batch-patients", "4",
            "--no-progress", *extra]
    train_cnn.main(argv)
    return json.loads((tmp_path / "runs" / name / "timings.json").read_text())


def test_the_encoder_loads_in_both_regimes_and_new_weights_are_re_embedded(cohort, tmp_path):
    pretrain(cohort, tmp_path, "ssl")
    weights = tmp_path / "runs" / "ssl" / "encoder.pth"
    assert cnn(cohort, tmp_path, "embed", weights)["embedded_images"] > 0
    assert cnn(cohort, tmp_path, "embed_again", weights)["embedded_images"] == 0  # same weights: cache reused
    cnn(cohort, tmp_path, "finetune", weights, "--regime", "finetune", "--folds", "0", "--epochs", "1")
    pretrain(cohort, tmp_path, "ssl2", "--seed", "1")
    shutil.copy(tmp_path / "runs" / "ssl2" / "encoder.pth", weights)  # same path, other weights
    assert cnn(cohort, tmp_path, "embed_new", weights)["embedded_images"] > 0


def test_the_encoder_must_be_used_as_it_was_trained(cohort, tmp_path):
    pretrain(cohort, tmp_path, "ssl")
    weights = tmp_path / "runs" / "ssl" / "encoder.pth"
    with pytest.raises(DataError, match="encoder.json: the encoder was trained with .*pass --crop 24"):
        cnn(cohort, tmp_path, "wrong_crop", weights, "--crop", "20", "--input-size", "24")
    assert not (tmp_path / "runs" / "wrong_crop").exists()


@pytest.mark.parametrize("extra, message", [(("--batch-size", "1000"), "larger than the 108 cells"),
                                            (("--temperature", "0"), "--temperature 0"),
                                            (("--crop", "40"), "larger than the 32x32 images"),
                                            (("--local-crops", "2"), "--local-crops needs --objective dino"),
                                            (("--objective", "dino", "--ema", "1"), r"--ema 1.0 must be in \[0, 1\)"),
                                            (("--objective", "dino", "--prototypes", "1"), "--prototypes 1")])
def test_bad_settings_fail_before_any_work(cohort, tmp_path, extra, message):
    with pytest.raises(DataError, match=message):
        pretrain(cohort, tmp_path, "bad", *extra)
    assert not (tmp_path / "runs" / "bad").exists()


# 32-px globals and 18-px locals: no strided convolution of test_efficientnet sees a 1-pixel map (16 px would:
# lib.cnn.device.check_bf16_training_shapes refuses that under bf16)
DINO = ["--objective", "dino", "--local-crops", "2", "--input-size", "32", "--local-size", "18", "--prototypes", "32",
        "--temperature", "0.1", "--epochs", "2"]


def test_dino_loss_is_low_when_the_student_agrees_with_the_teacher():
    peaked = torch.full((8, 16), -5.0)
    peaked[:, 3] = 5.0
    other = torch.roll(peaked, 1, dims=1)
    center = torch.zeros(16)
    agree = dino_loss([peaked, peaked, peaked], [peaked, peaked], center, 0.1, 0.04)
    disagree = dino_loss([other, other, other], [peaked, peaked], center, 0.1, 0.04)
    assert agree < 0.01 < 10 < disagree


def test_the_teacher_moves_towards_the_student_ever_more_slowly():
    assert teacher_momentum(0.99, 0.0) == pytest.approx(0.99) and teacher_momentum(0.99, 1.0) == 1.0
    assert teacher_momentum(0.99, 0.3) < teacher_momentum(0.99, 0.7)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    backbone.num_features = 4
    net = DinoNet(backbone, 8, 4, 6, temperature=0.1, teacher_temperature=0.04, ema=0.5)
    student, teacher = net.backbone[1].weight, net.teacher_backbone[1].weight
    assert torch.equal(student, teacher) and not teacher.requires_grad  # the teacher starts as the student
    with torch.no_grad():
        student.add_(1.0)
    before = teacher.clone()
    net.after_step(0.0)  # momentum 0.5: half way
    assert torch.allclose(teacher, before + 0.5) and net.encoder() is net.teacher_backbone


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_dino_multi_crop_run_writes_the_teachers_encoder_and_resumes_exactly(cohort, tmp_path, monkeypatch, amp):
    whole = pretrain(cohort, tmp_path, "dino", *DINO, "--amp", amp)
    assert whole["objective"] == "dino" and whole["local_crops"] == 2 and len(whole["loss_per_epoch"]) == 2
    assert all(math.isfinite(loss) for loss in whole["loss_per_epoch"])

    def die(epoch):
        if epoch == 0:
            raise KeyboardInterrupt
    monkeypatch.setattr(lib.cnn.pretrain, "after_epoch", die)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cohort, tmp_path, "dino_killed", *DINO, "--amp", amp)
    monkeypatch.undo()
    resumed = pretrain(cohort, tmp_path, "dino_killed", *DINO, "--resume", "--amp", amp)
    assert resumed["loss_per_epoch"] == whole["loss_per_epoch"]
    assert same_weights(encoder(tmp_path, "dino"), encoder(tmp_path, "dino_killed"))
    assert cnn(cohort, tmp_path, "dino_embed", tmp_path / "runs" / "dino" / "encoder.pth", "--input-size", "32",
               "--amp", amp)["embedded_images"] > 0


@pytest.mark.parametrize("local_size, amp, refused", [("16", "bf16", True), ("16", "off", False), ("18", "bf16", False)])
def test_bf16_training_that_would_feed_a_strided_convolution_one_pixel_is_refused(cohort, tmp_path, local_size, amp,
                                                                                refused):
    """oneDNN's bf16 weight gradient of a strided convolution on a 1-pixel map is garbage (non-repeatable, NaN)."""
    args = (*DINO, "--local-size", local_size, "--amp", amp, "--epochs", "1")
    if refused:
        with pytest.raises(DataError, match=r"strided convolution .* 1-pixel map at 16-px inputs.*--amp off"):
            pretrain(cohort, tmp_path, "tiny_locals", *args)
        assert not (tmp_path / "runs" / "tiny_locals").exists()  # refused before any work
    else:
        assert math.isfinite(pretrain(cohort, tmp_path, "tiny_locals", *args)["loss_per_epoch"][0])
