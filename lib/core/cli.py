"""The one entry wrapper of every script: bad input becomes one line on stderr and exit code 2."""
import sys

from lib.core.errors import DataError


def run_main(main) -> None:
    """Call ``main()``, turning bad-input errors into a one-line message and exit code 2."""
    try:
        main()
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
