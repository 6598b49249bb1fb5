"""The runs to fuse: loading compatible runs' saved predictions, and the runs an ensemble run was tuned on.

``load_runs`` refuses duplicates and runs whose patients, targets, folds, test IDs or dataset differ.
``load_ensemble_runs`` (used by make_submission.py and report.py alike) reads an ensemble run's
best_params.json and loads exactly the runs it records, from their recorded paths, refusing any whose
predictions changed since the tuning (hashes of IDs, folds, targets and the probabilities themselves).
"""
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lib.core.errors import DataError
from lib.core.io import read_json, read_yaml
from lib.core.paths import FOLDS_DIR
from lib.core.runs import read_predictions
from lib.data.dataset import changed_inputs
from lib.data.folds import folds_file, read_fold_file
from lib.fusion.fuse import FusionParams

SIGNATURE_KEYS = ("oof_hash", "test_ids_hash", "proba_hash")
BEST_PARAMS_KEYS = ("weights", "method", "threshold", "runs")


@dataclass
class RunSet:
    """OOF and test probabilities of compatible runs (one column per run, rows by patient ID)."""

    names: list[str]
    paths: list[Path]
    oof: pd.DataFrame
    target: pd.Series
    fold: pd.Series
    test: pd.DataFrame
    configs: list[dict] = field(repr=False)

    @property
    def n_folds(self) -> int:
        return int(self.fold.nunique())

    def signatures(self) -> list[dict]:
        """Name, path and hashes of each run for best_params.json: OOF IDs+folds+targets, test IDs, and the
        run's own OOF and test probabilities (so an edited or re-made run is never taken for the tuned one)."""
        shared = prediction_hashes(self.fold, self.target, self.test.index)
        return [{"name": n, "path": str(p.resolve()), **shared, "proba_hash": proba_hash(self.oof[n], self.test[n])}
                for n, p in zip(self.names, self.paths)]


def digest(lines) -> str:
    """Short SHA-1 of sorted text lines."""
    return hashlib.sha1("\n".join(sorted(map(str, lines))).encode()).hexdigest()[:12]


def prediction_hashes(fold: pd.Series, target: pd.Series, test_ids) -> dict[str, str]:
    """Hashes identifying the OOF patients with their folds and targets, and the test IDs."""
    oof_lines = [f"{i}:{fold[i]}:{target[i]}" for i in fold.index]
    return {"oof_hash": digest(oof_lines), "test_ids_hash": digest(test_ids)}


def proba_hash(oof: pd.Series, test: pd.Series) -> str:
    """Hash of one run's OOF and test probabilities (by patient, full float precision)."""
    lines = [f"oof:{i}:{p!r}" for i, p in oof.items()] + [f"test:{i}:{p!r}" for i, p in test.items()]
    return digest(lines)


def read_run_config(run_dir: Path) -> dict:
    """A run's config.yaml; a run without one (not made by this toolkit, or not finished) is refused."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise DataError(f"{path}: not found ({run_dir} is not a run directory of this toolkit)")
    config = read_yaml(path) or {}
    if not isinstance(config, dict):
        raise DataError(f"{path}: not a mapping of settings; re-run the command that wrote it")
    if not config.get("dataset_name"):
        raise DataError(f"{path}: records no dataset_name, so its data cannot be checked; re-run that stage")
    return config


def _read_run(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One run's OOF (indexed by ID) and test table (indexed by ID), checked."""
    oof, test = read_predictions(run_dir)
    for name, table in (("oof.csv", oof), ("test.csv", test)):
        if table["ID"].duplicated().any():
            raise DataError(f"{Path(run_dir) / name}: duplicate patient IDs")
        if not table["proba"].between(0, 1).all():
            raise DataError(f"{Path(run_dir) / name}: probabilities outside [0, 1]")
    fold_columns = {c for c in test.columns if c.startswith("fold_")}
    if fold_columns and fold_columns != {f"fold_{k}" for k in oof["fold"].unique()}:
        raise DataError(f"{Path(run_dir) / 'test.csv'}: per-fold columns do not match the folds of oof.csv")
    return oof.set_index("ID").sort_index(), test.set_index("ID").sort_index()


def _check_same(name: str, ref_name: str, oof: pd.DataFrame, ref: pd.DataFrame, test, ref_test) -> None:
    """Refuse a run whose patients, targets, folds or test IDs differ from the first run's."""
    if set(oof.index) != set(ref.index):
        n_missing, n_extra = len(ref.index.difference(oof.index)), len(oof.index.difference(ref.index))
        raise DataError(f"{name}: OOF patient set differs from {ref_name} ({n_missing} missing, {n_extra} extra)")
    for column, what in (("target", "targets"), ("fold", "folds")):
        differ = oof[column].ne(ref.loc[oof.index, column])
        if differ.any():
            raise DataError(f"{name}: {what} differ from {ref_name} for {differ.sum()} patient(s), "
                            f"e.g. {differ[differ].index[0]}")
    if set(test.index) != set(ref_test.index):
        missing = sorted(ref_test.index.difference(test.index))
        example = f"; missing e.g. {', '.join(missing[:3])}" if missing else ""
        raise DataError(f"{Path(name) / 'test.csv'}: test patient set differs from {Path(ref_name) / 'test.csv'}"
                        f"{example}")


def load_runs(run_dirs: list[str | Path]) -> RunSet:
    """Load runs for fusion; refuse duplicates and runs whose patients, targets, folds or data differ."""
    paths = [Path(p) for p in run_dirs]
    names = [p.resolve().name for p in paths]
    if not paths or len(set(names)) != len(names):
        raise DataError(f"runs {', '.join(map(str, paths)) or '(none)'}: need at least one run, with distinct names")
    tables = [_read_run(p) for p in paths]
    configs = [read_run_config(p) for p in paths]
    for path, (oof, _), config in zip(paths, tables, configs):
        check_against_folds(path, oof, config)
    for path, (oof, test), config in zip(paths[1:], tables[1:], configs[1:]):
        _check_same(str(path), str(paths[0]), oof, tables[0][0], test, tables[0][1])
        _check_dataset(path, config, paths[0], configs[0])
    ref = tables[0][0]
    return RunSet(names=names, paths=paths, target=ref["target"].astype(int), fold=ref["fold"].astype(int),
                  oof=pd.DataFrame({n: t[0]["proba"] for n, t in zip(names, tables)}).loc[ref.index],
                  test=pd.DataFrame({n: t[1]["proba"] for n, t in zip(names, tables)}), configs=configs)


def recorded_fold_file(run_dir: Path, config: dict) -> Path | None:
    """The fold file a run was cross-validated on: where its config.yaml says, else this repository's folds/ (a
    run made on another machine); None for a run that records no folds (made by an older version)."""
    keys = ("dataset_name", "n_folds", "fold_seed")
    if any(config.get(k) is None for k in keys):
        return None
    name = folds_file(config["dataset_name"], int(config["n_folds"]), int(config["fold_seed"])).name
    candidates = [Path(config["folds_dir"]) / name] if config.get("folds_dir") else []
    found = [p for p in [*candidates, FOLDS_DIR / name] if p.exists()]
    if not found:
        raise DataError(f"{run_dir}: its fold file {candidates[0] if candidates else FOLDS_DIR / name} is not there "
                        f"(fold files are written once and kept: restore it to check the run's predictions)")
    return found[0]


def check_against_folds(run_dir: Path, oof: pd.DataFrame, config: dict) -> None:
    """A run's oof.csv must cover exactly its fold file's patients, each in the fold the file gives."""
    path = recorded_fold_file(run_dir, config)
    if path is None:
        return
    folds = read_fold_file(path).set_index("ID")["fold"]
    missing, extra = folds.index.difference(oof.index), oof.index.difference(folds.index)
    if len(missing) or len(extra):
        example = f"missing e.g. {', '.join(missing[:3])}" if len(missing) else f"not in it e.g. {', '.join(extra[:3])}"
        raise DataError(f"{Path(run_dir) / 'oof.csv'}: covers {len(oof.index.intersection(folds.index))} of the "
                        f"{len(folds)} patients of its fold file {path} ({example}): cut or edited; re-run its stage")
    moved = oof.index[oof["fold"].astype(int).to_numpy() != folds.loc[oof.index].to_numpy()]
    if len(moved):
        raise DataError(f"{Path(run_dir) / 'oof.csv'}: {len(moved)} patient(s) in another fold than its fold file {path} "
                        f"gives (e.g. {moved[0]}): the fold file or the run changed; re-run its stage")


def _check_dataset(path: Path, config: dict, ref_path: Path, ref_config: dict) -> None:
    """Every run must have been made on the same dataset (read_run_config makes sure each names one)."""
    if config["dataset_name"] != ref_config["dataset_name"]:
        raise DataError(f"{path}: trained on dataset {config['dataset_name']}, but {ref_path} on "
                        f"{ref_config['dataset_name']}")
    changed = changed_inputs(config.get("test_inputs") or {}, ref_config.get("test_inputs") or {})
    if changed:
        raise DataError(f"{path}: scored other inputs of test patient {changed[0]} than {ref_path} (the data "
                        f"directory changed between the stages); re-run the stages on one version of the data")


def read_best_params(ensemble_dir: str | Path) -> dict:
    """An ensemble run's best_params.json, checked for the keys that fusing needs."""
    path = Path(ensemble_dir) / "best_params.json"
    if not path.exists():
        raise DataError(f"{path}: not found (is {ensemble_dir} a finished ensemble.py run?)")
    saved = read_json(path)
    if not isinstance(saved, dict):
        raise DataError(f"{path}: not a mapping (damaged? re-run ensemble.py)")
    missing = [k for k in BEST_PARAMS_KEYS if k not in saved]
    missing += [f"runs[{i}].{k}" for i, e in enumerate(saved.get("runs", [])) for k in ("name", "path", *SIGNATURE_KEYS)
                if k not in e]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)} (made by an older version? re-run ensemble.py)")
    return saved


def _recorded_run(entry: dict, ensemble_dir: Path) -> Path:
    """A tuned run's directory, exactly where the ensemble recorded it."""
    path = Path(entry["path"])
    if not (path / "oof.csv").exists():
        raise DataError(f"{path}: run {entry['name']} that {ensemble_dir} was tuned on is not there (moved or "
                        f"deleted? re-run ensemble.py on the runs as they are now)")
    return path


def load_ensemble_runs(ensemble_dir: str | Path) -> tuple[RunSet, FusionParams, dict]:
    """The runs an ensemble was tuned on, its fusion and best_params.json; refused if any run changed since."""
    ensemble_dir = Path(ensemble_dir)
    saved = read_best_params(ensemble_dir)
    runs = load_runs([_recorded_run(e, ensemble_dir) for e in saved["runs"]])
    for entry, now in zip(saved["runs"], runs.signatures()):
        changed = [k for k in SIGNATURE_KEYS if entry[k] != now[k]]
        if changed:
            what = "predictions (oof.csv/test.csv)" if changed == ["proba_hash"] else ", ".join(changed)
            raise DataError(f"{now['path']}: {what} changed since {ensemble_dir} was tuned on it "
                            f"(run re-made or edited? re-run ensemble.py)")
    params = FusionParams(weights=saved["weights"], method=saved["method"], threshold=float(saved["threshold"]))
    if set(params.weights) != set(runs.names):
        raise DataError(f"{ensemble_dir / 'best_params.json'}: weights name {sorted(params.weights)}, runs are {runs.names}")
    return runs, params, saved
