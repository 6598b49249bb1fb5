"""Where things live: repository folders and the default data directories."""
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_DIR / "data"
DEMO_DATA_DIR = DATA_DIR / "demo"
SHARED_DATA_DIR = REPO_DIR.parent / "shared" / "data" / "lymphocytosis"
FOLDS_DIR = REPO_DIR / "folds"
RUNS_DIR = REPO_DIR / "runs"
CACHE_DIR = REPO_DIR / "cache"
CONFIGS_DIR = REPO_DIR / "configs"
