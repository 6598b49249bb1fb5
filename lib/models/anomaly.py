"""Anomaly model of the anomaly-aware MIL head: how far each cell lies from the cells of reactive patients.

Fitted on cells of REACTIVE patients of the training folds only (no leakage); the per-cell scores feed
``AnomalyAttentionHead`` (Kazeminia et al., anomaly-aware MIL).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lib.core.errors import DataError
from lib.models.pca import WhitenedPCA


@dataclass
class AnomalyModel:
    """Whitened PCA + a full-covariance GaussianMixture (its means and precision Cholesky factors) fitted on
    reactive training cells, with score standardisation; plain arrays (``to_dict``/``from_dict``)."""

    pca: WhitenedPCA
    means: np.ndarray
    precisions_cholesky: np.ndarray
    score_mean: float
    score_std: float

    def to_dict(self) -> dict:
        """Plain arrays and numbers, for a head.pt."""
        return {"pca": self.pca.to_dict(), "means": self.means, "precisions_cholesky": self.precisions_cholesky,
                "score_mean": self.score_mean, "score_std": self.score_std}

    @classmethod
    def from_dict(cls, state: dict) -> AnomalyModel:
        """Rebuild from ``state()``."""
        return cls(WhitenedPCA.from_dict(state["pca"]), np.asarray(state["means"]),
                   np.asarray(state["precisions_cholesky"]), float(state["score_mean"]), float(state["score_std"]))


def _check_features(features: np.ndarray, what: str) -> np.ndarray:
    """2-D finite float64 array, or ValueError (a programming error, not bad input)."""
    arr = np.asarray(features, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or not np.isfinite(arr).all():
        raise ValueError(f"{what}: need a non-empty finite (n_cells, dim) array, got shape {arr.shape}")
    return arr


def _min_mahalanobis(means: np.ndarray, precisions_cholesky: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Smallest Mahalanobis distance of each row of z to the mixture components (full covariances)."""
    dists = [np.linalg.norm((z - mu) @ chol, axis=1) for mu, chol in zip(means, precisions_cholesky)]
    return np.min(np.stack(dists, axis=1), axis=1)


def fit_anomaly_model(
    features_of_reactive_train_cells: np.ndarray,
    n_components: int = 4,
    seed: int = 0,
    pca_dim: int = 32,
    reg_covar: float = 1e-3,
) -> AnomalyModel:
    """Fit whitened PCA (<= pca_dim) + full-covariance GaussianMixture on cells of REACTIVE training patients only."""
    x = _check_features(features_of_reactive_train_cells, "anomaly model fit")
    if x.shape[0] < max(2, n_components + 1):
        raise DataError(f"anomaly model fit: {x.shape[0]} cells is too few for {n_components} mixture components")
    from sklearn.mixture import GaussianMixture
    pca = WhitenedPCA.fit(x, min(pca_dim, x.shape[0] - 1, x.shape[1]), seed)
    z = pca.transform(x)
    gmm = GaussianMixture(n_components, covariance_type="full", reg_covar=reg_covar, random_state=seed).fit(z)
    d = _min_mahalanobis(gmm.means_, gmm.precisions_cholesky_, z)
    return AnomalyModel(pca, gmm.means_, gmm.precisions_cholesky_, float(d.mean()), float(max(d.std(), 1e-6)))


def anomaly_scores(model: AnomalyModel, features: np.ndarray, standardize: bool = True) -> np.ndarray:
    """Per-cell min Mahalanobis distance to the mixture (float32, (n,)); standardised by the fit cells' mean/std."""
    x = _check_features(features, "anomaly scores")
    if x.shape[1] != model.pca.n_features_in:
        fitted = model.pca.n_features_in
        raise ValueError(f"anomaly scores: features have dim {x.shape[1]}, model was fitted on {fitted}")
    d = _min_mahalanobis(model.means, model.precisions_cholesky, model.pca.transform(x))
    if standardize:
        d = (d - model.score_mean) / model.score_std
    return d.astype(np.float32)
