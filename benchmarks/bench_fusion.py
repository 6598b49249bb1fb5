"""Benchmark: how the CNN-MIL model takes the clinical values (none, concatenated, gated), alone and in the blend.

Usage: python -m benchmarks.bench_fusion [--data-dir ../shared/data/lymphocytosis] [--seeds 43 44 45]
       [--heads mean attention] [--trials 100] [--runs-dir DIR] [--no-append]
On every fold seed: the clinical model and clinical + morphometry (train_clinical.py), then train_cnn.py's CPU
preset (configs/cnn_cpu.yaml: frozen ImageNet Lite0, embed regime) for each head with ``--clinical-fusion``
none, concat (the default pipeline's) and gate (an image expert and a clinical expert mixed by a gate on the
clinical values, lib.models.heads.GatedFusion); then, per fusion, the default pipeline's blend (clinical,
morphometry and the CNN heads of that fusion) scored honestly by ensemble.py's nested estimate (fusion and
threshold tuned on k-1 folds, scored on the k-th). The default fold seeds exclude 42 (the presets' seed).
Quality: CV BA at 0.5 and AUC, mean±std over the seeds of the per-seed fold mean; blends: nested BA and AUC.
"""
import argparse
from pathlib import Path

import torch

import train_cnn
from benchmarks.common import blend_line, over_seeds, publish, quality_line
from benchmarks.model_runs import blend, clinical_run
from lib.core.paths import CONFIGS_DIR, SHARED_DATA_DIR
from lib.pipeline.speed import cnn_run_speed

FUSIONS = {"none": "--no-clinical-fusion", "concat": "--clinical-fusion=concat", "gate": "--clinical-fusion=gate"}
CLINICAL_SETS = ("clinical", "clinical+morpho")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA_DIR)
    parser.add_argument("--seeds", type=int, nargs="+", default=[43, 44, 45], help="fold seeds")
    parser.add_argument("--heads", nargs="+", default=["mean", "attention"], help="MIL heads (the pipeline's two)")
    parser.add_argument("--trials", type=int, default=100, help="ensemble study trials (nested: the same)")
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--no-append", action="store_true")
    return parser.parse_args(argv)


def cnn_run(args, runs_dir: Path, head: str, fusion: str, seed: int) -> dict:
    name = f"fusion_{head}_{fusion}_s{seed}"
    metrics = train_cnn.main(["-c", str(CONFIGS_DIR / "cnn_cpu.yaml"), "--data-dir", str(args.data_dir),
                              "--runs-dir", str(runs_dir), "--fold-seed", str(seed), "--experiment", name,
                              "--head", head, FUSIONS[fusion], "--no-progress"])
    return {**metrics, **cnn_run_speed(runs_dir / name), "run": runs_dir / name}


def run_seed(args, runs_dir: Path, seed: int) -> tuple[dict, dict, dict]:
    """One fold seed: the clinical runs, every head x fusion, and one blend per fusion."""
    clinical = {fs: clinical_run(args, runs_dir, seed, fs, prefix="fusion") for fs in CLINICAL_SETS}
    cnn = {(head, fusion): cnn_run(args, runs_dir, head, fusion, seed) for fusion in FUSIONS for head in args.heads}
    blends = {fusion: blend(args, runs_dir, f"fusion_blend_{fusion}_s{seed}",
                            [c["run"] for c in clinical.values()] + [cnn[(h, fusion)]["run"] for h in args.heads])
              for fusion in FUSIONS}
    return clinical, cnn, blends


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    per_seed = over_seeds(args, "bench_fusion_", run_seed)
    lines = [f"- data: {args.data_dir}; CNN preset configs/cnn_cpu.yaml (frozen ImageNet Lite0, 112 px, heavy views, "
             f"40 epochs) with --head and --clinical-fusion changed; fold seeds {', '.join(map(str, args.seeds))}; "
             f"models: BA at 0.5 and AUC, mean±std over seeds of the fold mean; blends: ensemble.py's nested "
             f"estimate ({args.trials} trials per fold)"]
    lines += [quality_line(fs, [s[0][fs] for s in per_seed]) for fs in CLINICAL_SETS]
    lines += [quality_line(f"cnn {head}, fusion {fusion}", [s[1][(head, fusion)] for s in per_seed], wall=True)
              for head in args.heads for fusion in FUSIONS]
    lines += [blend_line(f"clinical + morphometry + cnn {' + '.join(args.heads)} (fusion {fusion})",
                         [s[2][fusion] for s in per_seed]) for fusion in FUSIONS]
    lines.append(f"- torch intra-op threads: {torch.get_num_threads()}; GPU: none on this machine")
    publish("Clinical fusion of the CNN-MIL model: none, concat, gate (issue 21 item 5)", lines, __file__, argv,
            append=not args.no_append)
    return lines


if __name__ == "__main__":
    main()
