"""overnight.py's options as one typed object, and the ones that shaped a night's plan (a resumed night must be
asked for the same)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

PLANNED = ("budget", "data_dir", "select_seed", "bag_seeds", "encoder", "encoder_scope", "encoder_init", "ensemble_trials",
           "cnn_config", "ssl_cnn_config", "pretrain_config")  # a resumed night must be asked for the same
PLANNED_BEFORE = {"encoder_init": "none"}  # what a night planned before an option existed did


@dataclass(frozen=True)
class NightSettings:
    """The night's options, in overnight.py's order (paths absolute): ``budget`` in seconds; ``select_seed``: the
    fold seed the studies select settings on; ``bag_seeds``: those of the final models and the honest estimates;
    ``encoder``: auto, on or off; ``encoder_scope``: all or train; ``encoder_init``: the shipped encoder the night
    starts from (``lymph-ssl``: continued when the encoder is on, used as it is when off) or ``none``; ``storage``: an Optuna RDB URL shared by several
    machines (None: sqlite in the night directory); ``ensemble_trials``: Optuna trials of each blend; the three
    presets; ``plan_only``: measure, print the plan and stop."""
    budget: float
    data_dir: Path | None
    out: Path
    runs_dir: Path
    folds_dir: Path
    cache_dir: Path
    select_seed: int
    bag_seeds: list[int]
    encoder: str
    encoder_scope: str
    encoder_init: str
    storage: str | None
    ensemble_trials: int
    cnn_config: Path
    ssl_cnn_config: Path
    pretrain_config: Path
    plan_only: bool


def planned_settings(settings: NightSettings) -> dict:
    """The options that shaped the plan, as plan.json keeps them (paths as text)."""
    values = ((f.name, getattr(settings, f.name)) for f in fields(settings) if f.name in PLANNED)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in values}
