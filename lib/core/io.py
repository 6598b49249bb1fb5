"""Atomic file writes: a crash never leaves a half-written file under its final name."""
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from lib.core.errors import DataError


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
    """Atomically write text (UTF-8)."""
    return atomic_write_bytes(text.encode("utf-8"), path)


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
    """Atomically write a torch checkpoint (serialised in memory, then written like any file)."""
    import io

    import torch
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(buffer.getvalue(), path)
