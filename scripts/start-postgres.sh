#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster for `apr tune --storage` tests and print its URL.
#
#   eval "$(scripts/start-postgres.sh)"   # sets APR_TEST_POSTGRES_URL
#
# Installs the Debian package when the server binaries are missing (needs root and apt), creates
# a cluster in $APR_PG_DIR (default /tmp/apr-postgres) owned by the postgres user, listening on
# 127.0.0.1:$APR_PG_PORT (default 54329), and a database and user "apr" (password "apr").
# Running it again reuses a running cluster. Stop it with:
#   runuser -u postgres -- "$(ls -d /usr/lib/postgresql/*/bin | tail -1)/pg_ctl" -D /tmp/apr-postgres stop
set -euo pipefail

DIR="${APR_PG_DIR:-/tmp/apr-postgres}"
PORT="${APR_PG_PORT:-54329}"

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
if [ -z "$(bindir)" ] || [ ! -x "$(bindir)/initdb" ]; then
  echo "installing postgresql (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
fi
BIN="$(bindir)"

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ ! -f "$DIR/PG_VERSION" ]; then
  mkdir -p "$DIR"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$DIR"
  as_pg "$BIN/initdb" -D "$DIR" -A trust -U postgres >/dev/null
fi
if ! as_pg "$BIN/pg_ctl" -D "$DIR" status >/dev/null 2>&1; then
  as_pg "$BIN/pg_ctl" -D "$DIR" -l "$DIR/server.log" -w \
    -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
fi
PSQL=(psql -h 127.0.0.1 -p "$PORT" -U postgres -v ON_ERROR_STOP=1 -qtA)
"${PSQL[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname='apr'" | grep -q 1 ||
  "${PSQL[@]}" -c "CREATE ROLE apr LOGIN PASSWORD 'apr'"
"${PSQL[@]}" -c "SELECT 1 FROM pg_database WHERE datname='apr'" | grep -q 1 ||
  "${PSQL[@]}" -c "CREATE DATABASE apr OWNER apr"
echo "export APR_TEST_POSTGRES_URL=postgresql://apr:apr@127.0.0.1:$PORT/apr"
