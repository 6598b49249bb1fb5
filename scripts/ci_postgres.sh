# --- PostgreSQL on loopback for tests/test_hpo.py (two study workers sharing one PostgreSQL storage).
# Best effort: any failure here only makes that test skip with its reason; it never fails CI.
# Needs bash; run after scripts/setup_env.sh (uses .venv/bin/python to find a free port).
PG_CI_DIR=""
PG_CI_BIN=""

pg_as_owner() {
  # initdb/pg_ctl refuse to run as root: as root, run them as the 'postgres' user.
  if [ "$(id -u)" != 0 ]; then "$@"; return; fi
  if command -v runuser >/dev/null 2>&1; then runuser -u postgres -- "$@"; return; fi
  su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
}

start_test_postgres() {
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then echo "ci: PostgreSQL not installed and not root" >&2; return 1; fi
    echo "ci: installing PostgreSQL (apt-get)" >&2
    (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql) \
      >/tmp/lymph-ci-pg-install.log 2>&1 \
      || { echo "ci: apt-get install postgresql failed (see /tmp/lymph-ci-pg-install.log)" >&2; return 1; }
  fi
  PG_CI_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  local port
  port=$(.venv/bin/python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])") \
    || return 1
  PG_CI_DIR=$(mktemp -d /tmp/lymph-ci-pg.XXXXXX) || return 1
  if [ "$(id -u)" = 0 ]; then chown postgres "$PG_CI_DIR" || return 1; fi
  pg_as_owner "$PG_CI_BIN/initdb" -D "$PG_CI_DIR/data" -U lymph --auth=trust -E UTF8 >"$PG_CI_DIR/initdb.log" 2>&1 \
    || { echo "ci: initdb failed (see $PG_CI_DIR/initdb.log)" >&2; return 1; }
  pg_as_owner "$PG_CI_BIN/pg_ctl" -D "$PG_CI_DIR/data" -l "$PG_CI_DIR/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $port -k $PG_CI_DIR" start >/dev/null 2>&1 \
    || { echo "ci: PostgreSQL did not start (see $PG_CI_DIR/server.log)" >&2; return 1; }
  "$PG_CI_BIN/createdb" -h 127.0.0.1 -p "$port" -U lymph lymph_test \
    || { echo "ci: createdb failed" >&2; return 1; }
  export LYMPH_TEST_PG_URL="postgresql://lymph@127.0.0.1:$port/lymph_test"
}

stop_test_postgres() {
  if [ -n "$PG_CI_DIR" ] && [ -f "$PG_CI_DIR/data/postmaster.pid" ]; then
    pg_as_owner "$PG_CI_BIN/pg_ctl" -D "$PG_CI_DIR/data" -m fast stop >/dev/null 2>&1 || true
  fi
  [ -n "$PG_CI_DIR" ] && rm -rf "$PG_CI_DIR"
  return 0
}

if start_test_postgres; then
  trap stop_test_postgres EXIT
  echo "ci: PostgreSQL on 127.0.0.1 for the study test: LYMPH_TEST_PG_URL=$LYMPH_TEST_PG_URL" >&2
else
  stop_test_postgres
  unset LYMPH_TEST_PG_URL
  echo "ci: no PostgreSQL server: the PostgreSQL study test will skip" >&2
fi
# --- end PostgreSQL
