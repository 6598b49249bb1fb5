"""Loading is data, never code (docs/bad-input.md: Sharing runs safely): every model and checkpoint file the toolkit reads
back from a run folder loads with ``torch.load(weights_only=True)`` or as JSON, so a crafted file in a shared
run is refused with one line instead of running what it carries."""
from pathlib import Path

import numpy as np
import pytest
import torch
from test_predict import ensemble_dir

from lib.cnn.common import load_training_state, rng_states, set_rng_states
from lib.cnn.embed_mil import fit_prep, fitted_from_dict, fitted_to_dict
from lib.core.cli import run_in_process
from lib.core.errors import DataError
from lib.core.io import atomic_torch_save, read_checkpoint
from lib.models.anomaly import anomaly_scores, fit_anomaly_model


class Payload:
    """Unpickling this object touches ``marker``: what a crafted checkpoint could do instead (run anything)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def craft(path: Path, marker: Path) -> None:
    torch.save({"head": Payload(marker), "model": Payload(marker)}, path)


def test_a_crafted_checkpoint_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    craft(tmp_path / "head.pt", marker)
    with pytest.raises(DataError, match=r"head.pt: refused: not a plain-data checkpoint"):
        read_checkpoint(tmp_path / "head.pt")
    assert not marker.exists()


def test_a_crafted_resume_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    craft(tmp_path / "last.pt", marker)
    with pytest.raises(DataError, match="last.pt: refused"):
        load_training_state(object(), tmp_path / "last.pt")
    assert not marker.exists()


def test_saving_anything_but_plain_data_fails_when_saved(tmp_path):
    with pytest.raises(TypeError, match="Payload is not plain data"):
        atomic_torch_save({"x": Payload(tmp_path / "m")}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_fitted_preprocessing_round_trips_as_plain_arrays(tmp_path):
    rng = np.random.default_rng(0)
    cells = rng.normal(size=(200, 12)).astype(np.float32)
    fitted = {"prep": fit_prep(cells, 5, seed=1), "anomaly_model": fit_anomaly_model(cells[:80], 2, seed=1, pca_dim=6),
              "clinical_stats": {"age": {"mean": 60.0, "std": 12.0}}}
    atomic_torch_save(fitted_to_dict(fitted), tmp_path / "head.pt")
    back = fitted_from_dict(read_checkpoint(tmp_path / "head.pt"))
    new = rng.normal(size=(30, 12)).astype(np.float32)
    assert np.array_equal(back["prep"](new), fitted["prep"](new))
    assert np.array_equal(anomaly_scores(back["anomaly_model"], new), anomaly_scores(fitted["anomaly_model"], new))
    assert back["clinical_stats"] == fitted["clinical_stats"]


def test_rng_states_resume_from_a_plain_checkpoint(tmp_path):
    np.random.seed(5)
    atomic_torch_save({"rng": rng_states()}, tmp_path / "rng.pt")
    expected = (np.random.rand(3), torch.rand(2))
    np.random.seed(99)
    set_rng_states(read_checkpoint(tmp_path / "rng.pt")["rng"])
    assert np.array_equal(np.random.rand(3), expected[0]) and torch.equal(torch.rand(2), expected[1])


def test_predict_refuses_a_crafted_fold_model_of_a_shared_ensemble(demo_pipeline, tmp_path, capsys):
    data, runs, _, _ = demo_pipeline
    head = next(runs.glob("*/cnn")) / "fold_0" / "head.pt"
    marker, saved = tmp_path / "pwned", head.read_bytes()
    craft(head, marker)
    try:
        code = run_in_process(["predict.py", "--ensemble", str(ensemble_dir(runs)), "--data-dir", str(data),
                               "--out", str(tmp_path / "p.csv"), "--cache-dir", str(runs.parent / "cache"),
                               "--no-progress"])
    finally:
        head.write_bytes(saved)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(f"error: {head}: refused"), err
    assert not marker.exists() and not (tmp_path / "p.csv").exists()


def test_predict_refuses_a_pickled_clinical_model(demo_pipeline, tmp_path):
    data, runs, _, _ = demo_pipeline
    model = next(runs.glob("*/clinical")) / "folds" / "model_0.json"
    marker = tmp_path / "pwned"
    model.rename(tmp_path / "kept.json")
    torch.save(Payload(marker), model.with_suffix(".pkl"))  # what an old (or crafted) run folder holds
    try:
        code = run_in_process(["predict.py", "--ensemble", str(ensemble_dir(runs)), "--data-dir", str(data),
                               "--out", str(tmp_path / "p.csv"), "--cache-dir", str(runs.parent / "cache"),
                               "--no-progress"])
    finally:
        model.with_suffix(".pkl").unlink()
        (tmp_path / "kept.json").rename(model)
    assert code == 2 and not marker.exists()


def test_a_storage_password_never_reaches_a_written_config():
    import argparse

    from lib.core.config import config_dict
    from lib.core.storage import safe_url
    url = "postgresql://user:SECRET@host:5432/db?sslpassword=SECRET2"
    written = config_dict(argparse.Namespace(storage=url, seed=1))
    assert "SECRET" not in str(written) and written["storage"].startswith("postgresql://user:***@host:5432/db")
    assert safe_url(written["storage"]) == written["storage"]  # masking is idempotent (resume compares masked)
    assert "SECRET" not in safe_url("weird://user:SECRET@[not-a-host/db")
