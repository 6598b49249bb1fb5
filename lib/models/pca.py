"""Whitened PCA kept as plain arrays: fitted by scikit-learn, applied and saved without it.

A fold's fitted preprocessing is written into its ``head.pt``; holding the projection as arrays (not a
pickled sklearn object) lets that file load with ``torch.load(weights_only=True)``, which cannot run code.
``transform`` computes exactly what ``PCA(whiten=True).transform`` computes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class WhitenedPCA:
    """Projection on the first principal components, scaled to unit variance."""

    mean: np.ndarray
    components: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, n_components: int, seed: int) -> WhitenedPCA:
        """Fit on the rows of x (scikit-learn's PCA, imported here only)."""
        from sklearn.decomposition import PCA
        pca = PCA(n_components=n_components, whiten=True, random_state=seed).fit(x)
        scale = np.sqrt(pca.explained_variance_)
        scale[scale < np.finfo(scale.dtype).eps] = np.finfo(scale.dtype).eps  # as sklearn clips rank-deficient data
        return cls(pca.mean_, pca.components_, scale)

    @property
    def n_features_in(self) -> int:
        """Dimension of the inputs."""
        return int(self.components.shape[1])

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(n, n_features_in) -> (n, n_components), the same operations in the same order as sklearn."""
        z = x @ self.components.T
        z -= np.reshape(self.mean, (1, -1)) @ self.components.T
        return z / self.scale

    def to_dict(self) -> dict:
        """Plain arrays, for a checkpoint (see ``from_dict``)."""
        return {"mean": self.mean, "components": self.components, "scale": self.scale}

    @classmethod
    def from_dict(cls, state: dict) -> WhitenedPCA:
        """Rebuild from ``state()`` (numpy arrays or tensors)."""
        return cls(*(np.asarray(state[k]) for k in ("mean", "components", "scale")))
