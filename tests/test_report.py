"""report.py on fake runs of a tiny synthetic competition: every file written, HTML links, montage choice,
a blend without a CNN run, refusals."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import make_2024

import report
from lib.core.errors import DataError
from lib.core.runs import fold_test_table, write_predictions
from lib.data.dataset import load_dataset
from lib.fusion.fuse import FusionParams, fuse
from lib.fusion.runs import load_runs
from lib.stages.ensemble import write_outputs
from lib.stages.report.montage import choose_patients, extreme_cells

N_TRAIN, N_TEST, N_FOLDS, N_CELLS = 12, 3, 3, 5
QUALITY = ["roc.png", "confusion.png", "folds.png", "calibration.png"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """12 train patients (6 reactive) and 3 test patients, 5 cells of 32x32 each."""
    root = tmp_path_factory.mktemp("report") / "comp"
    train = [(f"P{i}", str(i % 2), "MF"[i % 2], f"{1 + i}/15/19{40 + i}", f"{4 + i}.5") for i in range(N_TRAIN)]
    test = [(f"T{i}", "-1", "F", f"{1 + i}/3/1950", "7.0") for i in range(N_TEST)]
    return make_2024(root, train=train, test=test, n_cells=N_CELLS, size=32)


def oof_table(probas: np.ndarray) -> pd.DataFrame:
    """OOF table of the 12 train patients: label i % 2, two patients of each class per fold."""
    ids = np.arange(N_TRAIN)
    return pd.DataFrame({"ID": [f"P{i}" for i in ids], "fold": (ids // 2) % N_FOLDS, "target": ids % 2,
                         "proba": probas})


def make_run(root: Path, name: str, data_dir: Path, probas: np.ndarray, cells: bool) -> Path:
    """A finished model run: config.yaml, oof.csv, test.csv and optionally cells.csv (paths as a CNN writes them)."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    dataset = load_dataset(data_dir)
    config = {"data_dir": str(data_dir), "experiment": name, "dataset_name": dataset.name,
              "test_inputs": dataset.test_inputs()}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    test_ids = [f"T{i}" for i in range(N_TEST)]
    test = fold_test_table({k: pd.Series(0.3 + 0.1 * k, index=test_ids) for k in range(N_FOLDS)})
    write_predictions(run_dir, oof_table(probas), test)
    if cells:
        rng = np.random.default_rng(0)
        rows = [(pid, split, f"elsewhere/{path.parent.parent.name}/{pid}/{path.name}", w)
                for pid, split in dataset.patients["split"].items() for path, w in
                zip(dataset.images[pid], rng.dirichlet(np.ones(N_CELLS)))]
        pd.DataFrame(rows, columns=["ID", "split", "path", "weight"]).to_csv(run_dir / "cells.csv", index=False)
    return run_dir


def make_ensemble(root: Path, run_dirs: list[Path], threshold: float = 0.5) -> Path:
    """An ensemble run written by lib.stages.ensemble's own writer (best_params.json, metrics.json, oof.csv)."""
    runs = load_runs(run_dirs)
    best = FusionParams(weights={n: 1.0 / len(runs.names) for n in runs.names}, method="prob_mean",
                        threshold=threshold)
    fused = fuse(runs.oof, best, reference=runs.oof)
    run_dir = root / "ensemble"
    run_dir.mkdir()
    write_outputs(runs, run_dir, best, fused, {"nested": {"ba_mean": 0.7, "ba_std": 0.1}}, "sqlite:///x")
    return run_dir


# clinical-like scores with two confident errors (P0 reactive at 0.9, P11 tumoral at 0.1) and a CNN alike
CLINICAL = np.array([0.9, 0.8, 0.2, 0.7, 0.3, 0.6, 0.1, 0.95, 0.4, 0.85, 0.25, 0.1])
CNN = np.array([0.8, 0.9, 0.1, 0.6, 0.2, 0.7, 0.3, 0.9, 0.35, 0.8, 0.2, 0.2])


def run_report(tmp_path: Path, data_dir: Path, with_cells: bool, *extra: str) -> tuple[Path, str]:
    """Fake clinical + CNN runs, their ensemble, then report.py; returns the output folder and index.html text."""
    runs = tmp_path / "runs"
    dirs = [make_run(runs, "clinical", data_dir, CLINICAL, cells=False),
            make_run(runs, "cnn", data_dir, CNN, cells=with_cells)]
    index = report.main(["--ensemble", str(make_ensemble(runs, dirs)), "--no-progress", *extra])
    return index.parent, index.read_text()


def pngs_linked(html: str) -> list[str]:
    """Image files the page shows."""
    return re.findall(r'<img src="([^"]+)"', html)


def test_report_writes_every_file(data_dir, tmp_path):
    out, html = run_report(tmp_path, data_dir, with_cells=True)
    assert out == tmp_path / "runs" / "ensemble" / "report"
    montages = sorted(p.name for p in out.glob("patient_*.png"))
    # most confident correct tumoral P7 (0.925), reactive P2 (0.15), misclassified P0 and P11
    assert montages == ["patient_P0.png", "patient_P11.png", "patient_P2.png", "patient_P7.png"]
    scored = sorted(p.name for p in out.glob("scored_*.png"))  # the submitted test patients' section
    assert "scored_distribution.png" in scored and len(scored) > 1
    for name in QUALITY + montages + scored:
        assert (out / name).stat().st_size > 1000, name
    assert sorted(pngs_linked(html)) == sorted(QUALITY + montages + scored)
    assert "The submitted test patients" in html and "closest to the threshold" in html
    assert all(not Path(src).is_absolute() for src in pngs_linked(html))
    for text in ("<table", "clinical", "cnn", "blend", "0.700±0.100", "misclassified (false tumoral)"):
        assert text in html, text


def test_report_caps_misclassified_and_takes_data_dir(data_dir, tmp_path):
    out, html = run_report(tmp_path, data_dir, True, "--max-errors", "1", "--data-dir", str(data_dir),
                           "--out", str(tmp_path / "elsewhere"), "--cells", "2")
    assert out == tmp_path / "elsewhere"
    assert len(list(out.glob("patient_*.png"))) == 3
    assert "Only the 1 most confidently misclassified are shown (of 2)" in html


def test_report_without_cells_skips_montages(data_dir, tmp_path):
    out, html = run_report(tmp_path, data_dir, with_cells=False)
    assert not list(out.glob("patient_*.png")) and not list(out.glob("scored_T*.png"))
    assert sorted(pngs_linked(html)) == sorted(QUALITY + ["scored_distribution.png"])  # scores, but no cells
    assert "No CNN run" in html
    assert all((out / name).stat().st_size > 1000 for name in QUALITY)


def test_report_refuses_other_data_and_missing_ensemble(data_dir, tmp_path):
    other = make_2024(tmp_path / "other")
    with pytest.raises(DataError, match="dataset"):
        run_report(tmp_path, data_dir, True, "--data-dir", str(other))
    with pytest.raises(DataError, match="best_params.json"):
        report.main(["--ensemble", str(tmp_path / "nowhere")])


def test_report_refuses_runs_changed_since_tuning(data_dir, tmp_path):
    runs = tmp_path / "runs"
    dirs = [make_run(runs, n, data_dir, CNN, cells=False) for n in ("a", "b")]
    ensemble = make_ensemble(runs, dirs)
    saved = json.loads((ensemble / "best_params.json").read_text())
    saved["runs"][0]["oof_hash"] = "000000000000"
    (ensemble / "best_params.json").write_text(json.dumps(saved))
    with pytest.raises(DataError, match="changed since"):
        report.main(["--ensemble", str(ensemble), "--no-progress"])


def test_choose_patients_and_extreme_cells():
    blend = oof_table(np.array([0.9, 0.8, 0.2, 0.7, 0.3, 0.6, 0.1, 0.95, 0.4, 0.85, 0.55, 0.2]))
    chosen, n_wrong = choose_patients(blend, 0.5, max_errors=2)
    assert [c.pid for c in chosen] == ["P7", "P6", "P0", "P11"]  # P10 (0.55) is the least wrong error, left out
    assert n_wrong == 3 and chosen[3].reason == "misclassified (false reactive)"
    cells = pd.DataFrame({"weight": [0.1, 0.5, 0.2, 0.05, 0.15]})
    top, bottom = extreme_cells(cells, n=3)
    assert top["weight"].tolist() == [0.5, 0.2, 0.15] and bottom["weight"].tolist() == [0.05, 0.1]
    top, bottom = extreme_cells(cells, n=2)
    assert top["weight"].tolist() == [0.5, 0.2] and bottom["weight"].tolist() == [0.05, 0.1]
    top, bottom = extreme_cells(pd.concat([cells] * 4), n=8)
    assert len(top) == len(bottom) == 8 and bottom["weight"].max() <= top["weight"].min()


def test_report_without_data_dir_skips_montages(data_dir, tmp_path):
    runs = tmp_path / "runs"
    dirs = [make_run(runs, "cnn", data_dir, CNN, cells=True)]
    ensemble = make_ensemble(runs, dirs)
    saved = json.loads((ensemble / "best_params.json").read_text())
    (ensemble / "best_params.json").write_text(json.dumps({**saved, "data_dir": str(tmp_path / "moved")}))
    html = report.main(["--ensemble", str(ensemble), "--no-progress"]).read_text()
    assert "pass --data-dir" in html and sorted(pngs_linked(html)) == sorted(QUALITY)


def test_report_refuses_a_data_dir_whose_test_inputs_changed(data_dir, tmp_path):
    runs = tmp_path / "runs"
    ensemble = make_ensemble(runs, [make_run(runs, "cnn", data_dir, CNN, cells=True)])
    changed = tmp_path / "copy" / data_dir.name  # the same dataset name: same IDs and labels
    shutil.copytree(data_dir, changed)
    csv = changed / "testset" / "testset_data.csv"
    table = pd.read_csv(csv, dtype=str)
    table.loc[0, "LYMPH_COUNT"] = "9.9"
    table.to_csv(csv, index=False)
    with pytest.raises(DataError, match=f"test patient {table.loc[0, 'ID']}'s inputs"):
        report.main(["--ensemble", str(ensemble), "--data-dir", str(changed), "--no-progress"])


def test_the_blend_row_is_called_honest_only_when_nothing_was_fitted():
    from types import SimpleNamespace

    from lib.stages.report.build import honest_line

    nested = {"ba_mean": 0.8, "ba_std": 0.05}
    study = honest_line(SimpleNamespace(metrics={"fusion": "study", "nested": {**nested, "threshold_policy": "0.5"}}))
    equal = honest_line(SimpleNamespace(metrics={"fusion": "equal", "nested": {**nested, "threshold_policy": "0.5"}}))
    searched = honest_line(SimpleNamespace(metrics={"fusion": "equal", "nested": {**nested, "threshold_policy": "tuned"}}))
    older = honest_line(SimpleNamespace(metrics={"nested": nested}))  # an ensemble made before the fusion option
    assert "weights and threshold were fitted" in study and "optimistic" in study and "0.800±0.050" in study
    assert "nothing was fitted" in equal and "optimistic" not in equal and "0.800±0.050" in equal
    assert "threshold was fitted" in searched and "optimistic" in searched
    assert older == study
