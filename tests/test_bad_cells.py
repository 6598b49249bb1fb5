"""Bad cells and damaged caches through the real scripts (issue 36, round three): a decompression bomb is skipped
before it is decoded; a JPEG padded after its end-of-image marker is read, a truncated one still skipped; a damaged
cache (cut short, emptied, not what it should hold) is rebuilt with a warning naming it, never a traceback, never
half-trusted; file names that are not UTF-8 round-trip through every cache.

The scripts run in-process (``lib.core.cli.run_in_process``: ``main(argv)`` through ``run_main``, as the command
line runs them) on tiny synthetic directories (8 patients, 2 cells of 32x32 each).
"""
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import make_2024, mean_embedder

from lib.core.cli import run_in_process
from lib.core.errors import DataError

PREP, CLIN, CNN = "prepare_data.py", "train_clinical.py", "train_cnn.py"
CNN_ARGS = ["--backbone", "test_efficientnet", "--weights", "none", "--crop", "24", "--epochs", "1", "--bag-size", "2",
            "--views", "0", "--tta", "1", "--head", "mean", "--batch-patients", "4", "--no-progress"]
BOMB_SIDE = 30000  # 0x7530: a 2.7 GB decode declared by a 1 kB file


def _run(script: str, data: Path, tmp: Path, *extra: str) -> int:
    """A script's main(argv) through run_main; caches, folds and runs under ``tmp``."""
    argv = ["--data-dir", str(data), "--cache-dir", str(tmp / "cache"), "--folds-dir", str(tmp / "folds"),
            "--n-folds", "3"]
    if script != PREP:
        argv += ["--runs-dir", str(tmp / "runs")]
    return run_in_process([script, *argv, *extra])


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _declaring(path: Path, height: int, width: int) -> None:
    """A 16x16 JPEG whose frame header declares ``height`` x ``width`` (what a decompression bomb is)."""
    data = bytearray(cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))[1].tobytes())
    at = data.index(b"\xff\xc0\x00\x11")  # the baseline frame header of a 3-component image
    data[at + 5:at + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(data))


@pytest.fixture
def bombs_never_decoded(monkeypatch):
    """cv2.imdecode fails the test (before decoding anything) when handed a bomb's bytes."""
    real = cv2.imdecode
    declared = BOMB_SIDE.to_bytes(2, "big") * 2

    def guarded(data, flags):
        assert declared not in np.asarray(data)[:1000].tobytes(), "a decompression bomb reached the decoder"
        return real(data, flags)

    monkeypatch.setattr(cv2, "imdecode", guarded)


def _cache_files(tmp: Path) -> tuple[Path, Path]:
    """The decoded-image cache's array and index."""
    return next((tmp / "cache").glob("*_c24.u8")), next((tmp / "cache").glob("*_c24.csv"))


def _decoded(tmp: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """The decoded-image cache as written: its cells (n x 24 x 24 x 3) and its index."""
    array_path, index_path = _cache_files(tmp)
    index = pd.read_csv(index_path, dtype={"ID": str})
    return np.fromfile(array_path, np.uint8).reshape(len(index), 24, 24, 3), index


# ----------------------------------------------------------------------------- (7) decoding is bounded
def test_a_decompression_bomb_is_skipped_before_it_is_decoded(tmp_path, capsys, caplog, bombs_never_decoded):
    from lib.data.images import read_image

    data = make_2024(tmp_path / "d", n_cells=2, size=32)
    folder = data / "trainset" / "P1"
    _declaring(folder / "000001.jpg", BOMB_SIDE, BOMB_SIDE)
    with caplog.at_level(logging.WARNING):
        assert _run(PREP, data, tmp_path, "--cache", "24") == 0
    assert (f"{folder / '000001.jpg'}: declares a 30000x30000 image (900.0 MP), more than the 4096x4096 (16.8 MP) "
            "a cell image may have (a decompression bomb?), skipped") in caplog.text
    _, index = _decoded(tmp_path)
    assert len(index) == 15 and index.loc[index["ID"] == "P1", "file"].tolist() == ["000000.jpg"]
    with pytest.raises(DataError, match=r"000001.jpg: declares a 30000x30000 image .*, not decoded"):
        read_image(folder / "000001.jpg")  # any other reader (the report's cell montage) is bounded too
    _declaring(folder / "000000.jpg", 4097, 4096)  # just above the bound: now no image of P1 is left
    capsys.readouterr()
    assert _run(PREP, data, tmp_path, "--cache", "24") == 2
    assert _error_lines(capsys) == [f"error: {folder}: every image of patient P1 is unreadable"]


def test_the_bound_is_on_the_declared_pixels(tmp_path):
    from lib.data.dataset import jpeg_problem

    path = tmp_path / "cell.jpg"
    for (height, width), fine in {(4096, 4096): True, (2048, 8192): True, (4097, 4096): False, (1, 2 ** 16 - 1): True,
                                  (0, 64): False}.items():
        _declaring(path, height, width)
        assert (jpeg_problem(path) is None) == fine, (height, width, jpeg_problem(path))


# ----------------------------------------------------------------------------- (13) padding after the end marker
def _with_thumbnail(jpeg: bytes) -> bytes:
    """``jpeg`` with an EXIF segment holding a whole thumbnail JPEG (its own end-of-image marker) after its start."""
    thumbnail = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    payload = b"Exif\0\0" + thumbnail
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def test_padded_jpegs_are_read_and_truncated_ones_still_skipped(tmp_path, caplog):
    from lib.data.images import center_crop

    data = make_2024(tmp_path / "d", n_cells=2, size=32)
    padded = sorted((data / "trainset" / "P1").glob("*.jpg"))  # every image of P1
    expected = [center_crop(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), 24) for p in padded]
    for path, padding in zip(padded, (b"\0" * 4096, b"\xff" * 100 + b"PADDING" * 50)):
        path.write_bytes(path.read_bytes() + padding)
    cut = data / "trainset" / "P2" / "000000.jpg"  # cut inside the image data
    cut.write_bytes(cut.read_bytes()[:-40])
    thumb = data / "trainset" / "P3" / "000000.jpg"  # cut too, padded after the cut; a thumbnail's marker before it
    thumb.write_bytes(_with_thumbnail(thumb.read_bytes()[:-40]) + b"\0" * 200)
    with caplog.at_level(logging.WARNING):
        assert _run(PREP, data, tmp_path, "--cache", "24") == 0
    assert "P1" not in caplog.text, caplog.text
    for path in (cut, thumb):
        assert f"{path}: truncated JPEG (no end-of-image marker after the image data), skipped" in caplog.text
    array, index = _decoded(tmp_path)
    rows = index.loc[index["ID"] == "P1", "row"].to_numpy()
    np.testing.assert_array_equal(array[rows], np.stack(expected))  # padded cells decode as they did unpadded
    assert sorted(index.loc[index["ID"].isin(["P2", "P3"]), "file"]) == ["000001.jpg", "000001.jpg"]


# ----------------------------------------------------------------------------- (8) damaged caches are rebuilt
def _cut(path: Path, keep: float = 0.5) -> None:
    os.truncate(path, int(path.stat().st_size * keep))


DAMAGES = {  # name: (which file, how it is damaged, what the warning says about it)
    "array_half": ("u8", _cut, "cut short or damaged"),
    "array_empty": ("u8", lambda p: _cut(p, 0), "0 bytes where its index's 16 cells of 24x24 take 27648"),
    "array_longer": ("u8", lambda p: p.write_bytes(p.read_bytes() + b"\0" * 10), "27658 bytes where"),
    "index_empty": ("csv", lambda p: p.write_bytes(b""), "unreadable index of the decoded cache (empty file)"),
    "index_half": ("csv", _cut, "cached cells differ"),
    "index_binary": ("csv", lambda p: p.write_bytes(b"\xff\xfe\x00\x01garbage\n\x00,\xff\n"), "rebuilding"),
    "digests_half": ("digests", _cut, "damaged row(s) in the digest store"),
    "digests_binary": ("digests", lambda p: p.write_bytes(b"\x00\xff" * 300), "digest store"),
}


@pytest.mark.parametrize("name", sorted(DAMAGES))
def test_a_damaged_decoded_cache_is_rebuilt_by_prepare_data(name, tmp_path, capsys, caplog):
    which, damage, says = DAMAGES[name]
    data = make_2024(tmp_path / "d", n_cells=2, size=32)
    assert _run(PREP, data, tmp_path, "--cache", "24") == 0
    first, _ = _decoded(tmp_path)
    array_path, index_path = _cache_files(tmp_path)
    target = {"u8": array_path, "csv": index_path, "digests": next((tmp_path / "cache" / "digests").glob("*.csv"))}
    damage(target[which])
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        assert _run(PREP, data, tmp_path, "--cache", "24") == 0, capsys.readouterr().err
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(m.startswith(f"{target[which]}: ") and says in m for m in warnings), warnings
    again, _ = _decoded(tmp_path)
    np.testing.assert_array_equal(again, first)
    assert "Traceback" not in capsys.readouterr().err and not list(tmp_path.rglob("*.tmp"))


def test_damaged_image_and_embedding_caches_are_recomputed_by_train_cnn(tmp_path, caplog):
    data = make_2024(tmp_path / "d", n_cells=2, size=32)
    assert _run(CNN, data, tmp_path, *CNN_ARGS, "--experiment", "a") == 0
    emb = tmp_path / "cache" / "emb"
    views = {p.stem.rsplit("_", 1)[1]: p for p in emb.rglob("*.npy")}
    before = {view: np.load(path) for view, path in views.items()}
    array_path, _ = _cache_files(tmp_path)
    _cut(array_path)
    _cut(views["v0"])  # np.load: "Failed to read all data"
    views["d4"].with_suffix(".csv").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        assert _run(CNN, data, tmp_path, *CNN_ARGS, "--experiment", "b") == 0
    for path, says in ((array_path, "cut short or damaged), rebuilding the decoded cache"),
                       (views["v0"], "damaged embedding cache (Failed to read all data"),
                       (views["d4"].with_suffix(".csv"), "unreadable embedding index (empty file), recomputing")):
        assert f"{path}: " in caplog.text and says in caplog.text, caplog.text
    for view, path in views.items():
        np.testing.assert_array_equal(np.load(path), before[view])
    runs = tmp_path / "runs"
    pd.testing.assert_frame_equal(pd.read_csv(runs / "a" / "oof.csv"), pd.read_csv(runs / "b" / "oof.csv"))


def _npy(array) -> bytes:
    import io
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


@pytest.mark.parametrize("damage, says", [
    pytest.param(lambda p: p.write_bytes(_npy(np.zeros((3, 3), np.float16))), "not 16 float16 rows", id="other_rows"),
    pytest.param(lambda p: p.write_bytes(_npy(np.zeros((16, 3), np.float32))), "not 16 float16 rows", id="float32"),
    pytest.param(lambda p: p.write_bytes(_npy(np.array([{"x": 1}] * 16, dtype=object))), "damaged embedding cache",
                 id="pickled"),
    pytest.param(lambda p: p.write_bytes(b"not an npy file"), "damaged embedding cache", id="not_npy"),
    pytest.param(lambda p: p.write_bytes(b""), "damaged embedding cache", id="empty"),
    pytest.param(lambda p: p.with_suffix(".csv").write_bytes(b"ID,file\n\xff\xfe,\x00\n1,2,3,4\n"),
                 "unreadable embedding index", id="index_garbage"),
])
def test_every_damaged_embedding_view_is_recomputed(tmp_path, caplog, damage, says):
    from lib.cnn.embedding import compute_embeddings
    from lib.data.dataset import load_dataset

    data, cache = make_2024(tmp_path / "d", n_cells=2, size=32), tmp_path / "cache"
    spec, job = mean_embedder()
    first = compute_embeddings(load_dataset(data), spec, job, cache, views=["v0"])
    damage(next(cache.glob("emb/ds/*_v0.npy")))
    with caplog.at_level(logging.WARNING):
        again = compute_embeddings(load_dataset(data), spec, job, cache, views=["v0"])
    assert "_v0." in caplog.text and says in caplog.text and again.computed == 16, caplog.text
    np.testing.assert_array_equal(again.arrays["v0"], first.arrays["v0"])
    assert compute_embeddings(load_dataset(data), spec, job, cache, views=["v0"]).computed == 0  # whole again


def test_a_damaged_morphometry_cache_is_measured_again_by_train_clinical(tmp_path, caplog):
    data = make_2024(tmp_path / "d", n_cells=2, size=32)
    morpho = ["--feature-set", "clinical+morpho", "--experiment"]
    assert _run(CLIN, data, tmp_path, *morpho, "a") == 0
    path = next((tmp_path / "cache" / "morpho").glob("*.csv"))
    whole = path.read_bytes()
    path.write_bytes(whole[:int(len(whole) * 0.6)])  # inside a row: its measurements cut off
    with caplog.at_level(logging.WARNING):
        assert _run(CLIN, data, tmp_path, *morpho, "b") == 0
    assert f"{path}: 1 damaged row(s) in the morphometry cache" in caplog.text, caplog.text
    assert path.read_bytes() == whole
    runs = tmp_path / "runs"
    pd.testing.assert_frame_equal(pd.read_csv(runs / "a" / "oof.csv"), pd.read_csv(runs / "b" / "oof.csv"))


def _replace_field(path: Path, row: int, column: str, value: str) -> None:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.loc[row, column] = value
    table.to_csv(path, index=False)


@pytest.mark.parametrize("damage, says", [
    pytest.param(lambda p: p.write_bytes(b""), "unreadable morphometry cache (empty file)", id="empty"),
    pytest.param(lambda p: p.write_bytes(b"\x00\xff\n" * 5), "damaged morphometry cache (columns differ", id="binary"),
    pytest.param(lambda p: p.write_bytes(p.read_bytes().split(b"\n", 1)[1]), "damaged morphometry cache (columns differ",
                 id="no_header"),
    pytest.param(lambda p: _replace_field(p, 3, "nc_ratio", "0.5x"), "1 damaged row(s)", id="not_a_number"),
    pytest.param(lambda p: _replace_field(p, 0, "ok", ""), "1 damaged row(s)", id="field_missing"),
    pytest.param(lambda p: _replace_field(p, 5, "size", "99999999999999999999"), "1 damaged row(s)", id="overflow"),
    pytest.param(lambda p: p.write_bytes(p.read_bytes().replace(b"\n", b"\n\n").rstrip(b"\n")[:-3]),
                 "1 damaged row(s)", id="last_row_cut"),
])
def test_every_damaged_morphometry_cache_is_measured_again(tmp_path, caplog, damage, says):
    from lib.data.dataset import load_dataset
    from lib.features.morphometry.cache import cell_measurements

    data, cache = make_2024(tmp_path / "d", n_cells=2, size=32), tmp_path / "cache"
    first = cell_measurements(load_dataset(data), cache, progress=False)
    path = next(cache.glob("morpho/*.csv"))
    whole = path.read_bytes()
    damage(path)
    with caplog.at_level(logging.WARNING):
        again = cell_measurements(load_dataset(data), cache, progress=False)
    assert f"{path}: " in caplog.text and says in caplog.text, caplog.text
    pd.testing.assert_frame_equal(again, first)
    assert path.read_bytes() == whole


# ----------------------------------------------------------------------------- (12) names that are not UTF-8
def test_file_names_that_are_not_utf8_round_trip_through_every_cache(tmp_path, caplog):
    from lib.cnn.embedding import compute_embeddings
    from lib.data.dataset import load_dataset
    from lib.features.morphometry.cache import cell_measurements

    data, cache = make_2024(tmp_path / "d", n_cells=2, size=32), tmp_path / "cache"
    for folder in (data / "trainset" / "P1", data / "testset" / "P7"):  # as an older Windows export names them
        os.rename(os.fsencode(folder / "000000.jpg"), os.fsencode(folder) + b"/cell\xe9.jpg")
    with caplog.at_level(logging.WARNING):
        assert _run(PREP, data, tmp_path, "--cache", "24") == 0
        array_path, index_path = _cache_files(tmp_path)
        built = array_path.stat().st_mtime_ns
        assert b"/trainset/P1/cell\xe9.jpg,cell\xe9.jpg," in index_path.read_bytes()  # the name's own bytes
        assert b"/testset/P7/cell\xe9.jpg," in next(cache.glob("digests/*.csv")).read_bytes()
        assert _run(PREP, data, tmp_path, "--cache", "24") == 0
        assert array_path.stat().st_mtime_ns == built  # read back as the same cells: not rebuilt
        dataset = load_dataset(data)
        first = cell_measurements(dataset, cache, progress=False)
        morpho = next(cache.glob("morpho/*.csv"))
        measured = morpho.stat().st_mtime_ns
        pd.testing.assert_frame_equal(cell_measurements(dataset, cache, progress=False), first)
        assert morpho.stat().st_mtime_ns == measured and "\udce9" in " ".join(first["file"])  # reused
        spec, job = mean_embedder()
        assert compute_embeddings(dataset, spec, job, cache, views=["v0"]).computed == 16
        assert compute_embeddings(dataset, spec, job, cache, views=["v0"]).computed == 0
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]  # nothing stale or damaged
    assert "\udce9" in " ".join(p.name for p in dataset.images["P7"]) and len(dataset.test_inputs()) == 2
