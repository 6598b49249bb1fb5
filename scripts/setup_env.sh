#!/usr/bin/env bash
# Create .venv and install requirements.txt with plain pip (torch comes from the local wheel cache); with --dev
# also requirements-dev.txt (pytest, its timeout plugin, ruff), as ./run_tests.sh and .ci/run do.
# Idempotent: skipped when the requirement files have not changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
files=(requirements.txt)
[ "${1:-}" = "--dev" ] && files+=(requirements-dev.txt)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.requirements${1:+-dev}.sha256
want=$(cat "${files[@]}" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing ${files[*]} into .venv (first time: a few minutes)" >&2
  args=()
  for f in "${files[@]}"; do args+=(-r "$f"); done
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "${args[@]}"
  echo "$want" > "$stamp"
fi
