#!/usr/bin/env bash
# Run by scripts/install-jvm-servers.sh in the new install dir: Elasticsearch 8
# loads its modules only from <home>/modules/<name>/ (jars + plugin-descriptor.properties),
# as Java modules; the server itself runs from the module path (lib/).
set -euo pipefail
dir="$1"
m="$dir/modules/transport-netty4"
mkdir -p "$m"
mv "$dir"/lib/transport-netty4-*.jar "$dir"/lib/netty-*.jar "$m/"
(cd "$m" && unzip -p transport-netty4-*.jar META-INF/es-plugins/transport-netty4/plugin-descriptor.properties > plugin-descriptor.properties)
test -s "$m/plugin-descriptor.properties"
