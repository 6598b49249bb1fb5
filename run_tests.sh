#!/usr/bin/env bash
# The test suite (installs first if needed, development packages included). Extra arguments go to pytest;
# pyproject.toml sets the per-test timeout and prints the 15 slowest tests. The tests run on one pytest-xdist
# worker per core (LYMPH_TEST_WORKERS overrides: 0 runs them in this process), the demo-pipeline ones on one
# worker (tests/conftest.py's scheduler).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh --dev
.venv/bin/python -m pytest tests -q -n "${LYMPH_TEST_WORKERS:-auto}" "$@"
