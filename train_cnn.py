"""CNN stage: MIL on bags of cell images, frozen-embedding (embed) or end-to-end (finetune) regime.

Examples:
  python train_cnn.py -c configs/cnn_cpu.yaml                     # demo data, CPU preset (< 1 min)
  python train_cnn.py -c configs/cnn_cpu.yaml --data-dir ../shared/data/lymphocytosis --experiment cnn_real
  python train_cnn.py -c configs/cnn_cpu.yaml --head mean --experiment cnn_mean     # reuses the embedding cache
  python train_cnn.py -c configs/cnn_gpu.yaml --data-dir ../shared/data/lymphocytosis   # finetune on a GPU
  python train_cnn.py ... --folds 0 1 ; then --resume runs the other folds (finished folds are skipped)
  python train_cnn.py -c configs/cnn_cpu.yaml --data-dir ../shared/data/lymphocytosis --study cnn_hpo --trials 20
      # Optuna study over lib/hpo/cnn.py's space: runs/cnn_hpo/trial_<n>/, best.yaml, study_summary.json
Writes runs/<experiment>/ (see lib/stages/cnn.py for the layout).
"""
import argparse

from lib.core.cli import run_main
from lib.core.config import ArgParser, add_common_args, parse_config
from lib.hpo.options import add_study_args
from lib.stages.context import load_run_inputs, open_stage
from lib.stages.options import add_cnn_args, check_cnn_ranges


def build_parser() -> argparse.ArgumentParser:
    """Common options plus the CNN stage's own."""
    parser = add_common_args(ArgParser(description=__doc__.splitlines()[0],
                                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                                     epilog="\n".join(__doc__.splitlines()[2:])))
    return add_study_args(add_cnn_args(parser))


def main(argv: list[str] | None = None) -> dict:
    """Validate the inputs, then cross-validate the CNN (or run a study); return the OOF metrics (or the summary).

    The options and the data tables are checked before torch and timm are imported (a typo answers at once).
    """
    parser = build_parser()
    args = parse_config(parser, argv)
    if args.study:
        from lib.hpo.cnn import cnn_plan
        from lib.hpo.runner import run_study
        return run_study(args, parser, cnn_plan())
    check_cnn_ranges(args)
    dataset, inputs = load_run_inputs(args)
    from lib.stages.cnn import check_data, check_options, run_cnn  # torch, timm, albumentations
    setup = check_options(args)
    check_data(args, dataset)
    stage = open_stage(args, default_experiment=f"cnn_{args.regime}", loaded=(dataset, inputs))
    metrics = run_cnn(stage, setup)
    if "ba_mean" in metrics:
        print(f"{stage.experiment}: OOF BA {metrics['ba_mean']:.3f}±{metrics['ba_std']:.3f} "
              f"AUC {metrics['auc_mean']:.3f}±{metrics['auc_std']:.3f} (mean±std over folds) -> {stage.run_dir}")
    else:
        print(f"{stage.experiment}: folds {metrics['folds_done']} done -> {stage.run_dir}")
    return metrics


if __name__ == "__main__":
    run_main(main)
