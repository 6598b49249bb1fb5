"""Assemble the visual report of an ensemble run: model-quality figures, patient montages, index.html."""
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from lib.core.io import atomic_directory
from lib.core.metrics import fold_metrics, mean_std
from lib.core.paths import REPO_DIR, refuse_outputs_over_inputs
from lib.core.progress import tqdm
from lib.data.dataset import Dataset
from lib.stages.report.figures import calibration_figure, confusion_figure, fold_figure, fold_table, roc_figure
from lib.stages.report.html import Figure, render_page, write_page
from lib.stages.report.inputs import (
    BLEND,
    EnsembleRun,
    cnn_run,
    load_data,
    load_ensemble,
    read_cells,
    read_test_cells,
    resolve_data_dir,
)
from lib.stages.report.montage import (
    Chosen,
    choose_patients,
    clinical_lines,
    extreme_cells,
    montage_figure,
    resolve_cell_path,
    uniform_note,
)
from lib.stages.report.scored import scored_section
from lib.stages.submission import fused_test

log = logging.getLogger(__name__)
MONTAGE_PREFIX = "patient_"


def key_table(ensemble: EnsembleRun) -> pd.DataFrame:
    """One row per model and the blend: fusion weight, threshold, AUC, BA per fold and pooled."""
    rows = []
    for name, oof in ensemble.oof_tables().items():
        threshold = ensemble.thresholds()[name]
        m = fold_metrics(oof, threshold)
        per_fold = [s["ba"] for s in m["per_fold"].values()]
        weight = "" if name == BLEND else f"{ensemble.params.weights.get(name, 0.0):.2f}"
        rows.append({"model": name, "fusion weight": weight, "threshold": f"{threshold:.2f}",
                     "AUC (pooled)": f"{m['pooled_auc']:.3f}", "BA per fold (mean±std)": mean_std(per_fold),
                     "BA pooled": f"{m['pooled_ba']:.3f}"})
    return pd.DataFrame(rows)


def honest_line(ensemble: EnsembleRun) -> str:
    """What the blend's row is worth: the nested (honest) BA from the ensemble's metrics.json, if recorded, and
    whether anything was fitted on these OOF predictions (equal weights at 0.5 fit nothing)."""
    nested = ensemble.metrics.get("nested", {})
    if "ba_mean" not in nested:
        return ""
    honest = f"BA {nested['ba_mean']:.3f}±{nested['ba_std']:.3f}"
    if ensemble.metrics.get("fusion") != "equal":
        fitted = "weights and threshold were"
    elif nested.get("threshold_policy") == "0.5":
        return (f" The blend is the equal-weight mean at threshold 0.5: nothing was fitted on these OOF predictions, "
                f"so its row is an honest CV estimate ({honest}).")
    else:
        fitted = "weights are equal, but its threshold was"
    return (f" The blend's {fitted} fitted on these same OOF predictions, so its row is optimistic; the honest "
            f"(nested) estimate is {honest}.")


def quality_figures(ensemble: EnsembleRun, out: Path) -> list[Figure]:
    """ROC, confusion matrix, per-fold scores and calibration of the models and the blend."""
    oofs, blend, threshold = ensemble.oof_tables(), ensemble.blend, ensemble.params.threshold
    method = ensemble.params.method
    score_note = (" With rank_mean the blend is a mean of ECDF ranks, not a probability: read this as a check "
                  "of the ordering, not of calibration." if method == "rank_mean" else "")
    return [
        Figure(roc_figure(oofs, BLEND, threshold, out / "roc.png"), "ROC curves (out-of-fold)",
               f"Each model and the blend ({method}) on out-of-fold predictions; the dot is the blend's operating "
               f"point at threshold {threshold:.2f}."),
        Figure(confusion_figure(blend["target"], blend["proba"], threshold, out / "confusion.png",
                                f"blend at threshold {threshold:.2f} (OOF)"), "Confusion matrix of the blend",
               "Patients by true and predicted class at the chosen threshold; the share is of each true class "
               "(BA is the mean of the two diagonal shares)."),
        Figure(fold_figure(fold_table(oofs, ensemble.thresholds()), out / "folds.png"), "BA and AUC per fold",
               "One dot per cross-validation fold, the bar is the mean; runs alone at threshold 0.5, the blend "
               f"at {threshold:.2f}. The spread shows how much a score depends on which patients are held out."),
        Figure(calibration_figure(blend["target"], blend["proba"], out / "calibration.png", n_bins=5,
                                  title="Calibration of the blend (OOF)"), "Calibration of the blend",
               "Fraction of truly tumoral patients against the mean blended score in 5 equal-width bins "
               f"(n = patients per bin); below, how the scores are spread.{score_note}"),
    ]


def patient_info(pid: str, ensemble: EnsembleRun, dataset: Dataset, n_cells: int) -> dict:
    """Values printed beside a montage: label, blended probability, threshold and clinical values."""
    row = dataset.patients.loc[pid]
    blend = ensemble.blend.set_index("ID")
    return {"target": int(blend.at[pid, "target"]), "proba": float(blend.at[pid, "proba"]),
            "threshold": ensemble.params.threshold, "age": float(row["age"]),
            "LYMPH_COUNT": float(row["LYMPH_COUNT"]), "GENDER": row["GENDER"], "n_cells": n_cells}


def patient_montage(choice: Chosen, cells: pd.DataFrame, ensemble: EnsembleRun, dataset: Dataset, out: Path, *,
                    n_show: int, model: str) -> Figure | None:
    """One patient's montage (None when the CNN run has no cell weights for that patient)."""
    mine = cells[cells["ID"] == choice.pid].copy()
    if mine.empty:
        return None
    mine["image"] = [resolve_cell_path(p, choice.pid, dataset.images, REPO_DIR) for p in mine["path"]]
    top, bottom = extreme_cells(mine, n_show)
    info = patient_info(choice.pid, ensemble, dataset, len(mine))
    title = f"{choice.pid}: {choice.reason}{uniform_note(mine)}"
    path = montage_figure(top, bottom, clinical_lines(choice.pid, info), title,
                          out / f"{MONTAGE_PREFIX}{choice.pid}.png")
    return Figure(path, f"Patient {choice.pid}: {choice.reason}",
                  f"Top row: the {len(top)} cells {model} weighted most; bottom row: the {len(bottom)} it weighted "
                  f"least (weights from the fold that held this patient out).")


def montage_section(ensemble: EnsembleRun, dataset: Dataset | None, out: Path, n_show: int,
                    max_errors: int, progress: bool) -> tuple[list[Figure], list[str]]:
    """Montages of the chosen patients, with notes on anything skipped."""
    model = cnn_run(ensemble)
    if model is None:
        return [], ["No CNN run (a run with cells.csv) among the ensemble's runs: no cell montages."]
    if dataset is None:
        return [], ["Data directory unknown or not found (pass --data-dir): no cell montages."]
    cells = read_cells(ensemble.runs.paths[ensemble.runs.names.index(model)], ensemble.blend["ID"])
    chosen, n_wrong = choose_patients(ensemble.blend, ensemble.params.threshold, max_errors)
    notes = [f"Cell weights from run {model} (fusion weight {ensemble.params.weights.get(model, 0.0):.2f}); "
             f"{n_wrong} patient(s) misclassified by the blend at threshold {ensemble.params.threshold:.2f}."]
    if n_wrong > max_errors:
        notes.append(f"Only the {max_errors} most confidently misclassified are shown (of {n_wrong}).")
    figures = []
    for choice in tqdm(chosen, desc="patient montages", disable=not progress):
        figure = patient_montage(choice, cells, ensemble, dataset, out, n_show=n_show, model=model)
        if figure is None:
            notes.append(f"Patient {choice.pid} ({choice.reason}): no cell weights in {model}/cells.csv.")
        figures += [figure] if figure else []
    return figures, notes


def submitted_section(ensemble: EnsembleRun, dataset: Dataset | None, out: Path, n_show: int,
                      progress: bool) -> tuple[list[Figure], list[str]]:
    """Where the submitted (test) patients' blended scores fall, and the cells behind the closest calls."""
    scores = fused_test(ensemble.runs, ensemble.params)
    if dataset is None:
        return [], ["Data directory unknown or not found (pass --data-dir): no section for the test patients."]
    model = cnn_run(ensemble)
    cells = None
    if model is not None:
        cells = read_test_cells(ensemble.runs.paths[ensemble.runs.names.index(model)], scores.index)
    return scored_section(scores, ensemble.params.threshold, cells, model, dataset, out,
                          what="submitted test patients", n_show=n_show, base=REPO_DIR, progress=progress)


def build_report(ensemble_dir: str | Path, data_dir: Path | None = None, out: Path | None = None,
                 n_show: int = 8, max_errors: int = 12, progress: bool = True) -> Path:
    """Write the report PNGs and index.html of an ensemble run; return the index.html path."""
    ensemble = load_ensemble(ensemble_dir)
    dataset = load_data(resolve_data_dir(data_dir, ensemble.saved), ensemble.saved)
    final = Path(out) if out is not None else ensemble.run_dir / "report"
    refuse_outputs_over_inputs({"the report folder": final}, [*ensemble.runs.paths, *([dataset.root] if dataset else [])],
                               [p for p in ensemble.run_dir.iterdir() if p.is_file()])
    with atomic_directory(final) as out:  # a killed report leaves the old one or the new one, never a mix
        write_report(ensemble, dataset, out, n_show, max_errors, progress)
    index = final / "index.html"
    log.info("report written to %s", index)
    return index


def write_report(ensemble: EnsembleRun, dataset: Dataset | None, out: Path, n_show: int, max_errors: int,
                 progress: bool) -> None:
    """The report's PNGs and index.html, written into the (new, empty) folder ``out``."""
    quality = quality_figures(ensemble, out)
    montages, notes = montage_section(ensemble, dataset, out, n_show, max_errors, progress)
    submitted, submitted_notes = submitted_section(ensemble, dataset, out, n_show, progress)
    intro = (f"Ensemble run {ensemble.run_dir.name}: {len(ensemble.runs.names)} run(s) fused by "
             f"{ensemble.params.method} at threshold {ensemble.params.threshold:.2f}, "
             f"{len(ensemble.blend)} training patients scored out-of-fold "
             f"({int(np.sum(ensemble.blend['target']))} tumoral).{honest_line(ensemble)}")
    page = render_page(f"Report: {ensemble.run_dir.name}", intro, key_table(ensemble),
                       [("How good are the models", quality, []),
                        ("Why a patient is called tumoral: the cells behind the call", montages, notes),
                        ("The submitted test patients", submitted, submitted_notes)])
    write_page(out / "index.html", page)
    log.info("report: %d figures", len(quality) + len(montages) + len(submitted))
