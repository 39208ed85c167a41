#!/usr/bin/env bash
# Run by scripts/install-jvm-servers.sh in the new install dir: builds the
# module modules/pgfanout-rest-root (plugin/RestRootPlugin.java: GET /).
set -euo pipefail
dir="$1"
here="$(dirname "$(readlink -f "$0")")"
bin="$(dirname "$(cat "$dir/java")")"
m="$dir/modules/pgfanout-rest-root"
build="$dir/build-rest-root"
rm -rf "$m" "$build"
mkdir -p "$m" "$build"
"$bin/javac" -nowarn --release 17 -cp "$dir/lib/*" -d "$build" "$here/plugin/RestRootPlugin.java"
"$bin/jar" cf "$m/pgfanout-rest-root.jar" -C "$build" .
cp "$here/plugin/plugin-descriptor.properties" "$m/"
rm -rf "$build"
