"""The night's plan (light: no torch): the budget, this machine's measured rates, what each stage costs and how
the time is shared.

Fixed stages (prepare, the encoder, the final models per fold seed, the ensembles, bagging, report, submission)
have estimates from the data size and the probed rates (lib/night/probe.py); the two studies are elastic: they
get what the fixed stages leave, and are re-planned before every chunk of trials from the time actually left
and their measured seconds per trial. Reference costs are seconds on the machine the constants were measured
on (REFERENCE), scaled by the ratio of its probed embedding rate to this machine's.
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

BUDGET_PATTERN = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
MIN_BUDGET_S = 60

# Measured on the shared data (12,563 cells, 115 + 42 patients), 2-core AMD EPYC (AVX2, no native bf16), 2026-12-03:
# each stage's mean seconds over fold seeds 43-45 of the 1-hour night in BENCHMARKS.md ("Overnight, budget 1h",
# warm caches) and the probe's Lite0 rate of that night (REFERENCE). A first calibration on a pipeline run that
# shared the cores with the test suite overestimated that night's fixed stages by 37% (with a probe that read
# 129 img/s; the same machine reads 130-174 img/s idle: the probe is now the best of three windows).
REFERENCE = {"embed_img_s": 129.0}
COSTS_S = {
    "prepare": 1.0, "clinical": 5.0, "morpho": 8.0, "cnn": 26.0, "cnn_attention": 28.0, "ensemble": 19.0,
    "report": 24.0, "submission": 2.0, "bag": 3.0, "clinical_trial": 2.0, "cnn_trial": 20.0,
}
ENSEMBLE_COST_TRIALS, ENSEMBLE_COST_MODELS = 100, 4  # COSTS_S["ensemble"]: 100 trials of a 4-model blend; it
# grows as sqrt(0.5 + 0.5 n / 4) with n models (7 models: 22 s measured)
MORPHO_S_PER_CELL = 0.0025  # cold morphometry cache: segmentation and features of one cell (2 workers)
EMBED_PASSES = 6.0  # cold embedding cache of the CNN preset, in bare Lite0 passes per cell: the identity and
# test-time views, and two heavy-augmentation views costing ~2.5 passes each (albumentations on the CPU)
WARM_FLOOR = 0.6  # a warm model stage is process start-up and head training, which a faster embedding (bf16) does
# not speed up: on a 2-core EPYC with native bf16 (probe x0.24 of the reference) they took 0.55-0.9 of the reference
# costs (2-hour night, BENCHMARKS.md), so their scale stops here
DRIFT_MIN_S = 60.0  # the measured drift is used once this many estimated seconds of fixed stages have finished
ENCODER_SHARE = 0.4  # of the budget, at most, for the label-free encoder
MIN_ENCODER_EPOCHS, MAX_ENCODER_EPOCHS = 25, 100
MIN_CONTINUED_EPOCHS, MAX_CONTINUED_EPOCHS = 10, 50  # continuing the shipped encoder (warm restart)
CLINICAL_STUDY_CAP = 40  # its space has 42 settings (3 feature sets x 2 penalties x 7 C values)
CNN_STUDY_CAP = 300
CLINICAL_STUDY_SHARE = 0.15  # of the study time, at most
CHUNK_SHARE = 0.1  # a study chunk lasts about this share of the budget: the plan is redone between chunks


def parse_budget(text: str) -> float:
    """'8h', '90m', '1h30m', '45s' -> seconds (argparse type)."""
    match = BUDGET_PATTERN.fullmatch(text.strip().lower()) if text.strip() else None
    if not match or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"expected a duration like 8h, 90m or 1h30m, got {text!r}")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if total < MIN_BUDGET_S:
        raise argparse.ArgumentTypeError(f"a budget of {text!r} is under {MIN_BUDGET_S} s")
    return total


def fmt_duration(seconds: float) -> str:
    """1h05m, 12m30s, 45s."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def scale(probe: dict) -> float:
    """How much slower than the reference machine this one is (> 1: slower)."""
    return REFERENCE["embed_img_s"] / max(probe["embed_img_s"], 1e-6)


def encoder_decision(choice: str, budget_s: float, n_cells: int, probe: dict, continued: bool = False) -> dict:
    """Whether the label-free encoder is learnt tonight and for how many epochs (fixed now: cosine schedule);
    ``continued``: from the shipped encoder (a warm restart: fewer epochs pay than from scratch)."""
    least, most = (MIN_CONTINUED_EPOCHS, MAX_CONTINUED_EPOCHS) if continued else (MIN_ENCODER_EPOCHS, MAX_ENCODER_EPOCHS)
    per_epoch = n_cells / max(probe["pretrain_img_s"], 1e-6)
    fits = int(min(most, ENCODER_SHARE * budget_s // per_epoch))
    what = "more epochs of the shipped encoder" if continued else "epochs"
    need = f"{least} {what} need {fmt_duration(least * per_epoch)} at the measured " \
           f"{probe['pretrain_img_s']:.0f} cells/s"
    if choice == "off":
        return {"on": False, "epochs": 0, "reason": "--encoder off"}
    if choice == "on":
        epochs = max(fits, 1)
        return {"on": True, "epochs": epochs, "seconds": epochs * per_epoch, "reason": f"--encoder on ({need})"}
    if fits < least:
        return {"on": False, "epochs": 0, "reason": f"skipped: {need}, more than {ENCODER_SHARE:.0%} of the "
                f"budget; the time goes to the studies and the final models"}
    return {"on": True, "epochs": fits, "seconds": fits * per_epoch,
            "reason": f"{fits} epochs fit {ENCODER_SHARE:.0%} of the budget ({need})"}


def model_cost(model: str, factor: float) -> float:
    """One model stage with warm caches on this machine (``factor``: ``scale``, floored at WARM_FLOOR)."""
    base = "cnn" if model.startswith("cnn") else "clinical" if model.startswith("clinical") else model
    return COSTS_S.get(base, COSTS_S["cnn"]) * max(factor, WARM_FLOOR)


def fixed_estimates(stages: list[tuple[str, str, int]], n_cells: int, probe: dict, encoder: dict,
                    ensemble_trials: int, cold: set[str]) -> dict[str, float]:
    """Seconds of each fixed stage ``(name, kind, models blended)``; the first morphometry and CNN stages pay the
    caches named in ``cold``."""
    factor, estimates, cold = scale(probe), {}, set(cold)
    for name, kind, n_models in stages:
        seconds = encoder.get("seconds", 0.0) if kind == "pretrain" else model_cost(kind, factor)
        if kind == "ensemble":
            seconds *= ensemble_trials / ENSEMBLE_COST_TRIALS * (0.5 + 0.5 * n_models / ENSEMBLE_COST_MODELS) ** 0.5
        if kind in cold:
            cold.discard(kind)
            seconds += n_cells * (MORPHO_S_PER_CELL * factor if kind == "morpho" else EMBED_PASSES / probe["embed_img_s"])
        estimates[name] = seconds
    return estimates


def cold_caches(cache_dir, dataset: str) -> set[str]:
    """Which of the CNN embedding and morphometry caches this data directory has not built yet (approximate: any
    embedding file of the dataset counts as the preset's)."""
    cache_dir = Path(cache_dir)
    emb = cache_dir / "emb" / dataset
    cold = set() if emb.is_dir() and any(emb.glob("*.npy")) else {"cnn"}
    return cold | (set() if any((cache_dir / "morpho").glob(f"{dataset}_*.csv")) else {"morpho"})


def drift(records: list[dict]) -> float:
    """Measured / estimated seconds of the finished fixed stages, clipped to 0.5..3; 1 until DRIFT_MIN_S of them."""
    actual, estimate = sum(r["seconds"] for r in records), sum(r["estimate"] for r in records)
    return min(3.0, max(0.5, actual / estimate)) if estimate >= DRIFT_MIN_S else 1.0


def study_window(now: float, deadline: float, fixed_left_s: float, drift: float) -> float:
    """Seconds the studies may still use: what the remaining fixed stages (scaled by the measured drift) leave."""
    return max(0.0, deadline - now - fixed_left_s * drift)


def next_chunk(done: int, cap: int, seconds_left: float, per_trial_s: float, budget_s: float) -> int:
    """The study's next total of finished trials (0: stop): what fits the time left, one chunk at a time."""
    fits = int(seconds_left // max(per_trial_s, 1e-6))
    chunk = max(1, math.ceil(CHUNK_SHARE * budget_s / max(per_trial_s, 1e-6)))
    more = min(fits, chunk, cap - done)
    return done + more if more >= 1 else 0


PLATEAU_MIN_TRIALS, PLATEAU_GAIN = 20, 0.005


def plateaued(trials_csv) -> str | None:
    """Why a study stops paying (None while it still might): at least PLATEAU_MIN_TRIALS complete trials, and the
    second half of them did not raise the best CV BA of the first half by more than PLATEAU_GAIN."""
    import pandas as pd
    table = pd.read_csv(trials_csv)
    values = table.loc[table["state"] == "COMPLETE", "value"].to_numpy()
    if len(values) < PLATEAU_MIN_TRIALS:
        return None
    half = len(values) // 2
    first, best = values[:half].max(), values.max()
    if best - first > PLATEAU_GAIN:
        return None
    return (f"the last {len(values) - half} trials did not raise the best CV BA {first:.3f} by more than "
            f"{PLATEAU_GAIN}: more trials do not pay, the time goes to the final models")
