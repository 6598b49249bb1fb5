"""Shared pytest fixtures: tiny synthetic competition directories in both real layouts."""
import os
import sys
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # ./run_tests.sh runs two pytest-xdist workers on the 2 cores: one
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # intra-op thread each (their stage subprocesses inherit it)

import cv2
import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
WATCHED = ("folds", "cache", "runs", "data", "submission.csv", "submission_proba.csv")  # tests never write here


def _repo_state() -> dict[str, int]:
    """Every file under the watched repository paths (git-ignored ones too) with its modification time."""
    files = {}
    for name in WATCHED:
        root = REPO / name
        for path in ([root] if root.is_file() else root.rglob("*") if root.is_dir() else []):
            if path.is_file():
                files[str(path.relative_to(REPO))] = path.stat().st_mtime_ns
    return files


@pytest.fixture(scope="session", autouse=True)
def repository_untouched():
    """The suite writes only under tmp paths: no fold file, cache, run or submission appears in the repository."""
    before = _repo_state()
    yield
    after = _repo_state()
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"tests wrote into the repository: {', '.join(changed[:10])}"

DEMO_PIPELINE_FILES = ("test_pipeline.py", "test_predict.py", "test_safe_loading.py", "test_overnight.py",
                       "test_bad_runs.py")  # the tests of demo_pipeline


def _uses_demo_pipeline(nodeid: str) -> bool:
    return nodeid.split("::")[0].rsplit("/", 1)[-1] in DEMO_PIPELINE_FILES


def pytest_collection_modifyitems(items):
    """The demo-pipeline files run first (the longest unit of work under pytest-xdist), and no other file may use the
    session's demo pipeline: under xdist each worker would train it again."""
    strays = [i.nodeid for i in items if "demo_pipeline" in getattr(i, "fixturenames", ()) and not _uses_demo_pipeline(i.nodeid)]
    assert not strays, f"add their files to DEMO_PIPELINE_FILES in tests/conftest.py: {strays}"
    items.sort(key=lambda item: not _uses_demo_pipeline(item.nodeid))  # stable: the collection order otherwise


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """./run_tests.sh runs pytest-xdist workers: every test is its own unit of work except the demo-pipeline files,
    one unit on one worker, so the session's pipeline is trained once. (xdist's own ``--dist loadgroup`` does not
    group under pytest 9: it renames ``item._nodeid``, which pytest 9 no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class DemoPipelineTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "demo_pipeline" if _uses_demo_pipeline(nodeid) else nodeid
    return DemoPipelineTogether(config, log)


TRAIN_ROWS = [  # ID, LABEL, GENDER, DOB, LYMPH_COUNT: both DOB formats, a lowercase gender
    ("P1", "1", "M", "5/15/1942", "12.8"), ("P2", "0", "F", "19-12-1980", "5.1"),
    ("P3", "1", "f", "3/5/1931", "40.2"), ("P4", "0", "M", "01-02-1964", "6.0"),
    ("P5", "1", "F", "11/3/1950", "9.9"), ("P6", "0", "F", "6/19/1975", "4.4"),
]
TEST_ROWS = [("P7", "-1", "M", "1/17/1946", "5.76"), ("P8", "-1", "F", "20-05-1997", "32.0")]


def write_jpg(path: Path, seed: int, size: int = 64) -> None:
    """A small random JPEG."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def write_images(root: Path, rows, split_dir: str, n_cells: int = 3, size: int = 64) -> None:
    """``n_cells`` JPEGs per patient under ``root/split_dir/<ID>/``."""
    for i, row in enumerate(rows):
        for k in range(n_cells):
            write_jpg(root / split_dir / row[0] / f"{k:06d}.jpg", seed=100 * i + k, size=size)


def frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["ID", "LABEL", "GENDER", "DOB", "LYMPH_COUNT"])


def make_2024(root: Path, train=TRAIN_ROWS, test=TEST_ROWS, n_cells: int = 3, size: int = 64) -> Path:
    """A competition directory in the 2024 layout."""
    (root / "trainset").mkdir(parents=True, exist_ok=True)
    (root / "testset").mkdir(parents=True, exist_ok=True)
    frame(train).to_csv(root / "trainset" / "trainset_true.csv", index=False)
    frame(test).to_csv(root / "testset" / "testset_data.csv", index=False)
    write_images(root, train, "trainset", n_cells, size)
    write_images(root, test, "testset", n_cells, size)
    return root


def make_2021(root: Path) -> Path:
    """A competition directory in the 2021 layout (one annotation CSV with an unnamed index)."""
    root.mkdir(parents=True, exist_ok=True)
    frame(TRAIN_ROWS + TEST_ROWS).to_csv(root / "clinical_annotation.csv", index=True)
    write_images(root, TRAIN_ROWS, "trainset")
    write_images(root, TEST_ROWS, "testset")
    return root


def cohort_rows(n_train: int = 30, n_test: int = 6, seed: int = 0, tumoral_every: tuple[int, int] = (3, 5)):
    """Clinical rows where tumoral patients are older with a higher lymphocyte count (learnable, noisy).

    Patient i is tumoral when ``i % b < a`` for ``tumoral_every = (a, b)`` (default 60 % tumoral).
    """
    a, b = tumoral_every
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_train + n_test):
        label = int(i % b < a)
        count = np.exp(rng.normal(2.8 if label else 1.7, 0.5))
        year = int(rng.normal(1945 if label else 1965, 10))
        rows.append((f"P{i}", str(label) if i < n_train else "-1", "MF"[i % 2], f"{1 + i % 12}/{1 + i % 28}/{year}",
                     f"{count:.2f}"))
    return rows[:n_train], rows[n_train:]


@pytest.fixture
def data_2024(tmp_path: Path) -> Path:
    return make_2024(tmp_path / "comp2024")


@pytest.fixture
def data_2021(tmp_path: Path) -> Path:
    return make_2021(tmp_path / "comp2021")


TINY_CNN = {"regime": "embed", "backbone": "test_efficientnet", "weights": "none", "crop": 32,
            "input_size": "crop", "aug": "light", "views": 1, "tta": 1, "head": "mean", "bag_size": 4,
            "epochs": 2, "lr": 0.001, "weight_decay": 0.01, "batch_patients": 8, "pca": 0,
            "clinical_fusion": True, "device": "cpu", "amp": "off", "embed_batch": 64}


@pytest.fixture(scope="session")
def demo_pipeline(tmp_path_factory):
    """The main job once on a small demo directory (tiny CNN): (data dir, runs dir, submission, stage seconds).

    The stages run in this process (``lib.core.cli.run_in_process``): the same scripts' ``main(argv)`` without an
    interpreter start and a torch import each; tests/test_imports.py and the SIGTERM test run real processes."""
    import yaml

    import pipeline
    from lib.core.cli import run_in_process
    from lib.data.demo.build import generate_demo
    root = tmp_path_factory.mktemp("pipeline")
    data = generate_demo(root / "demo", n_train=18, n_test=4, cells=(16, 18), seed=3, progress=False)
    config = root / "cnn_tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_CNN))
    out = root / "submission.csv"
    seconds = pipeline.main(["--data-dir", str(data), "--runs-dir", str(root / "runs"), "--out", str(out),
                             "--cnn-config", str(config), "--trials", "8", "--folds-dir", str(root / "folds"),
                             "--cache-dir", str(root / "cache")], runner=run_in_process)
    return data, root / "runs", out, seconds


def mean_embedder():
    """An embedding spec and job whose 'backbone' is the mean colour of each cell (fast, no weights)."""
    import torch

    from lib.cnn.embedding import EmbedJob, EmbedSpec

    class Mean(torch.nn.Module):
        num_features = 3

        def forward(self, x):
            return x.mean(dim=(2, 3))

    spec = EmbedSpec("ds", "mean", "w", 24, 24, "light", 0, 0, "fp32", "c")
    cfg = {"input_size": (3, 24, 24), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear",
           "crop_pct": 1.0}
    return spec, EmbedJob(Mean(), cfg, torch.device("cpu"), None, 8, progress=False)
