"""Settings: an optional YAML file supplies argparse defaults, the command line overrides them."""
import argparse
import logging
from pathlib import Path

import yaml

from lib.core.errors import DataError
from lib.core.paths import CACHE_DIR

DEFAULT_N_FOLDS = 5
DEFAULT_FOLD_SEED = 42


class ArgParser(argparse.ArgumentParser):
    """ArgumentParser of every script: no prefix matching (``--epoch`` is not ``--epochs``), and a bad
    command line is a one-line DataError (exit code 2 through lib.core.cli.run_main) naming the option."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise DataError(f"{message} (see {self.prog} --help)")


def add_run_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of every script that makes a run directory from a data directory."""
    parser.add_argument("-c", "--config", type=Path, help="YAML file of defaults (CLI overrides it)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="competition directory (default: the embedded demo data, generated on first use)")
    parser.add_argument("--experiment", help="run name: results go to runs/<experiment>/")
    parser.add_argument("--runs-dir", type=Path, default=None, help="parent of run directories (default runs/)")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR,
                        help="decoded-image, weights, embedding and morphometry caches (default cache/ or $LYMPH_CACHE_DIR)")
    parser.add_argument("--seed", type=int, default=0, help="model seed")
    parser.add_argument("--resume", action="store_true", help="continue an existing run directory")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def common_problems(args: argparse.Namespace) -> list[tuple[bool, str]]:
    """Range problems of the run and fold options (``add_run_args``, ``add_common_args``) a script has, for
    ``lib.core.errors.raise_first``; seeds are numpy seeds (>= 0)."""
    problems = []
    if getattr(args, "seed", None) is not None:
        problems.append((args.seed < 0, f"--seed {args.seed} must be >= 0"))
    if getattr(args, "n_folds", None) is not None:
        problems.append((args.n_folds < 2, f"--n-folds {args.n_folds} must be >= 2"))
    if getattr(args, "fold_seed", None) is not None:
        problems.append((args.fold_seed < 0, f"--fold-seed {args.fold_seed} must be >= 0"))
    return problems


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments every cross-validated stage script shares: the run arguments plus the committed folds."""
    add_run_args(parser)
    parser.add_argument("--n-folds", type=int, default=DEFAULT_N_FOLDS)
    parser.add_argument("--fold-seed", type=int, default=DEFAULT_FOLD_SEED, help="seed of the fold file to use")
    parser.add_argument("--folds-dir", type=Path, default=None,
                        help="where fold files are read (and written once) (default folds/)")
    return parser


def parse_config(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with defaults taken from the ``--config`` YAML when one is given."""
    pre = ArgParser(add_help=False)
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
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML ({yaml_problem(exc)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read config ({getattr(exc, 'strerror', None) or exc})") from None
    if not isinstance(values, dict):
        raise DataError(f"{path}: config must be a mapping of option: value")
    actions = {a.dest: a for a in parser._actions}
    unknown = sorted(str(k) for k in set(values) - set(actions))
    if unknown:
        raise DataError(f"{path}: unknown option(s) {', '.join(unknown)}")
    return {key: _check_value(path, actions[key], value) for key, value in values.items()}


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One-line description of a YAML error, with its line and column when known."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def _check_value(path: Path, action: argparse.Action, value):
    """A YAML value checked like the command line would check it: the action's ``type``, ``choices``, nargs."""
    option = action.option_strings[-1] if action.option_strings else action.dest
    where = f"{path}: {action.dest} (option {option})"
    if value is None:
        return None
    if action.nargs == 0:  # store_true / BooleanOptionalAction flags
        if not isinstance(value, bool):
            raise DataError(f"{where}: expected true or false, got {value!r}")
        return value
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        items = value if isinstance(value, list) else [value]
        if action.nargs == "+" and not items:
            raise DataError(f"{where}: expected at least one value")
        return [_convert(where, action, item) for item in items]
    return _convert(where, action, value)


def _convert(where: str, action: argparse.Action, value):
    """One value through the action's ``type`` (as the command line text would be) and ``choices``."""
    if isinstance(value, bool) and getattr(action.type, "accepts_bool", False):
        value = action.type(value)
    elif action.type is not None and not isinstance(value, (dict, list)):
        if isinstance(value, bool) or (isinstance(value, float) and action.type is int):
            raise DataError(f"{where}: invalid value {value!r}")
        try:
            value = action.type(value if isinstance(value, str) else str(value))
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            detail = str(exc) if isinstance(exc, argparse.ArgumentTypeError) else f"invalid value {value!r}"
            raise DataError(f"{where}: {detail}") from None
    elif action.type is not None:
        try:
            value = action.type(value)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: {exc}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise DataError(f"{where}: invalid choice {value!r} (choose from {choices})")
    return value


def config_dict(args: argparse.Namespace, resolved: dict | None = None) -> dict:
    """Resolved settings as plain YAML-safe values (paths as strings, a storage URL without its password).

    ``resolved``: values a stage resolved (data directory, run name, ...) that take their option's place, or
    follow the options when they are not options; ``args`` itself is never changed."""
    from lib.core.storage import safe_url
    values = {**vars(args), **(resolved or {})}
    return {k: (str(v) if isinstance(v, Path) else safe_url(v) if k == "storage" else v) for k, v in values.items()}


def with_options(args: argparse.Namespace, **values) -> argparse.Namespace:
    """A new options object with ``values`` replacing (or following) the options of ``args`` (left unchanged)."""
    return argparse.Namespace(**{**vars(args), **values})
