"""Score the patients of a data directory with an ensemble's saved models (no retraining) and fuse them.

Examples:
  python predict.py --ensemble runs/demo-78ce0768_s42/ensemble --data-dir NEW_DIR        # its test patients
  python predict.py --ensemble runs/ens_real --data-dir ../shared/data/lymphocytosis       # = make_submission.py
  python predict.py --ensemble runs/ens_real --data-dir LAB_DIR --all-patients            # every patient folder
NEW_DIR is a competition directory in either layout (clinical CSV + one image folder per patient; the
training split may be absent). Every
run of the ensemble scores the patients with its saved fold models (see lib/stages/predict.py), fused with
the ensemble's weights, method and threshold. Writes --out (Id,Predicted), <out stem>_proba.csv (Id,Proba)
<out stem>_models.csv (each model's probability and the blend) and <out stem>_report/index.html (where
the scores fall against the threshold; the cells behind the calls closest to it).
"""
import argparse
import logging
from pathlib import Path

import pandas as pd

from lib.core.cli import run_main
from lib.core.config import ArgParser, parse_config
from lib.core.io import atomic_write_csv
from lib.core.paths import CACHE_DIR, proba_path, refuse_outputs_over_inputs
from lib.data.dataset import load_dataset
from lib.data.profile import check_scored_cells
from lib.fusion.runs import load_ensemble_runs

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("-c", "--config", type=Path, help="YAML file of defaults (CLI overrides it)")
    parser.add_argument("--ensemble", type=Path, required=True, help="ensemble run directory (ensemble.py)")
    parser.add_argument("--data-dir", type=Path, required=True, help="directory of the patients to score")
    parser.add_argument("--all-patients", action="store_true",
                        help="score every patient of the directory (train and test split alike; labels unused)")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"), help="Id,Predicted CSV to write")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="decoded images, weights, embeddings")
    parser.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                        help="also write <out stem>_report/index.html: the scores and the cells behind the closest calls")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def report_dir(out: Path) -> Path:
    return out.with_name(f"{out.stem}_report")


def models_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}_models{out.suffix or '.csv'}")


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Load the ensemble's runs and the new data, score, fuse, validate and write; return the table."""
    args = parse_config(build_parser(), argv)
    runs, params, _ = load_ensemble_runs(args.ensemble)
    outputs = {"--out": args.out, "the probabilities": proba_path(args.out), "the per-model table": models_path(args.out)}
    refuse_outputs_over_inputs({**outputs, **({"the report": report_dir(args.out)} if args.report else {})},
                               [args.data_dir, args.ensemble, *runs.paths])
    dataset = load_dataset(args.data_dir, scoring_only=True)
    pids = sorted(dataset.patients.index if args.all_patients else dataset.test.index)
    for warning in check_scored_cells(runs.paths, dataset, pids):  # another size or grayscale: a one-line error
        log.warning(warning)
    from lib.stages.predict import predict_patients  # torch, timm, scikit-learn: after the checks
    from lib.stages.report.scored import scored_report
    from lib.stages.submission import write_submission
    table, cells = predict_patients(runs, params, dataset, pids, args.cache_dir, args.progress)
    out, out_proba = write_submission(table["blend"], params.threshold, pids, args.out)
    atomic_write_csv(table.reset_index(), models_path(args.out))
    if args.report:
        index = scored_report(table, params.threshold, params.weights, cells, dataset, report_dir(args.out),
                              title=f"Predictions: {args.data_dir.name} with {args.ensemble.name}",
                              progress=args.progress)
        print(f"report: {index}")
    n_tumoral = int((table["blend"] >= params.threshold).sum())
    print(f"{args.ensemble}: {len(pids)} patient(s) of {args.data_dir} scored by {len(runs.names)} model(s) "
          f"({params.method}, threshold {params.threshold:.3f}): {n_tumoral} predicted tumoral -> {out}, {out_proba}, "
          f"{models_path(args.out)}")
    return table


if __name__ == "__main__":
    run_main(main)
