"""The encoder budget curve (issue 21 item 1): image-only quality of frozen self-supervised encoders against their
pretraining epochs, from finished ``bench_encoders.py`` runs directories.

Usage: python -m benchmarks.plot_budget runs/bench_encoders_25ep [runs/bench_encoders ...] [--out FIG.png]
       [--point "LABEL:EPOCHS:AUC_MEAN:AUC_STD"] ...
Each encoder run ``enc_<recipe>[_seed<k>]`` of a directory gives one point per scoring: its epochs (from
encoder.json; a run continued from another encoder counts the parent's epochs too, ``epochs_total``) and the
image-only AUC of the mean head (``<encoder>_mean_image_s<seed>/metrics.json``, mean±std over the fold seeds
present). ``--point`` adds a published number whose runs are not on this machine
(say, a block of BENCHMARKS.md measured on another machine), drawn hollow and labelled as given. The clinical
model of the same folds (``enc_clinical_s<seed>``) is the dashed line. Nothing is trained here.
"""
import argparse
import json
import re
from pathlib import Path

import numpy as np

from benchmarks.common import epochs_label
from lib.core.plots import pyplot, save_figure

PRESET_INPUT = 64  # the pretraining presets' input side: other sizes are named in the labels
ENCODER_DIR = re.compile(r"^enc_(?P<recipe>[a-z_]+?)(?:_seed(?P<seed>\d+))?$")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dirs", type=Path, nargs="+", help="bench_encoders.py --runs-dir directories")
    parser.add_argument("--point", action="append", default=[], help="LABEL:EPOCHS:AUC_MEAN:AUC_STD (published)")
    parser.add_argument("--out", type=Path, default=Path("runs/budget_curve.png"))
    return parser.parse_args(argv)


def metrics_of(runs_dir: Path, pattern: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(runs_dir.glob(f"{pattern}/metrics.json"))]


def encoder_points(runs_dir: Path) -> list[dict]:
    """One point per finished and scored encoder run of a bench_encoders.py directory."""
    from lib.cnn.pretrain import total_epochs  # torch: only once there are runs to read

    points = []
    for record_path in sorted(runs_dir.glob("enc_*/encoder.json")):
        match = ENCODER_DIR.match(record_path.parent.name)
        scores = metrics_of(runs_dir, f"{record_path.parent.name}_mean_image_s*")
        if not match or not scores:
            continue
        record = json.loads(record_path.read_text())
        auc = [m["auc_mean"] for m in scores]
        continued = total_epochs(record) != record["epochs"]
        restart = f", {epochs_label(record, 'warm restart')}" if continued else ""
        size = f", {record['input_size']} px" if record["input_size"] != PRESET_INPUT else ""
        label = f"{match['recipe']} (seed {match['seed'] or 0}{restart}{size})"
        points.append({"label": label, "series": f"{match['recipe']}{size}", "epochs": total_epochs(record),
                       "auc": float(np.mean(auc)), "std": float(np.std(auc)), "n": len(auc), "published": False})
    return points


def published(text: str) -> dict:
    label, epochs, auc, std = text.rsplit(":", 3)
    return {"label": label, "series": label.split(" (")[0], "epochs": int(epochs), "auc": float(auc), "std": float(std), "n": 0, "published": True}


NEAR = 1.25  # budgets within this ratio share a column of labels and a tick


def plot(points: list[dict], clinical: list[float], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    colours, placed = {}, {}
    for p in sorted(points, key=lambda p: (p["epochs"], p["auc"])):
        colour = colours.setdefault(p["series"], f"C{len(colours)}")  # one colour per recipe and input size
        ax.errorbar(p["epochs"], p["auc"], yerr=p["std"], fmt="o", capsize=3, color=colour,
                    mfc="none" if p["published"] else colour)
        column = next((e for e in placed if e <= p["epochs"] < e * NEAR), p["epochs"])
        stacked = placed[column] = placed.get(column, -1) + 1  # labels of nearby budgets one above another
        ax.annotate(p["label"], (p["epochs"], p["auc"]), textcoords="offset points", xytext=(7, -3 + 11 * stacked),
                    fontsize=7, color=colour)
    top = max(p["auc"] + p["std"] for p in points)
    if clinical:
        ax.axhline(np.mean(clinical), color="grey", ls="--", lw=1, label=f"clinical model {np.mean(clinical):.3f}")
        ax.legend(fontsize=8, loc="center left")
        top = max(top, float(np.mean(clinical)))
    ax.set_ylim(top=top + 0.015)
    ax.text(0.99, 0.02, "filled: runs read here; hollow: published numbers (--point)", transform=ax.transAxes,
            ha="right", va="bottom", fontsize=7, color="grey")
    ticks = []
    for e in sorted({p["epochs"] for p in points}):
        if not ticks or e >= ticks[-1] * NEAR:
            ticks.append(e)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(e) for e in ticks])
    ax.minorticks_off()
    ax.set_xlim(ticks[0] / 1.5, max(p["epochs"] for p in points) * 4)  # room for the labels right of the last points
    ax.set(xlabel="pretraining epochs (log scale)", ylabel="image-only AUC, mean head\n(fold seeds, mean±std)",
           title="Frozen self-supervised encoders: quality against pretraining budget")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def main(argv=None) -> Path:
    args = parse_args(argv)
    points = [p for d in args.runs_dirs for p in encoder_points(d)] + [published(t) for t in args.point]
    if not points:
        raise SystemExit(f"no finished, scored encoder run under {', '.join(map(str, args.runs_dirs))}")
    clinical = [m["auc_mean"] for d in args.runs_dirs for m in metrics_of(d, "enc_clinical_s*")]
    for p in points:
        source = "published" if p["published"] else f"{p['n']} fold seeds"
        print(f"{p['label']}: {p['epochs']} epochs, image-only AUC {p['auc']:.3f}±{p['std']:.3f} ({source})")
    path = plot(points, clinical, args.out)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
