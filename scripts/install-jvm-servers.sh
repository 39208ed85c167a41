#!/usr/bin/env bash
# Installs the JVM servers the integration tests run (Apache Kafka, Neo4j,
# OpenSearch, Cassandra, Elasticsearch, Debezium's PostgreSQL connector in its
# embedded engine; Apicurio Registry on request) from Maven Central into a cache, one classpath per
# server so their dependencies never mix:
#   ${PGFANOUT_JVM_CACHE:-$HOME/.cache/pgfanout/jvm}/<server>/{lib,classes,conf,java,.installed}
# lib: the jars (testkit/jvm/<server>/pom.xml pins every version), classes:
# the small launchers from testkit/jvm (compiled here), conf: logging config,
# java: the java binary to run it with (Java 17); testkit/jvm/<server>/layout.sh,
# where present, then arranges the new directory (Elasticsearch's modules/), and
# testkit/jvm/<server>/post-install.sh runs last (Neo4j's template store).
# Idempotent: a server whose .installed marker matches the hash of its pom,
# launchers and config is skipped, so a warm run takes well under a second.
# Usage: scripts/install-jvm-servers.sh [kafka|neo4j|opensearch|cassandra|elasticsearch|debezium|apicurio ...]
# (default: all but apicurio)
set -euo pipefail
self="$(readlink -f "$0")"
cd "$(dirname "$self")/.."
src="$PWD/testkit/jvm"
root="${PGFANOUT_JVM_CACHE:-$HOME/.cache/pgfanout/jvm}"
servers=("$@")
[ ${#servers[@]} -gt 0 ] || servers=(kafka neo4j opensearch cassandra elasticsearch debezium)

# Java 17: every server pinned here runs on it (Cassandra 5.0 supports 11 and 17 only).
java_home=""
for h in "${PGFANOUT_JAVA17_HOME:-}" /usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/java-17-openjdk-arm64 "${JAVA_HOME:-}"; do
  if [ -n "$h" ] && [ -x "$h/bin/javac" ] && "$h/bin/java" -version 2>&1 | grep -q '"17\.'; then java_home="$h"; break; fi
done
if [ -z "$java_home" ]; then
  javac_path="$(command -v javac || true)"
  [ -n "$javac_path" ] || { echo "install-jvm-servers: no JDK 17 found (set PGFANOUT_JAVA17_HOME)" >&2; exit 1; }
  java_home="$(dirname "$(dirname "$(readlink -f "$javac_path")")")"
fi

stamp() { # the hash of everything that decides what lands in the cache
  (cd "$src" && find common "$1" -type f | LC_ALL=C sort | xargs sha256sum; echo "$java_home"; sha256sum < "$self") | sha256sum | cut -c1-64
}

for s in "${servers[@]}"; do
  [ -f "$src/$s/pom.xml" ] || { echo "install-jvm-servers: unknown server $s" >&2; exit 1; }
  want="$(stamp "$s")"
  if [ "$(cat "$root/$s/.installed" 2>/dev/null || true)" = "$want" ]; then continue; fi
  echo "install-jvm-servers: installing $s into $root/$s" >&2
  tmp="$root/$s.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp/classes" "$tmp/conf"
  JAVA_HOME="$java_home" mvn -q -B -Dstyle.color=never -f "$src/$s/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$tmp/lib" -DincludeScope=runtime 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >&2
  mapfile -t sources < <(find "$src/common" "$src/$s" -name '*.java' -not -path '*/plugin/*' | LC_ALL=C sort)
  if [ -x "$src/$s/layout.sh" ]; then "$src/$s/layout.sh" "$tmp"; fi
  cp_extra=""
  if [ -d "$tmp/modules" ]; then cp_extra="$(find "$tmp/modules" -mindepth 1 -maxdepth 1 -type d -printf ':%p/*')"; fi
  "$java_home/bin/javac" -nowarn --release 17 -cp "$tmp/lib/*$cp_extra" -d "$tmp/classes" "${sources[@]}"
  if [ -d "$src/$s/conf" ]; then cp -r "$src/$s/conf/." "$tmp/conf/"; fi
  echo "$java_home/bin/java" > "$tmp/java"
  if [ -x "$src/$s/post-install.sh" ]; then "$src/$s/post-install.sh" "$tmp"; fi
  echo "$want" > "$tmp/.installed"
  rm -rf "$root/$s"
  mv "$tmp" "$root/$s"
done
