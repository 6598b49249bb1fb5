"""Benchmark: every MIL head of train_cnn.py's CPU preset, light vs heavy views, ImageNet vs random init,
beside the clinical model on the same folds; repeated over fold seeds.

Usage: python -m benchmarks.bench_heads [--data-dir ../shared/data/lymphocytosis] [--seeds 43 44 45]
       [--variants mean attention ... light random-init finetune-probe] [--runs-dir DIR] [--no-append]
Each variant is ``train_cnn.py -c configs/cnn_cpu.yaml`` plus its own options (VARIANTS below); the
embedding cache under cache/emb/ is shared, so only the first run of a view set embeds (the random-init
and light variants embed their own views: their embedding img/s is measured cold here).
The default fold seeds exclude 42: the preset's head and augmentation were chosen on seed-42 folds.
Quality: CV BA at threshold 0.5 and AUC, mean±std over the seeds of the per-seed fold mean.
``--config``/``--weights`` run the same variants on another preset or encoder (e.g. configs/cnn_cpu_ssl.yaml and a
pretrain_cnn.py run's encoder.pth); the ``, no clinical fusion`` variants are image-only, ``, gated fusion`` the
gate of lib.models.heads.GatedFusion instead of the concatenation.
Speed: embedding img/s against this machine's measured matmul peak; head training in bags/s; the
finetune probe trains the backbone end to end for 2 epochs on fold 0 and reports training img/s only.
"""
import argparse
from pathlib import Path

import torch
import yaml

import train_clinical
import train_cnn
from benchmarks.common import bench_runs_dir, matmul_gflops, publish, quality_line
from lib.cnn.settings import clinical_fusion_arg, clinical_inputs
from lib.core.metrics import mean_std
from lib.core.paths import CONFIGS_DIR, SHARED_DATA_DIR
from lib.data.dataset import load_dataset
from lib.pipeline.speed import LITE0_GFLOP_112, cnn_run_speed, embed_rate_line, head_training_line

BAG_SCORED = ["--eval-bags", "16"]  # max/top-k/CHOWDER: score on the 16-cell bags they were trained on
VARIANTS = {
    "mean": ["--head", "mean"],
    "attention": ["--head", "attention"],
    "instance_bn": ["--head", "instance_bn"],
    "anomaly": ["--head", "anomaly"],
    "chowder": ["--head", "chowder", *BAG_SCORED],
    "topk": ["--head", "topk", *BAG_SCORED],
    "max": ["--head", "max", *BAG_SCORED],
    "mean, no clinical fusion": ["--head", "mean", "--no-clinical-fusion"],
    "mean, gated fusion": ["--head", "mean", "--clinical-fusion=gate"],
    "attention, gated fusion": ["--head", "attention", "--clinical-fusion=gate"],
    "attention, no clinical fusion": ["--head", "attention", "--no-clinical-fusion"],
    "instance_bn, no clinical fusion": ["--head", "instance_bn", "--no-clinical-fusion"],
    "topk, no clinical fusion": ["--head", "topk", "--no-clinical-fusion", *BAG_SCORED],
    "light": ["--head", "mean", "--aug", "light"],
    "random-init": ["--head", "mean", "--weights", "none"],
}
IMAGE_ONLY_AND_GATE = ("mean, gated fusion", "attention, gated fusion", "attention, no clinical fusion",
                       "instance_bn, no clinical fusion", "topk, no clinical fusion")  # asked for by name only
PROBE = "finetune-probe"
PROBE_ARGS = ["--regime", "finetune", "--head", "attention", "--epochs", "2", "--folds", "0", "--tta", "0"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA_DIR)
    parser.add_argument("--config", type=Path, default=CONFIGS_DIR / "cnn_cpu.yaml")
    parser.add_argument("--weights", default=None,
                        help="the config's encoder weights replaced (e.g. a pretrain_cnn.py run's encoder.pth)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[43, 44, 45], help="fold seeds")
    parser.add_argument("--variants", nargs="+", default=[*(v for v in VARIANTS if v not in IMAGE_ONLY_AND_GATE), PROBE], choices=[*VARIANTS, PROBE])
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--no-append", action="store_true")
    return parser.parse_args(argv)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def run_variant(args, name: str, extra: list[str], seed: int, runs_dir: Path) -> dict:
    """One CV run of a variant; its metrics, timings and settings."""
    experiment = f"heads_{slug(name)}_s{seed}"
    metrics = train_cnn.main(["-c", str(args.config), "--data-dir", str(args.data_dir), "--runs-dir", str(runs_dir),
                              "--fold-seed", str(seed), "--experiment", experiment, "--no-progress",
                              *(["--weights", args.weights] if args.weights else []), *extra])
    return {**metrics, **cnn_run_speed(runs_dir / experiment), "fold_seed": seed}


def speed_lines(results: dict[str, list[dict]], n_train: float) -> list[str]:
    """Embedding img/s of cold runs, head-training bags/s, finetune training img/s."""
    peak = matmul_gflops()
    lines = [embed_rate_line(f"{name}, fold seed {r['fold_seed']}", r, peak)
             for name, runs in results.items() for r in runs if r.get("embedded_images")]
    heads = [r for name, runs in results.items() if name != PROBE for r in runs]
    if heads:
        lines.append(head_training_line("every head run", heads, n_train))
    for r in results.get(PROBE, []):
        rate = r["epochs_run"] * n_train * r["bag_size"] / r["epoch_seconds"]
        lines.append(f"- finetune probe (EfficientNet-Lite0 end to end, 112 px, heavy aug, fold 0, 2 epochs, CPU): "
                     f"{rate:.0f} training img/s, ~{rate * 3 * LITE0_GFLOP_112:.0f} GFLOP/s (forward+backward "
                     f"~3x forward) of {peak:.0f} measured; BA of 2 epochs is not a quality figure")
    return lines


def preset_summary(args) -> str:
    """The preset's backbone, weights, sizes, views, head and fusion, as read from the config (and --weights)."""
    c = yaml.safe_load(args.config.read_text())
    fusion = clinical_fusion_arg(c["clinical_fusion"])  # the options' own reading of every spelling
    fusion = f"clinical fusion {clinical_inputs(fusion)[1]}" if fusion else "no clinical fusion"
    return (f"{c['backbone']}, weights {args.weights or c['weights']}, {c['crop']}->{c['input_size']} px, "
            f"{c['aug']} views x{c['views']}, {c['head']} head, {fusion}")


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    results: dict[str, list[dict]] = {}
    clinical = []
    with bench_runs_dir(args.runs_dir, "bench_heads_") as runs_dir:
        for seed in args.seeds:
            clinical.append(train_clinical.main(["--data-dir", str(args.data_dir), "--fold-seed", str(seed), "--runs-dir",
                                                 str(runs_dir), "--experiment", f"heads_clinical_s{seed}"]))
        for name in args.variants:
            seeds = args.seeds[:1] if name == PROBE else args.seeds
            extra = PROBE_ARGS if name == PROBE else VARIANTS[name]
            results[name] = [run_variant(args, name, extra, seed, runs_dir) for seed in seeds]
            print(quality_line(name, results[name], wall=True) if name != PROBE else f"{name}: done", flush=True)
    n_train = len(load_dataset(args.data_dir).train) * 4 / 5  # training patients of a 5-fold split
    lines = [f"- data: {args.data_dir}; preset {args.config.name} ({preset_summary(args)}) with one option changed "
             f"per variant; fold seeds "
             f"{', '.join(map(str, args.seeds))}; threshold 0.5; mean±std over seeds of the fold mean",
             f"- clinical (baseline, same folds): BA {mean_std([c['ba_mean'] for c in clinical])}, "
             f"AUC {mean_std([c['auc_mean'] for c in clinical])}"]
    lines += [quality_line(name, runs, wall=True) for name, runs in results.items() if name != PROBE]
    lines += speed_lines(results, n_train)
    lines.append(f"- torch intra-op threads: {torch.get_num_threads()}; GPU: none on this machine")
    publish("CNN-MIL heads and variants, repeated CV", lines, __file__, argv, append=not args.no_append)
    return lines


if __name__ == "__main__":
    main()
