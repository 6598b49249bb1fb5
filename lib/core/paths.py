"""Where things live: repository folders and the default data directories.

LYMPH_CACHE_DIR (environment) moves every cache (decoded images, weights, embeddings, morphometry),
e.g. to a fast disk, or to an empty folder for a cold benchmark.
"""
import os
from pathlib import Path

from lib.core.errors import DataError

REPO_DIR = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_DIR / "data"
DEMO_DATA_DIR = DATA_DIR / "demo"
SHARED_DATA_DIR = REPO_DIR.parent / "shared" / "data" / "lymphocytosis"
FOLDS_DIR = REPO_DIR / "folds"
RUNS_DIR = REPO_DIR / "runs"
CACHE_DIR = Path(os.environ.get("LYMPH_CACHE_DIR") or REPO_DIR / "cache").resolve()
CONFIGS_DIR = REPO_DIR / "configs"


def proba_path(out: str | Path) -> Path:
    """``submission_proba.csv`` beside ``submission.csv`` (``<stem>_proba.csv`` in general)."""
    out = Path(out)
    return out.with_name(f"{out.stem}_proba{out.suffix or '.csv'}")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def refuse_outputs_over_inputs(outputs: dict[str, Path], input_dirs: list[Path], input_files: list[Path] = ()) -> None:
    """No output may overwrite an input: an output (``{what: path}``) inside an input directory, equal to an input
    file, or a folder holding an input, is refused in one line (DataError) before any work."""
    dirs = [Path(p).resolve() for p in input_dirs]
    files = [Path(p).resolve() for p in input_files]
    for what, out in outputs.items():
        target = Path(out).resolve()
        inputs = [(d, "inside") for d in dirs if _inside(target, d)] + [(f, "is") for f in files if f == target]
        inputs += [(p, "holds") for p in [*dirs, *files] if target in p.parents]
        if inputs:
            source, how = inputs[0]
            relation = {"inside": "lies inside the input", "is": "is the input", "holds": "holds the input"}[how]
            raise DataError(f"{out}: {what} {relation} {source}; writing it would overwrite what this command reads, "
                            f"choose a path outside the data directory and the runs")
