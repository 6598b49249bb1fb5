"""Augmentation factory: output size and normalisation from the data config, seeded determinism, dihedral views."""
import numpy as np
import pytest
import torch

from lib.cnn.augment import apply_batch, create_transform, dihedral, native_data_config, tta_views
from lib.core.errors import DataError

CONFIG = {"input_size": (3, 32, 32), "mean": (0.2, 0.4, 0.6), "std": (0.1, 0.2, 0.3)}


def image(seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_eval_pipeline_normalises_with_the_data_config():
    constant = np.broadcast_to((np.array(CONFIG["mean"]) * 255).astype(np.uint8), (32, 32, 3)).copy()
    out = create_transform(False, 32, "light", CONFIG)(image=constant)["image"]
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert out.abs().max() < 0.05  # (mean - mean) / std, up to uint8 rounding


@pytest.mark.parametrize("strength", ["light", "heavy"])
@pytest.mark.parametrize("train", [True, False])
def test_output_size_follows_the_data_config_input_size(strength, train):
    config = native_data_config(CONFIG, 48)
    out = create_transform(train, 32, strength, config)(image=image())["image"]
    assert out.shape == (3, 48, 48)


def test_seeded_train_pipeline_is_reproducible_and_random():
    imgs = np.stack([image(i) for i in range(4)])
    first = apply_batch(create_transform(True, 32, "heavy", CONFIG, seed=7), imgs)
    again = apply_batch(create_transform(True, 32, "heavy", CONFIG, seed=7), imgs)
    other = apply_batch(create_transform(True, 32, "heavy", CONFIG, seed=8), imgs)
    plain = apply_batch(create_transform(False, 32, "heavy", CONFIG), imgs)
    assert first.shape == (4, 3, 32, 32)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, plain)


def test_heavy_preset_has_more_transforms_than_light():
    light = [type(t).__name__ for t in create_transform(True, 32, "light", CONFIG).transforms]
    heavy = [type(t).__name__ for t in create_transform(True, 32, "heavy", CONFIG).transforms]
    assert "CoarseDropout" in heavy and "CoarseDropout" not in light
    assert len(heavy) > len(light)


def test_unknown_strength_is_a_data_error():
    with pytest.raises(DataError, match="strength"):
        create_transform(True, 32, "medium", CONFIG)


def test_dihedral_views_are_the_eight_distinct_symmetries():
    x = torch.arange(16.0).reshape(1, 4, 4)
    views = [dihedral(x, k) for k in range(8)]
    assert torch.equal(views[0], x)
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    assert torch.equal(dihedral(x, 4), x.flip(-1)) and torch.equal(dihedral(x, 6), x.flip(-2))
    assert all(torch.equal(dihedral(dihedral(x, k), k), x) for k in (4, 5, 6, 7, 2))  # reflections, rot180


def test_tta_views_order_and_range():
    assert tta_views(0) == [0]
    assert tta_views(3) == [0, 4, 6, 2]
    with pytest.raises(DataError):
        tta_views(8)
    with pytest.raises(DataError):
        dihedral(torch.zeros(1, 2, 2), 9)


def test_stain_views_change_the_stain_colour_but_keep_shape_and_seeding():
    from lib.cnn.augment import create_contrastive_transform
    config = CONFIG
    rng = np.random.default_rng(0)
    cells = rng.integers(60, 230, size=(8, 32, 32, 3), dtype=np.uint8)
    views = {}
    for colour in ("jitter", "stain"):
        transform = create_contrastive_transform(32, config, seed=3, colour=colour)
        names = [type(t).__name__ for t in transform.transforms]
        assert ("HEStain" in names) == (colour == "stain")
        views[colour] = apply_batch(transform, cells)
        assert views[colour].shape == (8, 3, 32, 32) and torch.isfinite(views[colour]).all()
        again = apply_batch(create_contrastive_transform(32, config, seed=3, colour=colour), cells)
        assert torch.equal(views[colour], again)  # seeded: a resumed pretraining sees the same views
    assert not torch.equal(views["jitter"], views["stain"])
    with pytest.raises(ValueError, match="not one of jitter, stain"):
        create_contrastive_transform(32, config, colour="hsv")
