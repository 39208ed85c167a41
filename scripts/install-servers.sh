#!/usr/bin/env bash
# Installs what the stores' servers need when it is missing, cached under
# ~/.cache/pgfanout and installed once: PostgreSQL 15, redis-server,
# util-linux and openssl (Debian packages), a JDK 17 and Maven (Debian
# packages), the JVM servers (Apache Kafka, Neo4j, OpenSearch,
# Elasticsearch, Cassandra: jars from Maven Central,
# scripts/install-jvm-servers.sh), FerretDB (scripts/install-ferretdb.sh),
# Toxiproxy (scripts/install-toxiproxy.sh) and Helm, for the chart's test
# (scripts/install-helm.sh).
# Extra Debian packages to install when missing may follow as arguments
# (`package:command`, e.g. chromium-driver:chromedriver).
# Used by scripts/test.sh and scripts/demo.sh --all.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
has_jdk17() {
  local h
  for h in "${PGFANOUT_JAVA17_HOME:-}" /usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/java-17-openjdk-arm64; do
    if [ -n "$h" ] && [ -x "$h/bin/javac" ]; then return 0; fi
  done
  return 1
}
missing=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v runuser >/dev/null || missing+=(util-linux)
command -v openssl >/dev/null || missing+=(openssl)  # the secured Kafka broker's certificates
has_jdk17 || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || missing+=(maven)
for extra in "$@"; do
  command -v "${extra#*:}" >/dev/null || missing+=("${extra%%:*}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
scripts/install-jvm-servers.sh
scripts/install-ferretdb.sh >/dev/null
scripts/install-toxiproxy.sh >/dev/null
scripts/install-helm.sh >/dev/null
