"""Patient-level metrics: balanced accuracy (the competition metric) and ROC AUC.

scikit-learn is imported when a score is first computed, not with this module: the scripts that import it
to parse their options stay light."""
import numpy as np
import pandas as pd


def binary_scores(target, proba, threshold: float = 0.5) -> dict[str, float]:
    """BA at ``threshold`` and AUC (NaN when only one class is present)."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    target, proba = np.asarray(target), np.asarray(proba)
    ba = balanced_accuracy_score(target, (proba >= threshold).astype(int))
    auc = roc_auc_score(target, proba) if len(np.unique(target)) == 2 else float("nan")
    return {"ba": float(ba), "auc": float(auc)}


def fold_metrics(oof: pd.DataFrame, threshold: float = 0.5) -> dict:
    """Per-fold BA/AUC of an OOF table (ID,fold,target,proba), their mean and std, and pooled scores."""
    per_fold = {int(k): binary_scores(g["target"], g["proba"], threshold) for k, g in oof.groupby("fold")}
    summary = {"threshold": threshold, "per_fold": per_fold}
    for key in ("ba", "auc"):
        values = np.array([m[key] for m in per_fold.values()])
        summary[f"{key}_mean"], summary[f"{key}_std"] = float(np.nanmean(values)), float(np.nanstd(values))
    pooled = binary_scores(oof["target"], oof["proba"], threshold)
    summary.update({"pooled_ba": pooled["ba"], "pooled_auc": pooled["auc"]})
    return summary


def mean_std(values) -> str:
    """``0.853±0.021`` formatting for reports."""
    values = np.asarray(values, dtype=float)
    return f"{np.nanmean(values):.3f}±{np.nanstd(values):.3f}"
