"""Late fusion of several runs: the equal-weight probability mean, or an Optuna study of weights, method and threshold.

Example: ``python ensemble.py --runs runs/clinical_real runs/cnn_real --experiment ens_real`` (equal weights, the
default), ``... --fusion study --trials 300`` (the study). Writes runs/<experiment>/: best_params.json (weights,
method, threshold, the runs with their hashes), metrics.json (in-sample and nested estimates, each model alone),
oof.csv, roc.png, and with the study study.db and the optimisation plots. ``--storage`` takes any Optuna RDB URL
instead of the run's SQLite file.
"""
import argparse
from pathlib import Path

from lib.core.cli import run_main
from lib.core.config import ArgParser, common_problems, config_dict, parse_config
from lib.core.errors import DataError, raise_first
from lib.core.paths import RUNS_DIR
from lib.core.runs import create_run
from lib.core.storage import check_storage
from lib.fusion.fuse import DEFAULT_FUSION, FUSIONS, THRESHOLD_POLICIES
from lib.fusion.runs import load_runs

DEFAULT_THRESHOLD_POLICY = "0.5"  # measured: BENCHMARKS.md "Whole pipeline" blocks of 2026-12-02


def build_parser() -> argparse.ArgumentParser:
    """Options of the fusion (equal weights or the study)."""
    parser = ArgParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", type=Path, help="YAML file of defaults (CLI overrides it)")
    parser.add_argument("--runs", nargs="+", required=True, help="run directories to fuse")
    parser.add_argument("--experiment", default="ensemble", help="results go to <runs-dir>/<experiment>/")
    parser.add_argument("--runs-dir", type=Path, default=None, help="parent of the run directory (default runs/)")
    parser.add_argument("--fusion", choices=FUSIONS, default=DEFAULT_FUSION,
                        help="equal (the default, measured best honestly): the equal-weight probability mean, nothing "
                             "fitted but the threshold of --threshold tuned (no study; --trials unused); study: Optuna "
                             "weights, method and threshold")
    parser.add_argument("--trials", type=int, default=200, help="finished trials of the main study (--fusion study)")
    parser.add_argument("--nested-trials", type=int, default=None,
                        help="trials of each per-fold study of the honest estimate (default: --trials)")
    parser.add_argument("--storage", default=None, help="Optuna RDB URL (default sqlite:///<run dir>/study.db)")
    parser.add_argument("--threshold", choices=THRESHOLD_POLICIES, default=DEFAULT_THRESHOLD_POLICY,
                        help="submitted decision threshold: the study's (tuned), a fixed 0.5, or the OOF prevalence "
                             f"quantile (default {DEFAULT_THRESHOLD_POLICY}; the honest estimate of each is printed)")
    parser.add_argument("--seed", type=int, default=0, help="TPE sampler seed")
    parser.add_argument("--resume", action="store_true", help="continue (top up) an existing ensemble run")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.set_defaults(stage="ensemble")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Check the runs agree, fuse them (equal weights, or the fusion study) and write the outputs; return params and
    metrics."""
    args = parse_config(build_parser(), argv)
    for option, value in (("--trials", args.trials), ("--nested-trials", args.nested_trials)):
        if value is not None and value < 1:
            raise DataError(f"{option} {value} must be >= 1")
    raise_first(common_problems(args))
    check_storage(args.storage)
    runs = load_runs(args.runs)  # settings and runs are checked before the run directory is created
    from lib.stages.ensemble import run_ensemble  # Optuna: after the checks
    run_dir = create_run(Path(args.runs_dir or RUNS_DIR) / args.experiment, config_dict(args), resume=args.resume)
    result = run_ensemble(runs, run_dir, n_trials=args.trials, nested_trials=args.nested_trials or args.trials,
                          storage=args.storage, seed=args.seed, name=args.experiment, policy=args.threshold,
                          fusion=args.fusion)
    report(result, run_dir)
    return result


def report(result: dict, run_dir: Path) -> None:
    """Print the chosen fusion, the in-sample and honest BA, and each model alone."""
    params, m = result["params"], result["metrics"]
    weights = ", ".join(f"{n}={w:.2f}" for n, w in params.weights.items())
    fusion, policy = m.get("fusion", "study"), m["nested"]["threshold_policy"]
    fitted = ("weights tuned" if fusion == "study" else "threshold searched" if policy == "tuned" else None)
    print(f"fusion {fusion}: {params.method}, threshold {params.threshold:.3f}, weights {weights}")
    print(f"OOF BA in-sample ({f'{fitted} on all folds' if fitted else 'nothing fitted'}): "
          f"{m['in_sample']['pooled_ba']:.3f} (per fold {m['in_sample']['ba_mean']:.3f}±{m['in_sample']['ba_std']:.3f})")
    print(f"OOF BA honest ({f'{fitted} on k-1 folds, scored on the k-th' if fitted else 'nothing fitted: plain CV'}; "
          f"threshold {policy}): {m['nested']['ba_mean']:.3f}±{m['nested']['ba_std']:.3f}, AUC {m['nested']['auc']:.3f}")
    policies = m["nested"]["threshold_policies"]
    print("  honest BA by threshold: " + ", ".join(f"{p} {v['ba_mean']:.3f}±{v['ba_std']:.3f}" for p, v in policies.items()))
    for name, b in m["models"].items():
        tag = " [clinical]" if name in m["clinical_runs"] else ""
        print(f"  {name}{tag}: BA@0.5 {b['ba_at_0.5_mean']:.3f}±{b['ba_at_0.5_std']:.3f}, "
              f"own tuned threshold {b['nested_tuned_threshold_ba_mean']:.3f}±{b['nested_tuned_threshold_ba_std']:.3f} "
              f"honest / {b['pooled_ba_at_tuned_threshold']:.3f} in-sample (t={b['tuned_threshold']:.2f}), AUC {b['auc']:.3f}")
    print(f"-> {run_dir}")


if __name__ == "__main__":
    run_main(main)
