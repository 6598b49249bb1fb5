"""What the report reads: an ensemble run, the runs it fused (re-fused with lib.fusion.fuse), data and cell weights."""
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lib.core.errors import DataError
from lib.core.io import read_json, read_table
from lib.core.paths import REPO_DIR
from lib.data.dataset import Dataset, check_test_inputs, load_dataset
from lib.fusion.fuse import FusionParams, fuse
from lib.fusion.runs import RunSet, load_ensemble_runs

log = logging.getLogger(__name__)
BLEND = "blend"


@dataclass
class EnsembleRun:
    """An ensemble run's chosen fusion, the runs it fused and their blended OOF prediction."""

    run_dir: Path
    params: FusionParams
    saved: dict
    runs: RunSet
    blend: pd.DataFrame
    metrics: dict

    def oof_tables(self) -> dict[str, pd.DataFrame]:
        """OOF table (ID,fold,target,proba) of every fused run and of the blend (last)."""
        base = pd.DataFrame({"ID": self.runs.oof.index, "fold": self.runs.fold.to_numpy(),
                             "target": self.runs.target.to_numpy()})
        tables = {n: base.assign(proba=self.runs.oof[n].to_numpy()) for n in self.runs.names}
        return tables | {BLEND: self.blend}

    def thresholds(self) -> dict[str, float]:
        """Decision threshold per model: 0.5 for each run alone, the tuned one for the blend."""
        return {n: 0.5 for n in self.runs.names} | {BLEND: self.params.threshold}


def load_ensemble(run_dir: str | Path) -> EnsembleRun:
    """Read an ensemble run and re-fuse its runs' OOF predictions with the chosen fusion."""
    run_dir = Path(run_dir)
    runs, params, saved = load_ensemble_runs(run_dir)
    fused = fuse(runs.oof, params, reference=runs.oof)
    blend = pd.DataFrame({"ID": runs.oof.index, "fold": runs.fold.to_numpy(), "target": runs.target.to_numpy(),
                          "proba": fused.to_numpy()})
    metrics_path = run_dir / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.exists() else {}
    return EnsembleRun(run_dir, params, saved, runs, blend, metrics)


def resolve_data_dir(given: Path | None, saved: dict) -> Path | None:
    """The data directory: the one given, else the one the runs recorded (relative: to cwd or the repo)."""
    if given is not None:
        return Path(given)
    recorded = saved.get("data_dir")
    if not recorded:
        return None
    for candidate in (Path(recorded), REPO_DIR / recorded):
        if candidate.is_dir():
            return candidate
    log.warning("data directory %s recorded by the runs is not found; pass --data-dir", recorded)
    return None


def load_data(data_dir: Path | None, saved: dict) -> Dataset | None:
    """The validated dataset (None when unknown), refusing one other than the runs were trained on."""
    if data_dir is None:
        return None
    dataset = load_dataset(data_dir)
    expected = saved.get("dataset_name")
    if not expected:
        raise DataError(f"{data_dir}: the ensemble's best_params.json records no dataset_name; re-run ensemble.py")
    if dataset.name != expected:
        raise DataError(f"{data_dir}: dataset {dataset.name}, but the ensemble's runs used {expected}")
    check_test_inputs(dataset, saved.get("test_inputs"), "the ensemble's best_params.json")
    return dataset


def cnn_run(ensemble: EnsembleRun) -> str | None:
    """The fused run whose cells.csv the montages show (see ``choose_cell_model``); None when no run has one."""
    paths = dict(zip(ensemble.runs.names, ensemble.runs.paths))
    cells = {n: read_table(paths[n] / "cells.csv", usecols=["ID", "weight"])
             for n in ensemble.runs.names if (paths[n] / "cells.csv").exists()}
    return choose_cell_model(cells, ensemble.params.weights)


def choose_cell_model(cells_by_run: dict[str, pd.DataFrame], fusion_weights: dict[str, float]) -> str | None:
    """The run with cell weights to show: weights that differ between cells first (not mean pooling), then
    the largest fusion weight; None without any."""
    return max(cells_by_run, default=None,
               key=lambda n: (informative_weights(cells_by_run[n]), fusion_weights.get(n, 0.0)))


def informative_weights(cells: pd.DataFrame) -> bool:
    """Whether some patient's cells got different weights."""
    spread = cells.groupby("ID")["weight"].agg(lambda w: w.max() - w.min())
    return bool((spread > 1e-12).any())


def read_cells(run_dir: Path, oof_ids) -> pd.DataFrame:
    """OOF patients' cell weights from a run's cells.csv (ID, path, weight, ...)."""
    path = Path(run_dir) / "cells.csv"
    cells = read_table(path)
    missing = [c for c in ("ID", "path", "weight") if c not in cells.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    if "split" in cells.columns:
        cells = cells[cells["split"] != "test"]
    return cells[cells["ID"].isin(set(oof_ids))].reset_index(drop=True)


def read_test_cells(run_dir: Path, test_ids) -> pd.DataFrame:
    """Test patients' cell weights (averaged over the fold models) from a run's cells.csv."""
    path = Path(run_dir) / "cells.csv"
    cells = read_table(path)
    if "split" not in cells.columns:
        raise DataError(f"{path}: no split column (made by an older version? re-run train_cnn.py)")
    return cells[(cells["split"] == "test") & cells["ID"].isin(set(test_ids))].reset_index(drop=True)
