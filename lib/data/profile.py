"""What a population of cell images looks like (size, channels, colour), so that new cells are compared with the
cells a run was trained on before they are scored.

Every stage run records the profile of its data directory's cells (``cells_profile.json``); predict.py (new
patients) and the stages (the test patients against the training patients of one directory) compare with it.
Cells of another size (another scanner or export: the 112-px centre crop then covers another field of view)
and grayscale cells where the run saw colour are errors: every model's score would be silently off. A colour
shift (another stain or white balance) is a warning naming the difference: the models may still hold.
A profile is made from a fixed, seeded sample of the files (decoded as stored: no channel conversion).
"""
from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np

from lib.core.errors import DataError

SAMPLE = 256  # images decoded per profile (seeded choice by file name): ~0.3 s of JPEG decoding
SIZE_TOLERANCE = 0.1  # a modal side more than 10% off the reference's is another scale: an error
GREY_ERROR, GREY_WARN = 0.5, 0.05  # share of grayscale cells (1 channel, or 3 equal channels)
COLOUR_SDS = 2.0  # a channel mean further than this many between-image SDs from the reference's: a warning
CHROMA_RATIO = 2.0  # colourfulness (mean channel spread) more than 2x lower or higher: a warning


def sample_paths(paths: list[Path], n: int = SAMPLE) -> list[Path]:
    """A fixed subset of the files, chosen by a hash of their names (the same files on every machine)."""
    key = [hashlib.sha1(Path(p).name.encode("utf-8", "surrogateescape")).hexdigest() + str(p) for p in paths]
    return [p for _, p in sorted(zip(key, paths))[:n]]


def image_stats(img: np.ndarray) -> dict:
    """Size, channels, greyness, RGB mean and colourfulness of one decoded image (BGR or grey, as stored)."""
    grey = img.ndim == 2 or img.shape[2] == 1
    rgb = np.repeat(img.reshape(*img.shape[:2], 1), 3, axis=2) if grey else img[..., 2::-1]
    rgb = rgb.astype(np.float32)
    spread = (np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])).mean() / 2
    return {"size": f"{img.shape[0]}x{img.shape[1]}", "grey": bool(grey or spread < 1.0),
            "rgb": rgb.reshape(-1, 3).mean(axis=0), "chroma": float(spread)}


def cells_profile(paths: list[Path]) -> dict:
    """The profile of a population of cell images (a sample of them); {} when none decodes."""
    import cv2

    from lib.data.images import decode_image  # OpenCV: only when a profile is made

    stats = []
    for path in sample_paths(paths):
        try:
            img = decode_image(path, cv2.IMREAD_UNCHANGED)  # as stored: a grayscale file keeps one channel
        except DataError:  # unreadable or a declared size no cell has: the dataset's check skips it too
            continue
        if img.ndim in (2, 3):
            stats.append(image_stats(img))
    if not stats:
        return {}
    sizes = Counter(s["size"] for s in stats)
    rgb = np.stack([s["rgb"] for s in stats])
    return {"n_sampled": len(stats), "size": sizes.most_common(1)[0][0],
            "size_share": round(sizes.most_common(1)[0][1] / len(stats), 4),
            "grey_share": round(float(np.mean([s["grey"] for s in stats])), 4),
            "rgb_mean": [round(float(v), 2) for v in rgb.mean(axis=0)],
            "rgb_sd": [round(float(v), 2) for v in rgb.std(axis=0)],
            "chroma": round(float(np.mean([s["chroma"] for s in stats])), 3)}


def _sides(size: str) -> tuple[int, int]:
    height, width = size.split("x")
    return int(height), int(width)


def profile_differences(reference: dict, new: dict) -> tuple[list[str], list[str]]:
    """(errors, warnings) of new cells against the reference cells, each a phrase naming the difference."""
    if not reference or not new:
        return [], []
    errors, warnings = [], []
    (rh, rw), (nh, nw) = _sides(reference["size"]), _sides(new["size"])
    if abs(nh - rh) > SIZE_TOLERANCE * rh or abs(nw - rw) > SIZE_TOLERANCE * rw:
        errors.append(f"cells are {new['size']} px where the training cells were {reference['size']} px (another "
                      f"scale or field of view: resize them to {reference['size']} as the training cells, or retrain)")
    if reference["grey_share"] < GREY_WARN and new["grey_share"] >= GREY_ERROR:
        errors.append(f"{new['grey_share']:.0%} of the cells are grayscale where the training cells were in colour "
                      f"(the models read colour: score colour images, or retrain on grayscale)")
    elif reference["grey_share"] < GREY_WARN <= new["grey_share"]:
        warnings.append(f"{new['grey_share']:.0%} of the cells are grayscale (training cells: colour)")
    shift = [abs(n - r) / max(sd, 1.0) for n, r, sd in zip(new["rgb_mean"], reference["rgb_mean"], reference["rgb_sd"])]
    if max(shift) > COLOUR_SDS:
        warnings.append(f"mean colour RGB {_rgb(new['rgb_mean'])} against {_rgb(reference['rgb_mean'])} for the "
                        f"training cells ({max(shift):.1f} SDs apart: another stain or white balance?)")
    ratio = (new["chroma"] + 1e-3) / (reference["chroma"] + 1e-3)
    if not errors and not 1 / CHROMA_RATIO <= ratio <= CHROMA_RATIO:
        warnings.append(f"colourfulness {new['chroma']:.1f} against {reference['chroma']:.1f} for the training cells")
    return errors, warnings


def _rgb(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.0f}" for v in values) + ")"


def check_new_cells(reference: dict, new: dict, where: str, against: str) -> list[str]:
    """Raise DataError on the first error of ``new`` cells (``where``) against ``reference`` (``against``);
    return the warnings, each a full line naming both."""
    errors, warnings = profile_differences(reference, new)
    if errors:
        raise DataError(f"{where}: {errors[0]}; compared with the cells of {against}")
    return [f"{where}: {w}; compared with the cells of {against}" for w in warnings]


PROFILE_FILE = "cells_profile.json"  # in a run directory: the profile of the cells it was trained on
_profiles: dict[tuple, dict] = {}


def split_profiles(dataset) -> dict[str, dict]:
    """Profiles of a dataset's training and test patients' cells (``{"train": ..., "test": ...}``), once per process."""
    key = (str(dataset.root), dataset.name, tuple(sorted((pid, len(p)) for pid, p in dataset.images.items())))
    if key not in _profiles:
        _profiles[key] = {split: cells_profile([p for pid in table.index for p in dataset.images[pid]])
                          for split, table in (("train", dataset.train), ("test", dataset.test))}
    return _profiles[key]


def check_test_cells(dataset) -> list[str]:
    """The test patients' cells against the training patients' of one data directory (DataError on an error);
    the warnings."""
    profiles = split_profiles(dataset)
    return check_new_cells(profiles["train"], profiles["test"], f"{dataset.root} (test patients)",
                           "its training patients")


def check_scored_cells(run_dirs: list[Path], dataset, pids: list[str]) -> list[str]:
    """New patients' cells against the training cells recorded by each run that reads cells (DataError on an
    error, e.g. another size or grayscale); the warnings. Runs without a recorded profile (made by an earlier
    version, or models that read no cells) are not compared."""
    from lib.core.io import read_json

    recorded = [(Path(d), Path(d) / PROFILE_FILE) for d in run_dirs if (Path(d) / PROFILE_FILE).exists()]
    if not recorded:
        return []
    new = cells_profile([p for pid in pids for p in dataset.images[pid]])
    references: dict[str, tuple[dict, list[Path]]] = {}  # runs of one data directory share one profile
    for run_dir, path in recorded:
        reference = read_json(path)
        if not isinstance(reference, dict) or not isinstance(reference.get("train"), dict):
            raise DataError(f"{path}: not a cells profile (damaged? re-run the stage that made {run_dir})")
        references.setdefault(repr(sorted(reference["train"].items())), (reference["train"], []))[1].append(run_dir)
    warnings: list[str] = []
    for reference, dirs in references.values():
        against = str(dirs[0]) + (f" and {len(dirs) - 1} more run(s)" if len(dirs) > 1 else "")
        warnings += check_new_cells(reference, new, str(dataset.root), against)
    return warnings
