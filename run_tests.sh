#!/usr/bin/env bash
# The test suite (installs first if needed, development packages included). Extra arguments go to pytest;
# pyproject.toml sets the per-test timeout and prints the 15 slowest tests.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh --dev
.venv/bin/python -m pytest tests -q "$@"
