"""What survives a killed night: one JSON marker per finished stage (``<night>/stages/<stage>.json``: seconds,
estimate, when), and, with a shared ``--storage``, which machine runs the stages that are not studies."""
from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path

from lib.core.io import atomic_write_json, read_json


def marker_path(night_dir: Path, stage: str) -> Path:
    return night_dir / "stages" / f"{stage.replace('/', '_')}.json"


def finished(night_dir: Path, stage: str) -> dict | None:
    """The stage's marker, or None when it has not finished."""
    path = marker_path(night_dir, stage)
    return read_json(path) if path.is_file() else None


def mark_finished(night_dir: Path, stage: str, seconds: float, estimate: float | None, **extra) -> dict:
    """Write the stage's marker (atomically: a kill leaves the old state or the new one)."""
    record = {"stage": stage, "seconds": seconds, "estimate": estimate,
              "finished_at": datetime.now(UTC).isoformat(timespec="seconds"), **extra}
    atomic_write_json(record, marker_path(night_dir, stage))
    return record


def all_finished(night_dir: Path) -> dict[str, dict]:
    """Every marker of the night, by stage name."""
    folder = night_dir / "stages"
    records = [read_json(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    return {r["stage"]: r for r in records}


def owner_name(night_dir: Path) -> str:
    """This machine and night directory, as other machines see it."""
    return f"{socket.gethostname()}:{night_dir}"


def claim(storage: str, night: str, owner: str) -> str:
    """The owner of the night's single stages: the first machine to create the study ``<night>__owner`` in the
    shared storage (creation is atomic in the RDB); returns the owner's name (``owner`` when this one won)."""
    import optuna

    from lib.core.study import open_storage
    backend = open_storage(storage)
    name = f"{night}__owner"
    try:
        study = optuna.create_study(study_name=name, storage=backend, load_if_exists=False)
        study.set_user_attr("owner", owner)
        return owner
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=backend)
        return str(study.user_attrs.get("owner", "another machine"))
