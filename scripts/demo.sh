#!/usr/bin/env bash
# Quick start: a throwaway PostgreSQL (wal_level=logical) on a free port, the
# e-commerce schema, pgfanout running on config/demo.yaml (change records to
# stdout), a few changes applied, then everything stopped and removed.
#
# scripts/demo.sh --all: the e-commerce example into every store at once.
# Installs what is missing (scripts/install-servers.sh: the first time the
# JVM servers and FerretDB take a few minutes), starts PostgreSQL, Redis,
# Kafka, OpenSearch, Neo4j, Cassandra and FerretDB on free ports, runs
# pgfanout on config/ecommerce.yaml + config/profiles.yaml, applies
# examples/ecommerce-changes.sql and prints what landed in each store with
# the store's own query; then stops every server and removes its files
# (bench/src/demo.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pgfanout-target}"
if [ "${1:-}" = "--all" ]; then
  scripts/install-servers.sh
  # PGFANOUT_DEMO_BIN / PGFANOUT_DEMO_EXE: binaries built already (the
  # test build: bench/tests/demo_all.rs), instead of building them here.
  bin="${PGFANOUT_DEMO_BIN:-}"
  if [ -z "$bin" ]; then
    echo "building pgfanout..." >&2
    cargo build --release --quiet --bin pgfanout
    bin="$CARGO_TARGET_DIR/release/pgfanout"
  fi
  exe="${PGFANOUT_DEMO_EXE:-}"
  if [ -z "$exe" ]; then
    echo "building pgfanout-demo..." >&2
    cargo build --quiet -p pgfanout-bench --bin pgfanout-demo
    exe="$CARGO_TARGET_DIR/debug/pgfanout-demo"
  fi
  exec "$exe" --pgfanout "$bin" --repo .
fi
PGBIN=/usr/lib/postgresql/15/bin
if [ ! -x $PGBIN/initdb ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15
fi
echo "building pgfanout..." >&2
cargo build --release --quiet --bin pgfanout
BIN="$CARGO_TARGET_DIR/release/pgfanout"

DIR=$(mktemp -d /tmp/pgfanout-demo.XXXXXX)
chmod 777 "$DIR"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
PID=""
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  as_pg $PGBIN/pg_ctl -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup EXIT

echo "starting PostgreSQL on 127.0.0.1:$PORT (data in $DIR)" >&2
as_pg $PGBIN/initdb -D "$DIR/data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
as_pg $PGBIN/pg_ctl -D "$DIR/data" -l "$DIR/pg.log" -w start -o "-c listen_addresses=127.0.0.1 -c port=$PORT \
  -c unix_socket_directories=$DIR -c wal_level=logical -c max_replication_slots=10 -c max_wal_senders=10" >/dev/null
PSQL=(psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres)
"${PSQL[@]}" -d postgres -c "CREATE DATABASE shop"
"${PSQL[@]}" -d shop -f examples/ecommerce.sql

export DEMO_PG_URL="postgres://postgres@127.0.0.1:$PORT/shop"
echo "running: pgfanout run -c config/demo.yaml" >&2
"$BIN" run -c config/demo.yaml &
PID=$!
for _ in $(seq 1 100); do
  n=$("${PSQL[@]}" -d shop -At -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name='pgfanout_demo' AND active")
  [ "$n" = 1 ] && break
  sleep 0.1
done
echo "applying examples/ecommerce-changes.sql; change records follow:" >&2
"${PSQL[@]}" -d shop -f examples/ecommerce-changes.sql
sleep 2
echo "metrics sample:" >&2
curl -s http://127.0.0.1:9187/metrics 2>/dev/null | grep -E '^pgfanout_(changes_read_total|sink_written_total)' >&2 || true
kill -TERM "$PID"
wait "$PID" || true
PID=""
echo "done." >&2
