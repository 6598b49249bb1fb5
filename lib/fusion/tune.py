"""Tuning a fusion: a seeded Optuna study over one weight per run, the method and the threshold, or none.

The study (lib.core.study) maximises the pooled OOF BA, the equal-weight probability mean at 0.5
enqueued first. ``fusion="equal"`` fits no weights: the equal-weight probability mean, with only the
threshold searched on the tuning patients (used by the ``tuned`` policy; 0.5 by default), so the blend
cannot overfit its weights on ~90 patients. The honest estimate repeats the search for each fold k on the
OOF of the other folds only (in-memory studies) and scores fold k, with the searched threshold and, to
validate that choice, with two fixed ones (0.5, and the tuning patients' prevalence quantile), plus the AUC
of the held-out scores; each model alone is reported at 0.5 and at its own threshold (tuned in-sample, and
tuned on the other folds).
"""
from pathlib import Path

import numpy as np
import pandas as pd

from lib.core.metrics import binary_scores
from lib.core.study import MEMORY, open_study, run_trials, top_trials_summary
from lib.fusion.fuse import (
    DEFAULT_FUSION,
    METHODS,
    THRESHOLD_POLICIES,
    THRESHOLD_RANGE,
    FusionParams,
    balanced_accuracy,
    best_threshold,
    fuse,
    fused_ba,
    normalise_weights,
)
from lib.fusion.runs import RunSet


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


def make_objective(probas: pd.DataFrame, target: pd.Series):
    """Optuna objective: pooled BA of the fused OOF prediction (ranks anchored on ``probas`` itself)."""
    names = list(probas.columns)

    def objective(trial) -> float:
        return fused_ba(probas, target, suggest_params(trial, names), reference=probas)
    return objective


def tune(probas: pd.DataFrame, target: pd.Series, study, n_trials: int, desc: str) -> FusionParams:
    """Top a study up to ``n_trials`` (equal-weight blend enqueued first) and return its best fusion."""
    names = list(probas.columns)
    if not study.trials:
        study.enqueue_trial(equal_trial_params(names))
    run_trials(study, make_objective(probas, target), n_trials, desc)
    return params_from_trial(study.best_params, names)


def equal_fusion(probas: pd.DataFrame, target: pd.Series) -> FusionParams:
    """Equal weights, probability mean; the threshold that maximises BA on these patients (for the ``tuned``
    policy)."""
    equal = FusionParams(weights={n: 1.0 / probas.shape[1] for n in probas.columns})
    return with_threshold(equal, best_threshold(target.loc[probas.index], fuse(probas, equal)))


def fit_fusion(probas: pd.DataFrame, target: pd.Series, fusion: str, study, n_trials: int, desc: str) -> FusionParams:
    """The fusion of ``probas``: the study's best (topped up to ``n_trials``) or the equal-weight mean."""
    return equal_fusion(probas, target) if fusion == "equal" else tune(probas, target, study, n_trials, desc)


def nested_estimate(runs: RunSet, run_dir: Path, study_name: str, *, n_trials: int, seed: int,
                    policy: str = "tuned", fusion: str = DEFAULT_FUSION) -> dict:
    """Honest BA: for each fold k, tune on the OOF of the other folds, score fold k at the ``policy``'s threshold
    (every policy is reported too); mean±std over folds.

    The per-fold studies are seeded and held in memory: a re-run repeats them (fast) instead of storing them.
    """
    per_fold, params, policies, held_scores = {}, {}, {p: {} for p in THRESHOLD_POLICIES}, []
    for k in sorted(runs.fold.unique()):
        tune_ids, held_ids = runs.fold.index[runs.fold != k], runs.fold.index[runs.fold == k]
        study = open_study(f"{study_name}_nested_fold{k}", MEMORY, run_dir, seed + 1 + int(k)) if fusion == "study" else None
        best = fit_fusion(runs.oof.loc[tune_ids], runs.target, fusion, study, n_trials, f"nested fold {k}")
        reference = runs.oof.loc[tune_ids]
        held = fuse(runs.oof.loc[held_ids], best, reference=reference)
        held_scores.append(held)
        tuned_on = fuse(reference, best, reference=reference)
        thresholds = {name: policy_threshold(name, best.threshold, tuned_on, runs.target.loc[tune_ids])
                      for name in THRESHOLD_POLICIES}
        for name, threshold in thresholds.items():
            policies[name][int(k)] = balanced_accuracy(runs.target.loc[held_ids], held, threshold)
        per_fold[int(k)] = policies[policy][int(k)]
        params[int(k)] = vars(with_threshold(best, thresholds[policy]))
    values = np.array(list(per_fold.values()))
    held_all = pd.concat(held_scores)
    return {"per_fold_ba": per_fold, "ba_mean": float(values.mean()), "ba_std": float(values.std()),
            "auc": binary_scores(runs.target.loc[held_all.index], held_all)["auc"],
            "threshold_policies": {p: {"per_fold_ba": v, "ba_mean": float(np.mean(list(v.values()))),
                                       "ba_std": float(np.std(list(v.values())))} for p, v in policies.items()},
            "threshold_policy": policy, "params_per_fold": params, "trials_per_fold": n_trials}


def with_threshold(params: FusionParams, threshold: float) -> FusionParams:
    """The same fusion with another decision threshold."""
    return FusionParams(weights=params.weights, method=params.method, threshold=float(threshold))


def policy_threshold(policy: str, tuned: float, tuned_on: pd.Series, target: pd.Series) -> float:
    """The decision threshold of a policy, from the tuning patients only: the searched one (``tuned``), a fixed
    0.5, or the fused-score quantile that calls the tuning patients' share of tumoral patients (``prevalence``)."""
    if policy == "tuned":
        return tuned
    if policy == "0.5":
        return 0.5
    return float(np.quantile(tuned_on.to_numpy(), 1.0 - float(target.loc[tuned_on.index].mean())))


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


def tune_and_estimate(runs: RunSet, study, run_dir: Path, *, name: str, n_trials: int, nested_trials: int,
                      seed: int, policy: str = "tuned",
                      fusion: str = DEFAULT_FUSION) -> tuple[FusionParams, pd.Series, dict]:
    """Tune the fusion on all OOF, estimate it honestly, compare with each model: (best, fused OOF, metrics).

    ``policy``: the submitted threshold is the searched one (``tuned``), 0.5, or the OOF prevalence quantile;
    the weights and method are the study's (``fusion="study"``) or equal (``"equal"``, no study: ``study`` is
    None), and the nested estimate applies the same fusion and policy.
    """
    best = fit_fusion(runs.oof, runs.target, fusion, study, n_trials, "fusion study")
    fused = fuse(runs.oof, best, reference=runs.oof)
    best = with_threshold(best, policy_threshold(policy, best.threshold, fused, runs.target))
    metrics = {"in_sample": {"pooled_ba": fused_ba(runs.oof, runs.target, best, runs.oof),
                             "auc": binary_scores(runs.target, fused)["auc"],
                             **per_fold_ba(fused, runs.target, runs.fold, best.threshold)},
               "nested": nested_estimate(runs, run_dir, name, n_trials=nested_trials, seed=seed, policy=policy,
                                         fusion=fusion),
               "equal_weight_prob_mean_0.5": per_fold_ba(fuse(runs.oof, FusionParams({})), runs.target, runs.fold, 0.5),
               "models": {n: model_baseline(runs.oof[n], runs.target, runs.fold) for n in runs.names},
               "clinical_runs": [n for n, c in zip(runs.names, runs.configs) if is_clinical_run(c)],
               "fusion": fusion, "top_trials": top_trials_summary(study) if study is not None else {},
               "n_trials": n_trials if study is not None else 0}
    return best, fused, metrics
