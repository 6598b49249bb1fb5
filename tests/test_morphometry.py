"""Morphometry on synthetic cells of known geometry, on degenerate images, and its pooling, pictures and cache."""
import os

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import make_2024

from lib.core.errors import DataError
from lib.data.dataset import load_dataset
from lib.features.morphometry.cache import cell_measurements, pooled_morphometry
from lib.features.morphometry.plots import plot_pooled_by_class, plot_segmentation
from lib.features.morphometry.pooling import ALL_POOLED, DEFAULT_POOLED, pool_patient_features
from lib.features.morphometry.segment import (
    MEASUREMENTS,
    MIN_PARALLEL,
    cell_mask,
    measure_cell,
    measure_cells,
    nucleus_mask,
)

PINK, CREAM = (230, 200, 210), (236, 220, 205)
CYTOPLASM, NUCLEUS, RED_CELL = (200, 190, 220), (90, 40, 130), (200, 165, 190)


def synthetic_cell(r: int, cell_r: int, axes: tuple[int, int] | None = None, background=PINK,
                   seed: int = 0, size: int = 224) -> np.ndarray:
    """Cell at the centre: background, pale blue cytoplasm disk, purple nucleus disk or ellipse, noise."""
    c = size // 2
    img = np.full((size, size, 3), background, np.uint8)
    cv2.circle(img, (c, c), cell_r, CYTOPLASM, -1)
    cv2.ellipse(img, (c, c), axes or (r, r), 0, 0, 360, NUCLEUS, -1)
    noise = np.random.default_rng(seed).normal(0, 4, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("background", [PINK, CREAM], ids=["pink", "cream"])
@pytest.mark.parametrize("r", [18, 25, 35])
def test_nucleus_area_and_nc_ratio_match_the_drawn_disks(r, background):
    cell_r = int(r * 1.6)
    m = measure_cell(synthetic_cell(r, cell_r, background=background))
    assert m["ok"] == 1
    # stated tolerance: nucleus area within 10% of pi r^2 (cv2 draws ~pi (r + 0.5)^2 px), N/C within 0.06
    assert m["nucleus_area"] == pytest.approx(np.pi * r ** 2, rel=0.10)
    assert m["nc_ratio"] == pytest.approx((r / cell_r) ** 2, abs=0.06)
    assert m["circularity"] > 0.9 and m["axis_ratio"] > 0.93 and m["solidity"] > 0.95


def test_colours_are_in_lab_units():
    m = measure_cell(synthetic_cell(25, 40))
    assert m["nucleus_L"] < 40 < m["cyto_L"]            # dark nucleus, pale cytoplasm (L* 0-100)
    assert m["nucleus_b"] < -25 and m["cyto_b"] < -5     # both bluish (negative b*)


def test_an_ellipse_is_less_round_and_has_its_axis_ratio():
    m = measure_cell(synthetic_cell(0, 50, axes=(36, 18)))
    assert m["axis_ratio"] == pytest.approx(0.5, abs=0.05)
    assert m["nucleus_area"] == pytest.approx(np.pi * 36 * 18, rel=0.10)
    assert m["circularity"] < 0.85


def test_an_irregular_nucleus_is_less_circular_and_less_solid():
    img = synthetic_cell(1, 50)
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    radii = np.where(np.arange(16) % 2 == 0, 34, 18)
    star = np.stack([112 + radii * np.cos(angles), 112 + radii * np.sin(angles)], 1).astype(np.int32)
    cv2.fillPoly(img, [star], NUCLEUS)
    m, disk = measure_cell(img), measure_cell(synthetic_cell(26, 45))
    assert m["ok"] == 1
    assert m["circularity"] < disk["circularity"] - 0.2 and m["solidity"] < 0.85 < disk["solidity"]


def test_coarse_chromatin_has_more_texture_than_smooth():
    smooth = synthetic_cell(28, 42)
    coarse = smooth.copy()
    spots = np.random.default_rng(1).integers(90, 134, (40, 2))
    for x, y in spots:
        cv2.circle(coarse, (int(x), int(y)), 2, (60, 20, 95), -1)
    assert measure_cell(coarse)["chromatin_laplacian"] > 1.5 * measure_cell(smooth)["chromatin_laplacian"]


def test_a_touching_red_cell_is_not_counted_as_cytoplasm():
    img = synthetic_cell(25, 35)
    cv2.circle(img, (112 + 35 + 19, 112), 20, RED_CELL, -1)      # red cell touching the cytoplasm
    cv2.circle(img, (112 + 35 + 19, 112), 7, PINK, -1)           # with its central pallor
    cell = cell_mask(img)
    assert cell.sum() == pytest.approx(np.pi * 35 ** 2, rel=0.12)
    assert not cell[112, 112 + 35 + 19]
    assert nucleus_mask(img).sum() == pytest.approx(np.pi * 25 ** 2, rel=0.10)


@pytest.mark.parametrize("img", [
    np.full((224, 224, 3), 255, np.uint8), np.zeros((224, 224, 3), np.uint8),
    np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8), np.full((8, 8, 3), 90, np.uint8),
    np.full((224, 224, 3), PINK, np.uint8), synthetic_cell(25, 35, size=32),
], ids=["white", "black", "noise", "tiny", "background-only", "small-image"])
def test_degenerate_images_are_flagged_not_crashed_on(img):
    m = measure_cell(img)
    assert m["ok"] == 0 and all(np.isnan(m[k]) for k in MEASUREMENTS)
    assert not nucleus_mask(img).any() and not cell_mask(img).any()


def test_an_off_centre_nucleus_is_not_taken():
    img = np.full((224, 224, 3), PINK, np.uint8)
    cv2.circle(img, (20, 20), 15, NUCLEUS, -1)
    assert measure_cell(img)["ok"] == 0


@pytest.mark.parametrize("bad", [np.zeros((224, 224), np.uint8), np.zeros((224, 224, 3), np.float32), [[1, 2]]],
                         ids=["grey", "float", "list"])
def test_non_rgb_uint8_input_is_a_data_error(bad):
    with pytest.raises(DataError, match="uint8"):
        measure_cell(bad)


def test_measure_cells_reads_paths_and_keeps_order(tmp_path):
    imgs = [synthetic_cell(r, int(1.5 * r), seed=r) for r in (16, 22, 30)]
    imgs.append(np.full((224, 224, 3), 255, np.uint8))
    paths = []
    for i, img in enumerate(imgs):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    from_paths = measure_cells(paths, progress=False)
    from_arrays = measure_cells(imgs, progress=False)
    assert list(from_paths.columns) == MEASUREMENTS + ["ok"] and list(from_paths["ok"]) == [1, 1, 1, 0]
    pd.testing.assert_frame_equal(from_paths, from_arrays)
    assert from_paths["nucleus_area"].iloc[:3].is_monotonic_increasing


def test_worker_processes_give_the_same_rows():
    imgs = [synthetic_cell(12 + i % 20, 36, seed=i, size=96) for i in range(MIN_PARALLEL)]
    pd.testing.assert_frame_equal(measure_cells(imgs, progress=False, n_jobs=2),
                                  measure_cells(imgs, progress=False, n_jobs=1))


def _cells_table() -> pd.DataFrame:
    imgs = [synthetic_cell(20, 32), synthetic_cell(30, 45), np.full((224, 224, 3), 255, np.uint8),
            synthetic_cell(25, 40)]
    return pd.DataFrame([measure_cell(i) for i in imgs]).assign(ID=["A", "A", "B", "C"])


def test_pooling_gives_one_row_per_patient_with_bad_cell_counts():
    cells = _cells_table()
    pooled = pool_patient_features(cells, None)
    assert list(pooled.index) == ["A", "B", "C"] and set(ALL_POOLED) <= set(pooled.columns)
    assert list(pooled["n_bad_cells"]) == [0, 1, 0] and list(pooled["frac_bad_cells"]) == [0.0, 1.0, 0.0]
    assert np.isnan(pooled.loc["B", "nucleus_area_mean"])
    assert pooled.loc["A", "nucleus_area_mean"] == pytest.approx(np.pi * (400 + 900) / 2, rel=0.1)
    assert pooled.loc["A", "nucleus_area_q90"] > pooled.loc["A", "nucleus_area_mean"]
    two = cells["nucleus_area"].iloc[:2]
    assert pooled.loc["A", "nucleus_area_iqr"] == pytest.approx(0.5 * abs(two.iloc[1] - two.iloc[0]), rel=1e-6)
    default = pool_patient_features(cells)
    assert list(default.columns) == DEFAULT_POOLED and 6 <= len(DEFAULT_POOLED) <= 10


def test_pooling_rejects_unknown_features_and_missing_columns():
    cells = _cells_table()
    with pytest.raises(DataError, match="unknown feature"):
        pool_patient_features(cells, ["nucleus_area_mean", "shoe_size_mean"])
    with pytest.raises(DataError, match="ID"):
        pool_patient_features(cells.drop(columns="ID"))


def test_pictures_are_written(tmp_path):
    imgs = [synthetic_cell(20, 30), synthetic_cell(28, 40), np.full((224, 224, 3), 255, np.uint8)]
    assert plot_segmentation(imgs, tmp_path / "seg.png", "synthetic").stat().st_size > 1000
    pooled = pool_patient_features(_cells_table())
    labels = pd.Series({"A": 1, "B": 0, "C": 0})
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


def test_clinical_morpho_run_writes_segmentation_and_class_plots(tmp_path):
    import train_clinical
    from lib.data.demo.build import generate_demo
    data = generate_demo(tmp_path / "demo", n_train=12, n_test=2, cells=(16, 16), seed=5, progress=False)
    train_clinical.main(["--data-dir", str(data), "--runs-dir", str(tmp_path / "runs"), "--experiment", "m",
                         "--feature-set", "clinical+morpho", "--n-folds", "3", "--folds-dir", str(tmp_path / "folds"),
                         "--cache-dir", str(tmp_path / "cache")])
    run = tmp_path / "runs" / "m"
    pngs = sorted(p.name for p in run.glob("*.png"))
    assert "morphometry_by_class.png" in pngs and sum(n.startswith("segmentation_") for n in pngs) == 2
    assert all((run / n).stat().st_size > 1000 for n in pngs)


def test_cache_key_follows_the_code_that_measures(tmp_path, monkeypatch):
    """The morphometry cache key hashes the segmentation module and the image decoder, not one fixed file."""
    import lib.features.morphometry.cache as cache
    from lib.features.morphometry import segment
    before = cache._code_key()
    edited = tmp_path / "segment.py"
    edited.write_text(open(segment.__file__).read() + "\n# a changed measuring rule\n")
    monkeypatch.setattr(segment, "__file__", str(edited))
    assert cache._code_key() != before
    monkeypatch.undo()
    monkeypatch.setattr(cache.inspect, "getsource", lambda fn: "def read_image(path): ...  # another decoder")
    assert cache._code_key() != before


def test_pooling_when_no_cell_is_measurable_gives_nan_not_a_crash():
    cells = pd.DataFrame({"ID": ["a", "a", "b"], "ok": [0, 0, 0], **{m: [np.nan] * 3 for m in MEASUREMENTS}})
    pooled = pool_patient_features(cells)
    assert list(pooled.index) == ["a", "b"] and pooled.isna().all().all()


def test_worker_processes_default_to_the_cores_the_caller_may_use(monkeypatch):
    """OMP_NUM_THREADS=1 (a caller that wants one core, like a test worker) measures in-process: no pool is started."""
    import lib.features.morphometry.segment as segment
    from lib.core.machine import usable_cores
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert usable_cores() == 1
    monkeypatch.setattr(segment.mp, "get_context", lambda *a: pytest.fail("started worker processes"))
    imgs = [synthetic_cell(12, 20, size=64)] * MIN_PARALLEL
    assert len(measure_cells(imgs, progress=False)) == MIN_PARALLEL
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert usable_cores() == len(os.sched_getaffinity(0))
