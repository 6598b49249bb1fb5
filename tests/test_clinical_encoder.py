"""The clinical stage's encoder feature set: a frozen pretrained encoder's cells pooled per patient, projected on
principal components inside each training fold, saved as plain numbers that predict.py re-applies exactly."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from test_pretrain import pretrain

import train_clinical
from lib.core.errors import DataError
from lib.data.dataset import load_dataset
from lib.fusion.runs import read_run_config
from lib.models.projection import BlockProjection
from lib.stages.predict import predict_clinical


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """A tiny cohort (30 train, 6 test patients) and a tiny SimCLR encoder of it."""
    from conftest import cohort_rows, make_2024
    root = tmp_path_factory.mktemp("clinical_encoder")
    train, test = cohort_rows()
    data = make_2024(root / "comp", train=train, test=test, n_cells=3, size=32)
    pretrain(data, root, "ssl")
    return data, root


def clinical(data: Path, root: Path, name: str, *extra: str) -> dict:
    return train_clinical.main(["--data-dir", str(data), "--runs-dir", str(root / "runs"), "--cache-dir",
                                str(root / "cache"), "--folds-dir", str(root / "folds"), "--n-folds", "3",
                                "--experiment", name, "--no-progress", *extra])


def test_the_projection_is_sklearns_fitted_on_the_training_rows_and_survives_json():
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.normal(size=(20, 12)), columns=[f"enc_e{i}" for i in range(12)])
    table.insert(0, "age", rng.normal(size=20))
    train = table.index[:14]
    fitted = BlockProjection.fit(table.loc[train], [c for c in table if c.startswith("enc_")], 4, 0, "enc_")
    out = fitted.transform(table)
    assert list(out.columns) == ["age", "enc_pc0", "enc_pc1", "enc_pc2", "enc_pc3"]
    assert np.array_equal(out["age"], table["age"])
    block = table.filter(like="enc_").to_numpy()
    scaler = StandardScaler().fit(block[:14])
    expected = PCA(4, whiten=True, random_state=0).fit(scaler.transform(block[:14])).transform(scaler.transform(block))
    assert np.allclose(out.filter(like="pc").to_numpy(), expected, atol=1e-9)
    again = BlockProjection.from_dict(json.loads(json.dumps(fitted.to_dict()))).transform(table)
    assert again.equals(out)  # the same numbers after a JSON round trip
    moved = table.copy()
    moved.loc[table.index[14:], "enc_e0"] += 100.0  # rows outside the training rows do not move the fit
    refit = BlockProjection.fit(moved.loc[train], fitted.columns, 4, 0, "enc_")
    assert np.array_equal(refit.pca.components, fitted.pca.components)


def test_the_encoder_set_trains_and_predict_reproduces_it_with_the_same_encoder_only(encoded):
    data, root = encoded
    weights = root / "own" / "encoder.pth"  # a copy: the other tests' encoders stay as they are
    shutil.copytree(root / "runs" / "ssl", weights.parent, ignore=shutil.ignore_patterns("*.pt"))
    metrics = clinical(data, root, "enc", "--feature-set", "clinical+encoder", "--encoder", str(weights),
                       "--encoder-pca", "3", "--encoder-pooling", "mean")
    run = root / "runs" / "enc"
    assert 0.0 <= metrics["auc_mean"] <= 1.0
    coefficients = pd.read_csv(run / "coefficients.csv")
    assert [c for c in coefficients.columns if c.startswith("enc_")] == ["enc_pc0", "enc_pc1", "enc_pc2"]
    model = json.loads((run / "folds" / "model_0.json").read_text())
    assert model["encoder"]["pooling"] == "mean" and len(model["projection"]["columns"]) > 3
    config, dataset = read_run_config(run), load_dataset(data)
    test = pd.read_csv(run / "test.csv", dtype={"ID": str}).set_index("ID")
    scored = predict_clinical(run, config, dataset, list(test.index), root / "cache")
    assert (scored["proba"] - test["proba"]).abs().max() == 0.0  # exactly as the run scored its test patients
    state = torch.load(weights, weights_only=True)
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, weights)  # other weights
    with pytest.raises(DataError, match="its embeddings used the encoder"):
        predict_clinical(run, config, dataset, list(test.index), root / "cache")


@pytest.mark.parametrize("extra, message", [
    (("--feature-set", "clinical+encoder"), "needs --encoder"),
    (("--encoder", "{ssl}"), "--encoder is read only by --feature-set clinical\\+encoder"),
    (("--feature-set", "clinical+encoder", "--encoder", "{root}/nowhere.pth"), "nowhere.pth: --encoder weights file"),
    (("--feature-set", "clinical+encoder", "--encoder", "{bare}"), "bare.json: missing"),
    (("--feature-set", "clinical+encoder", "--encoder", "{ssl}", "--encoder-pca", "0"), "--encoder-pca 0")])
def test_bad_encoder_options_fail_before_any_work(encoded, extra, message):
    data, root = encoded
    bare = root / "bare.pth"
    shutil.copy(root / "runs" / "ssl" / "encoder.pth", bare)  # weights without their encoder.json
    paths = {"ssl": root / "runs" / "ssl" / "encoder.pth", "root": root, "bare": bare}
    with pytest.raises(DataError, match=message):
        clinical(data, root, "bad", *(e.format(**paths) for e in extra))
    assert not (root / "runs" / "bad").exists()
