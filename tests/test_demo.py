"""Tests for the synthetic DEMO competition generator (lib/data/demo/)."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from lib.core.errors import DataError
from lib.data.clinical import age_years, normalise_gender, parse_dob
from lib.data.demo import build as demo_build
from lib.data.demo.cells import render_cell
from lib.data.demo.cohort import sample_patients

TINY = {"n_train": 6, "n_test": 3, "cells": (16, 18), "seed": 0}
HEADER = "ID,LABEL,GENDER,DOB,LYMPH_COUNT"
SLASH_DOB = re.compile(r"^\d{1,2}/\d{1,2}/\d{4}$")
DASH_DOB = re.compile(r"^\d{2}-\d{2}-\d{4}$")


def _rows(path: Path) -> list[dict]:
    """CSV rows as dicts."""
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _tree_hash(root: Path) -> str:
    """SHA-256 over relative paths and bytes of every file under root."""
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _dark_area(img: np.ndarray) -> int:
    """Pixels dark enough to be nucleus (B+G+R < 350)."""
    return int((img.astype(np.int32).sum(axis=2) < 350).sum())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny generated demo directory shared by the read-only tests."""
    return demo_build.generate_demo(tmp_path_factory.mktemp("a") / "demo", progress=False, **TINY)


def test_layout_and_columns(tiny: Path) -> None:
    train_csv, test_csv = tiny / "trainset" / "trainset_true.csv", tiny / "testset" / "testset_data.csv"
    assert train_csv.read_text().splitlines()[0] == HEADER
    assert test_csv.read_text().splitlines()[0] == HEADER
    train, test = _rows(train_csv), _rows(test_csv)
    assert len(train) == 6 and len(test) == 3
    assert {r["LABEL"] for r in train} == {"0", "1"}
    assert {r["LABEL"] for r in test} == {"-1"}
    ids = [r["ID"] for r in train + test]
    assert all(re.fullmatch(r"P\d+", i) for i in ids) and len(set(ids)) == len(ids)
    for split, rows in (("trainset", train), ("testset", test)):
        assert sorted(p.name for p in (tiny / split).iterdir() if p.is_dir()) == sorted(
            r["ID"] for r in rows)
        for r in rows:
            float(r["LYMPH_COUNT"])
            names = sorted(p.name for p in (tiny / split / r["ID"]).iterdir())
            assert 16 <= len(names) <= 18
            assert names == [f"{i:06d}.jpg" for i in range(len(names))]


def test_truth_file_matches_test_ids(tiny: Path) -> None:
    truth = _rows(tiny / demo_build.TRUTH_NAME)
    test = _rows(tiny / "testset" / "testset_data.csv")
    assert [r["ID"] for r in truth] == [r["ID"] for r in test]
    assert {r["LABEL"] for r in truth} <= {"0", "1"}


def test_images_are_224_rgb(tiny: Path) -> None:
    files = sorted(tiny.rglob("*.jpg"))
    assert len(files) >= 9 * 16
    for f in files[::7]:
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        assert img is not None and img.shape == (224, 224, 3) and img.dtype == np.uint8
        assert 15 < img.std() and 150 < img.mean() < 235  # textured, pale smear


def test_deterministic_and_seed_dependent(tiny: Path, tmp_path: Path) -> None:
    again = demo_build.generate_demo(tmp_path / "demo", progress=False, **TINY)
    for rel in ("trainset/trainset_true.csv", "testset/testset_data.csv", demo_build.TRUTH_NAME):
        assert (tiny / rel).read_bytes() == (again / rel).read_bytes()
    assert _tree_hash(tiny) == _tree_hash(again)
    other = sample_patients(6, 3, (16, 18), seed=1)
    assert [s.id for s in other] != [s.id for s in sample_patients(6, 3, (16, 18), seed=0)]


def test_dob_and_gender_quirks() -> None:
    specs = sample_patients(200, 60, seed=3)
    for split in ("train", "test"):
        dobs = [s.dob for s in specs if s.split == split]
        assert all(SLASH_DOB.match(d) or DASH_DOB.match(d) for d in dobs)
        assert any(DASH_DOB.match(d) for d in dobs) and any(SLASH_DOB.match(d) for d in dobs)
    assert {s.gender for s in specs} == {"M", "F", "f"}
    assert {normalise_gender(s.gender) for s in specs} == {"M", "F"}
    ages = [age_years(parse_dob(s.dob)) for s in specs]
    assert 19 < min(ages) and max(ages) < 97


def test_tiny_set_still_has_dash_dob(tiny: Path) -> None:
    dobs = [r["DOB"] for r in _rows(tiny / "trainset" / "trainset_true.csv")]
    assert any(DASH_DOB.match(d) for d in dobs)


def test_clinical_signal_direction() -> None:
    specs = sample_patients(300, 1, seed=0)
    age = {lab: np.mean([age_years(parse_dob(s.dob)) for s in specs if s.label == lab])
           for lab in (0, 1)}
    lymph = {lab: np.median([s.lymph_count for s in specs if s.label == lab]) for lab in (0, 1)}
    assert age[1] > age[0] + 5 and lymph[1] > lymph[0]


def test_atypical_nuclei_larger_than_typical_and_reactive() -> None:
    rng = np.random.default_rng(0)
    area = {k: np.mean([_dark_area(render_cell(rng, k)) for _ in range(12)])
            for k in ("typical", "reactive", "atypical")}
    assert area["atypical"] > 1.3 * area["typical"]
    assert area["atypical"] > 1.1 * area["reactive"]


def test_tumoral_patients_have_more_atypical_cells() -> None:
    specs = sample_patients(40, 1, seed=0)
    tum = [s.atypical_share for s in specs if s.label == 1]
    rea = [s.atypical_share for s in specs if s.label == 0]
    assert min(tum) > max(rea)


def test_rerun_on_complete_dir_does_not_regenerate(tiny: Path) -> None:
    watched = [tiny / demo_build.MARKER_NAME, tiny / "trainset" / "trainset_true.csv"]
    before = [p.stat().st_mtime_ns for p in watched]
    assert demo_build.generate_demo(tiny, progress=False, **TINY) == tiny
    assert [p.stat().st_mtime_ns for p in watched] == before


def test_changed_parameters_regenerate(tmp_path: Path) -> None:
    root = demo_build.generate_demo(tmp_path / "d", 2, 1, (1, 2), seed=0, progress=False)
    demo_build.generate_demo(root, 3, 1, (1, 2), seed=0, progress=False)
    assert json.loads((root / demo_build.MARKER_NAME).read_text())["n_train"] == 3
    assert len(_rows(root / "trainset" / "trainset_true.csv")) == 3
    assert not (tmp_path / "d.tmp").exists() and not (tmp_path / "d.old").exists()


def test_killed_build_leaves_no_complete_looking_root(tmp_path: Path, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_build, "_write_tables", boom)
    with pytest.raises(KeyboardInterrupt):
        demo_build.generate_demo(tmp_path / "d", 2, 1, (1, 2), progress=False)
    assert not (tmp_path / "d").exists()
    monkeypatch.undo()
    root = demo_build.generate_demo(tmp_path / "d", 2, 1, (1, 2), progress=False)
    assert (root / demo_build.MARKER_NAME).exists() and not (tmp_path / "d.tmp").exists()


def test_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a demo dataset"):
        demo_build.generate_demo(tmp_path / "d", 2, 1, (1, 2), progress=False)
    assert (tmp_path / "d" / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("kwargs", [
    {"n_train": 1}, {"n_test": 0}, {"cells": (5, 2)}, {"cells": (0, 3)}, {"seed": -1}])
def test_bad_parameters_raise(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(DataError):
        demo_build.generate_demo(tmp_path / "d", **kwargs)
