"""Embedded demo data: a small, deterministic competition directory in the real 2024 layout.

Cells are drawn with OpenCV (pink textured background, red cells, a lymphocyte with pale cytoplasm
and a dark purple nucleus with chromatin texture). Tumoral patients carry a share of atypical cells
(larger, irregular, coarser nuclei) and are older with higher counts; neither signal alone is perfect,
so the demo shows images adding to clinical data. ``demo_test_truth.csv`` holds the test labels so the
demo can score its own submission (demo only: real test sets have no truth).
"""
import json
import shutil
from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lib.clinical import AGE_REFERENCE_DATE

DEMO_DIR_NAME = "demo"
MARKER = ".demo_complete"
SIZE = 224


def generate_demo(root: Path, n_train: int = 30, n_test: int = 10, cells: tuple[int, int] = (16, 40),
                  seed: int = 0, progress: bool = True) -> Path:
    """Write the demo directory (atomically) unless a complete one with these parameters exists."""
    root = Path(root)
    params = {"n_train": n_train, "n_test": n_test, "cells": list(cells), "seed": seed, "version": 1}
    marker = root / MARKER
    if marker.exists() and json.loads(marker.read_text()) == params:
        return root
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _write(tmp, params, progress)
    (tmp / MARKER).write_text(json.dumps(params))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root


def _write(root: Path, params: dict, progress: bool) -> None:
    """Clinical CSVs, the demo truth and every patient's images under ``root``."""
    rng = np.random.default_rng(params["seed"])
    patients = make_patients(rng, params["n_train"], params["n_test"])
    for split, folder, csv in (("train", "trainset", "trainset_true.csv"), ("test", "testset", "testset_data.csv")):
        rows = patients[patients["split"] == split].copy()
        rows["LABEL"] = rows["LABEL"] if split == "train" else -1
        (root / folder).mkdir(parents=True)
        rows[["ID", "LABEL", "GENDER", "DOB", "LYMPH_COUNT"]].to_csv(root / folder / csv, index=False)
    truth = patients[patients["split"] == "test"][["ID", "LABEL"]]
    truth.to_csv(root / "demo_test_truth.csv", index=False)
    for row in tqdm(patients.itertuples(), total=len(patients), desc="demo data", disable=not progress):
        folder = root / ("trainset" if row.split == "train" else "testset") / row.ID
        _write_bag(folder, rng, row.LABEL, params["cells"])


def make_patients(rng: np.random.Generator, n_train: int, n_test: int) -> pd.DataFrame:
    """Clinical rows (shuffled) with a two-thirds tumoral mix and the real CSV quirks."""
    n = n_train + n_test
    ids = [f"P{i}" for i in rng.choice(np.arange(1, 400), n, replace=False)]
    n_tumoral = round(2 * n_train / 3)
    labels = np.r_[np.ones(n_tumoral, int), np.zeros(n_train - n_tumoral, int), rng.random(n_test) < 2 / 3]
    rows = [_clinical(rng, pid, int(y), "train" if i < n_train else "test") for i, (pid, y) in
            enumerate(zip(ids, labels))]
    table = pd.DataFrame(rows)
    return pd.concat([table[table.split == "train"].sample(frac=1, random_state=1),
                      table[table.split == "test"]], ignore_index=True)


def _clinical(rng: np.random.Generator, pid: str, label: int, split: str) -> dict:
    """Age, lymphocyte count, gender and DOB string of one patient."""
    if label:
        age, count = np.clip(rng.normal(72, 10), 40, 95), np.exp(rng.normal(np.log(14), 0.8))
    else:
        age, count = rng.uniform(20, 80), np.exp(rng.normal(np.log(5.5), 0.25))
    dob = AGE_REFERENCE_DATE - timedelta(days=int(age * 365.25))
    dob_text = f"{dob.day:02d}-{dob.month:02d}-{dob.year}" if rng.random() < 0.25 else f"{dob.month}/{dob.day}/{dob.year}"
    gender = rng.choice(["M", "F"])
    gender = gender.lower() if rng.random() < 0.08 else gender
    return {"ID": pid, "LABEL": label, "GENDER": gender, "DOB": dob_text,
            "LYMPH_COUNT": round(float(np.clip(count, 4.1, 250)), 2), "split": split}


def _write_bag(folder: Path, rng: np.random.Generator, label: int, cells: tuple[int, int]) -> None:
    """16-40 cell JPEGs for one patient; tumoral bags carry 15-45% atypical cells, reactive 0-15%."""
    folder.mkdir(parents=True)
    n = int(rng.integers(cells[0], cells[1] + 1))
    share = rng.uniform(0.15, 0.45) if label else rng.uniform(0.0, 0.15)
    for k in range(n):
        img = draw_cell(rng, atypical=bool(rng.random() < share))
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        (folder / f"{k:06d}.jpg").write_bytes(data.tobytes())


def draw_cell(rng: np.random.Generator, atypical: bool) -> np.ndarray:
    """One 224x224 RGB smear image with a lymphocyte near the centre."""
    img = _background(rng)
    centre = np.array([SIZE / 2, SIZE / 2]) + rng.normal(0, 5, 2)
    nucleus_r = rng.uniform(29, 40) if atypical else rng.uniform(20, 30)
    cyto_r = nucleus_r + rng.uniform(5, 14)
    cv2.circle(img, _pt(centre + rng.normal(0, 2, 2)), int(cyto_r), _jitter(rng, (185, 180, 218), 8), -1, cv2.LINE_AA)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cv2.fillPoly(mask, [_blob(rng, centre, nucleus_r, irregular=0.22 if atypical else 0.06)], 1)
    half = rng.standard_normal((SIZE // 2, SIZE // 2), dtype=np.float32)
    texture = cv2.resize(cv2.GaussianBlur(half, (0, 0), 1.3 if atypical else 0.6), (SIZE, SIZE))
    strength = 30 if atypical else 16
    nucleus = np.float32(_jitter(rng, (90, 50, 140), 10))[None, None] + strength * texture[..., None]
    img = np.where(mask[..., None] == 1, nucleus, img.astype(np.float32))
    img = cv2.GaussianBlur(img, (3, 3), 0.8) + 3 * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _background(rng: np.random.Generator) -> np.ndarray:
    """Pink textured background with a few pale red cells, some cut by the border."""
    base = np.float32(_jitter(rng, (236, 222, 205), 3))
    low = cv2.resize(rng.standard_normal((8, 8), dtype=np.float32), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    img = (base[None, None] + 5 * low[..., None]).clip(0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 8))):
        angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(75, 130)
        c = SIZE / 2 + dist * np.array([np.cos(angle), np.sin(angle)])
        r = int(rng.uniform(22, 32))
        cv2.circle(img, _pt(c), r, _jitter(rng, (200, 178, 200), 6), -1, cv2.LINE_AA)
        cv2.circle(img, _pt(c), r // 2, _jitter(rng, (215, 195, 210), 5), -1, cv2.LINE_AA)
    return img


def _blob(rng: np.random.Generator, centre: np.ndarray, radius: float, irregular: float) -> np.ndarray:
    """Closed polygon around ``centre``: a smooth radial wobble (and a cleft when irregular)."""
    theta = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    wobble = sum(rng.normal(0, irregular / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    if irregular > 0.1:
        wobble -= 0.35 * np.exp(-((theta - rng.uniform(0, 2 * np.pi) + np.pi) % (2 * np.pi) - np.pi) ** 2 / 0.05)
    r = radius * (1 + wobble) * np.array([1.0, rng.uniform(0.8, 1.0)])[:, None]
    pts = centre[:, None] + r * np.stack([np.cos(theta), np.sin(theta)])
    return np.round(pts.T).astype(np.int32)


def _jitter(rng: np.random.Generator, colour: tuple, spread: float) -> tuple:
    """A colour with a little random variation per channel."""
    return tuple(float(np.clip(c + rng.normal(0, spread), 0, 255)) for c in colour)


def _pt(xy: np.ndarray) -> tuple[int, int]:
    return int(round(xy[0])), int(round(xy[1]))
