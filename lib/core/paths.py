"""Where things live: repository folders and the default data directories.

LYMPH_CACHE_DIR (environment) moves every cache (decoded images, weights, embeddings, morphometry),
e.g. to a fast disk, or to an empty folder for a cold benchmark.
"""
import os
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_DIR / "data"
DEMO_DATA_DIR = DATA_DIR / "demo"
SHARED_DATA_DIR = REPO_DIR.parent / "shared" / "data" / "lymphocytosis"
FOLDS_DIR = REPO_DIR / "folds"
RUNS_DIR = REPO_DIR / "runs"
CACHE_DIR = Path(os.environ.get("LYMPH_CACHE_DIR") or REPO_DIR / "cache").resolve()
CONFIGS_DIR = REPO_DIR / "configs"
