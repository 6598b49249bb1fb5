"""Benchmark: patient features pooled from a frozen cell encoder (issue 21, item 4), repeated CV beside the
clinical model of the same run.

Usage: python -m benchmarks.bench_pooled [--data-dir ../shared/data/lymphocytosis] [--ssl runs/ssl8]
       [--select-seed 42] [--seeds 43 44 45] [--no-append]
For each encoder (the frozen SSL encoder of a pretrain_cnn.py run given by --ssl, and frozen ImageNet Lite0),
every cell is embedded once (view v0, the embedding cache) and pooled per patient: the mean, the mean +
per-dimension quantiles, and the proportions of k-means cell clusters (k-means fitted on the training fold's
cells). Each pooling feeds the clinical stage's model (the block standardised and reduced by PCA inside the
fold, lib.models.projection; class-balanced logistic regression, C by inner CV), image-only and beside the three
clinical values. Every setting is
scored by 5-fold CV on the committed fold files; the setting to recommend is chosen on --select-seed only and
the block reports every setting on the other seeds (BA at 0.5, AUC, mean±std over seeds of the fold mean).
"""
import argparse
import json
import time
from pathlib import Path

from benchmarks.common import machine, publish
from benchmarks.model_runs import CLUSTERS, cv_oof
from lib.cnn.pooled import encoder_embeddings, pooled_rows
from lib.core.metrics import fold_metrics, mean_std
from lib.core.paths import CACHE_DIR, FOLDS_DIR, SHARED_DATA_DIR
from lib.data.dataset import load_dataset
from lib.data.folds import load_folds
from lib.features.tables import clinical_table


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA_DIR)
    parser.add_argument("--ssl", type=Path, default=None, help="a finished pretrain_cnn.py run directory")
    parser.add_argument("--select-seed", type=int, default=42, help="fold seed the recommended setting is chosen on")
    parser.add_argument("--seeds", type=int, nargs="+", default=[43, 44, 45], help="fold seeds reported")
    parser.add_argument("--no-lite0", action="store_true", help="skip the ImageNet Lite0 encoder")
    parser.add_argument("--no-append", action="store_true")
    return parser.parse_args(argv)


def encoders(args) -> dict[str, dict]:
    """name -> backbone/weights/crop/input size (the SSL one read from its encoder.json)."""
    out = {}
    if args.ssl:
        record = json.loads((args.ssl / "encoder.json").read_text())
        out[f"ssl{record['epochs']}"] = {"backbone": record["backbone"], "weights": str(args.ssl / "encoder.pth"),
                                         "crop": record["crop"], "input_size": record["input_size"]}
    if not args.no_lite0:
        out["lite0"] = {"backbone": "tf_efficientnet_lite0", "weights": "lite0", "crop": 112, "input_size": "crop"}
    return out


def settings(encoder_cells: dict) -> list[tuple[str, object, object, int]]:
    """(name, pooled table or None for clusters, cells, PCA dim) of every image setting."""
    out = []
    for name, cells in encoder_cells.items():
        for pooling in ("mean", "quantiles"):
            table = pooled_rows(cells, pooling)
            out += [(f"{name} {pooling} pca{d}", table, cells, d) for d in (8, 16)]
        out.append((f"{name} clusters{CLUSTERS}", None, cells, 0))
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    dataset = load_dataset(args.data_dir)
    labels, clinical = dataset.train["LABEL"], clinical_table(dataset)
    began = time.perf_counter()
    encoder_cells = {name: encoder_embeddings(dataset, cache_dir=CACHE_DIR, progress=False, **spec)
                     for name, spec in encoders(args).items()}
    embed_s = time.perf_counter() - began
    scores: dict[tuple[str, int], dict] = {}
    for seed in [args.select_seed, *args.seeds]:
        folds = load_folds(dataset, 5, seed, FOLDS_DIR)
        folds = folds[folds["ID"].isin(labels.index)]
        oof = cv_oof(clinical.loc[labels.index], None, folds, labels, None, pca_dim=0, seed=seed)
        scores[("clinical", seed)] = fold_metrics(oof)
        for name, table, cells, dim in settings(encoder_cells):
            for with_clinical in (False, True):
                key = f"{name} {'+ clinical' if with_clinical else 'image-only'}"
                oof = cv_oof(table, cells, folds, labels, clinical if with_clinical else None, pca_dim=dim, seed=seed)
                scores[(key, seed)] = fold_metrics(oof)
                print(f"seed {seed} {key}: BA {scores[(key, seed)]['ba_mean']:.3f} AUC {scores[(key, seed)]['auc_mean']:.3f}",
                      flush=True)
    publish("Patient features pooled from a frozen cell encoder, repeated CV", block(args, scores, embed_s, began),
            __file__, argv, append=not args.no_append)


def block(args, scores: dict, embed_s: float, began: float) -> list[str]:
    names = list(dict.fromkeys(k for k, _ in scores))
    chosen = {kind: max((n for n in names if n.endswith(kind)), key=lambda n: scores[(n, args.select_seed)]["auc_mean"])
              for kind in ("image-only", "+ clinical")}
    lines = [f"- machine: {machine()}; embedding {embed_s:.0f} s, whole benchmark {time.perf_counter() - began:.0f} s",
             f"- data: {args.data_dir} ({len(next(iter(scores.values()))['per_fold'])} folds); settings chosen on "
             f"fold seed {args.select_seed} by AUC, reported on seeds {', '.join(map(str, args.seeds))}",
             f"- chosen on seed {args.select_seed}: image-only '{chosen['image-only']}', with clinical "
             f"'{chosen['+ clinical']}'", "", "| setting | BA | AUC | per seed BA |", "|---|---|---|---|"]
    for name in names:
        ba = [scores[(name, s)]["ba_mean"] for s in args.seeds]
        auc = [scores[(name, s)]["auc_mean"] for s in args.seeds]
        mark = " (chosen)" if name in chosen.values() else ""
        lines.append(f"| {name}{mark} | {mean_std(ba)} | {mean_std(auc)} | {', '.join(f'{v:.3f}' for v in ba)} |")
    return lines


if __name__ == "__main__":
    main()
