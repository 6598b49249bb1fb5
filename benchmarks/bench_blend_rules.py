"""Benchmark: fixed blending rules (nothing fitted on the OOF) over every subset of the models, the subset chosen on
one fold seed and reported on others (issue 21 item 5: what the blend needs from the images).

Usage: python -m benchmarks.bench_blend_rules --encoder runs/<ssl>/encoder.pth [--data-dir DIR]
       [--choose-seed 42] [--seeds 43 44 45] [--runs-dir runs/bench_encfeat] [--ensembles DIR ...] [--no-append]
Models, one 5-fold run per fold seed (bench_encoder_features.py's runs, reused from --runs-dir when finished):
clinical, clinical+morpho and clinical+encoder (train_clinical.py), the default ImageNet CNNs (mean and attention
heads with clinical fusion) and the SSL encoder's image-only mean head (train_cnn.py). Rules: the equal-weight
mean of the members' probabilities or of their logits (lib.fusion.fuse), at threshold 0.5. A fixed rule fits
nothing, so its CV score on one subset is honest; choosing the subset and the mean is a fit, so it is made on one
fold seed (BA at 0.5, then AUC) and reported on the others: on --choose-seed and reported on --seeds, or, by
default, on each of --seeds in turn (the runs of fold seeds 43-45 are those bench_encoder_features.py leaves). Quality: BA at 0.5 and AUC, mean±std over the seeds of the fold mean (as every model line), and the
recall on the tumoral patients with a low lymphocyte count (< LOW_COUNT G/L), where the clinical values cannot
decide. Plot: every subset's BA on the choice seed against its mean BA on the report seeds. --ensembles: for
every ensemble.py run found there, its Optuna weights (nested estimate) against equal weights on the same runs.
"""
import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import finished, publish
from benchmarks.model_runs import ENCODER_FEATURES_PREFIX as PREFIX
from benchmarks.model_runs import clinical_run, clinical_run_name, cnn_run, cnn_run_name
from lib.cnn.pretrain import encoder_record, total_epochs
from lib.core.metrics import fold_metrics, mean_std
from lib.core.paths import SHARED_DATA_DIR
from lib.core.plots import pyplot, save_figure
from lib.data.dataset import load_dataset
from lib.fusion.fuse import FusionParams, fuse
from lib.fusion.runs import load_runs

LOW_COUNT = 10.0  # G/L: the tumoral patients the blend misses have 4.9-8.3
DEFAULT_SET = ("clinical", "clinical+morpho", "imagenet mean", "imagenet attention")  # pipeline.py's four
# the candidates for a new default, declared before any was scored (issue 35 item 3): always in the table
DECLARED = {"pipeline's four + clinical+encoder": (*DEFAULT_SET[:2], "clinical+encoder", *DEFAULT_SET[2:]),
            "SSL CNN instead of the ImageNet ones": (*DEFAULT_SET[:2], "clinical+encoder", "ssl mean image-only"),
            "all six": ("clinical", "clinical+morpho", "clinical+encoder", "imagenet mean", "imagenet attention",
                        "ssl mean image-only")}
RULES = {"prob_mean": "", "logit_mean": " (logits)"}  # equal-weight means of lib.fusion.fuse, label suffix


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", type=Path, required=True,
                        help="lymph-ssl (the shipped encoder) or a finished pretrain_cnn.py run's encoder.pth")
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA_DIR)
    parser.add_argument("--choose-seed", type=int, default=None,
                        help="fold seed the subset is chosen on (default: each of --seeds in turn, the others reporting)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[43, 44, 45], help="fold seeds reported")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/bench_encfeat"), help="kept: finished runs are reused")
    parser.add_argument("--ensembles", type=Path, nargs="*", default=[],
                        help="runs directories whose ensemble.py runs (<name>_s<seed>) to read: their equal-weight "
                             "score beside the study's nested one, per blend")
    parser.add_argument("--no-append", action="store_true")
    return parser.parse_args(argv)


def model_runs(args, seed: int) -> dict[str, Path]:
    """The six models' run directories on one fold seed (trained when missing)."""
    d, encoder = args.runs_dir, ["--encoder", str(args.encoder), "--no-progress"]

    def clinical(feature_set: str, extra=()) -> Path:
        run = d / clinical_run_name(PREFIX, feature_set, seed)
        finished(run, lambda: clinical_run(args, d, seed, feature_set, prefix=PREFIX, extra=extra))
        return run

    def cnn(encoder_name: str, weights, head: str, fusion: bool) -> Path:
        run = d / cnn_run_name(encoder_name, head, fusion, seed)
        finished(run, lambda: cnn_run(args, d, encoder_name, weights, head, fusion, seed=seed))
        return run

    return {"clinical": clinical("clinical"), "clinical+morpho": clinical("clinical+morpho"),
            "clinical+encoder": clinical("clinical+encoder", encoder),
            "imagenet mean": cnn("imagenet", None, "mean", True),
            "imagenet attention": cnn("imagenet", None, "attention", True),
            "ssl mean image-only": cnn("ssl", args.encoder, "mean", False)}


def candidates(names: list[str]) -> list[tuple[tuple[str, ...], str]]:
    """Every non-empty subset of the models (in the models' order) with each rule; a single model once."""
    subsets = [s for r in range(1, len(names) + 1) for s in itertools.combinations(names, r)]
    return [(s, rule) for s in subsets for rule in (RULES if len(s) > 1 else list(RULES)[:1])]


def rule_scores(runs: dict[str, Path], low: pd.Index) -> dict[tuple, dict]:
    """Each candidate's fused OOF at 0.5 on one fold seed: fold-mean BA and AUC, low-count recall."""
    loaded = load_runs(list(runs.values()))
    oof = loaded.oof.set_axis(list(runs), axis=1)
    low = low.intersection(oof.index[loaded.target == 1])
    out = {}
    for subset, rule in candidates(list(runs)):
        proba = fuse(oof[list(subset)], FusionParams({}, method=rule))
        metrics = fold_metrics(pd.DataFrame({"fold": loaded.fold, "target": loaded.target, "proba": proba}))
        out[subset, rule] = {"ba": metrics["ba_mean"], "auc": metrics["auc_mean"],
                             "low_recall": float((proba.loc[low] >= 0.5).mean()), "n_low": len(low)}
    return out


def label(key: tuple) -> str:
    subset, rule = key
    return " + ".join(subset) + RULES[rule]


def choose(scores: dict) -> tuple:
    """The candidate with the best fold-mean BA at 0.5 on one fold seed (ties: AUC)."""
    return max(scores, key=lambda k: (scores[k]["ba"], scores[k]["auc"]))


def table_row(key: tuple, scores: dict[int, dict], mark: str = "") -> str:
    """'| subset | BA per seed | BA m±s | AUC m±s | low-count recall |' over every seed scored."""
    r = [s[key] for s in scores.values()]
    per_seed = " | ".join(f"{x['ba']:.3f}" for x in r)
    return (f"| {label(key)}{mark} | {per_seed} | "
            f"{mean_std([x['ba'] for x in r])} | {mean_std([x['auc'] for x in r])} | "
            f"{np.mean([x['low_recall'] for x in r]):.2f} |")


def plot_rules(chosen: dict, reported: list[dict], marked: dict[str, tuple], path: Path) -> Path:
    """Choice-seed BA against report-seed mean BA, one point per subset; the marked subsets named."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    keys = list(chosen)
    x = np.array([chosen[k]["ba"] for k in keys])
    y = np.array([np.mean([s[k]["ba"] for s in reported]) for k in keys])
    images = np.array([any(m.startswith(("imagenet", "ssl")) for m in k[0]) for k in keys])
    ax.scatter(x[~images], y[~images], s=18, color="tab:grey", label="clinical-stage models only")
    ax.scatter(x[images], y[images], s=18, color="tab:blue", label="with an image model")
    for name, subset in marked.items():
        i = keys.index(subset)
        ax.annotate(name, (x[i], y[i]), xytext=(6, -4), textcoords="offset points", fontsize=8)
        ax.scatter([x[i]], [y[i]], s=60, facecolors="none", edgecolors="tab:red")
    lo = min(x.min(), y.min()) - 0.01
    ax.plot([lo, 1], [lo, 1], color="grey", lw=0.6, ls=":")
    ax.set(xlabel="BA at 0.5 on the choice fold seed", ylabel="BA at 0.5, mean over the report fold seeds",
           title="Equal-weight blends (mean of probabilities or logits) of every subset")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def study_vs_equal(dirs: list[Path]) -> list[str]:
    """Per blend (ensemble runs named <name>_s<seed>): the Optuna study's nested BA at 0.5 beside the equal-weight
    mean at 0.5 on the same runs (ensemble.py's metrics.json), mean±std over the fold seeds."""
    blends: dict[str, list[dict]] = {}
    for path in sorted(p for d in dirs for p in d.glob("*_s[0-9]*/metrics.json")):
        metrics = json.loads(path.read_text())
        is_study = metrics.get("fusion", "study") == "study"  # an equal-weight ensemble has no study to compare
        if is_study and "nested" in metrics and "equal_weight_prob_mean_0.5" in metrics:
            blends.setdefault(f"{path.parent.parent.name}/{path.parent.name.rsplit('_s', 1)[0]}", []).append(metrics)
    if not blends:
        return []
    lines = ["", "| blend (ensemble runs) | members | seeds | study weights, nested BA at 0.5 | equal weights, BA at 0.5 |",
             "|---|---|---|---|---|"]
    wins = []
    for name, runs in blends.items():
        study = [m["nested"]["threshold_policies"]["0.5"]["ba_mean"] for m in runs]
        equal = [m["equal_weight_prob_mean_0.5"]["ba_mean"] for m in runs]
        wins.append(np.mean(equal) - np.mean(study))
        lines.append(f"| {name} | {len(runs[0]['models'])} | {len(runs)} | {mean_std(study)} | {mean_std(equal)} |")
    lines.append(f"- equal weights minus the study, mean over the {len(wins)} blends: {np.mean(wins):+.3f} "
                 f"(equal ahead in {sum(w > 0.0005 for w in wins)}, level in {sum(abs(w) <= 0.0005 for w in wins)}, "
                 f"behind in {sum(w < -0.0005 for w in wins)})")
    return lines


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    dataset = load_dataset(args.data_dir)
    low = dataset.train.index[dataset.train["LYMPH_COUNT"].astype(float) < LOW_COUNT]
    seeds = list(dict.fromkeys([*([args.choose_seed] if args.choose_seed is not None else []), *args.seeds]))
    scores = {seed: rule_scores(model_runs(args, seed), low) for seed in seeds}
    rotations = ([(args.choose_seed, args.seeds)] if args.choose_seed is not None else
                 [(s, [t for t in args.seeds if t != s]) for s in args.seeds])
    picks = [(c, report, choose(scores[c])) for c, report in rotations]
    first = scores[picks[0][0]]
    keys = list(first)
    singles = [k for k in keys if len(k[0]) == 1]
    default = (DEFAULT_SET, "prob_mean")
    hindsight = max(keys, key=lambda k: np.mean([scores[s][k]["ba"] for s in args.seeds]))
    declared = {(subset, "prob_mean"): f" (declared: {name})" for name, subset in DECLARED.items()}
    marks = {**declared, hindsight: " (best mean over the seeds: hindsight)", default: " (pipeline's four)",
             **{pick: f" (chosen on seed {c})" for c, _, pick in reversed(picks)}}
    rows = list(dict.fromkeys([default, *declared, *(p for _, _, p in picks), hindsight, *singles]))
    figure = plot_rules(first, [scores[s] for s in picks[0][1]],
                        {"chosen": picks[0][2], "pipeline's four": default, "clinical": singles[0]},
                        args.runs_dir / "blend_rules.png")
    record = encoder_record(args.encoder)  # a run's encoder.json, or a shipped encoder's card
    lines = [f"- data: {args.data_dir}; rule: equal-weight mean of the members' probabilities (or logits) at 0.5, "
             f"nothing fitted; {len(keys)} candidates (subsets of {len(singles)} models x the two means); the subset "
             f"is chosen on one fold seed and reported on the others",
             f"- SSL encoder {args.encoder}: {record['objective']} {record['backbone']}, "
             f"{total_epochs(record)} epochs; low count: tumoral patients with a lymphocyte "
             f"count < {LOW_COUNT:g} G/L ({first[keys[0]]['n_low']} of them)"]
    for c, report, pick in picks:
        on = [scores[s][pick] for s in report]
        base = [scores[s][default] for s in report]
        lines.append(f"- chosen on seed {c}: {label(pick)}: on seeds {', '.join(map(str, report))} BA "
                     f"{mean_std([x['ba'] for x in on])}, AUC {mean_std([x['auc'] for x in on])} (pipeline's four "
                     f"there: BA {mean_std([x['ba'] for x in base])}, AUC {mean_std([x['auc'] for x in base])})")
    lines += ["", f"| candidate (equal weights, 0.5; probabilities unless marked) | "
                  f"{' | '.join(f'BA s{s}' for s in scores)} | BA | AUC | low-count recall |",
              "|---|" + "---|" * (len(scores) + 3), *[table_row(k, scores, marks.get(k, "")) for k in rows], "",
              f"- plot: {figure} (choice seed {picks[0][0]} against the mean of the others)",
              *study_vs_equal(args.ensembles)]
    publish("Fixed blending rules over every subset of the models (issue 21 item 5)", lines, __file__, argv,
            append=not args.no_append)
    return lines


if __name__ == "__main__":
    main()
