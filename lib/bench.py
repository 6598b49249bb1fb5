"""Benchmark records: append a dated block (machine, commit, command, numbers) to BENCHMARKS.md atomically."""
import fcntl
import os
import platform
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from lib.io import atomic_write_text
from lib.paths import REPO_DIR
from lib.runs import code_version

BENCHMARKS_FILE = REPO_DIR / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nDated measurements appended by the scripts in benchmarks/ (newest last).\n"


def machine() -> str:
    """Architecture (``uname -m``), CPU core count and OS of this machine."""
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def commit() -> str:
    """Git commit of the code, marked dirty when the tree has uncommitted changes."""
    version = code_version()
    return f"{version['commit'][:12]}{' (dirty)' if version['dirty'] else ''}"


def benchmark_block(title: str, command: str, lines: list[str]) -> str:
    """Markdown block: title, date, machine, commit, command, then the result lines."""
    head = [f"## {title}", "",
            f"- date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- machine: {machine()}", f"- commit: {commit()}", f"- command: `{command}`"]
    return "\n".join(head + list(lines)) + "\n"


@contextmanager
def _locked(path: Path):
    """Exclusive lock on the file's folder so two benchmarks never lose each other's block."""
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def append_benchmark(title: str, command: str, lines: list[str], path: str | Path = BENCHMARKS_FILE) -> Path:
    """Append a dated benchmark block to BENCHMARKS.md (read, append, atomic replace, under a lock)."""
    path = Path(path)
    with _locked(path):
        text = path.read_text() if path.exists() else HEADER
        text = text.rstrip("\n") + "\n\n" + benchmark_block(title, command, lines)
        return atomic_write_text(text, path)
