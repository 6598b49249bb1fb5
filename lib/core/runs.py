"""Run directories: resolved config, code version, log file and the saved predictions of a run.

Layout of ``runs/<experiment>/``: ``config.yaml``, ``code_version.json`` (+ ``code.diff`` when the
tree is dirty), ``log.txt``, ``oof.csv`` (ID,fold,target,proba), ``test.csv`` (ID,fold_0..fold_k-1,
proba = mean over folds), ``metrics.json`` and PNG plots.
"""
import fcntl
import logging
import os
import shlex
import socket
import subprocess
from pathlib import Path

import pandas as pd

from lib.core.errors import DataError
from lib.core.io import (
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    atomic_write_yaml,
    make_dirs,
    os_problem,
    read_table,
    read_yaml,
)
from lib.core.paths import REPO_DIR

log = logging.getLogger(__name__)
NOT_COMPARED_ON_RESUME = {"resume", "folds", "device", "workers", "config", "trials", "nested_trials",
                          "progress", "embed_batch", "cache_dir", "verbose"}
# Options added after runs were made, with the value an older run's config.yaml (which lacks them) stands for
LATER_OPTION_DEFAULTS = {"fusion": "study"}
# Settings a stage records that are not options of its script (no "--option" can restore them)
DERIVED_SETTINGS = {"dataset_name", "test_inputs", "stage"}
LOCK_NAME = ".lock"
_HELD_LOCKS: dict[Path, int] = {}  # run dir -> open fd of its lock file, held (flock) until the process exits


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
    created = not run_dir.exists()
    held = Path(run_dir).resolve() in _HELD_LOCKS
    make_dirs(run_dir)
    claim_run_dir(run_dir)  # before config.yaml is looked at: no other process is on this run
    try:
        if saved.exists() and not resume:
            raise DataError(f"{run_dir}: run already exists; pass --resume to continue it or pick another --experiment")
        if saved.exists():
            _check_same_config(saved, config)
    except DataError:
        if created:
            _remove_empty(run_dir)
        if not held:
            release_run_dir(run_dir)
        raise
    atomic_write_yaml(config, saved)
    version = code_version()
    atomic_write_json({k: v for k, v in version.items() if k != "diff"}, run_dir / "code_version.json")
    if version["diff"]:
        atomic_write_text(version["diff"] + "\n", run_dir / "code.diff")
    attach_log_file(run_dir / "log.txt")
    return run_dir


def claim_run_dir(run_dir: Path) -> None:
    """Hold an exclusive lock on ``run_dir/.lock`` for the life of this process (pid@host written in it).

    A second process (a new run or a --resume) on the same run directory is refused with one line naming
    the holder. The lock is an ``fcntl.flock`` on an open file, so the kernel releases it when the process
    exits, however it exits; a stale lock file left behind is simply taken over.
    """
    run_dir = Path(run_dir).resolve()
    if run_dir in _HELD_LOCKS:
        return
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise DataError(f"{path}: cannot create the run lock ({os_problem(exc)})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise DataError(f"{run_dir}: run directory is in use by {holder} (lock {path}); wait for it to finish "
                        f"or pick another --experiment") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}@{socket.gethostname()}\n".encode(), 0)
    _HELD_LOCKS[run_dir] = fd


def release_run_dir(run_dir: Path) -> None:
    """Release this process's lock on a run directory (normally left to process exit)."""
    fd = _HELD_LOCKS.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)


def _remove_empty(run_dir: Path) -> None:
    """Remove a run directory this call created, when it holds only its lock file."""
    try:
        (run_dir / LOCK_NAME).unlink(missing_ok=True)
        run_dir.rmdir()
    except OSError:
        pass


def _check_same_config(saved: Path, config: dict) -> None:
    """A resumed run must use the settings it was started with."""
    old = read_yaml(saved) or {}
    changed = sorted(k for k in set(old) | set(config)
                     if k not in NOT_COMPARED_ON_RESUME and old.get(k, LATER_OPTION_DEFAULTS.get(k)) != config.get(k))
    if changed:
        then = {k: old.get(k, LATER_OPTION_DEFAULTS.get(k)) for k in changed}
        was = "; ".join(f"{k}: {_short(then[k])} then, {_short(config.get(k))} now" for k in changed)
        hint = " ".join(f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in then.items()
                        if k not in DERIVED_SETTINGS and isinstance(v, (str, int, float)) and not isinstance(v, bool))
        raise DataError(f"{saved}: cannot resume with different settings ({was}); pass the run's settings"
                        f"{f' ({hint})' if hint else ''} to continue it, or start another run (another --experiment or "
                        f"runs directory)")


def _short(value) -> str:
    """A setting's value for a one-line error (long lists and mappings cut)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def attach_log_file(path: Path) -> None:
    """Send this process's log records to ``path`` (replacing an earlier run's log file)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_run_log", False)]:
        root.removeHandler(old)
        old.close()
    handler = logging.FileHandler(path, errors="backslashreplace")  # a file name that is not UTF-8: escaped
    handler._run_log = True
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


def fold_test_table(per_fold: dict[int, pd.Series]) -> pd.DataFrame:
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
        if not Path(run_dir).is_dir():
            raise DataError(f"{run_dir}: run directory not found")
        if not path.exists():
            raise DataError(f"{path}: predictions not found (did the run finish?)")
        table = read_table(path)
        if table.isna().any().any():
            raise DataError(f"{path}: contains NaN")
        tables.append(table)
    return tables[0], tables[1]
