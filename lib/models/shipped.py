"""Weights shipped in the repository (``weights/``), loaded by name like ``--weights lite0``: e.g. ``lymph-ssl``, the
toolkit's own self-supervised cell encoder.

Each name is a safetensors file (tensors only: nothing in it can run code) with a JSON card beside it: what made it
(data fingerprint, cells, recipe and commands, epochs, wall time, machine, code version), its measured numbers,
and the SHA-256 of the weights file, checked every time the name is resolved (a damaged, cut or replaced file, or
a Git LFS pointer instead of the file, is a one-line error, never loaded). The card is also the encoder record
(backbone, crop, input size) that train_cnn.py and train_clinical.py check their options against.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from lib.core.errors import DataError
from lib.core.io import read_json
from lib.core.paths import REPO_DIR

WEIGHTS_DIR = REPO_DIR / "weights"
SHIPPED = ("lymph-ssl",)  # names of the weights in weights/ (<name>.safetensors + <name>.json)
_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, once per process


def is_shipped(weights: str | Path | None) -> bool:
    return isinstance(weights, str) and weights in SHIPPED


def card_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.json"


def read_card(name: str) -> dict:
    """The card of a shipped name (a one-line DataError when missing or damaged)."""
    path = card_path(name)
    if not path.is_file():
        raise DataError(f"{path}: the card of the shipped weights '{name}' is missing")
    card = read_json(path)
    if not isinstance(card, dict) or not card.get("sha256") or not card.get("file"):
        raise DataError(f"{path}: not a weights card (no sha256/file); restore it from the repository")
    return card


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def shipped_path(name: str) -> Path:
    """The weights file of a shipped name, its content checked against the card's SHA-256."""
    card = read_card(name)
    path = WEIGHTS_DIR / card["file"]
    if not path.is_file():
        raise DataError(f"{path}: the shipped weights '{name}' are missing (restore weights/ from the repository)")
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _verified:
        _verified[key] = file_sha256(path)
    if _verified[key] != card["sha256"]:
        raise DataError(f"{path}: content hash {_verified[key][:12]} differs from its card's {card['sha256'][:12]} "
                        f"(damaged, cut, or a Git LFS pointer?); restore it from the repository")
    return path
