"""Every class of bad input or environment stops a script with exit code 2 and one line naming the file or
option, nothing logged before it, and no run directory or *.tmp file left behind (docs/bad-input.md).

The cases run in-process through each script's ``main(argv)`` and the same ``run_main`` wrapper as the command
line (a fresh interpreter per case cost ~5 s each); tests/test_imports.py runs every script once as a real
process (a bad option: one line, exit 2, no traceback, no heavy import).
"""
import logging
from pathlib import Path

import pandas as pd
import pytest
from conftest import cohort_rows, frame, make_2024

from lib.core.cli import run_in_process

TRAIN, TEST = cohort_rows(n_train=12, n_test=3)
TRAIN_CSV, TEST_CSV = Path("trainset") / "trainset_true.csv", Path("testset") / "testset_data.csv"


def _row(rows, i, **changes):
    """Rows with row ``i`` changed (columns ID, LABEL, GENDER, DOB, LYMPH_COUNT)."""
    table = frame(rows)
    for column, value in changes.items():
        table.loc[i, column] = value
    return table


def _set_train(data: Path, table: pd.DataFrame) -> None:
    table.to_csv(data / TRAIN_CSV, index=False)


def _patch(csv: Path = TRAIN_CSV, rows=TRAIN, i: int = 0, **changes):
    """A setup that rewrites one CSV with one row changed."""
    def setup(data: Path, tmp: Path) -> list[str]:
        _row(rows, i, **changes).to_csv(data / csv, index=False)
        return []
    return setup


def _write(csv: Path, content: bytes):
    def setup(data: Path, tmp: Path) -> list[str]:
        (data / csv).write_bytes(content)
        return []
    return setup


def _escaping_folder(data: Path, tmp: Path) -> list[str]:
    """trainset/P0 is a link to a folder outside the data directory."""
    outside = tmp / "outside" / "P0"
    outside.parent.mkdir()
    (data / "trainset" / "P0").rename(outside)
    (data / "trainset" / "P0").symlink_to(outside, target_is_directory=True)
    return []


def _blocked(option: str, name: str = "blocked"):
    """``option`` points below a plain file: the directory cannot be created (as for a read-only disk)."""
    def setup(data: Path, tmp: Path) -> list[str]:
        (tmp / "afile").write_text("a file in the way\n")
        return [option, str(tmp / "afile" / name)]
    return setup


def _folds_ready(data: Path, tmp: Path) -> None:
    """Write the fold file in-process, so the script itself logs nothing before failing."""
    from lib.data.dataset import load_dataset
    from lib.data.folds import load_folds
    load_folds(load_dataset(data), 3, 42, tmp / "folds")


def _yaml(text: str, *extra: str):
    def setup(data: Path, tmp: Path) -> list[str]:
        (tmp / "bad.yaml").write_text(text)
        return ["-c", str(tmp / "bad.yaml"), *extra]
    return setup


def _args(*argv: str, folds: bool = False):
    def setup(data: Path, tmp: Path) -> list[str]:
        if folds:
            _folds_ready(data, tmp)
        return list(argv)
    return setup


def _runs_dir_blocked(data: Path, tmp: Path) -> list[str]:
    _folds_ready(data, tmp)
    return _blocked("--runs-dir", "runs")(data, tmp)


def _cache_dir_blocked(data: Path, tmp: Path) -> list[str]:
    _folds_ready(data, tmp)
    return _blocked("--cache-dir", "cache")(data, tmp) + ["--cache", "24"]


def _out_is_directory(data: Path, tmp: Path) -> list[str]:
    (tmp / "outdir").mkdir()
    return ["--runs", str(tmp / "no_run"), "--out", str(tmp / "outdir")]


def _one_class(data: Path, tmp: Path) -> list[str]:
    frame(TRAIN).assign(LABEL="1").to_csv(data / TRAIN_CSV, index=False)
    return []


def _ensemble(*argv: str):
    def setup(data: Path, tmp: Path) -> list[str]:
        return ["--runs", str(tmp / "no_run"), "--runs-dir", str(tmp / "runs"), "--experiment", "bad", *argv]
    return setup


PREP, CLIN, CNN, SUB, ENS = "prepare_data.py", "train_clinical.py", "train_cnn.py", "make_submission.py", "ensemble.py"
PRE = "pretrain_cnn.py"
PRE_ARGS = ["--backbone", "test_efficientnet", "--crop", "24", "--input-size", "24", "--batch-size", "4"]
UNREACHABLE = "postgresql://user:SECRET@127.0.0.1:1/db"  # nothing listens on port 1: refused at once
CNN_ARGS = ["--backbone", "test_efficientnet", "--weights", "none", "--crop", "24"]
CASES = {  # name: (script, setup(data, tmp) -> extra argv, text the one error line must contain)
    "train_header_only": (PREP, _write(TRAIN_CSV, b"ID,LABEL,GENDER,DOB,LYMPH_COUNT\n"),
                          "trainset_true.csv: no patient rows"),
    "test_header_only": (PREP, _write(TEST_CSV, b"ID,LABEL,GENDER,DOB,LYMPH_COUNT\n"),
                         "testset_data.csv: no patient rows"),
    "count_inf": (PREP, _patch(LYMPH_COUNT="inf"), "trainset_true.csv: patient P0: LYMPH_COUNT 'inf' is implausible"),
    "count_huge": (PREP, _patch(LYMPH_COUNT="5000"), "trainset_true.csv: patient P0: LYMPH_COUNT '5000' is implausible"),
    "count_nan": (PREP, _patch(LYMPH_COUNT="nan"), "trainset_true.csv: patient P0: LYMPH_COUNT 'nan'"),
    "count_negative": (PREP, _patch(LYMPH_COUNT="-3.2"), "trainset_true.csv: patient P0: LYMPH_COUNT '-3.2'"),
    "dob_future": (PREP, _patch(DOB="1/1/2030"), "trainset_true.csv: patient P0: DOB '1/1/2030' gives age -10"),
    "dob_too_old": (PREP, _patch(DOB="1/1/1850"), "trainset_true.csv: patient P0: DOB '1/1/1850' gives age 170"),
    "dob_unparseable": (PREP, _patch(DOB="yesterday"), "trainset_true.csv: patient P0: unparseable DOB"),
    "id_dotdot_inside": (PREP, _patch(ID="P103/../P107"), "trainset_true.csv: patient P103/../P107: ID"),
    "id_into_testset": (PREP, _patch(ID="../testset/P13"), "trainset_true.csv: patient ../testset/P13: ID"),
    "id_etc": (PREP, _patch(csv=TEST_CSV, rows=TEST, ID="../../../etc"), "testset_data.csv: patient ../../../etc: ID"),
    "id_empty": (PREP, _patch(ID=""), "trainset_true.csv: patient <empty ID>: empty ID"),
    "id_duplicate": (PREP, _patch(ID="P1"), "trainset_true.csv: duplicate patient ID(s) P1"),
    "folder_escapes": (PREP, _escaping_folder, "trainset/P0: image folder of train patient P0 resolves to"),
    "label_2": (PREP, _patch(LABEL="2"), "trainset_true.csv: patient P0: LABEL '2' is not one of 0, 1, -1"),
    "test_with_label": (PREP, _patch(csv=TEST_CSV, rows=TEST, LABEL="1"), "testset_data.csv: patient P12: test patient has a label"),
    "duplicate_column": (PREP, _write(TRAIN_CSV, b"ID,LABEL,GENDER,DOB,LYMPH_COUNT,LABEL\nP0,1,M,1/1/1950,5,0\n"),
                         "trainset_true.csv: duplicate column(s) LABEL"),
    "semicolons": (PREP, _write(TRAIN_CSV, b"ID;LABEL;GENDER;DOB;LYMPH_COUNT\nP0;1;M;1/1/1950;5\n"),
                   "trainset_true.csv: missing column(s) ID, LABEL, GENDER, DOB, LYMPH_COUNT (use ',' as delimiter)"),
    "not_utf8": (PREP, _write(TRAIN_CSV, b"ID,LABEL,GENDER,DOB,LYMPH_COUNT\nP0,1,M,1/1/1950,5\nP1,0,F,2/2/1960,4\xe9\n"),
                 "trainset_true.csv: not UTF-8 text (byte 0xe9 at offset 67, line 3)"),
    "folds_dir_blocked": (PREP, _blocked("--folds-dir"), "afile/blocked: cannot create directory"),
    "cache_dir_blocked": (PREP, _cache_dir_blocked, "afile/cache: cannot create directory"),
    "crop_too_large": (PREP, _args("--cache", "100", folds=True), "000000.jpg: crop 100 is larger than the 32x32 images"),
    "runs_dir_blocked": (CLIN, _runs_dir_blocked, "afile/runs/bad: cannot create directory"),
    "prefix_option": (CLIN, _args("--seed", "1", "--epoch", "3"), "unrecognized arguments: --epoch 3"),
    "inner_folds_1": (CLIN, _args("--inner-folds", "1"), "--inner-folds 1 must be >= 2"),
    "yaml_syntax": (CLIN, _yaml("seed: [1, 2\n"), "bad.yaml: not valid YAML"),
    "yaml_unknown_key": (CLIN, _yaml("seeed: 1\n"), "bad.yaml: unknown option(s) seeed"),
    "yaml_bad_choice": (CNN, _yaml("aug: medium\n", *CNN_ARGS), "bad.yaml: aug (option --aug): invalid choice 'medium'"),
    "yaml_epochs_many": (CNN, _yaml("epochs: many\n", *CNN_ARGS), "bad.yaml: epochs (option --epochs): invalid value 'many'"),
    "head_args_yaml": (CNN, _args(*CNN_ARGS, "--head-args", "{hidden_dim: [64"), "argument --head-args: not valid YAML"),
    "out_is_directory": (SUB, _out_is_directory, "outdir: --out names a directory"),
    "storage_unreachable": (CLIN, _args("--study", "s", "--storage", UNREACHABLE),
                            "--storage postgresql://user:***@127.0.0.1:1/db: cannot connect"),
    "storage_malformed": (CLIN, _args("--study", "s", "--storage", ":::"), "--storage :::: not a database URL"),
    "storage_unsupported": (CLIN, _args("--study", "s", "--storage", "mongodb://user:SECRET@h/db"),
                            "--storage mongodb://user:***@h/db: unsupported database 'mongodb'"),
    "storage_no_driver": (CLIN, _args("--study", "s", "--storage", "mysql://user:SECRET@127.0.0.1:1/db"),
                          "the database driver is not installed"),
    "storage_sqlite_folder": (CLIN, _args("--study", "s", "--storage", "sqlite:////no/such/folder/s.db"),
                              "folder /no/such/folder does not exist"),
    "ensemble_storage": (ENS, _ensemble("--storage", UNREACHABLE), "--storage postgresql://user:***@127.0.0.1:1/db"),
    "ensemble_seed_negative": (ENS, _ensemble("--seed", "-1"), "--seed -1 must be >= 0"),
    "one_class": (PREP, _one_class, "trainset_true.csv: all 12 training patients have LABEL 1; training needs both"),
    "one_class_clinical": (CLIN, _one_class, "trainset_true.csv: all 12 training patients have LABEL 1"),
    "cache_crop_tiny": (PREP, _args("--cache", "4"), "--cache 4 must be a crop >= 8 pixels"),
    "fold_seed_negative": (PREP, _args("--fold-seed", "-1"), "--fold-seed -1 must be >= 0"),
    "n_folds_1": (PREP, _args("--n-folds", "1"), "--n-folds 1 must be >= 2"),
    "seed_negative": (CLIN, _args("--seed", "-1"), "--seed -1 must be >= 0"),
    "C_infinite": (CLIN, _args("--C", "inf"), "argument --C: C must be a finite number > 0"),
    "lr_negative": (CNN, _args(*CNN_ARGS, "--lr", "-1"), "--lr -1.0 must be a finite number > 0"),
    "lr_nan": (CNN, _args(*CNN_ARGS, "--lr", "nan"), "--lr nan must be a finite number > 0"),
    "backbone_lr_negative": (CNN, _args(*CNN_ARGS, "--backbone-lr", "-0.1"), "--backbone-lr -0.1 must be"),
    "weight_decay_negative": (CNN, _args(*CNN_ARGS, "--weight-decay", "-1"), "--weight-decay -1.0 must be"),
    "workers_negative": (CNN, _args(*CNN_ARGS, "--workers", "-2"), "--workers -2 must be >= 0"),
    "input_size_tiny": (CNN, _args(*CNN_ARGS, "--input-size", "2"), "an input side in pixels must be >= 8"),
    "cnn_seed_negative": (CNN, _args(*CNN_ARGS, "--seed", "-3"), "--seed -3 must be >= 0"),
    "pretrain_lr_negative": (PRE, _args(*PRE_ARGS, "--lr", "-1"), "--lr -1.0 must be a finite number > 0"),
    "pretrain_weight_decay": (PRE, _args(*PRE_ARGS, "--weight-decay", "-1"), "--weight-decay -1.0 must be"),
    "pretrain_temperature_inf": (PRE, _args(*PRE_ARGS, "--temperature", "inf"), "--temperature inf must be"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_2(name, tmp_path, capsys, caplog):
    script, setup, expected = CASES[name]
    data = make_2024(tmp_path / "data", train=TRAIN, test=TEST, n_cells=2, size=32)
    extra = setup(data, tmp_path)
    argv = [] if script in (SUB, ENS) else ["--data-dir", str(data), "--cache-dir", str(tmp_path / "cache")]
    if script in (PREP, CLIN, CNN):  # the scripts that read fold files
        argv += ["--folds-dir", str(tmp_path / "folds"), "--n-folds", "3"]
    if script in (CLIN, CNN, PRE):
        argv += ["--runs-dir", str(tmp_path / "runs"), "--experiment", "bad"]
    argv += extra  # later options win (a blocked --folds-dir/--runs-dir/--cache-dir)
    capsys.readouterr()
    caplog.clear()
    caplog.set_level(logging.INFO)
    code = run_in_process([script, *argv])  # main(argv) through run_main, as the command line runs it
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0] and "SECRET" not in err, lines[0]
    assert not caplog.records, [r.getMessage() for r in caplog.records]  # nothing logged before the error
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), f"run directory left behind: {list(runs.iterdir())}"
    assert not list(tmp_path.rglob("*.tmp")), list(tmp_path.rglob("*.tmp"))
