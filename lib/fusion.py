"""Late fusion of several runs' patient probabilities: loading compatible runs, fusing, the search space.

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

Tuning (second half of this module, used by ensemble.py): a seeded Optuna study (lib.study) over one
weight per run, the method and the threshold maximises the pooled OOF BA, the equal-weight probability
mean at 0.5 enqueued first. The honest estimate repeats the search for each fold k on the OOF of the
other folds only (in-memory studies) and scores fold k; each model alone is reported at 0.5 and at its
own threshold (tuned in-sample, and tuned on the other folds).
"""
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from lib.errors import DataError
from lib.metrics import binary_scores
from lib.runs import read_predictions

METHODS = ("prob_mean", "logit_mean", "rank_mean")
THRESHOLD_RANGE = (0.05, 0.95)
EPS = 1e-6


@dataclass
class RunSet:
    """OOF and test probabilities of compatible runs (one column per run, rows by patient ID)."""

    names: list[str]
    paths: list[Path]
    oof: pd.DataFrame
    target: pd.Series
    fold: pd.Series
    test: pd.DataFrame
    configs: list[dict] = field(repr=False)

    @property
    def n_folds(self) -> int:
        return int(self.fold.nunique())

    def signatures(self) -> list[dict]:
        """Name, path and hashes (OOF IDs+folds+targets, test IDs) of each run, for best_params.json."""
        return [{"name": n, "path": str(p.resolve()), **prediction_hashes(self.fold, self.target, self.test.index)}
                for n, p in zip(self.names, self.paths)]


@dataclass
class FusionParams:
    """A fusion: normalised weights per run, method and decision threshold."""

    weights: dict[str, float]
    method: str = "prob_mean"
    threshold: float = 0.5


def digest(lines) -> str:
    """Short SHA-1 of sorted text lines."""
    return hashlib.sha1("\n".join(sorted(map(str, lines))).encode()).hexdigest()[:12]


def prediction_hashes(fold: pd.Series, target: pd.Series, test_ids) -> dict[str, str]:
    """Hashes identifying the OOF patients with their folds and targets, and the test IDs."""
    oof_lines = [f"{i}:{fold[i]}:{target[i]}" for i in fold.index]
    return {"oof_hash": digest(oof_lines), "test_ids_hash": digest(test_ids)}


def read_run_config(run_dir: Path) -> dict:
    """A run's config.yaml ({} when absent)."""
    path = Path(run_dir) / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def _read_run(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One run's OOF (indexed by ID) and test table (indexed by ID), checked."""
    oof, test = read_predictions(run_dir)
    for name, table in (("oof.csv", oof), ("test.csv", test)):
        if table["ID"].duplicated().any():
            raise DataError(f"{Path(run_dir) / name}: duplicate patient IDs")
        if not table["proba"].between(0, 1).all():
            raise DataError(f"{Path(run_dir) / name}: probabilities outside [0, 1]")
    fold_columns = {c for c in test.columns if c.startswith("fold_")}
    if fold_columns and fold_columns != {f"fold_{k}" for k in oof["fold"].unique()}:
        raise DataError(f"{Path(run_dir) / 'test.csv'}: per-fold columns do not match the folds of oof.csv")
    return oof.set_index("ID").sort_index(), test.set_index("ID").sort_index()


def _check_same(name: str, ref_name: str, oof: pd.DataFrame, ref: pd.DataFrame, test, ref_test) -> None:
    """Refuse a run whose patients, targets, folds or test IDs differ from the first run's."""
    if set(oof.index) != set(ref.index):
        n_missing, n_extra = len(ref.index.difference(oof.index)), len(oof.index.difference(ref.index))
        raise DataError(f"{name}: OOF patient set differs from {ref_name} ({n_missing} missing, {n_extra} extra)")
    for column, what in (("target", "targets"), ("fold", "folds")):
        differ = oof[column].ne(ref.loc[oof.index, column])
        if differ.any():
            raise DataError(f"{name}: {what} differ from {ref_name} for {differ.sum()} patient(s), "
                            f"e.g. {differ[differ].index[0]}")
    if set(test.index) != set(ref_test.index):
        raise DataError(f"{name}: test patient set differs from {ref_name}")


def load_runs(run_dirs: list[str | Path]) -> RunSet:
    """Load runs for fusion; refuse duplicates and runs whose patients, targets, folds or data differ."""
    paths = [Path(p) for p in run_dirs]
    names = [p.resolve().name for p in paths]
    if not paths or len(set(names)) != len(names):
        raise DataError(f"runs {', '.join(map(str, paths)) or '(none)'}: need at least one run, with distinct names")
    tables = [_read_run(p) for p in paths]
    configs = [read_run_config(p) for p in paths]
    for path, (oof, test), config in zip(paths[1:], tables[1:], configs[1:]):
        _check_same(str(path), str(paths[0]), oof, tables[0][0], test, tables[0][1])
        _check_dataset(path, config, paths[0], configs[0])
    ref = tables[0][0]
    return RunSet(names=names, paths=paths, target=ref["target"].astype(int), fold=ref["fold"].astype(int),
                  oof=pd.DataFrame({n: t[0]["proba"] for n, t in zip(names, tables)}).loc[ref.index],
                  test=pd.DataFrame({n: t[1]["proba"] for n, t in zip(names, tables)}), configs=configs)


def _check_dataset(path: Path, config: dict, ref_path: Path, ref_config: dict) -> None:
    """Runs recording their dataset name must name the same one."""
    name, ref = config.get("dataset_name"), ref_config.get("dataset_name")
    if name and ref and name != ref:
        raise DataError(f"{path}: trained on dataset {name}, but {ref_path} on {ref}")


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


def weight_param(name: str) -> str:
    """Optuna parameter name of a run's fusion weight."""
    return f"fusion_w_{name}"


def suggest_params(trial, names: list[str]) -> FusionParams:
    """The fusion search space: one weight per run in [0, 1], a method, a threshold."""
    raw = {n: trial.suggest_float(weight_param(n), 0.0, 1.0) for n in names}
    method = trial.suggest_categorical("fusion_method", list(METHODS))
    threshold = trial.suggest_float("fusion_threshold", *THRESHOLD_RANGE)
    return FusionParams(weights=raw, method=method, threshold=threshold)


def params_from_trial(params: dict, names: list[str]) -> FusionParams:
    """FusionParams (normalised weights) from an Optuna trial's params."""
    w = normalise_weights({n: params[weight_param(n)] for n in names}, names)
    return FusionParams(weights=dict(zip(names, w.tolist())), method=params["fusion_method"],
                        threshold=float(params["fusion_threshold"]))


def equal_trial_params(names: list[str]) -> dict:
    """Trial params of the baseline blend: equal weights, probability mean, threshold 0.5."""
    return {**{weight_param(n): 1.0 for n in names}, "fusion_method": "prob_mean", "fusion_threshold": 0.5}


def best_threshold(target: pd.Series, score: pd.Series, grid: np.ndarray | None = None) -> float:
    """Threshold in THRESHOLD_RANGE maximising BA (ties: the one closest to 0.5)."""
    grid = np.round(np.linspace(*THRESHOLD_RANGE, 91), 4) if grid is None else grid
    bas = balanced_accuracy(target, score, grid)
    best = np.flatnonzero(bas >= bas.max() - 1e-12)
    return float(grid[best[np.argmin(np.abs(grid[best] - 0.5))]])


# --- tuning: the Optuna study over the fusion search space, its honest (nested) estimate, baselines ---


def make_objective(probas: pd.DataFrame, target: pd.Series):
    """Optuna objective: pooled BA of the fused OOF prediction (ranks anchored on ``probas`` itself)."""
    names = list(probas.columns)

    def objective(trial) -> float:
        return fused_ba(probas, target, suggest_params(trial, names), reference=probas)
    return objective


def tune(probas: pd.DataFrame, target: pd.Series, study, n_trials: int, desc: str) -> FusionParams:
    """Top a study up to ``n_trials`` (equal-weight blend enqueued first) and return its best fusion."""
    from lib.study import run_trials
    names = list(probas.columns)
    if not study.trials:
        study.enqueue_trial(equal_trial_params(names))
    run_trials(study, make_objective(probas, target), n_trials, desc)
    return params_from_trial(study.best_params, names)


def nested_estimate(runs: RunSet, run_dir: Path, study_name: str, n_trials: int, seed: int) -> dict:
    """Honest BA: for each fold k, tune on the OOF of the other folds, score fold k; mean±std over folds.

    The per-fold studies are seeded and held in memory: a re-run repeats them (fast) instead of storing them.
    """
    from lib.study import MEMORY, open_study
    per_fold, params = {}, {}
    for k in sorted(runs.fold.unique()):
        tune_ids, held_ids = runs.fold.index[runs.fold != k], runs.fold.index[runs.fold == k]
        study = open_study(f"{study_name}_nested_fold{k}", MEMORY, run_dir, seed + 1 + int(k))
        best = tune(runs.oof.loc[tune_ids], runs.target, study, n_trials, f"nested fold {k}")
        per_fold[int(k)] = fused_ba(runs.oof.loc[held_ids], runs.target, best, reference=runs.oof.loc[tune_ids])
        params[int(k)] = vars(best)
    values = np.array(list(per_fold.values()))
    return {"per_fold_ba": per_fold, "ba_mean": float(values.mean()), "ba_std": float(values.std()),
            "params_per_fold": params, "trials_per_fold": n_trials}


def model_baseline(oof: pd.Series, target: pd.Series, fold: pd.Series) -> dict:
    """One model alone on the same folds: BA at 0.5, at its in-sample best threshold, and nested."""
    per_fold_05, per_fold_nested = [], []
    for k in sorted(fold.unique()):
        held, rest = fold.index[fold == k], fold.index[fold != k]
        per_fold_05.append(balanced_accuracy(target[held], oof[held], 0.5))
        per_fold_nested.append(balanced_accuracy(target[held], oof[held], best_threshold(target[rest], oof[rest])))
    threshold = best_threshold(target, oof)
    return {"ba_at_0.5_mean": float(np.mean(per_fold_05)), "ba_at_0.5_std": float(np.std(per_fold_05)),
            "pooled_ba_at_0.5": balanced_accuracy(target, oof, 0.5),
            "tuned_threshold": threshold, "pooled_ba_at_tuned_threshold": balanced_accuracy(target, oof, threshold),
            "nested_tuned_threshold_ba_mean": float(np.mean(per_fold_nested)),
            "nested_tuned_threshold_ba_std": float(np.std(per_fold_nested)),
            "auc": binary_scores(target, oof, 0.5)["auc"]}


def per_fold_ba(score: pd.Series, target: pd.Series, fold: pd.Series, threshold: float) -> dict:
    """BA of a score in each fold, with mean and std."""
    values = {int(k): balanced_accuracy(target[fold == k], score[fold == k], threshold)
              for k in sorted(fold.unique())}
    return {"per_fold_ba": values, "ba_mean": float(np.mean(list(values.values()))),
            "ba_std": float(np.std(list(values.values())))}


def is_clinical_run(config: dict) -> bool:
    """A run made by train_clinical.py (its config says stage: clinical)."""
    return config.get("stage") == "clinical"


def ensemble(runs: RunSet, run_dir: Path, n_trials: int, nested_trials: int, storage: str | None,
             seed: int, name: str) -> dict:
    """Tune the fusion on all OOF, estimate it honestly, compare with each model; write every output."""
    from lib.study import open_study, save_study_plots, top_trials_summary
    study = open_study(name, storage, run_dir, seed)
    best = tune(runs.oof, runs.target, study, n_trials, "fusion study")
    fused = fuse(runs.oof, best, reference=runs.oof)
    metrics = {"in_sample": {"pooled_ba": fused_ba(runs.oof, runs.target, best, runs.oof),
                             "auc": binary_scores(runs.target, fused)["auc"],
                             **per_fold_ba(fused, runs.target, runs.fold, best.threshold)},
               "nested": nested_estimate(runs, run_dir, name, nested_trials, seed),
               "equal_weight_prob_mean_0.5": per_fold_ba(fuse(runs.oof, FusionParams({})), runs.target, runs.fold, 0.5),
               "models": {n: model_baseline(runs.oof[n], runs.target, runs.fold) for n in runs.names},
               "clinical_runs": [n for n, c in zip(runs.names, runs.configs) if is_clinical_run(c)],
               "top_trials": top_trials_summary(study), "n_trials": n_trials}
    write_outputs(runs, run_dir, best, fused, metrics, _safe_url(storage))
    save_study_plots(study, run_dir)
    return {"params": best, "metrics": metrics}


def write_outputs(runs: RunSet, run_dir: Path, best: FusionParams, fused: pd.Series, metrics: dict,
                  storage: str) -> None:
    """best_params.json, metrics.json, the fused oof.csv and the ROC of every model and the blend."""
    from lib.io import atomic_write_csv, atomic_write_json
    from lib.plots import plot_roc
    run_dir = Path(run_dir)
    atomic_write_json({**vars(best), "runs": runs.signatures(), "n_folds": runs.n_folds,
                       "dataset_name": runs.configs[0].get("dataset_name"),
                       "data_dir": runs.configs[0].get("data_dir"), "storage": storage}, run_dir / "best_params.json")
    atomic_write_json(metrics, run_dir / "metrics.json")
    oof = pd.DataFrame({"ID": runs.oof.index, "fold": runs.fold.to_numpy(), "target": runs.target.to_numpy(),
                        "proba": fused.to_numpy()})
    atomic_write_csv(oof, run_dir / "oof.csv")
    curves = {n: (runs.target, runs.oof[n]) for n in runs.names} | {"blend": (runs.target, fused)}
    plot_roc(curves, run_dir / "roc.png", points={"blend": best.threshold},
             title=f"OOF ROC (blend: {best.method}, threshold {best.threshold:.2f})")


def _safe_url(storage: str | None) -> str:
    """Storage URL with any password hidden (the default is the run's study.db)."""
    if storage is None:
        return "sqlite:///<run_dir>/study.db"
    from sqlalchemy.engine import make_url
    return make_url(storage).render_as_string(hide_password=True)
