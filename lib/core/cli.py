"""The one entry wrapper of every script: bad input becomes one line on stderr and exit code 2."""
import sys
from collections.abc import Callable
from typing import Any

from lib.core.errors import DataError


def run_main(main: Callable[..., Any], argv: list[str] | None = None) -> None:
    """Call ``main(argv)`` (``main()`` when ``argv`` is None: the command line), turning bad-input errors into a
    one-line message and exit code 2."""
    try:
        main() if argv is None else main(argv)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
