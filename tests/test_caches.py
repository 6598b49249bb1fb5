"""Caches are keyed on the cells' content identity (ID, file, size, SHA-1 of the bytes): stale ones are recomputed,
copied or touched images reuse them."""
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import make_2024, mean_embedder

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


def _touch_all(root: Path) -> None:
    """A later mtime on every image, bytes unchanged (what a copy without -p or a restore does)."""
    for path in root.rglob("*.jpg"):
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_touched_or_copied_images_reuse_every_cache(tmp_path, caplog):
    import shutil

    from lib.cnn.embedding import compute_embeddings
    from lib.features.morphometry.cache import cell_measurements

    data, cache = make_2024(tmp_path / "a" / "d", n_cells=2, size=32), tmp_path / "cache"
    spec, job = mean_embedder()
    load_image_cache(load_dataset(data), 24, cache, progress=False)
    first = cell_measurements(load_dataset(data), cache, progress=False)
    compute_embeddings(load_dataset(data), spec, job, cache, views=["v0"])
    array_path = next(cache.glob("*_c24.u8"))
    built = array_path.stat().st_mtime_ns
    _touch_all(data)
    copy = Path(shutil.copytree(data, tmp_path / "b" / "d", copy_function=shutil.copy))  # new mtimes, same bytes
    for root in (data, copy):
        with caplog.at_level(logging.WARNING):
            images = load_image_cache(load_dataset(root), 24, cache, progress=False)
            measured = cell_measurements(load_dataset(root), cache, progress=False)
            embedded = compute_embeddings(load_dataset(root), spec, job, cache, views=["v0"])
        assert "differ" not in caplog.text
        assert array_path.stat().st_mtime_ns == built and embedded.computed == 0
        assert images.index["path"].str.startswith(str(root)).all() and measured["path"].str.startswith(str(root)).all()
        pd.testing.assert_frame_equal(measured.drop(columns="path"), first.drop(columns="path"))


def test_remembered_digests_are_not_read_again_and_a_damaged_store_is_recomputed(tmp_path, monkeypatch):
    import lib.data.digests as digests

    data = make_2024(tmp_path / "d", n_cells=2, size=32)
    paths = sorted(str(p) for p in data.rglob("*.jpg"))
    store = tmp_path / "store.csv"
    truth = [digests.file_digest(p) for p in paths]
    hashed = []
    monkeypatch.setattr(digests, "file_digest", lambda p: hashed.append(p) or truth[paths.index(p)])
    assert digests.content_digests(paths, store, progress=False)["digest"].tolist() == truth and len(hashed) == len(paths)
    hashed.clear()
    assert digests.content_digests(paths, store, progress=False)["digest"].tolist() == truth and hashed == []
    whole = store.read_text()
    for cut in np.linspace(len(whole) // 2, len(whole) - 1, 12).astype(int):  # inside a path, a size, an mtime, a digest
        store.write_text(whole[:cut])
        hashed.clear()
        assert digests.content_digests(paths, store, progress=False)["digest"].tolist() == truth, cut
        rows, kept = whole.split("\n")[1:], whole[:cut].split("\n")[1:]  # after the header
        intact = sum(row == rows[i] for i, row in enumerate(kept))  # rows the cut left whole
        assert len(hashed) == len(paths) - intact, cut  # only the cut row and those after it are hashed again
    store.write_text("not,a,store\n")
    assert digests.content_digests(paths, store, progress=False)["digest"].tolist() == truth


def test_a_cache_directory_that_cannot_be_written_still_gives_the_digests(tmp_path, monkeypatch, caplog):
    import lib.data.digests as digests
    from lib.core.errors import DataError

    def refuse(table, path):
        raise DataError(f"{path}: cannot write (Read-only file system)")

    monkeypatch.setattr(digests, "atomic_write_csv", refuse)
    data = make_2024(tmp_path / "d", n_cells=2, size=32)
    paths = sorted(str(p) for p in data.rglob("*.jpg"))
    with caplog.at_level(logging.WARNING):
        table = digests.content_digests(paths, tmp_path / "store.csv", progress=False)
    assert table["digest"].tolist() == [digests.file_digest(p) for p in paths]
    assert "store.csv: cannot write (Read-only file system) (not saved" in caplog.text


def test_two_copies_of_a_data_directory_keep_each_others_digests(tmp_path, monkeypatch):
    import shutil

    import lib.data.digests as digests

    a = make_2024(tmp_path / "a" / "d", n_cells=2, size=32)
    b = Path(shutil.copytree(a, tmp_path / "b" / "d"))
    store, hashed = tmp_path / "store.csv", []
    real = digests.file_digest
    monkeypatch.setattr(digests, "file_digest", lambda p: hashed.append(p) or real(p))
    for root in (a, b, a, b):
        digests.content_digests(sorted(str(p) for p in root.rglob("*.jpg")), store, progress=False)
    assert len(hashed) == 2 * len(list(a.rglob("*.jpg")))  # each copy hashed once


def _as_older_version(index_path: Path, cache: Path) -> None:
    """Rewrite a cache index as earlier versions wrote it: keyed on size and mtime_ns, no digests."""
    old = pd.read_csv(index_path, dtype={"ID": str})
    stats = {(str(r.ID), r.file): r.mtime_ns for r in pd.read_csv(next(cache.glob("*_c24.csv"))).itertuples()}
    if "mtime_ns" not in old.columns:  # the decoded-image index has it already
        old.insert(old.columns.get_loc("digest"), "mtime_ns", [stats[(i, f)] for i, f in zip(old["ID"], old["file"])])
    old.drop(columns=[c for c in old.columns if c == "digest"]).to_csv(index_path, index=False)


def test_caches_of_an_older_version_are_upgraded_while_their_file_times_match(tmp_path, caplog):
    from lib.cnn.embedding import compute_embeddings
    from lib.features.morphometry.cache import cell_measurements

    data, cache = make_2024(tmp_path / "d", n_cells=2, size=32), tmp_path / "cache"
    spec, job = mean_embedder()
    load_image_cache(load_dataset(data), 24, cache, progress=False)
    first = cell_measurements(load_dataset(data), cache, progress=False)
    compute_embeddings(load_dataset(data), spec, job, cache, views=["v0"])
    indexes = [*cache.glob("morpho/*.csv"), *cache.glob("emb/ds/*.csv")]
    for index_path in indexes:
        _as_older_version(index_path, cache)
    _as_older_version(next(cache.glob("*_c24.csv")), cache)
    array_path = next(cache.glob("*_c24.u8"))
    built = array_path.stat().st_mtime_ns
    with caplog.at_level(logging.WARNING):  # file times unchanged: reused, and rewritten keyed on the digests
        load_image_cache(load_dataset(data), 24, cache, progress=False)
        measured = cell_measurements(load_dataset(data), cache, progress=False)
        assert compute_embeddings(load_dataset(data), spec, job, cache, views=["v0"]).computed == 0
    assert "differ" not in caplog.text and array_path.stat().st_mtime_ns == built
    pd.testing.assert_frame_equal(measured, first)
    assert all("digest" in pd.read_csv(p).columns for p in [*indexes, next(cache.glob("*_c24.csv"))])
    _touch_all(data)  # upgraded: a touch no longer rebuilds anything
    with caplog.at_level(logging.WARNING):
        load_image_cache(load_dataset(data), 24, cache, progress=False)
        assert compute_embeddings(load_dataset(data), spec, job, cache, views=["v0"]).computed == 0
    assert "differ" not in caplog.text and array_path.stat().st_mtime_ns == built


def test_a_cache_of_an_older_version_whose_file_times_differ_is_rebuilt(tmp_path, caplog):
    data = make_2024(tmp_path / "d", n_cells=2, size=32)
    load_image_cache(load_dataset(data), 24, tmp_path / "cache", progress=False)
    index_path = next((tmp_path / "cache").glob("*_c24.csv"))
    pd.read_csv(index_path).drop(columns="digest").assign(mtime_ns=0).to_csv(index_path, index=False)
    array_path = next((tmp_path / "cache").glob("*_c24.u8"))
    built = array_path.stat().st_mtime_ns
    with caplog.at_level(logging.WARNING):
        load_image_cache(load_dataset(data), 24, tmp_path / "cache", progress=False)
    assert "older version" in caplog.text and "digest" in pd.read_csv(index_path).columns
    assert array_path.stat().st_mtime_ns != built  # rebuilt, not upgraded


def test_an_older_version_morphometry_cache_measures_only_the_replaced_cell(tmp_path, monkeypatch):
    import lib.features.morphometry.cache as morpho

    data, cache = make_2024(tmp_path / "d", n_cells=2, size=32), tmp_path / "cache"
    load_image_cache(load_dataset(data), 24, cache, progress=False)
    first = morpho.cell_measurements(load_dataset(data), cache, progress=False)
    _as_older_version(next(cache.glob("morpho/*.csv")), cache)
    measured, real = [], morpho.measure_cells
    monkeypatch.setattr(morpho, "measure_cells", lambda paths, **kw: measured.extend(paths) or real(paths, **kw))
    _green_squares(data / "trainset" / "P1")  # P1's two cells replaced
    again = morpho.cell_measurements(load_dataset(data), cache, progress=False)
    assert sorted(Path(p).parent.name for p in measured) == ["P1", "P1"]
    kept = first["ID"] != "P1"
    pd.testing.assert_frame_equal(again[kept].drop(columns=["digest"]), first[kept].drop(columns=["digest"]),
                                  check_dtype=False)
    assert "digest" in pd.read_csv(next(cache.glob("morpho/*.csv"))).columns


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
    measured = [c for c in first.columns if c not in ("ID", "path", "file", "size", "digest", "ok")]
    assert not np.allclose(third[measured].to_numpy(float), second[measured].to_numpy(float), equal_nan=True)
    again = cell_measurements(load_dataset(data), tmp_path / "cache", progress=False)
    pd.testing.assert_frame_equal(again, third, check_dtype=False)


def test_embeddings_recomputed_when_images_are_replaced(tmp_path, caplog):
    from lib.cnn.embedding import compute_embeddings

    data = make_2024(tmp_path / "d", n_cells=2, size=32)
    spec, job = mean_embedder()
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
    left = [p for p in (tmp_path / "cache").iterdir() if p.name != "digests"]  # the images' digests are kept
    assert [p.suffix for p in left] == [".lock"]  # no partial or temporary file


def test_images_of_another_size_are_reported(tmp_path, caplog):
    from conftest import write_jpg
    data = make_2024(tmp_path / "d", n_cells=2, size=32)
    write_jpg(data / "trainset" / "P3" / "000001.jpg", seed=9, size=40)
    with caplog.at_level(logging.WARNING):
        load_image_cache(load_dataset(data), 24, tmp_path / "cache", progress=False)
    assert "P3/000001.jpg: 40x40 differs from the first image's 32x32" in caplog.text
