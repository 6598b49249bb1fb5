"""Submission files: fused test probabilities -> validated ``Id,Predicted`` (+ ``Id,Proba``), written atomically.

Every check failure is a one-line DataError naming the file or object and the problem.
"""
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from lib.core.errors import DataError
from lib.core.io import atomic_write_csv, read_table
from lib.core.metrics import binary_scores
from lib.core.paths import proba_path
from lib.fusion.fuse import FusionParams, fuse
from lib.fusion.runs import RunSet

log = logging.getLogger(__name__)
SUBMISSION_COLUMNS = ["Id", "Predicted"]
PROBA_COLUMNS = ["Id", "Proba"]


def _check_ids(ids: pd.Series, test_ids, where: str) -> None:
    """IDs must be exactly the test set: none missing, extra or duplicated."""
    ids = ids.astype(str)
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        raise DataError(f"{where}: duplicate Id(s) {', '.join(duplicated[:5])}")
    expected = set(map(str, test_ids))
    missing, extra = sorted(expected - set(ids)), sorted(set(ids) - expected)
    if missing:
        raise DataError(f"{where}: {len(missing)} test Id(s) missing, e.g. {', '.join(missing[:5])}")
    if extra:
        raise DataError(f"{where}: {len(extra)} Id(s) not in the test set, e.g. {', '.join(extra[:5])}")


def check_runs_cover_test(runs: RunSet, test_ids, data_dir) -> None:
    """Every test patient of the data must have a prediction in every run: a gap names that run's test.csv."""
    expected = [str(i) for i in test_ids]
    for name, path in zip(runs.names, runs.paths):
        have = runs.test[name].dropna().index.astype(str)
        missing = sorted(set(expected) - set(have))
        if missing:
            raise DataError(f"{Path(path) / 'test.csv'}: {len(missing)} test patient(s) of {data_dir} missing, "
                            f"e.g. {', '.join(missing[:5])}")


def validate_submission(table: pd.DataFrame, test_ids, where: str = "submission") -> None:
    """Columns Id,Predicted; IDs exactly the test set; no NaN; labels in {0, 1}."""
    if list(table.columns) != SUBMISSION_COLUMNS:
        raise DataError(f"{where}: columns must be {','.join(SUBMISSION_COLUMNS)}, got {','.join(map(str, table.columns))}")
    if table.isna().any().any():
        raise DataError(f"{where}: contains NaN")
    _check_ids(table["Id"], test_ids, where)
    values = pd.to_numeric(table["Predicted"], errors="coerce")
    if values.isna().any() or not values.isin([0, 1]).all():
        bad = table.loc[values.isna() | ~values.isin([0, 1]), "Predicted"].unique()[:3]
        raise DataError(f"{where}: Predicted must be 0 or 1, found {', '.join(map(str, bad))}")


def validate_proba(table: pd.DataFrame, test_ids, where: str = "submission_proba") -> None:
    """Columns Id,Proba; IDs exactly the test set; probabilities finite within [0, 1]."""
    if list(table.columns) != PROBA_COLUMNS:
        raise DataError(f"{where}: columns must be {','.join(PROBA_COLUMNS)}")
    values = pd.to_numeric(table["Proba"], errors="coerce").to_numpy(dtype=float)
    if not np.all(np.isfinite(values)):
        raise DataError(f"{where}: contains NaN or non-numeric probabilities")
    if values.min() < 0 or values.max() > 1:
        raise DataError(f"{where}: probabilities outside [0, 1]")
    _check_ids(table["Id"], test_ids, where)


def submission_tables(proba: pd.Series, threshold: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(``Id,Predicted``, ``Id,Proba``) sorted by Id; label 1 (tumoral) when proba >= threshold."""
    proba = proba.sort_index()
    ids = proba.index.astype(str)
    labels = np.where(proba.to_numpy(dtype=float) >= threshold, 1, 0)
    labels = np.where(proba.isna().to_numpy(), np.nan, labels)  # keep NaN visible to the validation
    return (pd.DataFrame({"Id": ids, "Predicted": labels}),
            pd.DataFrame({"Id": ids, "Proba": proba.to_numpy(dtype=float)}))


def write_submission(proba: pd.Series, threshold: float, test_ids, out: str | Path) -> tuple[Path, Path]:
    """Validate then atomically write the label and probability files; return their paths."""
    labels, probas = submission_tables(proba, threshold)
    validate_proba(probas, test_ids, f"{proba_path(out)} (to write)")
    validate_submission(labels, test_ids, f"{out} (to write)")
    labels["Predicted"] = labels["Predicted"].astype(int)
    return atomic_write_csv(labels, out), atomic_write_csv(probas, proba_path(out))


def fused_test(runs: RunSet, params: FusionParams) -> pd.Series:
    """Fused test score; rank_mean maps test probabilities onto each model's OOF ECDF."""
    return fuse(runs.test[runs.names], params, reference=runs.oof[runs.names])


def demo_test_ba(data_dir: str | Path, labels: pd.DataFrame) -> float | None:
    """BA of a submission against ``demo_test_truth.csv`` (demo data only), None when absent."""
    path = Path(data_dir) / "demo_test_truth.csv"
    if not path.exists():
        return None
    truth = read_table(path).set_index("ID")["LABEL"]
    pred = labels.set_index("Id")["Predicted"]
    if set(truth.index) != set(pred.index):
        raise DataError(f"{path}: IDs differ from the submission's")
    return binary_scores(truth.loc[pred.index].to_numpy(), pred.to_numpy(), 0.5)["ba"]
