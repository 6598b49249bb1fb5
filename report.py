"""Visual report of an ensemble run: ROC, confusion matrix, per-fold scores, calibration, patient cell montages.

Example: ``python report.py --ensemble runs/<tag>/ensemble`` (the data directory is the one the runs were
trained on unless --data-dir is given). Writes PNGs and index.html (open it in a browser) into
``<ensemble run>/report/`` or --out.
"""
import argparse
import logging
from pathlib import Path

from lib.core.cli import run_main
from lib.core.config import ArgParser
from lib.core.errors import raise_first


def build_parser() -> argparse.ArgumentParser:
    """Options of the report."""
    parser = ArgParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ensemble", type=Path, required=True, help="ensemble.py run directory")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="competition directory (default: the one recorded by the fused runs)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <ensemble>/report)")
    parser.add_argument("--cells", type=int, default=8, help="cells shown per row (highest / lowest weights)")
    parser.add_argument("--max-errors", type=int, default=12, help="most misclassified patients shown")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> Path:
    """Render the report; return the path of its index.html."""
    args = build_parser().parse_args(argv)
    raise_first([(args.cells < 1, f"--cells {args.cells} must be >= 1"),
                 (args.max_errors < 0, f"--max-errors {args.max_errors} must be >= 0")])
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from lib.stages.report.build import build_report  # matplotlib, OpenCV: after the options
    index = build_report(args.ensemble, args.data_dir, args.out, args.cells, args.max_errors,
                         progress=not args.no_progress)
    print(f"report: {index}")
    return index


if __name__ == "__main__":
    run_main(main)
