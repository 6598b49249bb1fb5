"""Stage 0: validate a competition directory, write (or check) its folds, optionally build the decoded cache."""
import argparse
import logging
from pathlib import Path

from lib.core.cli import run_main
from lib.core.config import ArgParser, common_problems
from lib.core.errors import DataError, raise_first
from lib.core.paths import CACHE_DIR, FOLDS_DIR
from lib.data.dataset import load_dataset
from lib.data.folds import DEFAULT_N_SPLITS, DEFAULT_SEED, fold_counts, folds_path, load_folds
from lib.data.locate import resolve_data_dir


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgParser(description=__doc__)
    parser.add_argument("--data-dir", help="competition directory (default: the embedded demo data)")
    parser.add_argument("--n-folds", type=int, default=DEFAULT_N_SPLITS)
    parser.add_argument("--fold-seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--folds-dir", type=Path, default=FOLDS_DIR, help="where fold files are read and written")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="where --cache builds the decoded images")
    parser.add_argument("--check-folds", action="store_true", help="fail if the fold file is not already there")
    parser.add_argument("--cache", type=int, metavar="CROP", help="also build the decoded-image cache at this crop")
    args = parser.parse_args(argv)
    raise_first([*common_problems(args),
                 (args.cache is not None and args.cache < 8, f"--cache {args.cache} must be a crop >= 8 pixels")])
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dataset = load_dataset(resolve_data_dir(args.data_dir))
    path = folds_path(dataset, args.n_folds, args.fold_seed, args.folds_dir)
    if args.check_folds and not path.exists():
        raise DataError(f"{path}: fold file for {dataset.name} is not committed")
    folds = load_folds(dataset, args.n_folds, args.fold_seed, args.folds_dir)
    train, test = dataset.train, dataset.test
    print(f"{dataset.root} ({dataset.layout} layout) = {dataset.name}: {len(train)} train patients "
          f"({int(train.LABEL.sum())} tumoral, {int((train.LABEL == 0).sum())} reactive), {len(test)} test, "
          f"{int(dataset.patients.n_images.sum())} images ({dataset.patients.n_images.min()}-"
          f"{dataset.patients.n_images.max()} per patient)")
    print(f"folds: {path}\n{fold_counts(folds, dataset).to_string()}")
    if args.cache is not None:
        from lib.data.images import load_image_cache  # OpenCV
        load_image_cache(dataset, args.cache, args.cache_dir)


if __name__ == "__main__":
    run_main(main)
