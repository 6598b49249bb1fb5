"""Benchmark: self-supervised encoder recipes at the same pretraining budget (issue 21 items 2 and 3), repeated CV.

Usage: python -m benchmarks.bench_encoders [--data-dir ../shared/data/lymphocytosis] [--minutes 25]
       [--recipes simclr dino simclr_stain] [--seeds 43 44 45] [--runs-dir runs/bench_encoders] [--no-append]
       [--epochs 40 --init runs/bench_encoders_50ep/enc_simclr_seed1]   # continue a finished encoder (warm restart)
       [--input-size 96]   # a larger network input than the preset's 64 px (the same 112-px crops)
Each recipe is pretrain_cnn.py with a preset and a few options (RECIPES below). Equal budget: before any
training, each recipe's real training step (its views, its objective) is timed on this machine's idle cores
(PROBE_STEPS steps after a warm-up), and its epochs are set so that its pretraining takes ``--minutes`` at
that rate; the runs themselves may then be slowed by other work without favouring one recipe. Runs are
resumable (rerun the same command after a kill). Each frozen encoder is then scored image-only, beside the
clinical model on the same folds: train_cnn.py's embed regime (configs/cnn_cpu_ssl.yaml, mean head, no
clinical fusion) and the pooled linear model (mean-pooled cells, PCA 8 in the fold, logistic regression;
lib.cnn.pooled). Quality: CV BA at 0.5 and AUC, mean±std over the fold seeds of the fold mean. One
pretraining seed per recipe (two would cost twice): differences of ~0.01-0.015 AUC are within the seed noise
measured between two encoders of near-identical settings. Plot: image-only AUC against pretraining minutes.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

import pretrain_cnn
import train_clinical
import train_cnn
from benchmarks.common import encoder_input_args, epochs_label, finished, publish, quality_line
from benchmarks.model_runs import cv_oof
from lib.cnn.pooled import encoder_embeddings, pooled_rows
from lib.core.config import parse_config
from lib.core.metrics import fold_metrics
from lib.core.paths import CACHE_DIR, CONFIGS_DIR, FOLDS_DIR, SHARED_DATA_DIR
from lib.core.plots import pyplot, save_figure
from lib.data.dataset import load_dataset
from lib.data.folds import load_folds

RECIPES = {
    "simclr": [str(CONFIGS_DIR / "pretrain_cpu.yaml")],
    "simclr_stain": [str(CONFIGS_DIR / "pretrain_cpu.yaml"), "--colour", "stain"],
    "dino": [str(CONFIGS_DIR / "pretrain_cpu_dino.yaml")],
    "dino_stain": [str(CONFIGS_DIR / "pretrain_cpu_dino.yaml"), "--colour", "stain"],
    "dino_global": [str(CONFIGS_DIR / "pretrain_cpu_dino.yaml"), "--local-crops", "0"],
}
PROBE_STEPS = 4


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA_DIR)
    parser.add_argument("--minutes", type=float, default=25.0, help="pretraining budget of every recipe")
    parser.add_argument("--epochs", type=int, default=None,
                        help="the same number of epochs for every recipe instead of a budget in minutes (no probe)")
    parser.add_argument("--seed", type=int, default=0, help="pretraining seed (the runs' names carry it when not 0)")
    parser.add_argument("--recipes", nargs="+", default=["simclr", "dino", "simclr_stain"], choices=sorted(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[43, 44, 45], help="fold seeds")
    parser.add_argument("--init", type=Path, default=None,
                        help="continue a finished run: its encoder.pth as every recipe's --weights (a fresh head and "
                             "schedule: a warm restart); the plot counts the parent's epochs too")
    parser.add_argument("--input-size", type=int, default=None,
                        help="network input side in pixels for every recipe (default: the preset's)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/bench_encoders"), help="kept: reruns resume")
    parser.add_argument("--no-append", action="store_true")
    return parser.parse_args(argv)


def encoder_name(args, name: str) -> str:
    return f"enc_{name}" + (f"_seed{args.seed}" if args.seed else "")


def recipe_argv(args, name: str) -> list[str]:
    config, *extra = RECIPES[name]
    return ["-c", config, *extra, "--data-dir", str(args.data_dir), "--runs-dir", str(args.runs_dir),
            "--experiment", encoder_name(args, name), "--seed", str(args.seed), "--no-progress",
            *(["--weights", str(args.init / "encoder.pth")] if args.init else []),
            *(["--input-size", str(args.input_size)] if args.input_size else [])]


def probe_rate(args, name: str) -> float:
    """Cells per second of the recipe's real training step (views, objective, optimiser), after a warm-up step."""
    from lib.cnn.device import training_autocast_dtype
    from lib.cnn.pretrain import build_pretrainer
    from lib.data.images import load_image_cache
    from lib.stages.context import load_stage_data
    from lib.stages.pretrain import check_options, pretrain_settings

    options = parse_config(pretrain_cnn.build_parser(), recipe_argv(args, name))
    dataset = load_stage_data(options)
    backbone, data_config, device = check_options(options)
    cache = load_image_cache(dataset, options.crop, options.cache_dir, progress=False)
    trainer = build_pretrainer(backbone, cache, data_config, pretrain_settings(options), device,
                               training_autocast_dtype(options.amp, device))
    rows = trainer.rows[:options.batch_size]
    trainer.step(rows)
    began = time.perf_counter()
    for _ in range(PROBE_STEPS):
        trainer.step(rows)
    return PROBE_STEPS * len(rows) / (time.perf_counter() - began)


def planned_epochs(args, n_cells: int) -> tuple[dict, dict]:
    """Each recipe's probed rate and epochs, decided once per runs directory (plan.json) so that a rerun resumes.

    With ``--epochs`` every recipe gets that many epochs and nothing is probed (rates are reported as 0)."""
    if args.epochs is not None:
        return {name: 0.0 for name in args.recipes}, {name: args.epochs for name in args.recipes}
    plan_path = args.runs_dir / "plan.json"
    plan = json.loads(plan_path.read_text()) if plan_path.exists() else {"minutes": args.minutes, "rates": {}}
    if plan["minutes"] != args.minutes:
        raise SystemExit(f"{plan_path}: planned for --minutes {plan['minutes']}, not {args.minutes}: use another --runs-dir")
    for name in args.recipes:
        if name not in plan["rates"]:
            plan["rates"][name] = probe_rate(args, name)
            plan_path.write_text(json.dumps(plan, indent=1))
    rates = {name: plan["rates"][name] for name in args.recipes}
    return rates, {name: max(1, round(args.minutes * 60 * rate / n_cells)) for name, rate in rates.items()}


def pretrain(args, name: str, epochs: int) -> dict:
    done = (args.runs_dir / encoder_name(args, name)).exists()
    return pretrain_cnn.main([*recipe_argv(args, name), "--epochs", str(epochs), *(["--resume"] if done else [])])


def cnn_image_only(args, name: str, seed: int) -> dict:
    """The embed regime's mean head on the frozen encoder, image-only, at the crop and input size it was trained on."""
    experiment = f"{encoder_name(args, name)}_mean_image_s{seed}"
    weights = args.runs_dir / encoder_name(args, name) / "encoder.pth"
    argv = ["-c", str(CONFIGS_DIR / "cnn_cpu_ssl.yaml"), "--weights", str(weights), *encoder_input_args(weights),
            "--data-dir", str(args.data_dir), "--runs-dir", str(args.runs_dir), "--fold-seed", str(seed),
            "--experiment", experiment, "--no-clinical-fusion", "--no-progress"]
    return finished(args.runs_dir / experiment, lambda: train_cnn.main(argv))


def clinical_baseline(args, seed: int) -> dict:
    experiment = f"enc_clinical_s{seed}"
    argv = ["--data-dir", str(args.data_dir), "--fold-seed", str(seed), "--runs-dir", str(args.runs_dir),
            "--experiment", experiment]
    return finished(args.runs_dir / experiment, lambda: train_clinical.main(argv))


def pooled_image_only(args, dataset, record: dict, run_dir: Path) -> list[dict]:
    """The pooled linear model (mean of the cells, PCA 8) on each fold seed: its fold metrics."""
    cells = encoder_embeddings(dataset, record["backbone"], str(run_dir / "encoder.pth"), record["crop"],
                               record["input_size"], CACHE_DIR, progress=False)
    labels, table = dataset.train["LABEL"], pooled_rows(cells, "mean")
    out = []
    for seed in args.seeds:
        folds = load_folds(dataset, 5, seed, FOLDS_DIR)
        oof = cv_oof(table, cells, folds[folds["ID"].isin(labels.index)], labels, None, pca_dim=8, seed=seed)
        out.append(fold_metrics(oof))
    return out


def plot_budget(results: dict, clinical: list[dict], path: Path) -> Path:
    """Image-only AUC of each recipe (mean head: circles, pooled model: squares; mean±std over fold seeds), its
    epochs and minutes under its name, the clinical model's AUC on the same folds dashed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for key, marker, shift, label in (("cnn", "o", -0.08, "mean head"), ("pooled", "s", 0.08, "pooled mean, PCA 8")):
        auc = np.array([[m["auc_mean"] for m in r[key]] for r in results.values()])
        ax.errorbar(np.arange(len(results)) + shift, auc.mean(axis=1), yerr=auc.std(axis=1), fmt=marker, capsize=3,
                    label=label)
    ax.axhline(np.mean([c["auc_mean"] for c in clinical]), color="grey", ls="--", lw=1, label="clinical model (3 values)")
    ax.set_xticks(range(len(results)), [f"{name}\n{epochs_label(r['record'])}, {r['record']['seconds'] / 60:.0f} min"
                                        for name, r in results.items()])
    ax.set(xlim=(-0.5, len(results) - 0.5), ylabel="image-only AUC (fold seeds, mean±std)",
           title="Frozen self-supervised encoders, same pretraining budget")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(args.data_dir)
    n_cells = int(dataset.patients["n_images"].sum())
    rates, epochs = planned_epochs(args, n_cells)
    print("probe:", {n: f"{r:.0f} cells/s -> {epochs[n]} epochs" for n, r in rates.items()}, flush=True)
    clinical = [clinical_baseline(args, s) for s in args.seeds]
    results = {}
    for name in args.recipes:
        record = pretrain(args, name, epochs[name])
        results[name] = {"record": record, "cnn": [cnn_image_only(args, name, s) for s in args.seeds],
                         "pooled": pooled_image_only(args, dataset, record, args.runs_dir / encoder_name(args, name))}
        print(quality_line(f"{name} mean head", results[name]["cnn"]), flush=True)
    figure = plot_budget(results, clinical, args.runs_dir / "budget.png")
    budget = (f"{args.epochs} epochs per recipe" if args.epochs is not None else
              f"budget {args.minutes:.0f} min of pretraining per recipe at the probed rate (idle, before training)")
    if args.init:
        budget += f", continued from {args.init}/encoder.pth (fresh projection head and cosine schedule: a warm restart)"
    lines = [f"- {budget}; pretraining seed {args.seed}; {n_cells} cells (scope all)",
             f"- data: {args.data_dir}; fold seeds {', '.join(map(str, args.seeds))}; image-only models; BA at 0.5",
             quality_line("clinical (baseline, same folds)", clinical)]
    for name, r in results.items():
        rec = r["record"]
        lines.append(f"- {name} (`{' '.join(RECIPES[name][1:]) or 'preset'}` on {Path(RECIPES[name][0]).name}): "
                     f"{f'probe {rates[name]:.0f} cells/s -> ' if args.epochs is None else ''}{epochs_label(rec, 'epochs')} at "
                     f"{rec['input_size']} px ({rec['crop']}-px crops), {rec['seconds'] / 60:.1f} min of "
                     f"epochs, {rec['img_per_s']:.0f} img/s, {rec['precision']}, final loss {rec['loss_per_epoch'][-1]:.3f}")
        lines.append(quality_line(f"{name}, mean head, image-only", r["cnn"]).replace("- ", "  - ", 1))
        lines.append(quality_line(f"{name}, pooled mean PCA8, image-only", r["pooled"]).replace("- ", "  - ", 1))
    lines.append(f"- plot: {figure} (image-only AUC against pretraining minutes)")
    total = epochs_label(next(iter(results.values()))["record"], "").strip()
    title = ("Self-supervised objectives at the same pretraining budget" if args.epochs is None else
             f"Self-supervised encoders at {total} epochs{f', {args.input_size} px' if args.input_size else ''} "
             f"(budget curve, issue 21 item 1)")
    publish(title, lines, __file__, argv,
            append=not args.no_append)
    return lines


if __name__ == "__main__":
    main()
