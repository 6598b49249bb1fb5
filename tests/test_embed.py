"""Embedding cache: keys, coverage of views, reuse on a second run, row alignment, weights and device checks."""
import numpy as np
import pytest
import torch
from conftest import make_2024

import lib.cnn.embedding as embed
from lib.cnn.augment import apply_batch, create_transform
from lib.cnn.device import resolve_device
from lib.cnn.embedding import EmbedJob, EmbedSpec, code_tag, compute_embeddings, view_paths
from lib.core.errors import DataError
from lib.data.dataset import load_dataset
from lib.data.images import center_crop, read_image
from lib.models.backbones import build_backbone, embed_data_config, resolve_weights, weights_tag

BACKBONE = "test_efficientnet"


@pytest.fixture
def dataset(tmp_path):
    return load_dataset(make_2024(tmp_path / "comp", n_cells=3, size=32))


def setup(dataset, n_views=1, n_tta=1, crop=24):
    model = build_backbone(BACKBONE, None, seed=0)
    config = embed_data_config(model, crop, "crop")
    spec = EmbedSpec(dataset.name, BACKBONE, "rand0", crop, crop, "light", n_views, n_tta, "fp32", code_tag())
    return spec, EmbedJob(model, config, torch.device("cpu"), None, batch_size=5, progress=False)


def test_views_cover_the_right_cells_and_are_cached(dataset, tmp_path):
    spec, job = setup(dataset)
    emb = compute_embeddings(dataset, spec, job, tmp_path / "cache")
    assert spec.train_views == ["v0", "d4", "light_v1"] and spec.eval_views == ["v0", "d4"]
    n_cells, is_test = len(emb.index), (emb.index["split"] == "test").to_numpy()
    assert emb.computed == n_cells * 2 + (~is_test).sum()
    assert emb.arrays["v0"].shape == (n_cells, job.model.num_features)
    assert np.isfinite(emb.arrays["v0"]).all() and np.isfinite(emb.arrays["d4"]).all()
    assert np.isnan(emb.arrays["light_v1"][is_test]).all() and np.isfinite(emb.arrays["light_v1"][~is_test]).all()
    assert not np.array_equal(emb.arrays["v0"], emb.arrays["d4"])
    array_path, index_path = view_paths(spec, "light_v1", tmp_path / "cache")
    assert array_path.name == f"{BACKBONE}_rand0_c24_fp32_{code_tag()}_light_v1.npy" and index_path.exists()
    assert array_path.parent.name == dataset.name


def test_second_run_reuses_the_cache_without_embedding(dataset, tmp_path, monkeypatch):
    spec, job = setup(dataset)
    first = compute_embeddings(dataset, spec, job, tmp_path / "cache")

    def refuse(*args, **kwargs):
        raise AssertionError("embedded again although the cache is complete")
    monkeypatch.setattr(embed, "embed_images", refuse)
    again = compute_embeddings(dataset, spec, job, tmp_path / "cache")
    assert again.computed == 0
    for view in spec.train_views:
        np.testing.assert_array_equal(first.arrays[view], again.arrays[view])


def test_augmented_views_are_reproducible_after_deleting_the_cache(dataset, tmp_path):
    spec, job = setup(dataset)
    first = compute_embeddings(dataset, spec, job, tmp_path / "a")
    second = compute_embeddings(dataset, spec, job, tmp_path / "b")
    np.testing.assert_array_equal(first.arrays["light_v1"], second.arrays["light_v1"])


def test_rows_are_the_embeddings_of_the_right_files(dataset, tmp_path):
    spec, job = setup(dataset, n_views=0, n_tta=0)
    emb = compute_embeddings(dataset, spec, job, tmp_path / "cache")
    pid = dataset.test.index[-1]
    files = emb.index.set_index("row").loc[emb.rows(pid), "path"]
    images = np.stack([center_crop(read_image(p), 24) for p in files])
    with torch.inference_mode():
        direct = job.model.eval()(apply_batch(create_transform(False, 24, "light", job.data_config), images))
    np.testing.assert_allclose(emb.stack(pid, ["v0"])[0], direct.numpy(), rtol=1e-2, atol=1e-2)


def test_a_stale_cache_index_is_recomputed(dataset, tmp_path):
    spec, job = setup(dataset, n_views=0, n_tta=0)
    compute_embeddings(dataset, spec, job, tmp_path / "cache")
    _, index_path = view_paths(spec, "v0", tmp_path / "cache")
    index_path.write_text("ID,file\nP1,other.jpg\n")
    assert compute_embeddings(dataset, spec, job, tmp_path / "cache").computed == len(dataset.images) * 3


def test_cache_key_follows_the_weights_content_and_the_crop(tmp_path):
    model = build_backbone(BACKBONE, None, seed=0)
    for name in ("a.pth", "b.pth"):  # same tensors saved twice: different file bytes, same key
        torch.save(model.state_dict(), tmp_path / name)
    tags = {weights_tag(build_backbone(BACKBONE, tmp_path / name, seed=5)) for name in ("a.pth", "b.pth")}
    assert tags == {weights_tag(model)} and len(tags.pop()) == 8
    assert weights_tag(build_backbone(BACKBONE, None, seed=1)) != weights_tag(model)
    a = EmbedSpec("d", "m", "t", 112, 112, "light", 1, 0, "fp32", "c0de00")
    b = EmbedSpec("d", "m", "t", 96, 96, "light", 1, 0, "fp32", "c0de00")
    c = EmbedSpec("d", "m", "t", 112, 224, "light", 1, 0, "fp32", "c0de00")
    d = EmbedSpec("d", "m", "t", 112, 112, "light", 1, 0, "bf16", "c0de00")  # autocast dtype changes the numbers
    e = EmbedSpec("d", "m", "t", 112, 112, "light", 1, 0, "fp32", "c0de01")  # so does the transform code
    assert len({view_paths(s, "v0", tmp_path)[0] for s in (a, b, c, d, e)}) == 5


def test_weights_and_device_errors(tmp_path):
    assert resolve_weights("none") is None
    with pytest.raises(DataError, match="not found"):
        resolve_weights(str(tmp_path / "missing.pth"))
    with pytest.raises(DataError, match="unknown backbone"):
        build_backbone("no_such_net", None, 0)
    if not torch.cuda.is_available():
        with pytest.raises(DataError, match="CUDA"):
            resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"


def test_bf16_training_only_where_the_cpu_has_it(monkeypatch):
    import lib.cnn.device as device
    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    assert device.training_autocast_dtype("auto", cpu) is None and device.autocast_dtype("auto", cpu, False) is None
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    assert device.training_autocast_dtype("auto", cpu) is torch.bfloat16
    assert device.training_autocast_dtype("off", cpu) is None
