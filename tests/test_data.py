"""Data layer: both layouts load the same patients; every bad-input class gives a one-line error."""
import logging
from pathlib import Path

import pandas as pd
import pytest
from conftest import TEST_ROWS, TRAIN_ROWS, frame, make_2024

from lib.core.errors import DataError
from lib.data.clinical import AGE_REFERENCE_DATE, parse_dob
from lib.data.dataset import load_dataset


def test_both_layouts_give_the_same_patients(data_2024, data_2021):
    a, b = load_dataset(data_2024), load_dataset(data_2021)
    assert (a.layout, b.layout) == ("2024", "2021")
    cols = ["LABEL", "GENDER", "LYMPH_COUNT", "split", "n_images", "age", "log_lymph", "gender_m"]
    pd.testing.assert_frame_equal(a.patients[cols].sort_index(), b.patients[cols].sort_index())
    assert a.fingerprint == b.fingerprint
    assert list(a.train.index) == [r[0] for r in TRAIN_ROWS] and list(a.test.index) == ["P7", "P8"]


def test_clinical_features_parse_both_dob_formats_and_lowercase_gender(data_2024):
    p = load_dataset(data_2024).patients
    assert parse_dob("5/15/1942").isoformat() == "1942-05-15"
    assert parse_dob("19-12-1980").isoformat() == "1980-12-19"
    assert p.loc["P1", "age"] == pytest.approx((AGE_REFERENCE_DATE.year - 1942) - 0.37, abs=0.01)
    assert p.loc["P3", "GENDER"] == "F" and p.loc["P3", "gender_m"] == 0.0
    assert p.loc["P2", "log_lymph"] == pytest.approx(1.6292, abs=1e-3)
    assert p.loc["P1", "n_images"] == 3


def rewrite_train(root: Path, column: str, row: int, value: str) -> None:
    table = frame(TRAIN_ROWS)
    table.loc[row, column] = value
    table.to_csv(root / "trainset" / "trainset_true.csv", index=False)


@pytest.mark.parametrize("column,value,message", [
    ("DOB", "31/31/1990", "unparseable DOB"),
    ("DOB", "", "unparseable DOB"),
    ("LYMPH_COUNT", "0", "not positive"),
    ("LYMPH_COUNT", "-3", "not positive"),
    ("LYMPH_COUNT", "", "missing or not positive"),
    ("LABEL", "2", "not one of 0, 1, -1"),
    ("LABEL", "-1", "train patient has no label"),
    ("GENDER", "X", "not M or F"),
    ("ID", "P2", "duplicate patient ID"),
])
def test_bad_clinical_values(data_2024, column, value, message):
    rewrite_train(data_2024, column, 0, value)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(data_2024)
    assert "trainset_true.csv" in str(err.value) and "\n" not in str(err.value)


def test_test_patient_with_a_label(data_2024):
    table = frame(TEST_ROWS)
    table.loc[0, "LABEL"] = "1"
    table.to_csv(data_2024 / "testset" / "testset_data.csv", index=False)
    with pytest.raises(DataError, match="testset_data.csv: patient P7: test patient has a label"):
        load_dataset(data_2024)


def test_missing_csv_and_missing_column(data_2024, tmp_path):
    (data_2024 / "testset" / "testset_data.csv").unlink()
    with pytest.raises(DataError, match="testset_data.csv: file not found"):
        load_dataset(data_2024)
    with pytest.raises(DataError, match="nor clinical_annotation.csv"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="data directory not found"):
        load_dataset(tmp_path / "nowhere")
    frame(TRAIN_ROWS).drop(columns="DOB").to_csv(data_2024 / "trainset" / "trainset_true.csv", index=False)
    with pytest.raises(DataError, match="trainset_true.csv: missing column.*DOB"):
        load_dataset(data_2024)


def test_patient_without_folder_or_images(data_2024):
    for f in (data_2024 / "trainset" / "P2").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"trainset/P2: no .jpg images for patient P2"):
        load_dataset(data_2024)
    (data_2024 / "trainset" / "P2").rmdir()
    with pytest.raises(DataError, match=r"trainset/P2: image folder of train patient P2 not found"):
        load_dataset(data_2024)


def test_bad_jpgs_are_skipped_with_a_warning_then_empty_bag_fails(data_2024, caplog):
    folder = data_2024 / "trainset" / "P1"
    (folder / "000000.jpg").write_bytes(b"")
    (folder / "000001.jpg").write_bytes((folder / "000001.jpg").read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(data_2024)
    assert ds.patients.loc["P1", "n_images"] == 1
    assert "000000.jpg: zero-byte file" in caplog.text and "000001.jpg: truncated JPEG" in caplog.text
    (folder / "000002.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="every image of patient P1 is unreadable"):
        load_dataset(data_2024)


def test_odd_folder_entries_named_like_images_are_skipped_with_a_warning(data_2024, caplog):
    import os
    folder = data_2024 / "trainset" / "P1"
    (folder / "folder.jpg").mkdir()                       # a directory named like an image
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")   # a symlink loop (ELOOP)
    (folder / "gone.jpg").symlink_to(folder / "missing")    # a broken link
    os.mkfifo(folder / "pipe.jpg")                          # opening it would block for ever
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(data_2024)
    assert ds.patients.loc["P1", "n_images"] == 3 and len(ds.test_inputs()) == 2
    for name, problem in (("folder.jpg", "not a regular file"), ("pipe.jpg", "not a regular file"),
                          ("loop.jpg", "unreadable (Too many levels of symbolic links)"),
                          ("gone.jpg", "unreadable (No such file or directory)")):
        assert f"{name}: {problem}" in caplog.text, caplog.text


def test_a_different_dataset_has_a_different_name(data_2024, tmp_path):
    other = make_2024(tmp_path / "comp2024b", train=TRAIN_ROWS[:-1] + [("P9", "0", "F", "1/1/1970", "5")])
    assert load_dataset(data_2024).name != load_dataset(other).name
