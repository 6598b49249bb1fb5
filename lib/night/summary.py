"""summary.md of a night, beside its submission: what ran and for how long against the plan, the settings the
studies chose, the honest estimates of the night's blend beside the default pipeline's on the same fold seeds,
and whether the night won (light: pandas and numpy only)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from lib.core.io import atomic_write_text, read_json
from lib.core.metrics import mean_std
from lib.night import markers
from lib.night.plan import fmt_duration
from lib.night.settings import NightSettings

BLENDS = (("ensemble_default", "default pipeline (4 models, equal weights at 0.5)"),
          ("ensemble_night", "night (all models, Optuna weights)"))


def _metrics(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def seed_scores(night_dir: Path, dataset: str, seeds: list[int], model: str) -> dict[str, list[float]]:
    """Per fold seed: a model's OOF BA at 0.5 (mean over folds) and AUC, or a blend's nested BA and AUC."""
    out = {"ba": [], "auc": []}
    for seed in seeds:
        m = _metrics(night_dir / f"{dataset}_s{seed}" / model / "metrics.json")
        if m is None:
            continue
        nested = m.get("nested")
        out["ba"].append(nested["ba_mean"] if nested else m["ba_mean"])
        out["auc"].append(nested["auc"] if nested else m["auc_mean"])
    return out


def ba_gains(default: dict, night: dict) -> tuple[np.ndarray, float] | None:
    """The per-seed gains of the night's nested BA over the default's and their spread (NaN for one seed); None when
    the per-seed blends did not all finish."""
    if not default["ba"] or len(default["ba"]) != len(night["ba"]):
        return None
    gains = np.array(night["ba"]) - np.array(default["ba"])
    return gains, float(np.std(gains)) if len(gains) > 1 else float("nan")


def won(default: dict, night: dict) -> bool | None:
    """Whether the night's mean nested BA beats the default's by more than the spread of the per-seed gains (None:
    the per-seed blends did not all finish)."""
    result = ba_gains(default, night)
    return None if result is None else bool(result[0].mean() > result[1])


def night_won(night_dir: Path, dataset: str, seeds: list[int]) -> bool | None:
    """The verdict of a night's per-seed blends (see ``won``)."""
    return won(*(seed_scores(night_dir, dataset, seeds, blend) for blend, _ in BLENDS))


def verdict(default: dict, night: dict) -> str:
    """The verdict line: won or not (``won``), with the gains."""
    result = ba_gains(default, night)
    if result is None:
        return "no verdict: the per-seed blends did not all finish"
    gains, spread = result
    auc_gain = float(np.mean(night["auc"]) - np.mean(default["auc"]))
    text = (f"night - default: BA {gains.mean():+.3f} (spread of the per-seed gains {spread:.3f}), "
            f"AUC {auc_gain:+.3f}")
    if won(default, night):
        return f"**won**: {text}"
    return (f"**did not win**: {text}; the extra models and settings did not move the honest BA by more than its "
            f"spread (one reactive patient is ~0.014 of BA here): the default blend is as good on this data")


def stage_table(night_dir: Path, stages: list[dict]) -> list[str]:
    done = markers.all_finished(night_dir)
    rows = ["| stage | estimate | actual | actual / estimate |", "|---|---|---|---|"]
    total_est = total = 0.0
    for stage in stages:
        record = done.get(stage["name"])
        if record is None:
            rows.append(f"| {stage['name']} | | not run | |")
            continue
        est, secs = record.get("estimate"), record["seconds"]
        ratio = f"{secs / est:.2f}" if est else ""
        total_est, total = total_est + (est or 0), total + (secs if est else 0)
        planned = fmt_duration(est) if est else f"{fmt_duration(record['window'])} left" if "window" in record else ""
        rows.append(f"| {stage['name']} | {planned} | {fmt_duration(secs)} | {ratio} |")
    rows.append(f"| fixed stages | {fmt_duration(total_est)} | {fmt_duration(total)} | "
                f"{total / total_est:.2f} |" if total_est else "| fixed stages | | | |")
    return rows


def study_lines(night_dir: Path, names: dict[str, str], notes: dict) -> list[str]:
    lines = []
    for kind, name in names.items():
        s = _metrics(night_dir / name / "study_summary.json")
        if s is None or s["best"] is None:
            lines.append(f"- {kind} study: no finished trial")
            continue
        current = s.get("current_settings") or {}
        params = ", ".join(f"{k}={v}" for k, v in s["best"]["params"].items())
        lines.append(f"- {kind} study ({name}): {s['finished']} trials, {notes.get(kind, '')}; best CV BA "
                     f"{s['best']['value']:.3f} on the selection seed (optimistic: the best of {s['finished']}), "
                     f"the default settings {current.get('value', float('nan')):.3f}; chosen: {params}")
    return lines


def write_summary(night_dir: Path, night: dict, stages: list[dict], settings: NightSettings, *,
                  studies: dict[str, str], models: list[str], final_dir: Path) -> Path:
    """summary.md beside the submission (and a copy in the night directory); returns its path."""
    dataset, seeds, probe = night["dataset"], list(settings.bag_seeds), night["probe"]
    studies_marker = markers.finished(night_dir, "studies") or {}
    lines = [f"# Overnight: {dataset}", "",
             f"Budget {fmt_duration(night['deadline'] - night['started'])}, started {time.ctime(night['started'])}, "
             f"finished {time.ctime()} ({fmt_duration(time.time() - night['started'])} in all, resumes included). "
             f"Machine: {probe['cpu']}, {probe['cores']} cores, native bf16 {probe['native_bf16']}.", "",
             f"Encoder: {night['encoder']['reason']}.", "",
             f"## Settings chosen (fold seed {settings.select_seed})", "",
             *study_lines(night_dir, studies, studies_marker.get("notes", {})), "",
             f"## Honest estimates (fold seeds {', '.join(map(str, seeds))}: none chose a setting)", "",
             "Models: OOF BA at 0.5 (mean over folds) and AUC; blends: nested BA (fusion and threshold tuned on the "
             "other folds) and AUC; mean±std over the fold seeds.", "",
             "| | BA | AUC |", "|---|---|---|"]
    for model in models:
        scores = seed_scores(night_dir, dataset, seeds, model)
        lines.append(f"| {model} | {mean_std(scores['ba'])} | {mean_std(scores['auc'])} |")
    blends = {}
    for blend, label in BLENDS:
        blends[blend] = seed_scores(night_dir, dataset, seeds, blend)
        lines.append(f"| **blend: {label}** | {mean_std(blends[blend]['ba'])} | {mean_std(blends[blend]['auc'])} |")
    final = _metrics(final_dir / "ensemble" / "metrics.json")
    lines += ["", verdict(blends["ensemble_default"], blends["ensemble_night"]), ""]
    submitted = (markers.finished(night_dir, "final/ensemble") or {}).get("submitted", "night")
    what = ("the night's blend of all models" if submitted == "night" else
            "the default pipeline's blend of its four models (equal weights at 0.5; the night did not win)")
    if final:
        lines += [f"Submitted: {what}, bagged over fold seeds {seeds} ({final_dir}): nested BA "
                  f"{final['nested']['ba_mean']:.3f}±{final['nested']['ba_std']:.3f}, AUC {final['nested']['auc']:.3f} "
                  f"(its folds are the first seed's; bagged OOF predictions), written to {settings.out}.", ""]
    lines += ["## Stages", "", *stage_table(night_dir, stages), ""]
    text = "\n".join(lines)
    atomic_write_text(text, night_dir / "summary.md")
    return atomic_write_text(text, settings.out.with_name("summary.md"))
