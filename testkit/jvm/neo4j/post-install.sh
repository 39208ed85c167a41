#!/usr/bin/env bash
# Run by scripts/install-jvm-servers.sh in the new install dir, after the
# launcher is compiled: starts Neo4j once on a scratch home and stops it, so
# <install>/template/data holds a new store (system and neo4j databases, the
# user neo4j with the password pgfanout-test). testkit copies it for each
# server: that skips creating the system database (about half the start time).
set -euo pipefail
dir="$1"
java="$(cat "$dir/java")"
home="$dir/template"
rm -rf "$home"
mkdir -p "$home"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$dir/template.log"
# stdin from a FIFO-less pipe that stays open while we wait (the launcher exits on EOF)
coproc NEO { exec "$java" -Xmx512m -XX:+UseSerialGC -cp "$dir/classes:$dir/lib/*" pgfanout.testkit.Launch pgfanout.testkit.Neo4jMain "$home" "$port" pgfanout-test > "$log" 2>&1; }
pid=$NEO_PID
for _ in $(seq 1 1200); do
  if grep -q READY "$log"; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then cat "$log" >&2; exit 1; fi
  sleep 0.1
done
grep -q READY "$log" || { cat "$log" >&2; kill -KILL "$pid"; exit 1; }
kill -TERM "$pid"
wait "$pid" || true
rm -rf "$home/logs" "$log" "$home/data/server_id"
test -d "$home/data/databases/neo4j"
