"""Clinical model: imputation + scaling + class-balanced logistic regression, C chosen by inner CV.

The whole Pipeline is fitted inside each outer fold on the training patients only. The inverse
regularisation C is chosen by ``LogisticRegressionCV`` with stratified inner splits of those same
training patients, scored by (unweighted) log loss: with ~18 patients per inner fold, balanced accuracy
is a step function with many ties across the C grid (ties go to the smallest C, i.e. the strongest
regularisation), while log loss is smooth and rewards calibrated probabilities. The scorer is a plain
NumPy log loss (same values as sklearn's ``neg_log_loss``, without its per-call validation overhead)
and the solver is ``newton-cholesky`` (exact for a handful of features): together ~15x faster than the
defaults, with the same chosen C and coefficients.
Coefficients are on the standardised features (one row per fold in ``coefficients.csv``).
"""
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from lib.cli import Stage
from lib.cv import FitPredict, cross_validate
from lib.errors import DataError
from lib.features import feature_table
from lib.io import atomic_write_csv, atomic_write_json
from lib.metrics import fold_metrics
from lib.plots import plot_roc

log = logging.getLogger(__name__)
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


def make_model(n_inner: int, seed: int) -> Pipeline:
    """Unfitted Pipeline: median imputation, standard scaling, LogisticRegressionCV (balanced, L2)."""
    inner = StratifiedKFold(n_splits=n_inner, shuffle=True, random_state=seed)
    logreg = LogisticRegressionCV(Cs=C_GRID, l1_ratios=(0.0,), cv=inner, scoring=neg_log_loss,
                                  solver="newton-cholesky", class_weight="balanced", max_iter=1000,
                                  use_legacy_attributes=False)
    return Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                     ("scale", StandardScaler()), ("logreg", logreg)])


def coefficients(model: Pipeline, feature_names: list[str]) -> dict:
    """Chosen C, intercept and standardised-feature coefficients of a fitted model."""
    logreg = model.named_steps["logreg"]
    row = {"C": float(np.ravel(logreg.C_)[0]), "intercept": float(logreg.intercept_[0])}
    row.update({name: float(c) for name, c in zip(feature_names, logreg.coef_[0])})
    return row


def make_fit_predict(features: pd.DataFrame, labels: pd.Series, run_dir: Path, seed: int,
                     n_inner: int = 5) -> FitPredict:
    """Per-fold fit/predict for lib.cv: fits on the train IDs only, saves the fold's coefficients."""
    def fit_predict(train: pd.Index, valid: pd.Index, test: pd.Index, fold: int):
        y = labels.loc[train].astype(int)
        model = make_model(inner_splits(y, n_inner), seed).fit(features.loc[train], y)
        coef = {"fold": fold, **coefficients(model, list(features.columns))}
        atomic_write_json(coef, Path(run_dir) / "folds" / f"coefficients_{fold}.json")
        log.info("fold %d: C=%.3g", fold, coef["C"])
        return _positive_proba(model, features.loc[valid]), _positive_proba(model, features.loc[test])
    return fit_predict


def _positive_proba(model: Pipeline, X: pd.DataFrame) -> pd.Series:
    """P(tumoral) per patient."""
    column = list(model.classes_).index(1)
    return pd.Series(model.predict_proba(X)[:, column], index=X.index)


def write_coefficients(run_dir: Path) -> pd.DataFrame:
    """Gather the per-fold coefficient files into ``coefficients.csv``."""
    paths = sorted((Path(run_dir) / "folds").glob("coefficients_*.json"))
    table = pd.DataFrame([pd.read_json(p, typ="series") for p in paths]).sort_values("fold")
    table["fold"] = table["fold"].astype(int)
    atomic_write_csv(table, Path(run_dir) / "coefficients.csv")
    return table


def train_clinical(stage: Stage) -> dict:
    """Cross-validate the clinical model on the committed folds; write predictions, metrics, coefficients, ROC."""
    features = feature_table(stage.dataset, stage.args.feature_set)
    log.info("feature set %s: %s", stage.args.feature_set, ", ".join(features.columns))
    fit_predict = make_fit_predict(features, stage.dataset.train["LABEL"], stage.run_dir, stage.args.seed,
                                   stage.args.inner_folds)
    oof, _ = cross_validate(stage, fit_predict)
    write_coefficients(stage.run_dir)
    plot_roc({"clinical": (oof["target"], oof["proba"])}, Path(stage.run_dir) / "roc.png",
             points={"clinical": 0.5}, title=f"OOF ROC, {stage.args.experiment}")
    return fold_metrics(oof, 0.5)
