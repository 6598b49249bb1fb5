"""Write the competition submission from a tuned ensemble (or an equal-weight blend of runs).

Examples: ``python make_submission.py --ensemble runs/ens_real`` (its best_params.json and run list) or
``python make_submission.py --runs runs/clinical_real runs/cnn_real`` (equal weights, probability mean,
threshold 0.5). Each run's test probability is the mean of its per-fold models (test.csv ``proba``).
Writes ``--out`` (default ./submission.csv: Id,Predicted) and ``<out stem>_proba.csv`` (Id,Proba).
"""
import argparse
from pathlib import Path

from lib.core.cli import run_main
from lib.core.config import ArgParser, parse_config
from lib.core.errors import DataError
from lib.core.io import read_table
from lib.core.paths import REPO_DIR, proba_path, refuse_outputs_over_inputs
from lib.data.dataset import check_test_inputs, load_dataset
from lib.fusion.fuse import FusionParams
from lib.fusion.runs import RunSet, load_ensemble_runs, load_runs


def build_parser() -> argparse.ArgumentParser:
    """Options: an ensemble run or a list of runs, the data directory and the output file."""
    parser = ArgParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", type=Path, help="YAML file of defaults (CLI overrides it)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ensemble", type=Path, help="ensemble run directory (uses its best_params.json)")
    source.add_argument("--runs", nargs="+", type=Path, help="runs to blend with equal weights at threshold 0.5")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="competition directory (default: the data_dir recorded in the runs' config.yaml)")
    parser.add_argument("--out", type=Path, default=REPO_DIR / "submission.csv", help="submission CSV to write")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def resolve_runs(args: argparse.Namespace) -> tuple[RunSet, FusionParams, str]:
    """The runs and fusion to use, and a description of where they come from."""
    if args.ensemble:
        runs, params, _ = load_ensemble_runs(args.ensemble)
        return runs, params, f"ensemble {args.ensemble}"
    runs = load_runs(args.runs)
    return runs, FusionParams(weights={n: 1.0 for n in runs.names}), "equal-weight probability mean"


def data_dir_of(args: argparse.Namespace, runs: RunSet) -> Path:
    """--data-dir, else the data directory the runs recorded."""
    data_dir = args.data_dir or runs.configs[0].get("data_dir")
    if not data_dir:
        raise DataError(f"{runs.paths[0]}: config.yaml records no data_dir; pass --data-dir")
    return Path(data_dir)


def test_ids_of(data_dir: Path, runs: RunSet) -> list[str]:
    """The test IDs of the data directory; the runs must have been made on that dataset."""
    dataset = load_dataset(data_dir)
    recorded = runs.configs[0]["dataset_name"]
    if recorded != dataset.name:
        raise DataError(f"{runs.paths[0]}: trained on {recorded}, but {data_dir} is {dataset.name}")
    check_test_inputs(dataset, runs.configs[0].get("test_inputs"), runs.paths[0])
    return list(dataset.test.index)


def main(argv: list[str] | None = None) -> Path:
    """Fuse the runs' test predictions, threshold, validate and write the submission files."""
    args = parse_config(build_parser(), argv)
    if Path(args.out).is_dir():
        raise DataError(f"{args.out}: --out names a directory, not a submission file to write")
    runs, params, source = resolve_runs(args)
    data_dir = data_dir_of(args, runs)
    refuse_outputs_over_inputs({"--out": args.out, "the probabilities": proba_path(args.out)},
                               [data_dir, *([args.ensemble] if args.ensemble else []), *runs.paths])
    from lib.stages.submission import check_runs_cover_test, demo_test_ba, fused_test, write_submission  # scikit-learn
    test_ids = test_ids_of(data_dir, runs)
    check_runs_cover_test(runs, test_ids, data_dir)
    out, out_proba = write_submission(fused_test(runs, params), params.threshold, test_ids, args.out)
    labels = read_table(out)
    print(f"{source}: {params.method}, threshold {params.threshold:.3f}, "
          f"weights {', '.join(f'{n}={w:.2f}' for n, w in params.weights.items())}")
    print(f"wrote {out} ({len(labels)} patients, {int(labels['Predicted'].sum())} predicted tumoral) and {out_proba}")
    ba = demo_test_ba(data_dir, labels)
    if ba is not None:
        print(f"[demo data only] test BA against demo_test_truth.csv: {ba:.3f}")
    return out


if __name__ == "__main__":
    run_main(main)
