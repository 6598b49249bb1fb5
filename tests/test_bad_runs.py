"""Reliability round three (issue 36), through the real scripts: new cells unlike the training cells, runs that
no longer match their folds, outputs over inputs, a killed report, Ctrl-C, damaged run files, edited fold files
and patient IDs that pandas would read as missing. Each case is one line on stderr and exit 2 (130 for Ctrl-C),
or the correct result."""
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import cv2
import pandas as pd
import pytest
from conftest import REPO, cohort_rows, make_2024

import train_clinical
from lib.core.cli import run_in_process

SCRIPTS_TO_INTERRUPT = {
    "predict.py": ["--ensemble", "E", "--data-dir", "D"], "make_submission.py": ["--ensemble", "E"],
    "report.py": ["--ensemble", "E"], "ensemble.py": ["--runs", "A", "B"], "train_clinical.py": [],
    "prepare_data.py": [], "train_cnn.py": [], "pretrain_cnn.py": [], "pipeline.py": [], "overnight.py": ["--budget", "1h"]}
INTERRUPT_AFTER_PARSING = """
import argparse, os, runpy, signal, sys
parse = argparse.ArgumentParser.parse_known_args
def interrupted(self, *args, **kwargs):
    parsed = parse(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered inside the script's main()
    return parsed
argparse.ArgumentParser.parse_known_args = interrupted
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def ensemble_dir(runs: Path) -> Path:
    return next(runs.glob("*/ensemble"))


def run_script(capsys, script: str, *argv) -> tuple[int, str]:
    """A script's main through its entry wrapper: (exit code, stderr)."""
    code = run_in_process([script, *map(str, argv)])
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2 and "Traceback" not in err, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and all(f in line for f in fragments), line


@contextmanager
def edited(path: Path, text: str | None = None, remove: bool = False):
    """Change a file of the session's demo pipeline for one test, then put it back as it was."""
    saved = path.read_bytes()
    try:
        path.unlink() if remove else path.write_text(text)
        yield path
    finally:
        path.write_bytes(saved)


def new_patients(data: Path, root: Path, convert) -> Path:
    """Two of the demo's test patients in a new directory, each image passed through ``convert``."""
    table = pd.read_csv(data / "testset" / "testset_data.csv", dtype=str).iloc[:2]
    (root / "testset").mkdir(parents=True)
    for pid in table["ID"]:
        shutil.copytree(data / "testset" / pid, root / "testset" / pid)
        for image in (root / "testset" / pid).glob("*.jpg"):
            cv2.imwrite(str(image), convert(cv2.imread(str(image))))
    table.to_csv(root / "testset" / "testset_data.csv", index=False)
    return root


def predict_args(demo_pipeline, data: Path, out: Path) -> list:
    _, runs, _, _ = demo_pipeline
    return ["--ensemble", ensemble_dir(runs), "--data-dir", data, "--out", out, "--cache-dir", runs.parent / "cache",
            "--no-progress"]


@pytest.mark.parametrize("convert, fragments", [
    (lambda img: cv2.resize(img, (img.shape[1] * 3 // 2, img.shape[0] * 3 // 2)), ["cells are ", "px where the training cells were"]),
    (lambda img: cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), ["100% of the cells are grayscale", "training cells were in colour"]),
])
def test_cells_unlike_the_training_cells_are_refused_not_scored(demo_pipeline, tmp_path, capsys, convert, fragments):
    """Another scanner's size, or grayscale exports: every model's score would be off, so nothing is written."""
    data = new_patients(demo_pipeline[0], tmp_path / "new", convert)
    code, err = run_script(capsys, "predict.py", *predict_args(demo_pipeline, data, tmp_path / "p.csv"))
    one_line_error(code, err, str(data), *fragments)
    assert not (tmp_path / "p.csv").exists()


def test_a_colour_shift_is_scored_with_a_warning_naming_it(demo_pipeline, tmp_path, capsys, caplog):
    data = new_patients(demo_pipeline[0], tmp_path / "new", lambda img: cv2.add(img, (0, 0, 60, 0)))  # redder
    code, err = run_script(capsys, "predict.py", *predict_args(demo_pipeline, data, tmp_path / "p.csv"), "--no-report")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "mean colour RGB" in r.getMessage()]
    assert code == 0 and len(warnings) == 1 and warnings[0].startswith(str(data)), caplog.text
    assert (tmp_path / "p.csv").exists()


def test_a_patient_missing_from_every_runs_oof_is_refused_by_every_reader(demo_pipeline, tmp_path, capsys):
    data, runs, _, _ = demo_pipeline
    members = [p for p in sorted(next(runs.glob("*/ensemble")).parent.iterdir()) if (p / "oof.csv").exists()
               and p.name != "ensemble"]
    saved = {p: (p / "oof.csv").read_bytes() for p in members}
    try:
        for p in members:
            oof = pd.read_csv(p / "oof.csv", dtype={"ID": str})
            oof.iloc[1:].to_csv(p / "oof.csv", index=False)
        for script, argv in (("ensemble.py", ["--runs", *members, "--runs-dir", tmp_path, "--experiment", "e"]),
                             ("make_submission.py", ["--ensemble", ensemble_dir(runs), "--out", tmp_path / "s.csv"]),
                             ("report.py", ["--ensemble", ensemble_dir(runs), "--out", tmp_path / "r", "--no-progress"])):
            code, err = run_script(capsys, script, *argv)
            one_line_error(code, err, "oof.csv: covers", "patients of its fold file")
    finally:
        for p, content in saved.items():
            (p / "oof.csv").write_bytes(content)


def test_no_output_may_overwrite_an_input(demo_pipeline, tmp_path, capsys):
    data, runs, _, _ = demo_pipeline
    clinical = next(runs.glob("*/clinical"))
    cases = [("predict.py", [*predict_args(demo_pipeline, data, data / "testset" / "testset_data.csv")],
              data / "testset" / "testset_data.csv"),
             ("make_submission.py", ["--ensemble", ensemble_dir(runs), "--out", clinical / "test.csv"], clinical / "test.csv"),
             ("report.py", ["--ensemble", ensemble_dir(runs), "--out", clinical.parent, "--no-progress"], clinical / "oof.csv")]
    for script, argv, guarded in cases:
        before = guarded.read_bytes()
        code, err = run_script(capsys, script, *argv)
        one_line_error(code, err, "would overwrite what this command reads")
        assert guarded.read_bytes() == before


def test_a_report_killed_half_way_leaves_the_old_report_whole(demo_pipeline, tmp_path, monkeypatch):
    import lib.stages.report.build as build
    import report
    _, runs, _, _ = demo_pipeline
    out = tmp_path / "report"
    report.main(["--ensemble", str(ensemble_dir(runs)), "--out", str(out), "--no-progress"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # after the quality figures are written, before the montages
    monkeypatch.setattr(build, "montage_section", killed)
    with pytest.raises(KeyboardInterrupt):
        report.main(["--ensemble", str(ensemble_dir(runs)), "--out", str(out), "--no-progress"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no half-written folder left beside it


def test_a_report_never_replaces_a_folder_of_other_files(demo_pipeline, tmp_path, capsys):
    _, runs, _, _ = demo_pipeline
    (tmp_path / "notes.txt").write_text("mine")
    code, err = run_script(capsys, "report.py", "--ensemble", ensemble_dir(runs), "--out", tmp_path, "--no-progress")
    one_line_error(code, err, "holds other things than a report")
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("name, damage, fragment", [
    ("oof.csv", "", "empty file"),
    ("config.yaml", "data_dir: [unclosed\n", "not valid YAML"),
    ("best_params.json", '{"weights": {"clin', "not valid JSON"),
])
def test_damaged_run_files_are_one_line_naming_the_file(demo_pipeline, tmp_path, capsys, name, damage, fragment):
    _, runs, _, _ = demo_pipeline
    folder = ensemble_dir(runs) if name == "best_params.json" else next(runs.glob("*/clinical"))
    with edited(folder / name, damage):
        for script, argv in (("make_submission.py", ["--out", tmp_path / "s.csv"]),
                             ("report.py", ["--out", tmp_path / "r", "--no-progress"])):
            code, err = run_script(capsys, script, "--ensemble", ensemble_dir(runs), *argv)
            one_line_error(code, err, str(folder / name), fragment)


def test_a_damaged_ensemble_metrics_file_is_one_line(demo_pipeline, tmp_path, capsys):
    _, runs, _, _ = demo_pipeline
    metrics = ensemble_dir(runs) / "metrics.json"
    with edited(metrics, metrics.read_text()[: len(metrics.read_text()) // 2]):
        code, err = run_script(capsys, "report.py", "--ensemble", ensemble_dir(runs), "--out", tmp_path / "r",
                               "--no-progress")
    one_line_error(code, err, str(metrics), "not valid JSON")


@pytest.mark.parametrize("script", sorted(SCRIPTS_TO_INTERRUPT))
def test_ctrl_c_stops_every_script_with_one_line_and_exit_130(script, tmp_path):
    done = subprocess.run([sys.executable, "-c", INTERRUPT_AFTER_PARSING, script, *SCRIPTS_TO_INTERRUPT[script]],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and done.stderr.strip().splitlines() == [
        "interrupted: nothing half-written is kept; re-run the same command to resume"]


# ----------------------------------------------------------------------------- folds and IDs (a small cohort)
@pytest.fixture
def cohort(tmp_path):
    train, test = cohort_rows()
    train[3], test[0] = ("NA", *train[3][1:]), ("null", *test[0][1:])  # IDs that pandas reads as missing by default
    return make_2024(tmp_path / "comp", train=train, test=test, n_cells=2, size=16)


def clinical_args(cohort: Path, *extra) -> list[str]:
    root = cohort.parent
    return ["--data-dir", str(cohort), "--runs-dir", str(root / "runs"), "--folds-dir", str(root / "folds"),
            "--cache-dir", str(root / "cache"), "--inner-folds", "3", "--experiment", "clin", *extra]


def test_patient_ids_na_and_null_stay_ids_through_folds_runs_ensemble_and_submission(cohort, capsys):
    root = cohort.parent
    assert run_in_process(["prepare_data.py", "--data-dir", str(cohort), "--folds-dir", str(root / "folds")]) == 0
    train_clinical.main(clinical_args(cohort))
    test = pd.read_csv(root / "runs" / "clin" / "test.csv", dtype=str, keep_default_na=False)
    assert "null" in set(test["ID"])
    argv = ["--runs", root / "runs" / "clin", "--runs-dir", root / "runs", "--experiment", "ens"]
    assert run_script(capsys, "ensemble.py", *argv)[0] == 0
    code, _ = run_script(capsys, "make_submission.py", "--ensemble", root / "runs" / "ens", "--out", root / "s.csv")
    assert code == 0
    ids = pd.read_csv(root / "s.csv", dtype=str, keep_default_na=False)["Id"]
    assert set(ids) == set(pd.read_csv(cohort / "testset" / "testset_data.csv", dtype=str, keep_default_na=False)["ID"])


@pytest.mark.parametrize("value, fragment", [("x", "fold of patient P0 is 'x'"), ("", "fold of patient P0 is empty")])
def test_a_fold_value_that_is_not_an_integer_is_named(cohort, capsys, value, fragment):
    train_clinical.main(clinical_args(cohort))
    path = next((cohort.parent / "folds").glob("*_s42.csv"))
    folds = pd.read_csv(path, dtype=str, keep_default_na=False)
    folds.loc[folds["ID"] == "P0", "fold"] = value
    folds.to_csv(path, index=False)
    code, err = run_script(capsys, "train_clinical.py", *clinical_args(cohort, "--resume"))
    one_line_error(code, err, str(path), fragment)


def test_a_patient_moved_to_another_fold_is_named_as_a_changed_fold_file_on_resume(cohort, capsys):
    train_clinical.main(clinical_args(cohort))
    path = next((cohort.parent / "folds").glob("*_s42.csv"))
    folds = pd.read_csv(path, dtype=str, keep_default_na=False)
    first = folds.index[folds["fold"] == "0"][0]
    folds.loc[first, "fold"] = "1"
    folds.to_csv(path, index=False)
    code, err = run_script(capsys, "train_clinical.py", *clinical_args(cohort, "--resume"))
    one_line_error(code, err, "the fold file changed since")
    os.remove(path)  # the fold file is written once: a fresh one (the same seed) makes the same folds again


def test_a_file_name_that_is_not_utf8_goes_through_the_cnn_stage(cohort, capsys):
    """Caches, the cells profile and the run's cells.csv keep the name's own bytes (an older Windows export)."""
    folder = cohort / "trainset" / "P1"
    os.rename(os.fsencode(folder / "000000.jpg"), os.fsencode(folder) + b"/cell\xe9.jpg")
    root = cohort.parent
    code, err = run_script(capsys, "train_cnn.py", "--data-dir", cohort, "--runs-dir", root / "runs", "--folds-dir",
                           root / "folds", "--cache-dir", root / "cache", "--experiment", "cnn", "--backbone",
                           "test_efficientnet", "--weights", "none", "--crop", "16", "--epochs", "1", "--bag-size", "2",
                           "--views", "1", "--tta", "0", "--head", "mean", "--no-progress")
    assert code == 0, err[-2000:]
    assert b"P1/cell\xe9.jpg" in (root / "runs" / "cnn" / "cells.csv").read_bytes()
