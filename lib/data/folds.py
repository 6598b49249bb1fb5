"""Patient-level folds: made once by one seeded function, written under folds/, read by every script."""
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from lib.core.config import DEFAULT_FOLD_SEED, DEFAULT_N_FOLDS
from lib.core.errors import DataError
from lib.core.io import atomic_write_csv, read_table
from lib.core.paths import FOLDS_DIR
from lib.data.dataset import Dataset

log = logging.getLogger(__name__)
DEFAULT_N_SPLITS = DEFAULT_N_FOLDS
DEFAULT_SEED = DEFAULT_FOLD_SEED


def folds_path(dataset: Dataset, n_splits: int, seed: int, folds_dir: Path = FOLDS_DIR) -> Path:
    """Fold file of a dataset; its name carries the dataset fingerprint so no other dataset reuses it."""
    return folds_file(dataset.name, n_splits, seed, folds_dir)


def folds_file(dataset_name: str, n_splits: int, seed: int, folds_dir: Path = FOLDS_DIR) -> Path:
    """Fold file of a dataset by its name (what a run's config.yaml records)."""
    return Path(folds_dir) / f"{dataset_name}_k{n_splits}_s{seed}.csv"


def read_fold_file(path: Path) -> pd.DataFrame:
    """A fold file as written (ID text, fold an integer), without the dataset checks of ``load_folds``."""
    folds = read_table(path, dtype={"fold": str})
    _check_fold_values(folds, path)
    return folds


def strata(train: pd.DataFrame, n_splits: int) -> pd.Series:
    """Label x lymph-count-quantile strata, with as many bins (3, 2 or 1) as keep each stratum >= n_splits."""
    for n_bins in (3, 2, 1):
        bins = pd.qcut(train["log_lymph"].rank(method="first"), n_bins, labels=False)
        groups = train["LABEL"].astype(str) + "_" + bins.astype(str)
        if groups.value_counts().min() >= n_splits:
            return groups
    return train["LABEL"].astype(str)


def make_folds(dataset: Dataset, n_splits: int = DEFAULT_N_SPLITS, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Seeded StratifiedKFold over train patients: a table ``ID, fold`` sorted by ID."""
    train = dataset.train.sort_index()
    if n_splits < 2:
        raise DataError(f"--n-folds {n_splits} must be >= 2")
    if train["LABEL"].value_counts().min() < n_splits:
        raise DataError(f"{dataset.root}: fewer patients of a class than {n_splits} folds")
    from sklearn.model_selection import StratifiedKFold  # only when a fold file is made (once per dataset)
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    fold = np.empty(len(train), dtype=int)
    for k, (_, held_out) in enumerate(splitter.split(train, strata(train, n_splits))):
        fold[held_out] = k
    return pd.DataFrame({"ID": train.index, "fold": fold})


def fold_counts(folds: pd.DataFrame, dataset: Dataset) -> pd.DataFrame:
    """Per-fold class counts (reactive, tumoral, total)."""
    labels = dataset.patients.loc[folds["ID"], "LABEL"].to_numpy()
    table = pd.crosstab(pd.Series(folds["fold"].to_numpy(), name="fold"), pd.Series(labels, name="label"))
    table = table.rename(columns={0: "reactive", 1: "tumoral"})
    table.columns.name = None
    return table.assign(total=table.sum(axis=1))


def load_folds(dataset: Dataset, n_splits: int = DEFAULT_N_SPLITS, seed: int = DEFAULT_SEED,
               folds_dir: Path = FOLDS_DIR) -> pd.DataFrame:
    """Read the dataset's fold file, writing it (and its class counts) first if it does not exist."""
    path = folds_path(dataset, n_splits, seed, folds_dir)
    if not path.exists():
        folds = make_folds(dataset, n_splits, seed)
        atomic_write_csv(fold_counts(folds, dataset), path.with_name(path.stem + "_counts.csv"), index=True)
        atomic_write_csv(folds, path)
        log.info("wrote %s", path)
    folds = read_table(path, dtype={"fold": str})
    _check_folds(folds, dataset, n_splits, path)  # its value check made the folds integers, in place
    return folds


def _check_fold_values(folds: pd.DataFrame, path: Path) -> None:
    """Every fold value an integer (read as text: 'x' or an empty cell is named, not a parser error); in place."""
    if "fold" not in folds.columns:
        raise DataError(f"{path}: expected columns ID,fold")
    bad = folds.loc[~folds["fold"].fillna("").astype(str).str.fullmatch(r"\d+"), ["ID", "fold"]]
    if len(bad):
        pid, value = bad.iloc[0]
        raise DataError(f"{path}: fold of patient {pid} is {'empty' if pd.isna(value) or value == '' else repr(value)}, "
                        f"expected an integer (edited by hand? restore it: fold files are written once)")
    folds["fold"] = folds["fold"].astype(int)


def _check_folds(folds: pd.DataFrame, dataset: Dataset, n_splits: int, path: Path) -> None:
    """The fold file must cover exactly the train patients, each once, with folds 0..k-1."""
    if list(folds.columns) != ["ID", "fold"] or folds["ID"].duplicated().any():
        raise DataError(f"{path}: expected columns ID,fold with unique IDs")
    _check_fold_values(folds, path)
    if set(folds["ID"]) != set(dataset.train.index):
        raise DataError(f"{path}: patient IDs differ from the train patients of {dataset.root}")
    if set(folds["fold"]) != set(range(n_splits)):
        raise DataError(f"{path}: folds are not 0..{n_splits - 1}")
