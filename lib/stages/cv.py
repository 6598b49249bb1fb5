"""Generic patient-level cross-validation driver shared by every model (clinical, CNN, ...).

For each fold k of the committed folds, ``fit_predict(train_ids, valid_ids, test_ids, k)`` fits on the
train IDs only and returns the probabilities of the valid IDs (out-of-fold) and of the test IDs. The
driver checks that no scored patient is among the fitted ones, saves each fold's predictions atomically
to ``run_dir/folds/fold_<k>.csv`` (ID, role valid/test, proba) so that a resumed run skips finished
folds, and once every fold is done writes ``oof.csv``, ``test.csv`` and ``metrics.json``.
An optional ``on_fold(k, running_oof)`` hook (given to ``cross_validate`` or carried by the stage as
``Stage.on_fold``, e.g. a hyper-parameter study's trial) sees the OOF table of the folds done so far after
each fold; it may raise (e.g. ``optuna.TrialPruned``) to stop the cross-validation early.
"""
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from lib.core.errors import DataError
from lib.core.io import atomic_write_csv, atomic_write_json, read_table
from lib.core.metrics import binary_scores, fold_metrics
from lib.core.progress import tqdm
from lib.core.runs import fold_test_table, write_predictions
from lib.stages.context import OnFold, Stage

log = logging.getLogger(__name__)
FitPredict = Callable[[pd.Index, pd.Index, pd.Index, int], tuple[pd.Series, pd.Series]]


def fold_ids(stage: Stage, k: int) -> tuple[pd.Index, pd.Index, pd.Index]:
    """Train, valid (fold k) and test patient IDs of fold k, each sorted."""
    folds = stage.folds
    train = pd.Index(sorted(folds.loc[folds["fold"] != k, "ID"]))
    valid = pd.Index(sorted(folds.loc[folds["fold"] == k, "ID"]))
    return train, valid, pd.Index(sorted(stage.dataset.test.index))


def check_unseen(train: pd.Index, valid: pd.Index, test: pd.Index, k: int) -> None:
    """Fold discipline: a patient that is scored is never among the patients the model is fitted on."""
    seen = set(train)
    leaked = sorted((seen & set(valid)) | (seen & set(test)))
    if leaked:
        raise AssertionError(f"fold {k}: scored patient(s) {', '.join(leaked[:5])} are in the training IDs")


def fold_path(run_dir: Path, k: int) -> Path:
    """Per-fold prediction file of a run."""
    return Path(run_dir) / "folds" / f"fold_{k}.csv"


def _check_proba(proba: pd.Series, expected: pd.Index, what: str) -> pd.Series:
    """Probabilities must cover exactly the expected IDs, finite and within [0, 1]."""
    if not isinstance(proba, pd.Series) or set(proba.index) != set(expected) or proba.index.duplicated().any():
        raise DataError(f"{what}: predictions must be a Series indexed by exactly the expected {len(expected)} IDs")
    values = proba.to_numpy(dtype=float)
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1:
        raise DataError(f"{what}: predictions contain NaN/inf or values outside [0, 1]")
    return proba.astype(float).loc[expected]


def run_fold(stage: Stage, fit_predict: FitPredict, k: int) -> pd.DataFrame:
    """Fit and predict one fold; return its table (ID, role, proba) after saving it atomically."""
    train, valid, test = fold_ids(stage, k)
    check_unseen(train, valid, test, k)
    valid_proba, test_proba = fit_predict(train, valid, test, k)
    valid_proba = _check_proba(valid_proba, valid, f"fold {k} validation")
    test_proba = _check_proba(test_proba, test, f"fold {k} test")
    table = pd.concat([_role_table(valid_proba, "valid"), _role_table(test_proba, "test")], ignore_index=True)
    atomic_write_csv(table, fold_path(stage.run_dir, k))
    return table


def _role_table(proba: pd.Series, role: str) -> pd.DataFrame:
    """Long table ID, role, proba."""
    return pd.DataFrame({"ID": proba.index.astype(str), "role": role, "proba": proba.to_numpy()})


def read_fold(stage: Stage, k: int) -> pd.DataFrame | None:
    """A finished fold's saved table, or None when the fold has not been run; stale files are refused."""
    path = fold_path(stage.run_dir, k)
    if not path.exists():
        return None
    table = read_table(path)
    _, valid, test = fold_ids(stage, k)
    _check_same_fold(table, valid, k, path)
    for role, expected in (("valid", valid), ("test", test)):
        rows = table[table["role"] == role]
        _check_proba(rows.set_index("ID")["proba"], expected, f"{path} ({role} rows)")
    return table


def _check_same_fold(table: pd.DataFrame, valid: pd.Index, k: int, path: Path) -> None:
    """A saved fold must hold the patients that the fold file puts in fold k now (a changed fold file is named)."""
    saved = set(table.loc[table["role"] == "valid", "ID"]) if "role" in table.columns else set()
    if saved and saved != set(valid):
        moved = sorted(saved ^ set(valid))
        raise DataError(f"{path}: fold {k} held other patients when it was run than the fold file gives now "
                        f"({len(moved)} differ, e.g. {', '.join(moved[:3])}): the fold file changed since; restore it, "
                        f"or start a new run (another --experiment) on the new folds")


def cross_validate(stage: Stage, fit_predict: FitPredict, folds_to_run: Iterable[int] | None = None,
                   on_fold: OnFold | None = None) -> tuple[pd.DataFrame, dict[int, pd.Series]]:
    """Run the requested folds (default all), skipping finished ones; return (oof, test_per_fold) of done folds.

    ``on_fold`` (default ``stage.on_fold`` when the stage has one) is called after each requested fold.
    """
    on_fold = on_fold or stage.on_fold
    all_folds = sorted(stage.folds["fold"].unique())
    wanted = all_folds if folds_to_run is None else sorted(set(folds_to_run))
    unknown = set(wanted) - set(all_folds)
    if unknown:
        raise DataError(f"folds {sorted(unknown)} do not exist (folds are {all_folds})")
    tables = {}
    for k in tqdm(wanted, desc="folds", unit="fold"):
        tables[k] = read_fold(stage, k)
        if tables[k] is not None:
            log.info("fold %d: already done, read back %s", k, fold_path(stage.run_dir, k))
        else:
            tables[k] = run_fold(stage, fit_predict, k)
            _log_fold(stage, k, tables[k])
        if on_fold is not None:
            on_fold(k, _assemble(stage, tables)[0])  # every fold in tables is done here
    for k in set(all_folds) - set(wanted):
        tables[k] = read_fold(stage, k)
    done = {k: t for k, t in sorted(tables.items()) if t is not None}
    oof, test_per_fold = _assemble(stage, done)
    if len(done) == len(all_folds):
        finish(stage, oof, test_per_fold)
    else:
        log.info("%d of %d folds done: oof.csv/test.csv/metrics.json are written once all are", len(done), len(all_folds))
    return oof, test_per_fold


def _log_fold(stage: Stage, k: int, table: pd.DataFrame) -> None:
    """One log line with the fold's BA at 0.5 and AUC."""
    valid = table[table["role"] == "valid"]
    scores = binary_scores(stage.dataset.patients.loc[valid["ID"], "LABEL"], valid["proba"])
    log.info("fold %d: BA %.3f AUC %.3f (%d patients)", k, scores["ba"], scores["auc"], len(valid))


def _assemble(stage: Stage, done: dict[int, pd.DataFrame]) -> tuple[pd.DataFrame, dict[int, pd.Series]]:
    """OOF table (ID, fold, target, proba) and test probabilities per fold from the fold tables."""
    parts, test_per_fold = [], {}
    for k, table in done.items():
        valid = table[table["role"] == "valid"]
        parts.append(pd.DataFrame({"ID": valid["ID"].to_numpy(), "fold": k, "proba": valid["proba"].to_numpy()}))
        test = table[table["role"] == "test"]
        test_per_fold[k] = pd.Series(test["proba"].to_numpy(), index=pd.Index(test["ID"], name="ID"))
    oof = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["ID", "fold", "proba"])
    oof.insert(2, "target", stage.dataset.patients.loc[oof["ID"], "LABEL"].to_numpy(dtype=int))
    return oof.sort_values("ID", ignore_index=True), test_per_fold


def finish(stage: Stage, oof: pd.DataFrame, test_per_fold: dict[int, pd.Series]) -> dict:
    """Write oof.csv, test.csv and metrics.json of a completed cross-validation; return the metrics."""
    if oof["ID"].duplicated().any() or set(oof["ID"]) != set(stage.folds["ID"]):
        raise AssertionError("OOF predictions must score every train patient exactly once")
    write_predictions(stage.run_dir, oof, fold_test_table(test_per_fold))
    metrics = fold_metrics(oof, 0.5)
    atomic_write_json(metrics, Path(stage.run_dir) / "metrics.json")
    log.info("OOF over %d folds: BA %.3f±%.3f AUC %.3f±%.3f (pooled BA %.3f, AUC %.3f)", len(test_per_fold),
             metrics["ba_mean"], metrics["ba_std"], metrics["auc_mean"], metrics["auc_std"],
             metrics["pooled_ba"], metrics["pooled_auc"])
    return metrics
