"""The ensemble stage: tune a fusion of compatible runs (lib.fusion.tune) and write the ensemble run's outputs.

Writes into the run directory: best_params.json (weights, method, threshold, and each fused run with the
hashes of its predictions), metrics.json (in-sample and nested estimates, each model alone), study.db and the
optimisation plots (not for equal weights: no study), the fused oof.csv and roc.png.
"""
from pathlib import Path

import pandas as pd

from lib.core.io import atomic_write_csv, atomic_write_json
from lib.core.plots import plot_roc
from lib.core.study import open_study, safe_url, save_study_plots
from lib.fusion.fuse import DEFAULT_FUSION, FusionParams
from lib.fusion.runs import RunSet
from lib.fusion.tune import tune_and_estimate

DEFAULT_STORAGE_NOTE = "sqlite:///<run_dir>/study.db"


def run_ensemble(runs: RunSet, run_dir: Path, *, n_trials: int, nested_trials: int, storage: str | None,
                 seed: int, name: str, policy: str = "tuned", fusion: str = DEFAULT_FUSION) -> dict:
    """Tune the fusion (resuming the study; no study for equal weights), estimate it honestly, write every output;
    return params and metrics."""
    study = open_study(name, storage, run_dir, seed) if fusion == "study" else None
    best, fused, metrics = tune_and_estimate(runs, study, run_dir, name=name, n_trials=n_trials,
                                             nested_trials=nested_trials, seed=seed, policy=policy, fusion=fusion)
    storage_note = (safe_url(storage) or DEFAULT_STORAGE_NOTE) if study is not None else None
    write_outputs(runs, run_dir, best, fused, metrics, storage_note)
    if study is not None:
        save_study_plots(study, run_dir)
    return {"params": best, "metrics": metrics}


def write_outputs(runs: RunSet, run_dir: Path, best: FusionParams, fused: pd.Series, metrics: dict,
                  storage: str | None) -> None:
    """best_params.json, metrics.json, the fused oof.csv and the ROC of every model and the blend."""
    run_dir = Path(run_dir)
    atomic_write_json({**vars(best), "runs": runs.signatures(), "n_folds": runs.n_folds,
                       "dataset_name": runs.configs[0]["dataset_name"], "test_inputs": runs.configs[0].get("test_inputs"),
                       "data_dir": runs.configs[0].get("data_dir"), "storage": storage}, run_dir / "best_params.json")
    atomic_write_json(metrics, run_dir / "metrics.json")
    oof = pd.DataFrame({"ID": runs.oof.index, "fold": runs.fold.to_numpy(), "target": runs.target.to_numpy(),
                        "proba": fused.to_numpy()})
    atomic_write_csv(oof, run_dir / "oof.csv")
    curves = {n: (runs.target, runs.oof[n]) for n in runs.names} | {"blend": (runs.target, fused)}
    plot_roc(curves, run_dir / "roc.png", points={"blend": best.threshold},
             title=f"OOF ROC (blend: {best.method}, threshold {best.threshold:.2f})")
