"""Benchmark: the self-supervised cell encoder (pretrain_cnn.py) against frozen ImageNet Lite0, repeated CV.

Usage: python -m benchmarks.bench_ssl [--data-dir ../shared/data/lymphocytosis] [--seeds 43 44 45]
       [--encoder runs/ssl] [--runs-dir DIR] [--heads mean instance_bn attention] [--trials 100] [--no-append]
Without --encoder it first pretrains with configs/pretrain_cpu.yaml (timed). Then, on every fold seed (not
42, the seed the CNN preset was chosen on): the clinical model; train_cnn.py's embed regime on frozen
ImageNet Lite0 (configs/cnn_cpu.yaml) and on the frozen SSL encoder (configs/cnn_cpu_ssl.yaml) for each
head, image-only and with clinical fusion; and three blends scored honestly by ensemble.py's nested
estimate (fusion tuned on k-1 folds, scored on the k-th): today's pipeline set (clinical, morphometry,
ImageNet mean + attention), the same with the SSL encoder, and clinical + the image-only SSL mean head.
Quality: CV BA at 0.5 and AUC, mean±std over the seeds of the per-seed fold mean.
Speed: pretraining wall time and training img/s, with the FLOP rate against the machine's matmul figures.
"""
import argparse
import json
from pathlib import Path

import pandas as pd
import torch

import pretrain_cnn
from benchmarks.common import (
    bagged_line,
    bench_runs_dir,
    blend_line,
    matmul_gflops,
    publish,
    quality_line,
)
from benchmarks.model_runs import ENCODERS, blend, clinical_run, cnn_run
from lib.core.paths import CONFIGS_DIR, SHARED_DATA_DIR
from lib.models.backbones import create_backbone
from lib.stages.bagging import bag_runs


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA_DIR)
    parser.add_argument("--seeds", type=int, nargs="+", default=[43, 44, 45], help="fold seeds")
    parser.add_argument("--encoder", type=Path, default=None, help="a finished pretrain_cnn.py run directory")
    parser.add_argument("--heads", nargs="+", default=["mean", "instance_bn", "attention"])
    parser.add_argument("--trials", type=int, default=100, help="ensemble study trials (nested: the same)")
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--no-append", action="store_true")
    return parser.parse_args(argv)


def encoder_run(args, runs_dir: Path) -> Path:
    """The pretrained encoder's run directory (pretrained here with the CPU preset unless given)."""
    if args.encoder:
        return args.encoder
    pretrain_cnn.main(["-c", str(CONFIGS_DIR / "pretrain_cpu.yaml"), "--data-dir", str(args.data_dir),
                       "--runs-dir", str(runs_dir), "--experiment", "ssl", "--no-progress"])
    return runs_dir / "ssl"


def train_gflop_per_image(record: dict) -> float:
    """Forward FLOPs of the encoder at its input size x 3 (forward + backward), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode
    model = create_backbone(record["backbone"]).eval()
    side = record["input_size"]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, side, side))
    return 3 * counter.get_total_flops() / 1e9


def speed_lines(record: dict, ssl_dir: Path) -> list[str]:
    gflop = train_gflop_per_image(record)
    rate = float(pd.read_csv(ssl_dir / "log.csv")["img_per_s"].median())  # robust to an epoch slowed by other load
    peaks = {dtype: matmul_gflops(dtype) for dtype in ("fp32", "bf16")}  # measured now: the CPU kind changes
    peak = peaks["bf16" if record["precision"] == "bf16" else "fp32"]
    return [f"- pretraining: {record['backbone']} from {record['init_weights']}, {record['crop']}->{record['input_size']} px, "
            f"{record['epochs']} epochs x {record['n_cells']} cells (scope {record['scope']}), batch {record['batch_size']}, "
            f"tau {record['temperature']}, {record['precision']} autocast: {record['seconds'] / 60:.1f} min of epochs, "
            f"{rate:.0f} training img/s = ~{rate * gflop:.0f} GFLOP/s ({gflop:.2f} GFLOP per image, forward+backward) "
            f"against ~{peaks['bf16']:.0f} (bf16) / ~{peaks['fp32']:.0f} (fp32) GFLOP/s matmul measured now; "
            f"final NT-Xent {record['loss_per_epoch'][-1]:.3f} (first epoch {record['loss_per_epoch'][0]:.3f}); "
            f"{peak:.0f} GFLOP/s is the peak of the precision used"]


def bagging_lines(clinical: list[dict], cnn: dict, runs_dir: Path) -> list[str]:
    """Fold-seed bagging of the same runs: the OOF mean over the seeds of each patient, against single seeds."""
    lines = []
    variants = {"clinical": clinical, **{f"{e} {h} {'fusion' if f else 'image-only'}": r for (e, h, f), r in cnn.items()}}
    for name, runs in variants.items():
        if len(runs) < 2 or not Path(runs[0]["run"]).exists():
            continue
        bagged = bag_runs([r["run"] for r in runs], runs_dir / f"ssl_bench_bag_{name.replace(' ', '_')}")
        lines.append(bagged_line(name, bagged, runs))
    return lines


def run_all(args, runs_dir: Path) -> tuple[Path, list[dict], dict, dict]:
    """Every run of the benchmark: (encoder run dir, clinical runs, CNN runs by variant, blends by name)."""
    ssl_dir = encoder_run(args, runs_dir)
    weights = ssl_dir / "encoder.pth"
    clinical, cnn, blends = [], {}, {"pipeline, ImageNet": [], "pipeline, SSL": [], "clinical + SSL image-only": []}
    for seed in args.seeds:
        clin, morpho = clinical_run(args, runs_dir, seed, "clinical"), clinical_run(args, runs_dir, seed, "clinical+morpho")
        clinical.append(clin)
        for key in [(e, h, f) for e in ENCODERS for h in args.heads for f in (False, True)]:
            cnn.setdefault(key, []).append(cnn_run(args, runs_dir, *key[:1], weights, *key[1:], seed=seed))
            print(quality_line(f"{key} so far", cnn[key]), flush=True)
        pick = {e: [cnn[(e, h, True)][-1]["run"] for h in ("mean", "attention") if (e, h, True) in cnn] for e in ENCODERS}
        for name, tag, runs in (("pipeline, ImageNet", "imagenet", [clin["run"], morpho["run"], *pick["imagenet"]]),
                                ("pipeline, SSL", "ssl", [clin["run"], morpho["run"], *pick["ssl"]])):
            blends[name].append(blend(args, runs_dir, f"ssl_bench_blend_{tag}_s{seed}", runs))
        if ("ssl", "mean", False) in cnn:
            blends["clinical + SSL image-only"].append(blend(args, runs_dir, f"ssl_bench_blend_clin_ssl_s{seed}",
                                                             [clin["run"], cnn[("ssl", "mean", False)][-1]["run"]]))
    return ssl_dir, clinical, cnn, blends


def result_lines(args, runs_dir: Path, ssl_dir: Path, clinical: list[dict], cnn: dict, blends: dict) -> list[str]:
    """The benchmark block's lines (read while the runs still exist)."""
    record = json.loads((ssl_dir / "encoder.json").read_text())
    lines = [f"- data: {args.data_dir}; fold seeds {', '.join(map(str, args.seeds))}; threshold 0.5; mean±std over seeds "
             f"of the fold mean; embed regime, heavy views, 40 epochs (configs/cnn_cpu.yaml vs configs/cnn_cpu_ssl.yaml)",
             *speed_lines(record, ssl_dir), quality_line("clinical (baseline, same folds)", clinical)]
    for (encoder, head, fusion), runs in cnn.items():
        lines.append(quality_line(f"{encoder} frozen, {head} head, {'with clinical fusion' if fusion else 'image-only'}", runs))
    lines += [blend_line(name, nested) for name, nested in blends.items() if nested]
    return lines + bagging_lines(clinical, cnn, runs_dir)


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    with bench_runs_dir(args.runs_dir, "bench_ssl_") as runs_dir:
        lines = result_lines(args, runs_dir, *run_all(args, runs_dir))
    lines.append(f"- torch intra-op threads: {torch.get_num_threads()}; GPU: none on this machine")
    publish("Self-supervised cell encoder vs frozen ImageNet, repeated CV", lines, __file__, argv,
            append=not args.no_append)
    return lines


if __name__ == "__main__":
    main()
