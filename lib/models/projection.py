"""A wide block of feature columns reduced to a few principal components inside a training fold, as plain numbers.

Used by the clinical stage for the pooled cells of a frozen encoder (feature set ``clinical+encoder``: hundreds to
thousands of columns for ~90 training patients): the block is standardised on the training patients, projected
on its first ``n`` principal components (whitened; the estimator standardises them again, so whitening changes
nothing but the scale of its coefficients) and replaced by the columns ``<prefix>pc0..``. ``params`` are lists
of floats (JSON, the fold's ``model_<k>.json``): predict.py applies the same numbers without scikit-learn.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lib.core.errors import DataError
from lib.models.pca import WhitenedPCA


@dataclass
class BlockProjection:
    """Standardise ``columns`` and project them on principal components (fitted on training rows only)."""

    columns: list[str]
    mean: np.ndarray
    std: np.ndarray
    pca: WhitenedPCA
    prefix: str

    @classmethod
    def fit(cls, table: pd.DataFrame, columns: list[str], n_components: int, seed: int,
            prefix: str) -> BlockProjection:
        """Fit on the rows of ``table`` (the training patients); at most one component per row or column."""
        x = table[columns].to_numpy(dtype=np.float64)
        if not np.isfinite(x).all():
            raise DataError(f"projected columns {columns[0]}..: missing or infinite values")
        mean, std = x.mean(axis=0), x.std(axis=0)
        std[std < 1e-12] = 1.0  # a constant column stays 0 after centring (as sklearn's StandardScaler)
        n = min(n_components, x.shape[0] - 1, x.shape[1])
        if n < 1:
            raise DataError(f"projected columns {columns[0]}..: {x.shape[0]} training rows, too few for a PCA")
        return cls(list(columns), mean, std, WhitenedPCA.fit((x - mean) / std, n, seed), prefix)

    @property
    def names(self) -> list[str]:
        """The component columns that replace the block."""
        return [f"{self.prefix}pc{i}" for i in range(self.pca.components.shape[0])]

    def transform(self, table: pd.DataFrame) -> pd.DataFrame:
        """``table`` with the block replaced by its components (the other columns first, unchanged)."""
        missing = [c for c in self.columns if c not in table.columns]
        if missing:
            raise DataError(f"projection: columns {', '.join(missing[:3])} are not in the feature table")
        x = (table[self.columns].to_numpy(dtype=np.float64) - self.mean) / self.std
        components = pd.DataFrame(self.pca.transform(x), index=table.index, columns=self.names)
        return table.drop(columns=self.columns).join(components)

    def to_dict(self) -> dict:
        """Plain lists (JSON), read back by ``from_dict``."""
        return {"columns": self.columns, "prefix": self.prefix, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "components": self.pca.components.tolist(), "scale": self.pca.scale.tolist(),
                "pca_mean": self.pca.mean.tolist()}

    @classmethod
    def from_dict(cls, params: dict) -> BlockProjection:
        """Rebuild from ``to_dict()``."""
        pca = WhitenedPCA.from_dict({"mean": params["pca_mean"], "components": params["components"],
                                      "scale": params["scale"]})
        return cls(list(params["columns"]), np.asarray(params["mean"]), np.asarray(params["std"]), pca,
                   params["prefix"])
