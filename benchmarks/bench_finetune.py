"""Benchmark: CNN-MIL fine-tuned end to end on the CPU (configs/cnn_cpu_finetune.yaml), repeated CV.

Usage: python -m benchmarks.bench_finetune --encoder runs/ssl --reference runs/bench_ssl [--seeds 43 44 45]
       [--variants ...] [--runs-dir DIR] [--trials 100] [--no-append]
Every variant runs on every fold seed: the preset (the self-supervised ResNet-10-T of --encoder fine-tuned at
64 px, feature norm and instance_bn head, heavy on-line augmentation, bf16 autocast where native), the same with light
augmentation, with clinical fusion, and from a random initialisation. --reference is a bench_ssl.py run
directory on the same fold seeds: its clinical model, morphometry model and frozen-ImageNet CNN runs give the
baselines and the blend without the fine-tuned CNN; the blend with it adds the preset run (honest nested BA,
ensemble.py). Each variant is also bagged over the fold seeds (lib/stages/bagging.py) against its single seeds.
Speed: training img/s of the fine-tune epochs, wall time per 5-fold run, peak memory of this process.
"""
import argparse
import json
import resource
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

import ensemble
import train_cnn
from benchmarks.common import bagged_line, bench_runs_dir, publish, quality_line
from lib.core.metrics import mean_std
from lib.core.paths import CONFIGS_DIR, SHARED_DATA_DIR
from lib.stages.bagging import bag_runs

PRESET = "ssl_heavy_image"
VARIANTS = {PRESET: [], "ssl_light_image": ["--aug", "light"], "ssl_heavy_fusion": ["--clinical-fusion"],
            "scratch_heavy_image": ["--weights", "none"]}
REFERENCE = {"clinical": "ssl_bench_clinical_s{seed}", "morpho": "ssl_bench_clinical_morpho_s{seed}",
             "imagenet embed, mean, image-only": "ssl_bench_imagenet_mean_image_s{seed}",
             "imagenet embed, mean, fusion": "ssl_bench_imagenet_mean_fusion_s{seed}",
             "imagenet embed, attention, fusion": "ssl_bench_imagenet_attention_fusion_s{seed}",
             "ssl embed (same encoder frozen), mean, image-only": "ssl_bench_ssl_mean_image_s{seed}",
             "ssl embed (same encoder frozen), instance_bn, image-only": "ssl_bench_ssl_instance_bn_image_s{seed}"}
BLEND = ("clinical", "morpho", "imagenet embed, mean, fusion", "imagenet embed, attention, fusion")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA_DIR)
    parser.add_argument("--encoder", type=Path, required=True, help="a finished pretrain_cnn.py run directory")
    parser.add_argument("--reference", type=Path, required=True, help="a bench_ssl.py --runs-dir on the same seeds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[43, 44, 45])
    parser.add_argument("--variants", nargs="*", default=[v for v in VARIANTS if v != PRESET],
                        choices=[v for v in VARIANTS if v != PRESET], help="variants besides the preset")
    parser.add_argument("--finished-only", action="store_true",
                        help="train nothing: report the runs already finished under --runs-dir (each variant over "
                             "the seeds it has; the preset needs all), e.g. to publish a benchmark cut short")
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--no-append", action="store_true")
    return parser.parse_args(argv)


def finetune_run(args, runs_dir: Path, variant: str, seed: int) -> dict | None:
    """One 5-fold CV of a variant (a finished run is read back, not retrained); metrics, speed and wall time.

    None under --finished-only when the run is not finished.
    """
    name = f"{variant}_s{seed}"
    if args.finished_only and not (runs_dir / name / "metrics.json").exists():
        if variant == PRESET:
            raise SystemExit(f"bench_finetune: --finished-only needs the preset on every seed; {runs_dir / name} "
                             f"is not finished")
        return None
    extra = VARIANTS[variant]
    weights = [] if "--weights" in extra else ["--weights", str(args.encoder / "encoder.pth")]
    metrics = train_cnn.main(["-c", str(CONFIGS_DIR / "cnn_cpu_finetune.yaml"), *weights, "--data-dir", str(args.data_dir),
                              "--fold-seed", str(seed), "--runs-dir", str(runs_dir), "--experiment", name,
                              "--no-progress", "--resume", *extra])
    run = runs_dir / name
    log, timings = pd.read_csv(run / "log.csv"), json.loads((run / "timings.json").read_text())
    n_train = len(pd.read_csv(run / "oof.csv")) * 4 / 5  # training patients of a fold, one 16-cell bag each an epoch
    img_per_s = len(log) * n_train * 16 / log["seconds"].sum()
    timed = len(timings.get("folds_trained", [])) == 5  # all five folds trained by the timed invocation
    return {**metrics, "run": run, "seed": seed, "img_per_s": img_per_s,
            "minutes": timings["train_seconds"] / 60 if timed else None}


def reference_metrics(args, seed: int) -> dict[str, dict]:
    """The reference runs' metrics (and paths) on one fold seed."""
    out = {}
    for label, pattern in REFERENCE.items():
        run = args.reference / pattern.format(seed=seed)
        out[label] = {**json.loads((run / "metrics.json").read_text()), "run": run}
    return out


def blend(args, runs_dir: Path, name: str, runs: list[Path]) -> float:
    result = ensemble.main(["--runs", *map(str, runs), "--runs-dir", str(runs_dir), "--experiment", name,
                            "--fusion", "study", "--trials", str(args.trials), "--nested-trials", str(args.trials),
                            "--resume"])
    return result["metrics"]["nested"]["ba_mean"]


def run_all(args, runs_dir: Path) -> tuple[dict, dict, dict]:
    """Fine-tune runs by variant, reference runs by label, blends (without / with the preset).

    The preset and its blends come first on every seed (the costliest to lose), then the other variants.
    """
    tuned, reference, blends = {PRESET: []}, {}, {"without the fine-tuned CNN": [], "with the fine-tuned CNN": []}
    for seed in args.seeds:
        tuned[PRESET].append(finetune_run(args, runs_dir, PRESET, seed))
        print(quality_line(f"{PRESET} so far", tuned[PRESET]), flush=True)
        ref = reference_metrics(args, seed)
        for label, value in ref.items():
            reference.setdefault(label, []).append(value)
        base = [ref[label]["run"] for label in BLEND]
        blends["without the fine-tuned CNN"].append(blend(args, runs_dir, f"ft_blend_base_s{seed}", base))
        blends["with the fine-tuned CNN"].append(blend(args, runs_dir, f"ft_blend_with_s{seed}",
                                                       [*base, tuned[PRESET][-1]["run"]]))
    for seed in args.seeds:  # seed by seed: a benchmark cut short still has every variant on its first seeds
        for variant in args.variants:
            run = finetune_run(args, runs_dir, variant, seed)
            if run is not None:
                tuned.setdefault(variant, []).append(run)
                print(quality_line(f"{variant} so far", tuned[variant]), flush=True)
    return tuned, reference, blends


def speed_line(tuned: dict) -> str:
    """Training img/s and minutes per 5-fold run of each variant (runs read back from an earlier invocation are
    left out of the minutes), and the peak memory of this process."""
    parts = []
    for variant, runs in tuned.items():
        minutes = [r["minutes"] for r in runs if r["minutes"] is not None]
        wall = f"{np.mean(minutes):.1f} min per 5-fold run ({len(minutes)} timed)" if minutes else "not timed here"
        parts.append(f"{variant} {np.mean([r['img_per_s'] for r in runs]):.0f} img/s, {wall}")
    return (f"- speed (training img/s of the epochs; wall time of training + scoring): {'; '.join(parts)}; issue "
            f"table: resnet10t 112 px 283 bf16 / 139 fp32 img/s, matmul ~1,150 bf16 / ~190 fp32 GFLOP/s; peak memory "
            f"of the benchmark process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def seeds_note(args, runs: list[dict]) -> str:
    """' (fold seeds 43 only)' for a variant that did not run on every seed, else ''."""
    seeds = [r["seed"] for r in runs]
    if len(seeds) == len(args.seeds):
        return ""
    return f" (fold seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))} only)"


def result_lines(args, runs_dir: Path, tuned: dict, reference: dict, blends: dict) -> list[str]:
    settings = yaml.safe_load((CONFIGS_DIR / "cnn_cpu_finetune.yaml").read_text())
    preset = ", ".join(f"{k} {settings[k]}" for k in ("epochs", "bag_size", "batch_patients", "lr", "backbone_lr",
                                                      "freeze_blocks", "feature_norm", "head", "aug", "tta",
                                                      "input_size"))
    lines = [f"- data: {args.data_dir}; fold seeds {', '.join(map(str, args.seeds))} for every variant; threshold "
             f"0.5; mean±std over seeds of the fold mean",
             f"- preset: configs/cnn_cpu_finetune.yaml ({preset}) initialised from {args.encoder / 'encoder.pth'} "
             f"(SimCLR ResNet-10-T), bf16 autocast; variants change one setting each",
             *(quality_line(f"reference: {label} (bench_ssl runs, same folds)", runs) for label, runs in reference.items()),
             *(quality_line(f"finetune {variant}{seeds_note(args, runs)}", runs)
               for variant, runs in tuned.items())]
    for name, values in blends.items():
        lines.append(f"- blend clinical + morpho + ImageNet embed CNNs, {name} (honest nested BA): {mean_std(values)} "
                     f"(per seed {', '.join(f'{v:.3f}' for v in values)})")
    for variant, runs in tuned.items():
        if len(runs) > 1:
            lines.append(bagged_line(f"finetune {variant}", bag_runs([r["run"] for r in runs],
                                                                     runs_dir / f"bag_{variant}"), runs))
    return [*lines, speed_line(tuned)]


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    with bench_runs_dir(args.runs_dir, "bench_finetune_") as runs_dir:
        lines = result_lines(args, runs_dir, *run_all(args, runs_dir))
    lines.append(f"- torch intra-op threads: {torch.get_num_threads()}; GPU: none on this machine")
    publish("CNN-MIL fine-tuned end to end on the CPU, repeated CV", lines, __file__, argv, append=not args.no_append)
    return lines


if __name__ == "__main__":
    main()
