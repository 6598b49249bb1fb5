"""Folds: seeded, stratified by patient, written once, checked on every read."""
import pandas as pd
import pytest
from conftest import make_2024

from lib.core.errors import DataError
from lib.data.dataset import load_dataset
from lib.data.folds import folds_path, load_folds, make_folds

TRAIN = [(f"P{100 + i}", str(int(i % 3 != 0)), "M", "1/1/1950", str(4 + i)) for i in range(30)]


@pytest.fixture
def dataset(tmp_path):
    return load_dataset(make_2024(tmp_path / "d", train=TRAIN, n_cells=1, size=16))


def test_folds_are_seeded_stratified_and_cover_every_patient_once(dataset):
    a, b, c = make_folds(dataset, 5, 1), make_folds(dataset, 5, 1), make_folds(dataset, 5, 2)
    pd.testing.assert_frame_equal(a, b)
    assert not a["fold"].equals(c["fold"])
    assert sorted(a["ID"]) == sorted(dataset.train.index) and not a["ID"].duplicated().any()
    per_fold = a.assign(y=dataset.patients.loc[a["ID"], "LABEL"].to_numpy()).groupby("fold")["y"]
    assert per_fold.sum().tolist() == [4] * 5 and per_fold.size().tolist() == [6] * 5


def test_load_folds_writes_once_with_counts_then_reads(dataset, tmp_path):
    folds = load_folds(dataset, 5, 42, folds_dir=tmp_path / "folds")
    path = folds_path(dataset, 5, 42, tmp_path / "folds")
    assert path.exists() and path.with_name(path.stem + "_counts.csv").exists()
    assert dataset.name in path.name
    counts = pd.read_csv(path.with_name(path.stem + "_counts.csv"))
    assert list(counts.columns) == ["fold", "reactive", "tumoral", "total"] and counts["total"].sum() == 30
    swapped = folds.copy()
    swapped.loc[0, "fold"], swapped.loc[1, "fold"] = folds.loc[1, "fold"], folds.loc[0, "fold"]
    swapped.to_csv(path, index=False)  # the file on disk, not a re-split, is what every script reads
    pd.testing.assert_frame_equal(load_folds(dataset, 5, 42, folds_dir=tmp_path / "folds"), swapped)


def test_a_fold_file_for_other_patients_or_folds_is_refused(dataset, tmp_path):
    path = folds_path(dataset, 5, 42, tmp_path)
    make_folds(dataset, 5, 42).iloc[1:].to_csv(path, index=False)
    with pytest.raises(DataError, match="patient IDs differ"):
        load_folds(dataset, 5, 42, folds_dir=tmp_path)
    make_folds(dataset, 5, 42).assign(fold=0).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"folds are not 0..4"):
        load_folds(dataset, 5, 42, folds_dir=tmp_path)
