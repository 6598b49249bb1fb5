"""Late fusion maths: weighted means of several models' patient probabilities, and balanced accuracy.

Methods (weights are normalised to sum 1; all zero means equal weights):
- ``prob_mean``: weighted mean of the probabilities;
- ``logit_mean``: sigmoid of the weighted mean of the logits (probabilities clipped to [1e-6, 1-1e-6]);
- ``rank_mean``: weighted mean of each model's *reference ECDF* value, i.e. the fraction of that model's
  reference OOF probabilities below the score (ties count half). The reference is always a set of OOF
  predictions (the tuning patients), so the transform is defined for any new score: OOF patients are
  mapped onto the OOF itself (their mid-rank / n), held-out folds and the test set onto the OOF of
  the patients the fusion was tuned on. Test scores are fold-averaged and hence a bit less spread than
  OOF scores, so the mapping is an approximation. The fused value lies in [0, 1] and is thresholded
  like a probability.

Loading the runs to fuse is lib.fusion.runs; tuning the fusion (Optuna) is lib.fusion.tune.
"""
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lib.core.errors import DataError

METHODS = ("prob_mean", "logit_mean", "rank_mean")
THRESHOLD_RANGE = (0.05, 0.95)
# The submitted decision threshold (ensemble.py --threshold): the study's, a fixed 0.5, or the OOF prevalence
# quantile; the nested estimate scores all three (lib.fusion.tune.policy_threshold)
THRESHOLD_POLICIES = ("tuned", "0.5", "prevalence")
# How the weights are set (ensemble.py --fusion): an Optuna study, or equal (nothing fitted; lib.fusion.tune)
FUSIONS = ("study", "equal")
# Measured (BENCHMARKS.md, the pipeline's four models at 0.5): equal weights 0.922 on fold seeds 43-45 against the
# study's nested 0.910-0.923, and 0.901 against 0.879±0.015 on seeds 42 and 46 (bench_pipeline.py, 2026-12-06)
DEFAULT_FUSION = "equal"
EPS = 1e-6


@dataclass
class FusionParams:
    """A fusion: normalised weights per run, method and decision threshold."""

    weights: dict[str, float]
    method: str = "prob_mean"
    threshold: float = 0.5


def normalise_weights(weights: dict[str, float], names: list[str]) -> np.ndarray:
    """Weights in ``names`` order, summing to 1 (equal when all are zero)."""
    w = np.array([float(weights.get(n, 0.0)) for n in names])
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise DataError(f"fusion weights {weights}: must be finite and non-negative")
    return w / w.sum() if w.sum() > 0 else np.full(len(names), 1.0 / len(names))


def ecdf(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mid-rank empirical CDF of ``reference`` evaluated at ``values`` (ties count half)."""
    ref = np.sort(np.asarray(reference, dtype=float))
    below = np.searchsorted(ref, values, side="left")
    at_or_below = np.searchsorted(ref, values, side="right")
    return (below + at_or_below) / (2.0 * len(ref))


def transform(probas: pd.DataFrame, method: str, reference: pd.DataFrame | None) -> pd.DataFrame:
    """Per-model scores on the scale the method averages (probability, logit or reference ECDF)."""
    if method == "prob_mean":
        return probas
    if method == "logit_mean":
        p = probas.clip(EPS, 1 - EPS)
        return np.log(p / (1 - p))
    if method == "rank_mean":
        ref = probas if reference is None else reference
        return pd.DataFrame({c: ecdf(ref[c].to_numpy(), probas[c].to_numpy()) for c in probas.columns},
                            index=probas.index)
    raise DataError(f"fusion method {method!r} is unknown (choose from {', '.join(METHODS)})")


def fuse(probas: pd.DataFrame, params: FusionParams, reference: pd.DataFrame | None = None) -> pd.Series:
    """Fused score in [0, 1] per patient; ``reference`` (OOF probabilities) anchors ``rank_mean``."""
    names = list(probas.columns)
    if probas.isna().any().any():
        raise DataError(f"predictions of {', '.join(names)}: contain NaN")
    w = normalise_weights(params.weights, names)
    fused = transform(probas, params.method, reference).to_numpy() @ w
    if params.method == "logit_mean":
        fused = 1.0 / (1.0 + np.exp(-fused))
    return pd.Series(fused, index=probas.index, name="proba")


def balanced_accuracy(target, score, thresholds) -> float | np.ndarray:
    """BA of ``score >= t`` for one threshold or an array of them (vectorised; mean recall of present classes)."""
    y = np.asarray(target).astype(bool)
    t = np.atleast_1d(np.asarray(thresholds, dtype=float))
    pred = np.asarray(score, dtype=float)[None, :] >= t[:, None]
    recalls = [pred[:, y].mean(axis=1)] if y.any() else []
    recalls += [(~pred[:, ~y]).mean(axis=1)] if (~y).any() else []
    ba = np.mean(recalls, axis=0)
    return float(ba[0]) if np.ndim(thresholds) == 0 else ba


def fused_ba(probas: pd.DataFrame, target: pd.Series, params: FusionParams,
             reference: pd.DataFrame | None = None) -> float:
    """Balanced accuracy of the fused prediction at the params' threshold."""
    return balanced_accuracy(target.loc[probas.index], fuse(probas, params, reference), params.threshold)


def best_threshold(target: pd.Series, score: pd.Series, grid: np.ndarray | None = None) -> float:
    """Threshold in THRESHOLD_RANGE maximising BA (ties: the one closest to 0.5)."""
    grid = np.round(np.linspace(*THRESHOLD_RANGE, 91), 4) if grid is None else grid
    bas = balanced_accuracy(target, score, grid)
    best = np.flatnonzero(bas >= bas.max() - 1e-12)
    return float(grid[best[np.argmin(np.abs(grid[best] - 0.5))]])
