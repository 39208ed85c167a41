#!/usr/bin/env bash
# Creates (once) the Python virtualenv that runs the ArcadeDB Bolt test server.
#
# Why: the Neo4j sink tests need a real Bolt 4.x server; ArcadeDB ships one in
# the `arcadedb-embedded` wheel (bundles its own Java runtime, ~70 MB). The
# venv lives outside the repo so that every checkout and CI run reuses it.
#
# Idempotent: does nothing when the venv already imports arcadedb_embedded.
# Override the location with PGFANOUT_ARCADEDB_VENV. Prints the venv path.
set -euo pipefail

VENV="${PGFANOUT_ARCADEDB_VENV:-$HOME/.cache/pgfanout/arcadedb-venv}"
PYTHON="${PYTHON:-python3}"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import arcadedb_embedded' >/dev/null 2>&1; then
    echo "$VENV"
    exit 0
fi

mkdir -p "$(dirname "$VENV")"
# A lock keeps two concurrent test runs from building the same venv.
exec 9>"$VENV.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi
if ! { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import arcadedb_embedded' >/dev/null 2>&1; }; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
    "$VENV/bin/python" -m pip install --quiet arcadedb-embedded >&2
fi
echo "$VENV"
