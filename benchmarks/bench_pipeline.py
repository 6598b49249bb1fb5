"""Benchmark: the whole pipeline (clinical, morphometry, CNN-MIL CPU preset, ensemble, report, submission)
on a data directory, repeated over fold seeds; appends a dated block to BENCHMARKS.md.

Usage: python benchmarks/bench_pipeline.py [--data-dir ../shared/data/lymphocytosis] [--seeds 42 43 44]
Quality: per model and for the blend, CV BA (threshold 0.5; the blend at its tuned threshold, in-sample and
nested = honest) and AUC as mean±std over the repetitions; the clinical model is the baseline of the same folds.
"""
import argparse
import json
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import pipeline  # noqa: E402
from lib.bench import append_benchmark  # noqa: E402
from lib.data import load_dataset  # noqa: E402
from lib.metrics import mean_std  # noqa: E402
from lib.paths import SHARED_DATA_DIR  # noqa: E402

MATMUL_GFLOPS = 133  # fp32 matmul measured on this machine (DEVELOPERS.md)
LITE0_GFLOP_112 = 0.1  # EfficientNet-Lite0 forward at 112x112 ~ 0.1 GFLOP (0.39 at 224)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA_DIR)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep runs here (default: a temp dir)")
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--no-append", action="store_true")
    return parser.parse_args(argv)


def model_scores(run_root: Path) -> dict[str, tuple[float, float]]:
    """(BA, AUC) of every model run of one pipeline run, and of the blend (in-sample and nested BA)."""
    scores = {}
    for name in pipeline.MODELS:
        m = json.loads((run_root / name / "metrics.json").read_text())
        scores[name] = (m["ba_mean"], m["auc_mean"])
    blend = json.loads((run_root / "ensemble" / "metrics.json").read_text())
    scores["blend (in-sample tuned)"] = (blend["in_sample"]["ba_mean"], blend["in_sample"]["auc"])
    scores["blend (nested, honest)"] = (blend["nested"]["ba_mean"], np.nan)
    return scores


def embed_rate(run_root: Path) -> str:
    """The embedding throughput logged by the CNN stage (first run that embedded)."""
    found = re.findall(r"embedded (\d+) cell views in ([\d.]+) s", (run_root / "cnn" / "log.txt").read_text())
    if not found:
        return "embeddings reused from the cache"
    n, sec = int(found[-1][0]), float(found[-1][1])
    return (f"{n} cell views in {sec:.0f} s = {n / sec:.0f} img/s, ~{n / sec * LITE0_GFLOP_112:.0f} GFLOP/s "
            f"of the {MATMUL_GFLOPS} GFLOP/s fp32 matmul peak")


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    name = load_dataset(args.data_dir).name
    results, timings, rates = {}, {}, []
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        runs_dir = args.runs_dir or Path(tmp)
        for seed in args.seeds:
            timings[seed] = pipeline.main(["--data-dir", str(args.data_dir), "--runs-dir", str(runs_dir),
                                           "--fold-seed", str(seed), "--trials", str(args.trials),
                                           "--out", str(Path(tmp) / f"submission_s{seed}.csv")])
            results[seed] = model_scores(runs_dir / f"{name}_s{seed}")
            rates.append(f"seed {seed}: {embed_rate(runs_dir / f'{name}_s{seed}')}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    lines = summary(args, name, results, timings) + [f"- embedding, {r}" for r in rates]
    lines.append(f"- peak memory of a stage: {peak:.0f} MB (max RSS of the child processes)")
    print("\n".join(lines))
    if not args.no_append:
        append_benchmark("Whole pipeline, repeated CV", " ".join(["python", "benchmarks/bench_pipeline.py"] + sys.argv[1:]), lines)
    return lines


def summary(args, name: str, results: dict, timings: dict) -> list[str]:
    """Quality lines per model (mean±std over fold seeds) and wall time per stage."""
    lines = [f"- data: {args.data_dir} ({name}); fold seeds {', '.join(map(str, args.seeds))}; "
             f"ensemble {args.trials} trials; models at threshold 0.5, mean±std over repetitions of the fold mean"]
    for model in next(iter(results.values())):
        ba = [r[model][0] for r in results.values()]
        auc = [r[model][1] for r in results.values()]
        auc_text = f", AUC {mean_std(auc)}" if not np.isnan(auc).all() else ""
        baseline = " (baseline)" if model == "clinical" else ""
        lines.append(f"- {model}{baseline}: BA {mean_std(ba)}{auc_text}")
    for seed, stage_seconds in timings.items():
        stage_text = ", ".join(f"{k} {v:.0f} s" for k, v in stage_seconds.items())
        lines.append(f"- wall time, seed {seed}: total {sum(stage_seconds.values()):.0f} s ({stage_text})")
    return lines


if __name__ == "__main__":
    main()
