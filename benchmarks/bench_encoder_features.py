"""Benchmark: a frozen SSL encoder's pooled cells as a clinical-stage feature set, alone and in the blend (issue 21
items 4 and 5).

Usage: python -m benchmarks.bench_encoder_features --encoder runs/<ssl>/encoder.pth [--data-dir DIR]
       [--seeds 43 44 45] [--trials 100] [--runs-dir DIR] [--no-append]
On every fold seed (not 42, the seed the pooling and PCA size were chosen on, block 'Patient features pooled
from a frozen cell encoder'): train_clinical.py with the feature sets clinical, clinical+morpho and
clinical+encoder (the encoder's cells pooled as mean + quantiles, 8 principal components per training fold, the
script's defaults); train_cnn.py's default CNNs (configs/cnn_cpu.yaml: frozen ImageNet Lite0, mean and
attention heads with clinical fusion) and the SSL encoder's image-only mean head (configs/cnn_cpu_ssl.yaml);
then blends scored honestly by ensemble.py's nested estimate (fusion and threshold tuned on k-1 folds, scored
on the k-th): today's pipeline set, the same plus clinical+encoder, the same plus the SSL image-only head, and
the CNN-free trio clinical, clinical+morpho, clinical+encoder.
Quality: CV BA at 0.5 and AUC, mean±std over the seeds of the per-seed fold mean; blends: nested BA and AUC.
"""
import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from benchmarks.common import blend_line, over_seeds, publish, quality_line
from benchmarks.model_runs import ENCODER_FEATURES_PREFIX as PREFIX
from benchmarks.model_runs import blend, clinical_run, cnn_run
from lib.core.paths import SHARED_DATA_DIR


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", type=Path, required=True, help="a finished pretrain_cnn.py run's encoder.pth")
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA_DIR)
    parser.add_argument("--seeds", type=int, nargs="+", default=[43, 44, 45], help="fold seeds")
    parser.add_argument("--trials", type=int, default=100, help="ensemble study trials (nested: the same)")
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--no-append", action="store_true")
    return parser.parse_args(argv)


def run_seed(args, runs_dir: Path, seed: int) -> tuple[dict, dict, dict]:
    """One fold seed: the clinical-stage runs, the CNN runs and the blends (nested estimates)."""
    clinical = {fs: clinical_run(args, runs_dir, seed, fs, prefix=PREFIX) for fs in ("clinical", "clinical+morpho")}
    clinical["clinical+encoder"] = clinical_run(args, runs_dir, seed, "clinical+encoder", prefix=PREFIX,
                                                extra=["--encoder", str(args.encoder), "--no-progress"])
    cnn = {"imagenet mean": cnn_run(args, runs_dir, "imagenet", None, "mean", True, seed=seed),
           "imagenet attention": cnn_run(args, runs_dir, "imagenet", None, "attention", True, seed=seed),
           "ssl mean image-only": cnn_run(args, runs_dir, "ssl", args.encoder, "mean", False, seed=seed)}
    base = [clinical["clinical"]["run"], clinical["clinical+morpho"]["run"], cnn["imagenet mean"]["run"],
            cnn["imagenet attention"]["run"]]
    sets = {"pipeline (clinical, morpho, ImageNet mean + attention)": base,
            "pipeline + clinical+encoder": [*base, clinical["clinical+encoder"]["run"]],
            "pipeline + SSL mean image-only": [*base, cnn["ssl mean image-only"]["run"]],
            "clinical + morpho + clinical+encoder (no CNN)": [*base[:2], clinical["clinical+encoder"]["run"]]}
    blends = {name: blend(args, runs_dir, f"{PREFIX}_blend{i}_s{seed}", runs) for i, (name, runs) in enumerate(sets.items())}
    return clinical, cnn, blends


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    record = json.loads(args.encoder.with_suffix(".json").read_text())
    pretrain_seed = yaml.safe_load((args.encoder.parent / "config.yaml").read_text()).get("seed")
    began = time.perf_counter()
    per_seed = over_seeds(args, "bench_encfeat_", run_seed)
    lines = [f"- data: {args.data_dir}; fold seeds {', '.join(map(str, args.seeds))}; models: BA at 0.5 and AUC, "
             f"mean±std over seeds of the fold mean; blends: ensemble.py's nested estimate ({args.trials} trials per "
             f"fold); whole benchmark {(time.perf_counter() - began) / 60:.0f} min",
             f"- encoder {args.encoder}: {record['objective']} {record['backbone']}, {record['crop']}->"
             f"{record['input_size']} px, {record['epochs']} epochs, pretraining seed {pretrain_seed}, "
             f"{record['precision']}, final loss {record['loss_per_epoch'][-1]:.3f}; clinical+encoder: mean + "
             f"10/50/90th percentiles per patient, 8 principal components per training fold (train_clinical.py's "
             f"defaults, chosen on fold seed 42)"]
    lines += [quality_line(name, [s[0][name] for s in per_seed]) for name in per_seed[0][0]]
    lines += [quality_line(f"cnn {name}", [s[1][name] for s in per_seed]) for name in per_seed[0][1]]
    lines += [blend_line(name, [s[2][name] for s in per_seed]) for name in per_seed[0][2]]
    lines.append(f"- torch intra-op threads: {torch.get_num_threads()}; GPU: none on this machine")
    publish("A frozen encoder's pooled cells as a clinical feature set, alone and in the blend (issue 21)", lines,
            __file__, argv, append=not args.no_append)
    return lines


if __name__ == "__main__":
    main()
