"""Clinical estimator: imputation + scaling + class-balanced logistic regression, C chosen by inner CV.

The whole Pipeline is fitted inside each outer fold on the training patients only. The inverse
regularisation C is chosen by ``LogisticRegressionCV`` with stratified inner splits of those same
training patients, scored by (unweighted) log loss: with ~18 patients per inner fold, balanced accuracy
is a step function with many ties across the C grid (ties go to the smallest C, i.e. the strongest
regularisation), while log loss is smooth and rewards calibrated probabilities. The scorer is a plain
NumPy log loss (same values as sklearn's ``neg_log_loss``, without its per-call validation overhead)
and the solver is ``newton-cholesky`` (exact for a handful of features): together ~15x faster than the
defaults, with the same chosen C and coefficients.
``--C <number>`` fixes C instead (no inner CV) and ``--penalty l1`` swaps the L2 penalty for a sparse L1
one (solver ``liblinear``); both are there for the hyper-parameter study (lib/hpo).
Coefficients are on the standardised features. The cross-validated stage is lib.stages.clinical.
"""
import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from lib.core.errors import DataError
from lib.models.options import INNER_CV, PENALTIES
from lib.models.projection import BlockProjection

C_GRID = np.logspace(-3, 3, 13)


def neg_log_loss(estimator, X, y) -> float:
    """Inner-CV score: mean log-likelihood of the true labels (sklearn's ``neg_log_loss``, in NumPy)."""
    p = np.clip(estimator.predict_proba(X)[:, list(estimator.classes_).index(1)], 1e-15, 1 - 1e-15)
    y = np.asarray(y)
    return float(np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def inner_splits(labels: pd.Series, wanted: int) -> int:
    """Number of inner folds: ``wanted``, or fewer when a class has fewer training patients."""
    n = min(wanted, int(labels.value_counts().min()))
    if n < 2 or labels.nunique() < 2:
        raise DataError(f"training patients {', '.join(labels.index[:3])}...: too few of a class for inner CV")
    return n


def make_model(n_inner: int, seed: int, C: str | float | None = None, penalty: str | None = None) -> Pipeline:
    """Unfitted Pipeline: median imputation, standard scaling, class-balanced logistic regression.

    C: None or 'cv' = chosen by inner CV, else fixed; penalty: None or 'l2', or 'l1'.
    """
    l1_ratio, solver = PENALTIES[penalty or "l2"]
    if C in (None, INNER_CV):
        inner = StratifiedKFold(n_splits=n_inner, shuffle=True, random_state=seed)
        logreg = LogisticRegressionCV(Cs=C_GRID, l1_ratios=(l1_ratio,), cv=inner, scoring=neg_log_loss,
                                      solver=solver, class_weight="balanced", max_iter=1000,
                                      use_legacy_attributes=False, random_state=seed)
    else:
        logreg = LogisticRegression(C=float(C), l1_ratio=l1_ratio, solver=solver, class_weight="balanced",
                                    max_iter=1000, random_state=seed)
    return Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                     ("scale", StandardScaler()), ("logreg", logreg)])


def coefficients(model: Pipeline, feature_names: list[str]) -> dict:
    """Chosen C, intercept and standardised-feature coefficients of a fitted model."""
    logreg = model.named_steps["logreg"]
    chosen = logreg.C_ if hasattr(logreg, "C_") else logreg.C  # inner-CV choice, or the fixed C
    row = {"C": float(np.ravel(chosen)[0]), "intercept": float(logreg.intercept_[0])}
    row.update({name: float(c) for name, c in zip(feature_names, logreg.coef_[0])})
    return row


def positive_proba(model: Pipeline, X: pd.DataFrame) -> pd.Series:
    """P(tumoral) per patient."""
    column = list(model.classes_).index(1)
    return pd.Series(model.predict_proba(X)[:, column], index=X.index)


def to_dict(model: Pipeline, feature_names: list[str]) -> dict:
    """Everything scoring needs, as plain numbers: feature names, the imputer's medians, the scaler's mean and
    scale, the logistic coefficients and intercept (what a fold's ``model_<k>.json`` holds: data, not code)."""
    logreg, scale = model.named_steps["logreg"], model.named_steps["scale"]
    if list(logreg.classes_) != [0, 1]:
        raise ValueError(f"clinical model: classes {list(logreg.classes_)}, expected [0, 1]")
    return {"features": list(feature_names), "impute": model.named_steps["impute"].statistics_.tolist(),
            "mean": scale.mean_.tolist(), "scale": scale.scale_.tolist(), "coef": logreg.coef_[0].tolist(),
            "intercept": float(logreg.intercept_[0])}


def proba_from_dict(params: dict, X: pd.DataFrame) -> pd.Series:
    """P(tumoral) per patient from a fitted model's ``to_dict`` (the same operations as the fitted Pipeline), after
    the fold's projection of a wide column block when it has one (``params["projection"]``, lib.models.projection)."""
    if "projection" in params:
        X = BlockProjection.from_dict(params["projection"]).transform(X)
    missing = [f for f in params["features"] if f not in X.columns]
    if missing:
        raise DataError(f"clinical model: features {', '.join(missing)} are not in the feature table")
    x = X[params["features"]].to_numpy(dtype=np.float64, copy=True)
    holes = np.isnan(x)
    x[holes] = np.take(np.asarray(params["impute"], dtype=np.float64), np.nonzero(holes)[1])
    x -= np.asarray(params["mean"])
    x /= np.asarray(params["scale"])
    logit = x @ np.asarray(params["coef"]) + params["intercept"]
    return pd.Series(expit(logit), index=X.index)  # scipy's logistic, as sklearn's predict_proba
