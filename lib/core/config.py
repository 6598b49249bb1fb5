"""Settings: an optional YAML file supplies argparse defaults, the command line overrides them."""
import argparse
import logging
from pathlib import Path

import yaml

from lib.core.errors import DataError
from lib.core.paths import CACHE_DIR

DEFAULT_N_FOLDS = 5
DEFAULT_FOLD_SEED = 42


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments every stage script shares."""
    parser.add_argument("-c", "--config", type=Path, help="YAML file of defaults (CLI overrides it)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="competition directory (default: the embedded demo data, generated on first use)")
    parser.add_argument("--experiment", help="run name: results go to runs/<experiment>/")
    parser.add_argument("--runs-dir", type=Path, default=None, help="parent of run directories (default runs/)")
    parser.add_argument("--n-folds", type=int, default=DEFAULT_N_FOLDS)
    parser.add_argument("--fold-seed", type=int, default=DEFAULT_FOLD_SEED, help="seed of the fold file to use")
    parser.add_argument("--folds-dir", type=Path, default=None,
                        help="where fold files are read (and written once) (default folds/)")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR,
                        help="decoded-image, weights, embedding and morphometry caches (default cache/ or $LYMPH_CACHE_DIR)")
    parser.add_argument("--seed", type=int, default=0, help="model seed")
    parser.add_argument("--resume", action="store_true", help="continue an existing run directory")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def parse_config(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with defaults taken from the ``--config`` YAML when one is given."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config", type=Path)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**_read_yaml_defaults(known.config, parser))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    return args


def _read_yaml_defaults(path: Path, parser: argparse.ArgumentParser) -> dict:
    """Defaults from a YAML mapping whose keys must all be known options."""
    if not path.exists():
        raise DataError(f"{path}: config file not found")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise DataError(f"{path}: config must be a mapping of option: value")
    known = {a.dest for a in parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise DataError(f"{path}: unknown option(s) {', '.join(unknown)}")
    return values


def config_dict(args: argparse.Namespace) -> dict:
    """Resolved settings as plain YAML-safe values (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
