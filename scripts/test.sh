#!/usr/bin/env bash
# Runs every test, installing what is missing first:
#   PostgreSQL 15 and redis-server (Debian packages), a JDK 17 and Maven
#   (Debian packages, for the JVM servers), cargo-nextest, the JVM servers
#   (Apache Kafka, Neo4j, OpenSearch, Elasticsearch, Cassandra, Debezium: jars from
#   Maven Central, scripts/install-jvm-servers.sh), FerretDB, Toxiproxy and Helm
#   (scripts/install-ferretdb.sh, install-toxiproxy.sh, install-helm.sh), all cached under ~/.cache/pgfanout and
#   installed once (scripts/install-servers.sh); chromium and its WebDriver.
# Then the version matrix: the source suites (replication, values against
# to_jsonb, snapshot, backfill, streaming, DDL) once more on each of
# PostgreSQL 14, 16, 17 and 18 (scripts/install-postgres-versions.sh;
# the full suite runs on Debian's 15). PGFANOUT_MATRIX=0 skips it.
# Usage: scripts/test.sh [extra cargo-nextest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pgfanout-target}"

# The servers, and chromium with its WebDriver: tests/console.rs drives the
# console in headless chromium.
scripts/install-servers.sh chromium:chromium chromium-driver:chromedriver
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked

# The shared target directory only grows (incremental caches, old test
# binaries, ~0.3 GB per build of each test binary); a full disk breaks
# linking. Below 20 GB free, drop what is cheap to rebuild: incremental
# caches, test executables unused for a day, and every build of a test
# executable but its newest.
mkdir -p "$CARGO_TARGET_DIR"
free_kb=$(df -Pk "$CARGO_TARGET_DIR" | awk 'NR==2 {print $4}')
if [ "${free_kb:-0}" -lt $((20 * 1024 * 1024)) ]; then
  echo "pruning $CARGO_TARGET_DIR ($((free_kb / 1024 / 1024)) GB free)" >&2
  rm -rf "$CARGO_TARGET_DIR"/debug/incremental "$CARGO_TARGET_DIR"/release/incremental
  find "$CARGO_TARGET_DIR"/debug/deps -maxdepth 1 -type f ! -name '*.*' -mtime +0 -delete 2>/dev/null || true
  if [ -d "$CARGO_TARGET_DIR"/debug/deps ]; then
    (cd "$CARGO_TARGET_DIR"/debug/deps && ls -t | grep -E '^[A-Za-z0-9_]+-[0-9a-f]{16}$' \
      | awk '{stem=$0; sub(/-[0-9a-f]{16}$/, "", stem); if (seen[stem]++) print}' | xargs -r rm -f) || true
  fi
fi
status=0
cargo nextest run --workspace --no-fail-fast "$@" || status=$?

if [ "${PGFANOUT_MATRIX:-1}" != 0 ]; then
  # The suites that exercise the source, by test binary, less the three
  # long crash tests of the snapshot and the backfill (5 of the 8 minutes
  # per version; they test pgfanout's recovery more than the server).
  matrix='((package(pgfanout-postgres) & kind(test)) | (package(pgfanout) & (binary(stream) | binary(snapshot) | binary(backfill) | binary(ddl) | binary(large_transactions) | binary(type_zoo) | binary(failover))))'
  matrix="$matrix & !test(=a_snapshot_connection_lost_mid_copy_is_retried) & !test(=a_million_row_backfill_under_writes_survives_sigkill_and_ends_equal) & !test(=crash_during_snapshot_restarts_it_cleanly)"
  servers=$(scripts/install-postgres-versions.sh) || { echo "could not install the matrix's PostgreSQL servers" >&2; exit 1; }
  while read -r major bin; do
    echo "=== the source suites on PostgreSQL $major ($bin)" >&2
    PGFANOUT_PG_BIN=$bin PGFANOUT_HUGE_MB=50 cargo nextest run --workspace --no-fail-fast -E "$matrix" "$@" </dev/null || status=$?
  done <<<"$servers"
fi
exit $status
