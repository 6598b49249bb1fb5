"""Fold-seed bagging: one model cross-validated on several committed fold seeds, averaged into one run.

Every OOF prediction of a source run comes from a model that never saw that patient, so the mean over
the seeds of a patient's OOF predictions is still out-of-fold. The bagged run directory holds:
``oof.csv`` (ID, fold, target, proba = mean over seeds; ``fold`` is the first seed's fold, which the
ensemble's nested estimate splits by), ``test.csv`` (one column per seed x fold, ``s<seed>_fold_<k>``, and
``proba`` = their mean: every fold model of every seed counts once), ``metrics.json``, ``cells.csv`` (cell
weights averaged over the seeds) and ``config.yaml`` (the first run's settings plus ``bagged_from`` and
``fold_seeds``). Runs whose patients, targets, test patients, dataset or settings differ are refused.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from lib.core.errors import DataError
from lib.core.io import atomic_write_bytes, atomic_write_csv, atomic_write_json, atomic_write_yaml, read_table
from lib.core.metrics import fold_metrics
from lib.core.runs import read_predictions
from lib.data.profile import PROFILE_FILE
from lib.fusion.runs import read_run_config

PER_SEED_KEYS = {"fold_seed", "experiment", "runs_dir", "resume", "folds", "config", "progress", "verbose"}


def _settings(config: dict) -> dict:
    """The settings that must agree between the bagged runs (everything but the seed and run location)."""
    return {k: v for k, v in config.items() if k not in PER_SEED_KEYS}


def _check_compatible(paths: list[Path], configs: list[dict], tables: list[tuple[pd.DataFrame, pd.DataFrame]]) -> None:
    """Same patients with the same targets, same test patients, same dataset and settings; distinct seeds."""
    ref_oof, ref_test = tables[0]
    ref = ref_oof.set_index("ID")["target"]
    for path, config, (oof, test) in zip(paths[1:], configs[1:], tables[1:]):
        target = oof.set_index("ID")["target"]
        if set(target.index) != set(ref.index) or not target.loc[ref.index].equals(ref):
            raise DataError(f"{path}: OOF patients or targets differ from {paths[0]}")
        if set(test["ID"]) != set(ref_test["ID"]):
            raise DataError(f"{path}: test patients differ from {paths[0]}")
        changed = sorted(k for k in set(_settings(config)) | set(_settings(configs[0]))
                         if _settings(config).get(k) != _settings(configs[0]).get(k))
        if changed:
            raise DataError(f"{path}: settings differ from {paths[0]} ({', '.join(changed)}); bag one model only")
    seeds = [c.get("fold_seed") for c in configs]
    if len(set(seeds)) != len(seeds):
        raise DataError(f"runs {', '.join(map(str, paths))}: fold seeds {seeds} repeat; bag distinct fold seeds")


def bag_tables(tables: list[tuple[pd.DataFrame, pd.DataFrame]], seeds: list[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(oof, test) of the bagged run from the source runs' (oof, test) tables."""
    first = tables[0][0].set_index("ID").sort_index()
    proba = pd.concat([oof.set_index("ID")["proba"] for oof, _ in tables], axis=1).loc[first.index].mean(axis=1)
    oof = pd.DataFrame({"ID": first.index, "fold": first["fold"].to_numpy(), "target": first["target"].to_numpy(),
                        "proba": proba.to_numpy()})
    columns = {}
    for seed, (_, test) in zip(seeds, tables):
        test = test.set_index("ID")
        columns.update({f"s{seed}_{c}": test[c] for c in test.columns if c.startswith("fold_")})
    test = pd.DataFrame(columns).sort_index()
    test["proba"] = test.mean(axis=1)
    return oof, test.rename_axis("ID").reset_index()


def bag_cells(paths: list[Path]) -> pd.DataFrame | None:
    """Cell weights averaged over the source runs (None when they have no cells.csv)."""
    files = [Path(p) / "cells.csv" for p in paths]
    if not all(f.exists() for f in files):
        return None
    cells = pd.concat([read_table(f) for f in files], ignore_index=True)
    return cells.groupby(["ID", "split", "path"], sort=False, as_index=False)["weight"].mean()


def bag_runs(run_dirs: list[str | Path], out_dir: str | Path) -> dict:
    """Average several fold seeds' runs of one model into ``out_dir``; return the bagged OOF metrics."""
    paths, out_dir = [Path(p) for p in run_dirs], Path(out_dir)
    if len(paths) < 2:
        raise DataError(f"bagging {', '.join(map(str, paths)) or '(no run)'}: needs at least two runs")
    configs = [read_run_config(p) for p in paths]
    tables = [read_predictions(p) for p in paths]
    _check_compatible(paths, configs, tables)
    seeds = [int(c["fold_seed"]) for c in configs]
    oof, test = bag_tables(tables, seeds)
    config = {**configs[0], "experiment": out_dir.name, "fold_seed": seeds[0], "fold_seeds": seeds,
              "bagged_from": [str(p.resolve()) for p in paths]}
    atomic_write_yaml(config, out_dir / "config.yaml")
    atomic_write_csv(oof, out_dir / "oof.csv")
    atomic_write_csv(test, out_dir / "test.csv")
    cells = bag_cells(paths)
    if cells is not None:
        atomic_write_csv(cells, out_dir / "cells.csv")
    profile = Path(paths[0]) / PROFILE_FILE  # the cells the runs were trained on (one data directory)
    if profile.exists():
        atomic_write_bytes(profile.read_bytes(), out_dir / PROFILE_FILE)
    metrics = fold_metrics(oof, 0.5)
    atomic_write_json(metrics, out_dir / "metrics.json")
    return metrics


def bagged_sources(config: dict) -> list[Path]:
    """The per-seed run directories a bagged run was made from ([] for an ordinary run)."""
    return [Path(p) for p in config.get("bagged_from", [])]
