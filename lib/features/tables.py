"""Patient-level feature tables for the tabular (clinical) model, one registry of named feature sets.

- ``clinical``: age, log lymphocyte count, male indicator (lib.data.clinical.CLINICAL_FEATURES);
- ``clinical+ncells``: the same plus ``log_n_images`` (log of the number of cells in the bag);
- ``clinical+morpho``: the clinical features plus pooled per-cell morphometry
  (``lib.features.morphometry.cache.pooled_morphometry``);
- ``clinical+morpho-shuffled``: a control, morphometry rows permuted across patients (seeded);
- ``clinical+encoder``: the clinical features plus a frozen cell encoder's cells pooled per patient (columns
  ``enc_*``, reduced to principal components inside each training fold by the clinical stage). The encoder is
  torch code above this layer: the stage embeds and pools the cells (lib.cnn.pooled.encoder_table) and hands the
  block in as ``extra``.
"""
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from lib.core.errors import DataError
from lib.core.paths import CACHE_DIR
from lib.data.clinical import CLINICAL_FEATURES
from lib.data.dataset import Dataset


def clinical_table(dataset: Dataset, cache_dir: Path = CACHE_DIR) -> pd.DataFrame:
    """The clinical features of every patient (train and test)."""
    return dataset.patients[CLINICAL_FEATURES].astype(float)


def ncells_table(dataset: Dataset, cache_dir: Path = CACHE_DIR) -> pd.DataFrame:
    """Clinical features plus the log of the number of cell images in each bag."""
    table = clinical_table(dataset)
    table["log_n_images"] = np.log(dataset.patients["n_images"].astype(float))
    return table


def morpho_table(dataset: Dataset, cache_dir: Path = CACHE_DIR) -> pd.DataFrame:
    """Clinical features plus pooled per-cell morphometry (computed and cached by its own module)."""
    from lib.features.morphometry.cache import pooled_morphometry
    return with_pooled(dataset, pooled_morphometry(dataset, cache_dir=cache_dir), "pooled morphometry")


def with_pooled(dataset: Dataset, block: pd.DataFrame, what: str) -> pd.DataFrame:
    """Clinical features joined with a per-patient block (``what`` names it in the error when a patient has no row)."""
    missing = dataset.patients.index.difference(block.index)
    if len(missing):
        raise DataError(f"{what} of {dataset.name}: no row for patient(s) {', '.join(missing[:5])}")
    return clinical_table(dataset).join(block.loc[dataset.patients.index].astype(float))


def shuffled_morpho_table(dataset: Dataset, cache_dir: Path = CACHE_DIR, seed: int = 0) -> pd.DataFrame:
    """Control: morphometry rows permuted across patients (label-free noise with the same distribution)."""
    table = morpho_table(dataset, cache_dir)
    morpho = table.columns.difference(CLINICAL_FEATURES, sort=False)
    order = np.random.default_rng(seed).permutation(len(table))
    table[morpho] = table[morpho].to_numpy()[order]
    return table


def encoder_set_table(dataset: Dataset, cache_dir: Path = CACHE_DIR, extra: pd.DataFrame | None = None) -> pd.DataFrame:
    """Clinical features plus the pooled encoder block ``extra`` (one row per patient, built by the stage)."""
    if extra is None:
        raise DataError("feature set clinical+encoder: no pooled encoder block given (train_clinical.py --encoder)")
    return with_pooled(dataset, extra, "pooled encoder cells")


FEATURE_SETS: dict[str, Callable[..., pd.DataFrame]] = {
    "clinical": clinical_table,
    "clinical+ncells": ncells_table,
    "clinical+morpho": morpho_table,
    "clinical+morpho-shuffled": shuffled_morpho_table,
    "clinical+encoder": encoder_set_table,
}


MORPHOMETRY_SETS = frozenset({"clinical+morpho", "clinical+morpho-shuffled"})  # sets built on cell morphometry
ENCODER_SETS = frozenset({"clinical+encoder"})  # sets built on a frozen cell encoder (train_clinical.py --encoder)
ENCODER_PREFIX = "enc_"  # the pooled encoder columns, projected inside each training fold
ENCODER_POOLINGS = ("mean", "quantiles")  # per patient: the embedding mean, or mean + 10/50/90th percentiles


def uses_morphometry(feature_set: str) -> bool:
    """Whether a feature set includes pooled cell morphometry (its run then also draws the morphometry plots)."""
    return feature_set in MORPHOMETRY_SETS


def uses_encoder(feature_set: str) -> bool:
    """Whether a feature set includes a frozen encoder's pooled cells (it then needs ``--encoder``)."""
    return feature_set in ENCODER_SETS


def feature_table(dataset: Dataset, feature_set: str, cache_dir: Path = CACHE_DIR,
                  extra: pd.DataFrame | None = None) -> pd.DataFrame:
    """Features of a named set, a DataFrame indexed by patient ID (train and test rows); ``extra``: the pooled
    encoder block of an encoder set."""
    if feature_set not in FEATURE_SETS:
        raise DataError(f"feature set {feature_set!r} is unknown (choose from {', '.join(FEATURE_SETS)})")
    if uses_encoder(feature_set):
        return FEATURE_SETS[feature_set](dataset, cache_dir, extra)
    return FEATURE_SETS[feature_set](dataset, cache_dir)
