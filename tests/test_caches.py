"""Caches are keyed on the cells' content identity (ID, file, size, mtime_ns): stale ones are recomputed."""
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import make_2024

from lib.data.dataset import load_dataset
from lib.data.images import load_image_cache


def _green_squares(root: Path) -> None:
    """Replace every image by a flat green square of the same size under the same name."""
    for path in root.rglob("*.jpg"):
        img = cv2.imread(str(path))
        green = np.zeros_like(img)
        green[..., 1] = 200
        cv2.imwrite(str(path), green)
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a later mtime, whatever the clock


def test_image_cache_rebuilt_when_images_are_replaced(tmp_path, caplog):
    data = make_2024(tmp_path / "d", n_cells=2, size=32)
    before = np.array(load_image_cache(load_dataset(data), 24, tmp_path / "cache", progress=False).array)
    _green_squares(data)
    with caplog.at_level(logging.WARNING):
        after = load_image_cache(load_dataset(data), 24, tmp_path / "cache", progress=False)
    assert "rebuilding the decoded cache" in caplog.text and "_c24.csv" in caplog.text
    assert not np.array_equal(before, np.array(after.array))
    assert np.all(np.array(after.array)[..., 1] > 150)
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_image_cache_rebuilt_when_images_are_deleted(tmp_path):
    data = make_2024(tmp_path / "d", n_cells=4, size=32)
    load_image_cache(load_dataset(data), 24, tmp_path / "cache", progress=False)
    for path in sorted((data / "trainset" / "P1").glob("*.jpg"))[1:]:
        path.unlink()
    cache = load_image_cache(load_dataset(data), 24, tmp_path / "cache", progress=False)
    assert len(cache.rows("P1")) == 1 and cache.array.shape[0] == len(cache.index)


def test_morphometry_rows_follow_the_images(tmp_path, caplog):
    from lib.features.morphometry.cache import cell_measurements
    data = make_2024(tmp_path / "d", n_cells=4, size=32)
    first = cell_measurements(load_dataset(data), tmp_path / "cache", progress=False)
    assert (first["ID"] == "P1").sum() == 4
    for path in sorted((data / "trainset" / "P1").glob("*.jpg"))[1:]:
        path.unlink()
    with caplog.at_level(logging.WARNING):
        second = cell_measurements(load_dataset(data), tmp_path / "cache", progress=False)
    assert "cached cells differ" in caplog.text and "morpho" in caplog.text
    assert (second["ID"] == "P1").sum() == 1 and len(second) == len(first) - 3
    kept = first[first["ID"] != "P1"].reset_index(drop=True)
    pd.testing.assert_frame_equal(second[second["ID"] != "P1"].reset_index(drop=True)[kept.columns], kept,
                                  check_dtype=False)
    _green_squares(data)
    third = cell_measurements(load_dataset(data), tmp_path / "cache", progress=False)
    measured = [c for c in first.columns if c not in ("ID", "path", "file", "size", "mtime_ns", "ok")]
    assert not np.allclose(third[measured].to_numpy(float), second[measured].to_numpy(float), equal_nan=True)
    again = cell_measurements(load_dataset(data), tmp_path / "cache", progress=False)
    pd.testing.assert_frame_equal(again, third, check_dtype=False)


def test_embeddings_recomputed_when_images_are_replaced(tmp_path, caplog):
    import torch

    from lib.cnn.embedding import EmbedJob, EmbedSpec, compute_embeddings

    class Mean(torch.nn.Module):
        num_features = 3

        def forward(self, x):
            return x.mean(dim=(2, 3))

    data = make_2024(tmp_path / "d", n_cells=2, size=32)
    spec = EmbedSpec("ds", "mean", "w", 24, 24, "light", 0, 0, "fp32", "c")
    cfg = {"input_size": (3, 24, 24), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear",
           "crop_pct": 1.0}
    job = EmbedJob(Mean(), cfg, torch.device("cpu"), None, 8, progress=False)
    before = compute_embeddings(load_dataset(data), spec, job, tmp_path / "cache", views=["v0"])
    _green_squares(data)
    with caplog.at_level(logging.WARNING):
        after = compute_embeddings(load_dataset(data), spec, job, tmp_path / "cache", views=["v0"])
    assert "v0.csv: cached cells differ" in caplog.text
    assert after.computed == len(after.index)
    assert not np.allclose(before.arrays["v0"].astype(float), after.arrays["v0"].astype(float))


def test_full_disk_while_building_the_image_cache_is_a_data_error(tmp_path, monkeypatch):
    import errno

    from lib.core.errors import DataError

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    data = make_2024(tmp_path / "d", n_cells=2, size=32)
    with pytest.raises(DataError, match=r"_c24.u8: cannot write the decoded-image cache \(No space left"):
        load_image_cache(load_dataset(data), 24, tmp_path / "cache", progress=False)
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".lock"]  # no partial or temporary file


def test_images_of_another_size_are_reported(tmp_path, caplog):
    from conftest import write_jpg
    data = make_2024(tmp_path / "d", n_cells=2, size=32)
    write_jpg(data / "trainset" / "P3" / "000001.jpg", seed=9, size=40)
    with caplog.at_level(logging.WARNING):
        load_image_cache(load_dataset(data), 24, tmp_path / "cache", progress=False)
    assert "P3/000001.jpg: 40x40 differs from the first image's 32x32" in caplog.text
