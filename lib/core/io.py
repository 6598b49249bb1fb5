"""Atomic file writes: a crash never leaves a half-written file under its final name; a lock around building a
shared cache file, so that two processes on one cold cache build it once. Reading the toolkit's own files back:
tables whose patient IDs stay text exactly as written, YAML and JSON, each a one-line DataError when damaged."""
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from lib.core.errors import DataError

log = logging.getLogger(__name__)
ID_COLUMNS = ("ID", "Id")  # patient IDs: text exactly as written ('NA', 'null', '007' are IDs, never missing values)
# pandas' default missing-value strings, applied to the other columns only
NA_TEXT = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
           "NULL", "NaN", "None", "n/a", "nan", "null")
REDO = "re-run the command that wrote it"


def atomic_write_bytes(data: bytes, path: str | Path) -> Path:
    """Write bytes to a temporary file beside ``path`` then rename it into place."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a file to write")
    make_dirs(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise DataError(f"{path}: cannot write ({os_problem(exc)})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(f"{path}: cannot write ({os_problem(exc)})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def os_problem(exc: OSError) -> str:
    """Short text of an OS error (e.g. 'Permission denied', 'No space left on device')."""
    return exc.strerror or str(exc)


def make_dirs(path: str | Path) -> Path:
    """``mkdir -p`` whose failure (permission, a file in the way, a full disk) is a DataError naming the path."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DataError(f"{path}: exists and is not a directory") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot create directory ({os_problem(exc)})") from None
    return path


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Atomically write text (UTF-8; a file name that is not UTF-8 keeps its own bytes: surrogateescape)."""
    return atomic_write_bytes(text.encode("utf-8", "surrogateescape"), path)


def atomic_write_csv(table: pd.DataFrame, path: str | Path, index: bool = False) -> Path:
    """Atomically write a DataFrame as CSV."""
    return atomic_write_text(table.to_csv(index=index), path)


def atomic_write_json(obj: Any, path: str | Path) -> Path:
    """Atomically write JSON (indented, keys in insertion order)."""
    return atomic_write_text(json.dumps(obj, indent=2, default=_json_default) + "\n", path)


def atomic_write_yaml(obj: Any, path: str | Path) -> Path:
    """Atomically write YAML (keys in insertion order)."""
    return atomic_write_text(yaml.safe_dump(obj, sort_keys=False), path)


def _json_default(value: Any) -> Any:
    """Serialise numpy scalars and paths."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """Atomically write a checkpoint of plain data that ``read_checkpoint`` loads without running code.

    Tensors, numbers, strings, None, lists, tuples and dicts only; numpy arrays are stored as tensors and
    numpy scalars as Python numbers (``as_plain``). Anything else fails here, at saving, not when read.
    """
    import io

    import torch
    buffer = io.BytesIO()
    torch.save(as_plain(obj), buffer)
    return atomic_write_bytes(buffer.getvalue(), path)


def as_plain(obj: Any) -> Any:
    """``obj`` with numpy arrays as tensors and numpy scalars as Python numbers (containers recursed)."""
    import numpy as np
    import torch
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: as_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(as_plain(v) for v in obj)
    if obj is None or isinstance(obj, (str, int, float, bool, torch.Tensor)):
        return obj
    raise TypeError(f"checkpoint: {type(obj).__name__} is not plain data (tensors, numbers, strings, containers)")


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True``: plain data only, never code (one-line DataError if not)."""
    import pickle

    import torch
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = (str(exc).splitlines() or [""])[0][:160]
        raise DataError(f"{path}: refused: not a plain-data checkpoint, loading it could run code (a crafted file, or "
                        f"one saved before checkpoints held plain data only: re-run the stage that made it; {reason})"
                        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        reason = os_problem(exc) if isinstance(exc, OSError) else (str(exc).splitlines() or [""])[0][:160]
        raise DataError(f"{path}: unreadable checkpoint ({reason})") from None


def _parse_file(path: str | Path, parse, kind: str, errors: tuple) -> Any:
    """``parse`` of a text file's contents; a one-line DataError naming the file when it cannot be read or parsed."""
    path = Path(path)
    try:
        return parse(path.read_text())
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({os_problem(exc)})") from None
    except errors as exc:
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())[:160]
        raise DataError(f"{path}: not valid {kind} ({problem}); {REDO}") from None


def read_json(path: str | Path) -> Any:
    """Parse a JSON file (one-line DataError naming it when unreadable)."""
    return _parse_file(path, json.loads, "JSON", (ValueError,))


@contextmanager
def build_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` while this process builds the cache file ``path``.

    A second process asking for the same file waits here (saying so once), then finds it built: the caller
    checks again inside the lock. The lock is an ``fcntl.flock``, released by the kernel however the holder
    exits; the empty lock file stays (removing it would race with a waiter).
    """
    import fcntl
    path = Path(path)
    lock_path = path.with_name(path.name + ".lock")
    make_dirs(lock_path.parent)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    except OSError as exc:
        raise DataError(f"{lock_path}: cannot create the cache lock ({os_problem(exc)})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: another process is building it, waiting for it", path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_table(path: str | Path, dtype: dict | None = None, **kwargs: Any) -> pd.DataFrame:
    """A CSV the toolkit wrote (or a user gave): patient-ID columns read as text exactly as written, missing-value
    parsing on the other columns only; an empty, cut or undecodable file is a one-line DataError naming it."""
    path = Path(path)
    try:
        columns = pd.read_csv(path, nrows=0, encoding_errors="surrogateescape").columns
        ids = {c: str for c in columns if c in ID_COLUMNS}
        na = {c: list(NA_TEXT) for c in columns if c not in ID_COLUMNS}
        return pd.read_csv(path, dtype={**ids, **(dtype or {})}, keep_default_na=False, na_values=na,
                           encoding_errors="surrogateescape", **kwargs)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({os_problem(exc)})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file (cut short?); {REDO}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        reason = (str(exc).splitlines() or [""])[0][:160]
        raise DataError(f"{path}: not a readable table ({reason}); {REDO}") from None


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file the toolkit wrote (one-line DataError naming it when unreadable)."""
    return _parse_file(path, yaml.safe_load, "YAML", (yaml.YAMLError, UnicodeDecodeError))


REPORT_FILES = (".png", ".html")  # what a report folder holds


@contextmanager
def atomic_directory(path: str | Path, own_suffixes: tuple[str, ...] = REPORT_FILES) -> Iterator[Path]:
    """Build a folder of several files beside ``path`` and put it in place only when complete: a killed command
    leaves the old folder or the new one, never a mix. An existing folder holding files of other kinds (not
    ``own_suffixes``: someone else's) is refused (DataError) rather than replaced."""
    import shutil

    path = Path(path)
    if path.exists() and (not path.is_dir() or any(p.is_dir() or p.suffix not in own_suffixes for p in path.iterdir())):
        raise DataError(f"{path}: exists and holds other things than a report ({', '.join(own_suffixes)} files); "
                        f"choose a new or empty folder")
    make_dirs(path.parent)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield work
        os.chmod(work, 0o777 & ~_umask())
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(work, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
