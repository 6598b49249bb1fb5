"""Synthetic demo cohort: clinical rows with the real quirks, and the hidden image parameters of each patient."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np

from lib.core.errors import DataError
from lib.data.clinical import AGE_REFERENCE_DATE


@dataclass(frozen=True)
class PatientSpec:
    """One synthetic patient: clinical row plus the hidden parameters of its images."""

    pid: int
    split: str  # "train" or "test"
    label: int
    gender: str
    dob: str
    lymph_count: float
    n_cells: int
    atypical_share: float  # share of atypical (tumoral-looking) cells
    reactive_share: float  # share of large reactive-looking cells
    scale: float  # per-patient magnification jitter
    stain: tuple[float, float, float]  # per-patient BGR tint added to every colour

    @property
    def id(self) -> str:
        """Patient ID as written in the CSV ("P<int>")."""
        return f"P{self.pid}"


# ----------------------------------------------------------------------------- clinical


def _n_tumoral(n: int) -> int:
    """Tumoral count for a split of n (~70 % like the real 80/35), both classes when n >= 2."""
    k = int(round(0.7 * n))
    return k if n < 2 else min(max(k, 1), n - 1)


def _sample_age(rng: np.random.Generator, label: int) -> float:
    """Age in years at AGE_REFERENCE_DATE: tumoral patients are older, with overlap."""
    if label == 1:
        return float(np.clip(rng.normal(70.0, 10.0), 45, 95))
    return float(np.clip(rng.normal(55.0, 17.0), 20, 90))


def _sample_lymph(rng: np.random.Generator, label: int) -> float:
    """Lymphocyte count (x1e9/L): reactive ~4-8, tumoral heavy-tailed; 1 or 2 decimals."""
    if label == 1 and rng.random() < 0.6:
        x = np.exp(rng.normal(np.log(18.0), 0.95))
    elif label == 1:
        x = np.exp(rng.normal(np.log(6.5), 0.35))
    else:
        x = np.exp(rng.normal(np.log(5.4), 0.28))
    return round(float(np.clip(x, 3.5, 250.0)), int(rng.integers(1, 3)))


def _format_dob(age: float, dash: bool) -> str:
    """Date of birth of a given age, written M/D/YYYY or (quirk) DD-MM-YYYY."""
    d = AGE_REFERENCE_DATE - timedelta(days=int(age * 365.25))
    return f"{d.day:02d}-{d.month:02d}-{d.year}" if dash else f"{d.month}/{d.day}/{d.year}"


def _quirk_flags(rng: np.random.Generator, n: int, p: float, force: bool) -> np.ndarray:
    """Boolean flags with probability p; at least one set when force and n > 0."""
    flags = rng.random(n) < p
    if force and n > 0 and not flags.any():
        flags[int(rng.integers(n))] = True
    return flags


def _genders(rng: np.random.Generator, n: int, force_lower: bool) -> list[str]:
    """Random M/F with an occasional lowercase f (at least one when force_lower)."""
    genders = ["F" if g else "M" for g in rng.random(n) < 0.5]
    females = [i for i, g in enumerate(genders) if g == "F"]
    lower = _quirk_flags(rng, len(females), 0.03, force_lower)
    for i, flag in zip(females, lower):
        genders[i] = "f" if flag else "F"
    return genders


def _image_params(rng: np.random.Generator, label: int) -> dict:
    """Hidden per-patient image parameters (atypia share, magnification, stain tint)."""
    atyp = rng.uniform(0.25, 0.6) if label == 1 else rng.uniform(0.0, 0.08)
    react = rng.uniform(0.0, 0.12) if label == 1 else rng.uniform(0.05, 0.3)
    return {
        "atypical_share": float(atyp),
        "reactive_share": float(react),
        "scale": float(rng.uniform(0.94, 1.06)),
        "stain": tuple(float(v) for v in rng.normal(0.0, 3.5, 3)),
    }


def _split_specs(rng: np.random.Generator, split: str, pids: np.ndarray,
                 cells: tuple[int, int]) -> list[PatientSpec]:
    """Patient specs of one split, rows already shuffled."""
    n = len(pids)
    labels = np.zeros(n, int)
    labels[: _n_tumoral(n)] = 1
    labels = rng.permutation(labels)
    dash = _quirk_flags(rng, n, 0.1, force=n >= 3)
    genders = _genders(rng, n, force_lower=split == "train")
    specs = []
    for i in range(n):
        lab = int(labels[i])
        specs.append(PatientSpec(
            pid=int(pids[i]), split=split, label=lab, gender=genders[i],
            dob=_format_dob(_sample_age(rng, lab), bool(dash[i])),
            lymph_count=_sample_lymph(rng, lab),
            n_cells=int(rng.integers(cells[0], cells[1] + 1)), **_image_params(rng, lab)))
    return specs


def sample_patients(n_train: int, n_test: int, cells: tuple[int, int] = (16, 40),
                    seed: int = 0) -> list[PatientSpec]:
    """Deterministic patient specs: train rows then test rows, distinct random-looking IDs."""
    validate_params(n_train, n_test, cells, seed)
    rng = np.random.default_rng([seed, 1234])
    pids = rng.choice(max(250, 3 * (n_train + n_test)), n_train + n_test, replace=False)
    return (_split_specs(rng, "train", pids[:n_train], cells)
            + _split_specs(rng, "test", pids[n_train:], cells))


def validate_params(n_train: int, n_test: int, cells: tuple[int, int], seed: int) -> None:
    """Raise DataError on impossible generator parameters."""
    if int(seed) != seed or seed < 0:
        raise DataError(f"demo: seed must be a non-negative integer, got {seed!r}")
    if n_train < 2 or n_test < 1:
        raise DataError(f"demo: need n_train >= 2 and n_test >= 1, got {n_train}/{n_test}")
    if len(cells) != 2 or not 1 <= cells[0] <= cells[1]:
        raise DataError(f"demo: cells must be (lo, hi) with 1 <= lo <= hi, got {cells}")
