"""Morphometry on synthetic cells of known geometry, on degenerate images, and its pooling/cache."""
import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import make_2024
from lib.data import load_dataset
from lib.morphometry import (DEFAULT_POOLED, MEASUREMENTS, measure_cell, plot_pooled_by_class,
                             plot_segmentation, pool_patient_features)
from lib.morphometry_features import cell_measurements, pooled_morphometry

BACKGROUND, CYTOPLASM, NUCLEUS = (236, 220, 205), (185, 180, 218), (90, 45, 135)


def synthetic_cell(r: int, cell_r: int, axes: tuple[int, int] | None = None, seed: int = 0) -> np.ndarray:
    """224x224 cell: beige background, pale blue cytoplasm disk, purple nucleus disk or ellipse, noise."""
    img = np.full((224, 224, 3), BACKGROUND, np.uint8)
    cv2.circle(img, (112, 112), cell_r, CYTOPLASM, -1)
    cv2.ellipse(img, (112, 112), axes or (r, r), 0, 0, 360, NUCLEUS, -1)
    noise = np.random.default_rng(seed).normal(0, 4, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("r", [15, 25, 35])
def test_nucleus_area_and_nc_ratio_match_the_drawn_disks(r):
    cell_r = int(r * 1.3)
    m = measure_cell(synthetic_cell(r, cell_r))
    assert m["ok"] == 1
    # cv2 rasterises a disk of radius r with ~pi (r + 0.5)^2 pixels; stated tolerance: 10% area, 0.06 N/C
    assert m["nucleus_area"] == pytest.approx(np.pi * (r + 0.5) ** 2, rel=0.10)
    assert m["nc_ratio"] == pytest.approx(((r + 0.5) / (cell_r + 0.5)) ** 2, abs=0.06)
    assert m["circularity"] > 0.85 and m["axis_ratio"] > 0.9


def test_an_ellipse_is_less_round():
    m = measure_cell(synthetic_cell(0, 45, axes=(36, 18)))
    assert m["axis_ratio"] == pytest.approx(0.5, abs=0.07)
    assert m["nucleus_area"] == pytest.approx(np.pi * 36 * 18, rel=0.10)


@pytest.mark.parametrize("img", [
    np.full((224, 224, 3), 255, np.uint8), np.zeros((224, 224, 3), np.uint8),
    np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8), np.full((8, 8, 3), 90, np.uint8),
], ids=["white", "black", "noise", "tiny"])
def test_degenerate_images_are_flagged_not_crashed_on(img):
    m = measure_cell(img)
    assert m["ok"] == 0 and all(np.isnan(m[k]) for k in MEASUREMENTS)


def test_pooling_counts_bad_cells_and_plots(tmp_path):
    imgs = [synthetic_cell(20, 28), synthetic_cell(30, 38), np.full((224, 224, 3), 255, np.uint8)]
    cells = pd.DataFrame([measure_cell(i) for i in imgs]).assign(ID=["A", "A", "B"])
    pooled = pool_patient_features(cells, None)
    assert list(pooled.index) == ["A", "B"]
    assert pooled.loc["A", "n_bad_cells"] == 0 and pooled.loc["B", "frac_bad_cells"] == 1.0
    assert np.isnan(pooled.loc["B", "nucleus_area_mean"])
    assert pooled.loc["A", "nucleus_area_mean"] == pytest.approx(np.pi * (400 + 900) / 2, rel=0.1)
    assert list(pool_patient_features(cells).columns) == DEFAULT_POOLED
    assert plot_segmentation(imgs, tmp_path / "seg.png").stat().st_size > 1000
    labels = pd.Series({"A": 1, "B": 0})
    assert plot_pooled_by_class(pooled[DEFAULT_POOLED[:3]], labels, tmp_path / "box.png").stat().st_size > 1000


def test_dataset_measurements_are_cached(tmp_path):
    ds = load_dataset(make_2024(tmp_path / "d", n_cells=2, size=32))
    first = cell_measurements(ds, cache_dir=tmp_path / "cache", progress=False)
    assert len(first) == ds.patients["n_images"].sum() and set(first["ID"]) == set(ds.patients.index)
    cached = list((tmp_path / "cache" / "morpho").glob("*.csv"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    pooled = pooled_morphometry(ds, cache_dir=tmp_path / "cache")
    assert cached[0].stat().st_mtime_ns == mtime
    assert set(pooled.index) == set(ds.patients.index)
