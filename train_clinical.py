"""Clinical model: class-balanced logistic regression on the clinical features, cross-validated on the committed folds.

Example: ``python train_clinical.py --data-dir ../shared/data/lymphocytosis --experiment clinical_real``
(no --data-dir: the embedded demo data). Writes runs/<experiment>/ (oof.csv, test.csv, metrics.json,
coefficients.csv, roc.png, config.yaml, code_version.json, log.txt).
Study mode: ``python train_clinical.py --data-dir ../shared/data/lymphocytosis --study clin_hpo --trials 40``
searches feature set, penalty and C (lib/hpo/clinical.py), one run per trial under runs/clin_hpo/.
"""
import argparse

from lib.core.cli import run_main
from lib.core.config import ArgParser, add_common_args, parse_config
from lib.hpo.options import add_study_args
from lib.stages.context import load_run_inputs, open_stage
from lib.stages.options import add_clinical_args, check_clinical_options


def build_parser() -> argparse.ArgumentParser:
    """Common options plus the clinical model's own."""
    return add_study_args(add_clinical_args(add_common_args(ArgParser(description=__doc__.splitlines()[0]))))


def main(argv: list[str] | None = None) -> dict:
    """Train and cross-validate the clinical model (or run a study); return its OOF metrics (or the study summary)."""
    parser = build_parser()
    args = parse_config(parser, argv)
    if args.study:
        from lib.hpo.clinical import clinical_plan
        from lib.hpo.runner import run_study
        return run_study(args, parser, clinical_plan())
    check_clinical_options(args)  # every setting and the data are checked before the run directory exists
    from lib.stages.clinical import train_clinical  # scikit-learn: after the checks (never torch)
    stage = open_stage(args, default_experiment="clinical", loaded=load_run_inputs(args))
    metrics = train_clinical(stage)
    print(f"{stage.experiment}: OOF BA {metrics['ba_mean']:.3f}±{metrics['ba_std']:.3f} "
          f"AUC {metrics['auc_mean']:.3f}±{metrics['auc_std']:.3f} (mean±std over folds, threshold 0.5) "
          f"-> {stage.run_dir}")
    return metrics


if __name__ == "__main__":
    run_main(main)
