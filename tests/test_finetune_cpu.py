"""The CPU fine-tune preset (configs/cnn_cpu_finetune.yaml) on a tiny cohort: killed and resumed to the same
predictions, early blocks frozen as asked, bf16 training numerics beside fp32."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import REPO, cohort_rows, make_2024

import train_cnn
from lib.cnn.device import cpu_has_bf16
from lib.core.errors import DataError
from lib.models.backbones import build_backbone

PRESET = str(REPO / "configs" / "cnn_cpu_finetune.yaml")
TINY = ["--weights", "none", "--crop", "24", "--input-size", "24", "--epochs", "3", "--bag-size", "3",
        "--n-folds", "3", "--tta", "1", "--head-args", "{hidden_dim: 16}", "--batch-patients", "4",
        "--lr", "0.01", "--backbone-lr", "0.01", "--no-progress"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """30 train and 6 test patients, 3 32x32 cells each."""
    root = tmp_path_factory.mktemp("finetune") / "comp"
    train, test = cohort_rows()
    make_2024(root, train=train, test=test, n_cells=3, size=32)
    return root


def argv(cohort: Path, tmp_path: Path, name: str, *extra: str, folds: tuple[str, ...] = ("0",)) -> list[str]:
    """The preset on the tiny cohort (fold 0 only unless ``folds`` is empty: all three)."""
    return ["-c", PRESET, "--data-dir", str(cohort), "--runs-dir", str(tmp_path / "runs"), "--cache-dir",
            str(tmp_path / "cache"), "--folds-dir", str(tmp_path / "folds"), "--experiment", name, *TINY,
            *(["--folds", *folds] if folds else []), *extra]


def fold0(tmp_path: Path, name: str) -> tuple[pd.DataFrame, dict]:
    run = tmp_path / "runs" / name
    state = torch.load(run / "fold_0" / "model.pt", weights_only=False)["model"]
    return pd.read_csv(run / "folds" / "fold_0.csv"), state


KILLED = """
import os, sys
sys.path.insert(0, {repo!r})
import lib.cnn.finetune, train_cnn
lib.cnn.finetune.after_epoch = lambda fold, epoch: os._exit(9) if epoch == 1 else None
train_cnn.main({argv!r})
"""


def test_the_cpu_preset_killed_after_an_epoch_resumes_to_the_same_predictions(cohort, tmp_path):
    train_cnn.main(argv(cohort, tmp_path, "whole", "--freeze-blocks", "1"))
    killed = argv(cohort, tmp_path, "killed", "--freeze-blocks", "1")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED.format(repo=str(REPO), argv=killed))],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    assert done.returncode == 9, done.stderr[-2000:]  # died like SIGKILL, after epoch 1's checkpoint
    assert torch.load(tmp_path / "runs" / "killed" / "fold_0" / "last.pt", weights_only=False)["epoch"] == 1
    train_cnn.main([*killed, "--resume"])
    (whole, a), (resumed, b) = fold0(tmp_path, "whole"), fold0(tmp_path, "killed")
    pd.testing.assert_frame_equal(whole, resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = pd.read_csv(tmp_path / "runs" / "killed" / "fold_0" / "log.csv")
    assert list(log["epoch"]) == [0, 1, 2]


def test_frozen_blocks_keep_their_weights_and_statistics_and_the_rest_trains(cohort, tmp_path):
    train_cnn.main(argv(cohort, tmp_path, "frozen", "--freeze-blocks", "2"))
    _, state = fold0(tmp_path, "frozen")
    initial = build_backbone("resnet10t", None, seed=0).state_dict()
    trained = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    frozen = [k for k in trained if k.startswith(("conv1.", "bn1.", "layer1."))]
    assert any("running_var" in k for k in frozen) and any(k.startswith("layer1.") for k in frozen)
    assert all(torch.equal(trained[k], initial[k]) for k in frozen)
    later = [k for k in trained if k.startswith("layer4.") and k.endswith("weight")]
    assert later and not all(torch.equal(trained[k], initial[k]) for k in later)


@pytest.mark.parametrize("extra, message", [
    (("--freeze-blocks", "6"), r"resnet10t.*has 5 blocks.*0\.\.5"),
    (("--freeze-blocks", "-1"), "must be >= 0"),
    (("--freeze-blocks", "1", "--regime", "embed"), "applies to --regime finetune"),
    (("--feature-norm", "batchnorm", "--regime", "embed"), "applies to --regime finetune"),
    (("--feature-norm", "layer"), "invalid choice"),
])
def test_bad_freeze_blocks_are_refused_before_any_work(cohort, tmp_path, extra, message):
    with pytest.raises(DataError, match=message):
        train_cnn.main(argv(cohort, tmp_path, "bad", *extra))
    assert not (tmp_path / "runs" / "bad").exists()


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16")
def test_bf16_training_follows_fp32_closer_than_another_seed_does(cohort, tmp_path):
    """Loss curves: bf16 autocast vs fp32 from the same seed, against fp32 from another seed (the noise)."""
    def losses(name: str, amp: str, seed: int):
        train_cnn.main(argv(cohort, tmp_path, name, "--amp", amp, "--seed", str(seed)))
        return pd.read_csv(tmp_path / "runs" / name / "fold_0" / "log.csv")["train_loss"].to_numpy()
    fp32, bf16, other = losses("fp32", "off", 0), losses("bf16", "bf16", 0), losses("other", "off", 1)
    assert not (fp32 == bf16).all()  # bf16 did run: rounding differs
    assert abs(bf16 - fp32).mean() < abs(other - fp32).mean() / 2


def test_scoring_goes_through_the_feature_norm_like_training_does(cohort, tmp_path):
    """A saved model re-applied to a validation patient's cells gives the probability the run wrote."""
    from lib.cnn.augment import apply_batch, create_transform
    from lib.cnn.finetune import Trainer, build_model
    from lib.cnn.settings import finetune_settings
    from lib.core.config import parse_config
    from lib.data.dataset import load_dataset
    from lib.data.images import load_image_cache
    from lib.models.backbones import embed_data_config
    options = argv(cohort, tmp_path, "neck", "--feature-norm", "batchnorm", "--tta", "0", "--amp", "off")
    train_cnn.main(options)
    valid, state = fold0(tmp_path, "neck")
    assert "neck.running_mean" in state and state["neck.num_batches_tracked"] > 0
    args = parse_config(train_cnn.build_parser(), options)
    backbone = build_backbone("resnet10t", None, seed=0)
    model = build_model(backbone, finetune_settings(args))
    model.load_state_dict(state)
    trainer = Trainer(model, None, {}, None, None, finetune_settings(args), torch.device("cpu"), 0)
    stepped = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert stepped == {id(p) for p in model.parameters() if p.requires_grad}  # every trainable tensor is stepped
    model.eval()
    cache = load_image_cache(load_dataset(cohort), 24, tmp_path / "cache", progress=False)
    transform = create_transform(False, 24, "heavy", embed_data_config(backbone, 24, 24))
    for pid, proba in valid.set_index("ID")["proba"].items():
        with torch.inference_mode():
            logit = model(apply_batch(transform, cache.patient(str(pid))), [len(cache.patient(str(pid)))])["logit"]
        assert torch.sigmoid(logit).item() == pytest.approx(proba, abs=1e-5)


def test_predict_rescores_a_finetune_run_exactly_from_its_fold_models(cohort, tmp_path):
    """predict.py's finetune path: every fold's saved network gives the run's own test.csv, to the bit."""
    from lib.data.dataset import load_dataset
    from lib.fusion.runs import read_run_config
    from lib.stages.predict import check_runs, predict_run
    train_cnn.main(argv(cohort, tmp_path, "full", "--clinical-fusion", "--feature-norm", "batchnorm", "--epochs", "1",
                        folds=()))
    run = tmp_path / "runs" / "full"
    dataset, config = load_dataset(cohort), read_run_config(run)
    test = pd.read_csv(run / "test.csv", dtype={"ID": str}).set_index("ID")
    check_runs([run], [config], dataset)
    table, cells = predict_run(run, config, dataset, list(test.index), tmp_path / "cache", progress=False)
    pd.testing.assert_frame_equal(table.loc[test.index], test, check_names=False)
    assert set(cells["ID"]) == set(test.index) and cells["weight"].between(0, 1).all()
