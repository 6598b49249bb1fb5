"""The embedded demo data: real layout and quirks, deterministic, learnable, written once."""
import hashlib

import cv2
import numpy as np
import pandas as pd
import pytest

from lib.data import load_dataset
from lib.demo import generate_demo


def digest(root) -> str:
    """Hash of every file (CSV and JPEG) under a directory."""
    h = hashlib.sha1()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return generate_demo(tmp_path_factory.mktemp("d") / "demo", n_train=12, n_test=3, cells=(16, 18),
                         progress=False)


def test_layout_columns_and_quirks(demo):
    train = pd.read_csv(demo / "trainset" / "trainset_true.csv", dtype=str)
    test = pd.read_csv(demo / "testset" / "testset_data.csv", dtype=str)
    assert list(train.columns) == list(test.columns) == ["ID", "LABEL", "GENDER", "DOB", "LYMPH_COUNT"]
    assert set(test["LABEL"]) == {"-1"} and set(train["LABEL"]) == {"0", "1"}
    assert set(pd.read_csv(demo / "demo_test_truth.csv", dtype=str)["ID"]) == set(test["ID"])
    ds = load_dataset(demo)  # the real loader accepts it
    assert len(ds.train) == 12 and len(ds.test) == 3 and ds.patients["n_images"].between(16, 18).all()
    img = cv2.imread(str(ds.images[ds.train.index[0]][0]))
    assert img.shape == (224, 224, 3) and (demo / "trainset" / ds.train.index[0] / "000000.jpg").exists()


def test_both_dob_formats_and_lowercase_gender_occur(tmp_path):
    rows = pd.read_csv(generate_demo(tmp_path / "big", n_train=60, n_test=0, cells=(1, 1), progress=False)
                       / "trainset" / "trainset_true.csv", dtype=str)
    assert rows["DOB"].str.contains("/").any() and rows["DOB"].str.contains("-").any()
    assert rows["GENDER"].isin(["m", "f"]).any()


def test_deterministic_and_not_regenerated(demo, tmp_path):
    again = generate_demo(tmp_path / "demo", n_train=12, n_test=3, cells=(16, 18), progress=False)
    assert digest(again) == digest(demo)
    marker = demo / ".demo_complete"
    mtime = marker.stat().st_mtime_ns
    generate_demo(demo, n_train=12, n_test=3, cells=(16, 18), progress=False)
    assert marker.stat().st_mtime_ns == mtime


def test_tumoral_patients_have_larger_nuclei(demo):
    ds = load_dataset(demo)

    def dark_area(pid: str) -> float:
        return float(np.mean([(cv2.imread(str(p))[..., 1] < 110).sum() for p in ds.images[pid]]))

    area = ds.train.index.to_series().map(dark_area)
    by_class = area.groupby(ds.train["LABEL"]).mean()
    assert by_class[1] > 1.1 * by_class[0]
