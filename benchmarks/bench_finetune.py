"""Benchmark: CNN-MIL fine-tuned end to end on the CPU (configs/cnn_cpu_finetune.yaml), repeated CV.

Usage: python benchmarks/bench_finetune.py --encoder runs/ssl --reference runs/bench_ssl [--seeds 43 44 45]
       [--probe-seed 43] [--runs-dir DIR] [--trials 100] [--no-append]
The preset (the self-supervised ResNet-10-T of --encoder fine-tuned at 64 px with its instance_bn head,
heavy on-line augmentation, bf16 autocast where native) runs on every fold seed, image-only; the other
variants (--variants: random initialisation by default; light augmentation, clinical fusion) on
--probe-seed only, to show the direction at a third of the cost. --reference is a bench_ssl.py run directory on the same fold seeds: its
clinical model, morphometry model and frozen-ImageNet CNN runs give the baselines and the blend without
the fine-tuned CNN; the blend with it adds the preset run (honest nested BA, ensemble.py).
Speed: training img/s of the fine-tune epochs, wall time per 5-fold run, peak memory of this process.
"""
import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import ensemble  # noqa: E402
import train_cnn  # noqa: E402
from lib.core.bench import publish, quality_line  # noqa: E402
from lib.core.metrics import mean_std  # noqa: E402
from lib.core.paths import CONFIGS_DIR, SHARED_DATA_DIR  # noqa: E402

PRESET = "ssl_heavy_image"
VARIANTS = {PRESET: [], "ssl_light_image": ["--aug", "light"], "scratch_heavy_image": ["--weights", "none"],
            "ssl_heavy_fusion": ["--clinical-fusion"]}
REFERENCE = {"clinical": "ssl_bench_clinical_s{seed}", "morpho": "ssl_bench_clinical_morpho_s{seed}",
             "imagenet embed, mean, image-only": "ssl_bench_imagenet_mean_image_s{seed}",
             "imagenet embed, mean, fusion": "ssl_bench_imagenet_mean_fusion_s{seed}",
             "imagenet embed, attention, fusion": "ssl_bench_imagenet_attention_fusion_s{seed}"}
BLEND = ("clinical", "morpho", "imagenet embed, mean, fusion", "imagenet embed, attention, fusion")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA_DIR)
    parser.add_argument("--encoder", type=Path, required=True, help="a finished pretrain_cnn.py run directory")
    parser.add_argument("--reference", type=Path, required=True, help="a bench_ssl.py --runs-dir on the same seeds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[43, 44, 45])
    parser.add_argument("--probe-seed", type=int, default=43)
    parser.add_argument("--variants", nargs="*", default=["scratch_heavy_image"],
                        choices=[v for v in VARIANTS if v != PRESET], help="probe variants (on --probe-seed only)")
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--no-append", action="store_true")
    return parser.parse_args(argv)


def finetune_run(args, runs_dir: Path, variant: str, seed: int) -> dict:
    """One 5-fold CV of a variant (a finished run is read back, not retrained); metrics, speed and wall time."""
    name = f"{variant}_s{seed}"
    extra = VARIANTS[variant]
    weights = [] if "--weights" in extra else ["--weights", str(args.encoder / "encoder.pth")]
    metrics = train_cnn.main(["-c", str(CONFIGS_DIR / "cnn_cpu_finetune.yaml"), *weights, "--data-dir", str(args.data_dir),
                              "--fold-seed", str(seed), "--runs-dir", str(runs_dir), "--experiment", name,
                              "--no-progress", "--resume", *extra])
    run = runs_dir / name
    log, timings = pd.read_csv(run / "log.csv"), json.loads((run / "timings.json").read_text())
    n_train = len(pd.read_csv(run / "oof.csv")) * 4 / 5  # training patients of a fold, one 16-cell bag each an epoch
    img_per_s = len(log) * n_train * 16 / log["seconds"].sum()
    return {**metrics, "run": run, "img_per_s": img_per_s, "train_seconds": timings["train_seconds"]}


def reference_metrics(args, seed: int) -> dict[str, dict]:
    """The reference runs' metrics (and paths) on one fold seed."""
    out = {}
    for label, pattern in REFERENCE.items():
        run = args.reference / pattern.format(seed=seed)
        out[label] = {**json.loads((run / "metrics.json").read_text()), "run": run}
    return out


def blend(args, runs_dir: Path, name: str, runs: list[Path]) -> float:
    result = ensemble.main(["--runs", *map(str, runs), "--runs-dir", str(runs_dir), "--experiment", name,
                            "--trials", str(args.trials), "--nested-trials", str(args.trials)])
    return result["metrics"]["nested"]["ba_mean"]


def run_all(args, runs_dir: Path) -> tuple[dict, dict, dict]:
    """Fine-tune runs by variant, reference runs by label, blends (without / with the preset).

    The preset and its blends come first on every seed, the probe variants last (the costliest to lose).
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
    for variant in args.variants:
        tuned[variant] = [finetune_run(args, runs_dir, variant, args.probe_seed)]
        print(quality_line(f"{variant}", tuned[variant]), flush=True)
    return tuned, reference, blends


def result_lines(args, tuned: dict, reference: dict, blends: dict) -> list[str]:
    preset = tuned[PRESET]
    lines = [f"- data: {args.data_dir}; fold seeds {', '.join(map(str, args.seeds))} for the preset, "
             f"{args.probe_seed} alone for the probe variants (one seed: a direction, not a result); threshold 0.5; "
             f"mean±std over seeds of the fold mean",
             f"- preset: configs/cnn_cpu_finetune.yaml initialised from {args.encoder / 'encoder.pth'} (SimCLR "
             f"ResNet-10-T), 20 epochs of 8 bags x 16 cells, heavy on-line albumentations, instance_bn head, bf16 "
             f"autocast, 2 TTA views at scoring",
             *(quality_line(f"reference: {label} (bench_ssl runs, same folds)", runs) for label, runs in reference.items()),
             *(quality_line(f"finetune {variant}", runs) for variant, runs in tuned.items())]
    for name, values in blends.items():
        lines.append(f"- blend clinical + morpho + ImageNet embed CNNs, {name} (honest nested BA): {mean_std(values)} "
                     f"(per seed {', '.join(f'{v:.3f}' for v in values)})")
    timed = [r for r in preset if r["train_seconds"] > 60] or preset  # a run read back (--resume) took no time here
    lines.append(f"- speed (preset): {sum(r['img_per_s'] for r in preset) / len(preset):.0f} training img/s (64 px, "
                 f"bf16; issue table: resnet10t 112 px 283 bf16 / 139 fp32), "
                 f"{sum(r['train_seconds'] for r in timed) / len(timed) / 60:.1f} min per 5-fold run (training + "
                 f"scoring, {len(timed)} run(s) timed here), peak memory of the benchmark process "
                 f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return lines


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as tmp:
        runs_dir = args.runs_dir or Path(tmp)
        lines = result_lines(args, *run_all(args, runs_dir))
    lines.append(f"- torch intra-op threads: {torch.get_num_threads()}; GPU: none on this machine")
    publish("CNN-MIL fine-tuned end to end on the CPU, repeated CV", lines, __file__, argv, append=not args.no_append)
    return lines


if __name__ == "__main__":
    main()
