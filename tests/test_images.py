"""Decoding and the decoded-image cache."""
import numpy as np
import pytest

from lib.core.errors import DataError
from lib.data.dataset import load_dataset
from lib.data.images import cache_paths, center_crop, load_image_cache, read_image


def test_cache_holds_center_crops_of_every_image_and_is_reused(data_2024, tmp_path):
    ds = load_dataset(data_2024)
    cache = load_image_cache(ds, 32, cache_dir=tmp_path / "cache", progress=False)
    assert cache.array.shape == (ds.patients["n_images"].sum(), 32, 32, 3)
    first = ds.images["P3"][1]
    np.testing.assert_array_equal(cache.patient("P3")[1], center_crop(read_image(first), 32))
    array_path, _ = cache_paths(ds, 32, tmp_path / "cache")
    mtime = array_path.stat().st_mtime_ns
    again = load_image_cache(ds, 32, cache_dir=tmp_path / "cache", progress=False)
    assert array_path.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(again.array, cache.array)


def test_crop_larger_than_images_and_undecodable_file(data_2024, tmp_path):
    ds = load_dataset(data_2024)
    with pytest.raises(DataError, match="crop 100 is larger than the 64x64 images"):
        load_image_cache(ds, 100, cache_dir=tmp_path, progress=False)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8garbage\xff\xd9")
    with pytest.raises(DataError, match="bad.jpg: cannot decode image"):
        read_image(bad)
