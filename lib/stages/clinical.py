"""The clinical stage: the clinical estimator cross-validated on the committed folds, with its outputs.

Writes into the run directory: the lib.stages.cv outputs (``folds/``, ``oof.csv``, ``test.csv``,
``metrics.json``), ``folds/model_<k>.json`` (the fitted model as plain numbers, for predict.py), ``folds/coefficients_<k>.json`` gathered into ``coefficients.csv`` (C, intercept and
the standardised-feature coefficients of every fold), ``roc.png``, and for feature sets built on
morphometry the segmentation and by-class PNGs.
"""
import logging
from pathlib import Path

import pandas as pd

from lib.core.io import atomic_write_csv, atomic_write_json
from lib.core.metrics import fold_metrics
from lib.core.plots import plot_roc
from lib.features.tables import feature_table, uses_morphometry
from lib.models import clinical as estimator
from lib.stages.context import Stage
from lib.stages.cv import FitPredict, cross_validate

log = logging.getLogger(__name__)


def make_fit_predict(features: pd.DataFrame, labels: pd.Series, run_dir: Path, seed: int,
                     n_inner: int = 5, C: str | float | None = None, penalty: str | None = None) -> FitPredict:
    """Per-fold fit/predict for lib.stages.cv: fits on the train IDs only, saves the fold's coefficients."""
    def fit_predict(train: pd.Index, valid: pd.Index, test: pd.Index, fold: int):
        y = labels.loc[train].astype(int)
        n_inner_used = estimator.inner_splits(y, n_inner) if C in (None, estimator.INNER_CV) else 0
        model = estimator.make_model(n_inner_used, seed, C, penalty).fit(features.loc[train], y)
        coef = {"fold": fold, **estimator.coefficients(model, list(features.columns))}
        atomic_write_json(coef, Path(run_dir) / "folds" / f"coefficients_{fold}.json")
        params = estimator.model_params(model, list(features.columns))
        atomic_write_json(params, model_path(run_dir, fold))
        log.info("fold %d: C=%.3g", fold, coef["C"])
        # scored from the saved numbers, as predict.py scores new patients
        return estimator.params_proba(params, features.loc[valid]), estimator.params_proba(params, features.loc[test])
    return fit_predict


def model_path(run_dir: Path, fold: int) -> Path:
    """The fitted model of one fold as plain numbers (JSON), what predict.py scores new patients with."""
    return Path(run_dir) / "folds" / f"model_{fold}.json"


def write_coefficients(run_dir: Path) -> pd.DataFrame:
    """Gather the per-fold coefficient files into ``coefficients.csv``."""
    paths = sorted((Path(run_dir) / "folds").glob("coefficients_*.json"))
    table = pd.DataFrame([pd.read_json(p, typ="series") for p in paths]).sort_values("fold")
    table["fold"] = table["fold"].astype(int)
    atomic_write_csv(table, Path(run_dir) / "coefficients.csv")
    return table


def train_clinical(stage: Stage, plots: bool = True) -> dict:
    """Cross-validate the clinical model on the committed folds; write predictions, metrics, coefficients and (with
    ``plots``) the ROC and the morphometry figures."""
    features = feature_table(stage.dataset, stage.args.feature_set, stage.args.cache_dir)
    log.info("feature set %s: %s", stage.args.feature_set, ", ".join(features.columns))
    fit_predict = make_fit_predict(features, stage.dataset.train["LABEL"], stage.run_dir, stage.args.seed,
                                   stage.args.inner_folds, stage.args.C, stage.args.penalty)
    oof, _ = cross_validate(stage, fit_predict)
    write_coefficients(stage.run_dir)
    if not plots:
        return fold_metrics(oof, 0.5)
    if uses_morphometry(stage.args.feature_set):
        from lib.features.morphometry.plots import write_morphometry_plots
        write_morphometry_plots(stage.dataset, stage.run_dir, stage.args.cache_dir)
    plot_roc({"clinical": (oof["target"], oof["proba"])}, Path(stage.run_dir) / "roc.png",
             points={"clinical": 0.5}, title=f"OOF ROC, {stage.args.experiment}")
    return fold_metrics(oof, 0.5)
