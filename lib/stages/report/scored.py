"""Report section for patients without a label (the submitted test patients, or patients scored by predict.py):
where their blended scores fall against the threshold, and the cells behind the calls closest to it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lib.core.io import atomic_directory
from lib.core.plots import pyplot, save_figure
from lib.core.progress import tqdm
from lib.data.dataset import Dataset
from lib.stages.report.html import Figure, render_page, write_page
from lib.stages.report.inputs import choose_cell_model
from lib.stages.report.montage import clinical_lines, extreme_cells, montage_figure, resolve_cell_path, uniform_note

SCORED_PREFIX = "scored_"


def distribution_figure(scores: pd.Series, threshold: float, path: Path, what: str) -> Path:
    """Histogram of the blended scores, coloured by the predicted class, with the threshold."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.4), layout="constrained")
    bins = np.linspace(0, 1, 21)
    tumoral = scores >= threshold
    ax.hist([scores[~tumoral], scores[tumoral]], bins=bins, stacked=True, color=["tab:green", "tab:red"],
            label=[f"reactive (0): {int((~tumoral).sum())}", f"tumoral (1): {int(tumoral.sum())}"])
    ax.axvline(threshold, color="black", ls="--", lw=1)
    ax.annotate(f"threshold {threshold:.2f}", (threshold, ax.get_ylim()[1] * 0.92), xytext=(4, 0),
                textcoords="offset points", fontsize=8)
    ax.set(xlabel="blended score", ylabel="patients", xlim=(0, 1), title=f"{len(scores)} {what}")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, path)


def nearest_to_threshold(scores: pd.Series, threshold: float, n: int) -> list[str]:
    """The ``n`` patients whose blended score is closest to the threshold (the calls worth a second look)."""
    distance = (scores - threshold).abs().sort_values(kind="stable")
    return list(distance.index[:n])


def scored_info(pid: str, score: float, threshold: float, dataset: Dataset, n_cells: int) -> dict:
    """Values beside a montage of an unlabelled patient (no true label: shown as '?')."""
    row = dataset.patients.loc[pid]
    return {"target": None, "proba": score, "threshold": threshold, "age": float(row["age"]),
            "LYMPH_COUNT": float(row["LYMPH_COUNT"]), "GENDER": row["GENDER"], "n_cells": n_cells}


def scored_montage(pid: str, score: float, threshold: float, cells: pd.DataFrame, dataset: Dataset, out: Path, *,
                   n_show: int, model: str, base: Path) -> Figure | None:
    """One unlabelled patient's montage (None without cell weights for that patient)."""
    mine = cells[cells["ID"] == pid].copy()
    if mine.empty:
        return None
    mine["image"] = [resolve_cell_path(p, pid, dataset.images, base) for p in mine["path"]]
    top, bottom = extreme_cells(mine, n_show)
    call = "tumoral (1)" if score >= threshold else "reactive (0)"
    lines = clinical_lines(pid, scored_info(pid, score, threshold, dataset, len(mine)))
    lines[1] = f"predicted: {call}"
    title = f"{pid}: predicted {call}, score {score:.3f} vs threshold {threshold:.2f}{uniform_note(mine)}"
    path = montage_figure(top, bottom, lines, title, out / f"{SCORED_PREFIX}{pid}.png")
    return Figure(path, f"Patient {pid}: {call}, {abs(score - threshold):.3f} from the threshold",
                  f"Top row: the {len(top)} cells {model} weighted most; bottom row: the {len(bottom)} it weighted "
                  f"least (weights averaged over its fold models).")


def scored_section(scores: pd.Series, threshold: float, cells: pd.DataFrame | None, model: str | None,
                   dataset: Dataset, out: Path, *, what: str, n_near: int = 6, n_show: int = 8,
                   base: Path = Path("."), progress: bool = True) -> tuple[list[Figure], list[str]]:
    """The distribution of the scores and montages of the patients nearest the threshold."""
    figures = [Figure(distribution_figure(scores, threshold, out / f"{SCORED_PREFIX}distribution.png", what),
                      f"Blended scores of the {what}",
                      f"Each bar counts patients by blended score, red where the call is tumoral (score >= "
                      f"{threshold:.2f}). Scores near the dashed threshold are the uncertain calls.")]
    near = nearest_to_threshold(scores, threshold, n_near)
    notes = [f"The {len(near)} patients closest to the threshold: {', '.join(near)}."]
    if cells is None or model is None:
        return figures, notes + ["No CNN run with cell weights: no cell montages for these patients."]
    for pid in tqdm(near, desc="scored-patient montages", disable=not progress):
        figure = scored_montage(pid, float(scores[pid]), threshold, cells, dataset, out, n_show=n_show, model=model,
                                base=base)
        figures += [figure] if figure else []
        if figure is None:
            notes.append(f"Patient {pid}: no cell weights in {model}.")
    return figures, notes


def scored_report(table: pd.DataFrame, threshold: float, fusion_weights: dict[str, float],
                  cells_by_run: dict[str, pd.DataFrame], dataset: Dataset, out: Path, *, title: str,
                  progress: bool = True) -> Path:
    """A stand-alone report (index.html + PNGs) of patients scored by predict.py, put in place whole."""
    with atomic_directory(out) as work:
        _write_scored_report(table, threshold, fusion_weights, cells_by_run, dataset, work, title=title,
                             progress=progress)
    return out / "index.html"


def _write_scored_report(table: pd.DataFrame, threshold: float, fusion_weights: dict[str, float],
                         cells_by_run: dict[str, pd.DataFrame], dataset: Dataset, out: Path, *, title: str,
                         progress: bool) -> None:
    model = choose_cell_model(cells_by_run, fusion_weights)
    figures, notes = scored_section(table["blend"], threshold, cells_by_run.get(model), model, dataset, out,
                                    what="scored patients", progress=progress)
    rows = [{"model": name, "fusion weight": f"{fusion_weights.get(name, 0.0):.2f}",
             "mean score": f"{table[name].mean():.3f}", "threshold": "0.50",
             "called tumoral": int((table[name] >= 0.5).sum())} for name in table.columns if name != "blend"]
    rows.append({"model": "blend", "fusion weight": "", "mean score": f"{table['blend'].mean():.3f}",
                 "threshold": f"{threshold:.2f}", "called tumoral": int((table["blend"] >= threshold).sum())})
    intro = (f"{len(table)} patients of {dataset.root} scored with the saved fold models of every fused run "
             f"(no retraining), blended at threshold {threshold:.2f}.")
    page = render_page(title, intro, pd.DataFrame(rows), [("Where the calls fall, and the closest ones", figures, notes)],
                       table_heading="The models on these patients")
    write_page(out / "index.html", page)
