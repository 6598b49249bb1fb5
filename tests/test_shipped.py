"""Shipped weights (weights/<name>.safetensors + card): made by ship_encoder.py from a pretraining run, loaded by name
in train_cnn.py and train_clinical.py, their content hash checked at every load; the repository's own lymph-ssl."""
import json

import pytest
import torch
from conftest import REPO
from test_pretrain import TINY, cnn, cohort, pretrain  # noqa: F401  (cohort is a fixture)

import lib.models.shipped as shipped
import ship_encoder
from lib.core.cli import run_in_process
from lib.core.errors import DataError
from lib.models.backbones import build_backbone, resolve_weights


@pytest.fixture
def tiny_shipped(cohort, tmp_path, monkeypatch):  # noqa: F811
    """A tiny encoder pretrained and shipped as 'tiny-ssl' into a weights folder of the test's own."""
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setattr(shipped, "SHIPPED", ("tiny-ssl",))
    pretrain(cohort, tmp_path, "ssl", "--epochs", "1")
    card = ship_encoder.main(["--run", str(tmp_path / "runs" / "ssl"), "--name", "tiny-ssl", "--data-dir",
                              str(cohort), "--cache-dir", str(tmp_path / "cache"), "--command", "pretrain ..."])
    return json.loads(card.read_text()), tmp_path / "weights" / "tiny-ssl.safetensors"


def test_a_shipped_encoder_is_loaded_by_name_with_its_card_as_the_encoder_record(cohort, tmp_path, tiny_shipped):  # noqa: F811
    card, weights = tiny_shipped
    assert card["name"] == "tiny-ssl" and card["backbone"] == "test_efficientnet" and card["commands"] == ["pretrain ..."]
    assert card["dtype"] in ("float16", "float32") and card["fp16_check"]["cells"] > 0 and len(card["sha256"]) == 64
    original = torch.load(tmp_path / "runs" / "ssl" / "encoder.pth", weights_only=True)
    model = build_backbone("test_efficientnet", resolve_weights("tiny-ssl"), seed=1)
    for key, value in model.state_dict().items():  # fp16 rounding at most
        assert torch.allclose(value.float(), original[key].float(), rtol=1e-3, atol=1e-3), key
    assert cnn(cohort, tmp_path, "by_name", "tiny-ssl")["embedded_images"] > 0
    with pytest.raises(DataError, match="trained with"):  # the card is the record: its input size is enforced
        cnn(cohort, tmp_path, "wrong_size", "tiny-ssl", "--input-size", "16")


def test_damaged_shipped_weights_are_refused_by_their_content_hash(cohort, tmp_path, tiny_shipped, capsys):  # noqa: F811
    _, weights = tiny_shipped
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    code = run_in_process(["train_clinical.py", "--data-dir", str(cohort), "--runs-dir", str(tmp_path / "runs"),
                           "--folds-dir", str(tmp_path / "folds"), "--cache-dir", str(tmp_path / "cache"),
                           "--feature-set", "clinical+encoder", "--encoder", "tiny-ssl", "--inner-folds", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: {weights}: content hash") and "differs from its card" in err



def test_the_repository_ships_lymph_ssl_small_and_intact():
    card = shipped.read_card("lymph-ssl")
    path = shipped.shipped_path("lymph-ssl")  # the SHA-256 of the card
    assert path.stat().st_size <= 25 * 2**20 and card["size_bytes"] == path.stat().st_size
    assert card["objective"] == "simclr" and card["scope"] == "all" and card["commands"] and card["cells_fingerprint"]
    model = build_backbone(card["backbone"], path, seed=0)  # strict load: every key, every shape
    assert sum(p.numel() for p in model.parameters()) > 1e6
    assert (REPO / "docs" / "lymph-ssl.md").exists()
