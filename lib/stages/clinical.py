"""The clinical stage: the clinical estimator cross-validated on the committed folds, with its outputs.

Writes into the run directory: the lib.stages.cv outputs (``folds/``, ``oof.csv``, ``test.csv``,
``metrics.json``), ``folds/model_<k>.json`` (the fitted model as plain numbers, for predict.py),
``folds/coefficients_<k>.json`` gathered into ``coefficients.csv`` (C, intercept and the standardised-feature
coefficients of every fold), ``roc.png``, and for feature sets built on morphometry the segmentation and by-class
PNGs. An encoder feature set (``--feature-set clinical+encoder --encoder runs/<ssl>/encoder.pth``) embeds every
cell with the frozen encoder (torch, imported only then), pools them per patient, and each fold reduces that
block to ``--encoder-pca`` principal components fitted on its training patients (lib.models.projection, saved
in the fold's model file with the encoder's content tag).
"""
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lib.core.io import atomic_write_csv, atomic_write_json
from lib.core.metrics import fold_metrics
from lib.core.plots import plot_roc
from lib.data.dataset import Dataset
from lib.features.tables import ENCODER_PREFIX, feature_table, uses_encoder, uses_morphometry
from lib.models import clinical as estimator
from lib.models.projection import BlockProjection
from lib.stages.context import Stage
from lib.stages.cv import FitPredict, cross_validate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClinicalFit:
    """How each fold fits the clinical model: seed, inner CV folds choosing C (when C is not fixed), C and penalty;
    for an encoder feature set, the encoder's identity (weights tag and pooling, checked by predict.py against the
    encoder it would use) and how many principal components the pooled encoder block is reduced to (a
    lib.models.projection.BlockProjection fitted on each fold's training patients)."""

    seed: int
    n_inner: int = 5
    C: str | float | None = None
    penalty: str | None = None
    encoder: dict | None = None  # None: no encoder block
    encoder_pca: int | None = None


def make_fit_predict(features: pd.DataFrame, labels: pd.Series, run_dir: Path, fit: ClinicalFit) -> FitPredict:
    """Per-fold fit/predict for lib.stages.cv: fits on the train IDs only (the encoder block's projection too),
    saves the fold's coefficients."""
    def fit_predict(train: pd.Index, valid: pd.Index, test: pd.Index, fold: int):
        y = labels.loc[train].astype(int)
        table, extra = features, {}
        if fit.encoder is not None:
            block = [c for c in features.columns if c.startswith(ENCODER_PREFIX)]
            fitted = BlockProjection.fit(features.loc[train], block, fit.encoder_pca, fit.seed, ENCODER_PREFIX)
            table = fitted.transform(features)
            extra = {"projection": fitted.to_dict(), "encoder": fit.encoder}
        n_inner_used = estimator.inner_splits(y, fit.n_inner) if fit.C in (None, estimator.INNER_CV) else 0
        model = estimator.make_model(n_inner_used, fit.seed, fit.C, fit.penalty).fit(table.loc[train], y)
        coef = {"fold": fold, **estimator.coefficients(model, list(table.columns))}
        atomic_write_json(coef, Path(run_dir) / "folds" / f"coefficients_{fold}.json")
        params = {**estimator.to_dict(model, list(table.columns)), **extra}
        atomic_write_json(params, model_path(run_dir, fold))
        log.info("fold %d: C=%.3g", fold, coef["C"])
        # scored from the saved numbers, as predict.py scores new patients
        return (estimator.proba_from_dict(params, features.loc[valid]),
                estimator.proba_from_dict(params, features.loc[test]))
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


def stage_features(dataset: Dataset, options: dict, cache_dir: Path, progress: bool) -> tuple[pd.DataFrame, dict]:
    """The feature table of a clinical run's options (``feature_set``, and for an encoder set ``encoder`` and
    ``encoder_pooling``), and the encoder's identity (empty without one): what training and predict.py both read."""
    feature_set = options["feature_set"]
    if not uses_encoder(feature_set):
        return feature_table(dataset, feature_set, cache_dir), {}
    from lib.cnn.pooled import encoder_table  # torch: only for an encoder set
    block, tag = encoder_table(dataset, Path(options["encoder"]), options["encoder_pooling"], cache_dir,
                               ENCODER_PREFIX, progress)
    identity = {"weights": str(options["encoder"]), "weights_tag": tag, "pooling": options["encoder_pooling"]}
    return feature_table(dataset, feature_set, cache_dir, block), identity


def train_clinical(stage: Stage, plots: bool = True) -> dict:
    """Cross-validate the clinical model on the committed folds; write predictions, metrics, coefficients and (with
    ``plots``) the ROC and the morphometry figures."""
    args = stage.args
    features, encoder = stage_features(stage.dataset, vars(args), args.cache_dir, args.progress)
    shown = [c for c in features.columns if not c.startswith(ENCODER_PREFIX)]
    if encoder:
        shown.append(f"{features.shape[1] - len(shown)} pooled encoder columns ({encoder['pooling']}) -> "
                     f"{args.encoder_pca} components per fold")
    log.info("feature set %s: %s", args.feature_set, ", ".join(shown))
    fit = ClinicalFit(seed=args.seed, n_inner=args.inner_folds, C=args.C, penalty=args.penalty,
                      encoder=encoder or None, encoder_pca=args.encoder_pca if encoder else None)
    fit_predict = make_fit_predict(features, stage.dataset.train["LABEL"], stage.run_dir, fit)
    oof, _ = cross_validate(stage, fit_predict)
    write_coefficients(stage.run_dir)
    if not plots:
        return fold_metrics(oof, 0.5)
    if uses_morphometry(stage.args.feature_set):
        from lib.features.morphometry.plots import write_morphometry_plots
        write_morphometry_plots(stage.dataset, stage.run_dir, stage.args.cache_dir)
    plot_roc({"clinical": (oof["target"], oof["proba"])}, Path(stage.run_dir) / "roc.png",
             points={"clinical": 0.5}, title=f"OOF ROC, {stage.experiment}")
    return fold_metrics(oof, 0.5)
