"""The one entry wrapper of every script: bad input becomes one line on stderr and exit code 2, Ctrl-C one line
and exit code 130 (128 + SIGINT, as a shell reports it)."""
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lib.core.errors import DataError

INTERRUPTED = 130  # the exit code of a script stopped by Ctrl-C (SIGINT)
INTERRUPTED_MESSAGE = "interrupted: nothing half-written is kept; re-run the same command to resume"


def run_main(main: Callable[..., Any], argv: list[str] | None = None) -> None:
    """Call ``main(argv)`` (``main()`` when ``argv`` is None: the command line), turning bad-input errors into a
    one-line message and exit code 2, and Ctrl-C (KeyboardInterrupt) into one line and exit code 130.

    Every file the toolkit writes is written atomically (lib.core.io), so a stop at any moment leaves each
    output either as it was or complete; the runs resume from their last finished unit."""
    try:
        main() if argv is None else main(argv)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\n{INTERRUPTED_MESSAGE}", file=sys.stderr)
        sys.exit(INTERRUPTED)


def run_in_process(command: list[str]) -> int:
    """Run a script (``[script.py, *argv]``, the repository on ``sys.path``) as ``python script.py argv`` would, but
    in this process: its ``main(argv)`` through ``run_main``; return its exit code.

    For callers that run scripts from Python many times (pipeline.py's tests, the bad-input cases): no interpreter
    start and no torch import per call. The command line runs each pipeline stage as its own process.
    """
    module = importlib.import_module(Path(command[0]).stem)
    try:
        run_main(module.main, command[1:])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0
