#!/usr/bin/env bash
# Runs every test, installing what is missing first:
#   PostgreSQL 15 and redis-server (Debian packages), cargo-nextest,
#   the Tansu Kafka-protocol broker and the ArcadeDB Bolt server (cached
#   under ~/.cache/pgfanout, built/installed once).
# Usage: scripts/test.sh [extra cargo-nextest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pgfanout-target}"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
missing=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v runuser >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  $SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
for installer in scripts/install-tansu.sh scripts/install-arcadedb.sh; do
  if [ -x "$installer" ]; then "$installer"; fi
done

cargo nextest run --workspace --no-fail-fast "$@"
