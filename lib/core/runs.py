"""Run directories: resolved config, code version, log file and the saved predictions of a run.

Layout of ``runs/<experiment>/``: ``config.yaml``, ``code_version.json`` (+ ``code.diff`` when the
tree is dirty), ``log.txt``, ``oof.csv`` (ID,fold,target,proba), ``test.csv`` (ID,fold_0..fold_k-1,
proba = mean over folds), ``metrics.json`` and PNG plots.
"""
import logging
import subprocess
from pathlib import Path

import pandas as pd
import yaml

from lib.core.errors import DataError
from lib.core.io import atomic_write_csv, atomic_write_json, atomic_write_text, atomic_write_yaml
from lib.core.paths import REPO_DIR

log = logging.getLogger(__name__)
NOT_COMPARED_ON_RESUME = {"resume", "folds", "device", "workers", "config", "trials", "nested_trials",
                          "progress", "embed_batch", "cache_dir", "verbose"}


def code_version() -> dict:
    """Git commit of the code and whether the work tree has uncommitted changes."""
    commit = _git("rev-parse", "HEAD") or "unknown"
    diff = _git("diff", "HEAD")
    return {"commit": commit, "dirty": bool(diff), "diff": diff}


def _git(*args: str) -> str:
    """Output of a git command in the repository ('' when git is unavailable)."""
    try:
        done = subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def create_run(run_dir: Path, config: dict, resume: bool = False) -> Path:
    """Create a run directory (refusing to overwrite one unless resuming with the same config)."""
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if saved.exists() and not resume:
        raise DataError(f"{run_dir}: run already exists; pass --resume to continue it or pick another --experiment")
    if saved.exists():
        _check_same_config(saved, config)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_yaml(config, saved)
    version = code_version()
    atomic_write_json({k: v for k, v in version.items() if k != "diff"}, run_dir / "code_version.json")
    if version["diff"]:
        atomic_write_text(version["diff"] + "\n", run_dir / "code.diff")
    attach_log_file(run_dir / "log.txt")
    return run_dir


def _check_same_config(saved: Path, config: dict) -> None:
    """A resumed run must use the settings it was started with."""
    old = yaml.safe_load(saved.read_text()) or {}
    changed = sorted(k for k in set(old) | set(config)
                     if k not in NOT_COMPARED_ON_RESUME and old.get(k) != config.get(k))
    if changed:
        raise DataError(f"{saved}: cannot resume with different settings ({', '.join(changed)})")


def attach_log_file(path: Path) -> None:
    """Send this process's log records to ``path`` (replacing an earlier run's log file)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_run_log", False)]:
        root.removeHandler(old)
        old.close()
    handler = logging.FileHandler(path)
    handler._run_log = True
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


def test_table(per_fold: dict[int, pd.Series]) -> pd.DataFrame:
    """Wide test predictions: ID, one column per fold, and their mean as ``proba``."""
    table = pd.DataFrame({f"fold_{k}": s for k, s in sorted(per_fold.items())})
    table["proba"] = table.mean(axis=1)
    return table.rename_axis("ID").reset_index()


def write_predictions(run_dir: Path, oof: pd.DataFrame, test: pd.DataFrame) -> None:
    """Write ``oof.csv`` (ID,fold,target,proba) and ``test.csv`` (ID,fold_*,proba) atomically."""
    atomic_write_csv(oof[["ID", "fold", "target", "proba"]].sort_values("ID"), Path(run_dir) / "oof.csv")
    atomic_write_csv(test.sort_values("ID"), Path(run_dir) / "test.csv")


def read_predictions(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a run's OOF and test predictions, checking they exist and have no NaN."""
    tables = []
    for name in ("oof.csv", "test.csv"):
        path = Path(run_dir) / name
        if not path.exists():
            raise DataError(f"{path}: predictions not found (did the run finish?)")
        table = pd.read_csv(path, dtype={"ID": str})
        if table.isna().any().any():
            raise DataError(f"{path}: contains NaN")
        tables.append(table)
    return tables[0], tables[1]
