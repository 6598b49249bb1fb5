#!/usr/bin/env bash
# The test suite (installs first if needed). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh
.venv/bin/python -m pytest tests -q "$@"
