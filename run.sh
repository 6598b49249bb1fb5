#!/usr/bin/env bash
# The main job: install (first time), then the whole pipeline on the demo data (or --data-dir DIR)
# up to submission.csv. Usage: ./run.sh [--data-dir DIR] [--out submission.csv]
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh
exec .venv/bin/python pipeline.py "$@"
