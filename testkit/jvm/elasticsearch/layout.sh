#!/usr/bin/env bash
# Run by scripts/install-jvm-servers.sh in the new install dir: Elasticsearch 8
# loads its modules only from <home>/modules/<name>/ (jars + plugin-descriptor.properties),
# as Java modules; the server itself runs from the module path (lib/).
set -euo pipefail
dir="$1"
m="$dir/modules/transport-netty4"
mkdir -p "$m"
mv "$dir"/lib/transport-netty4-*.jar "$dir"/lib/netty-*.jar "$m/"
# the descriptor ships inside the module's jar (python3's zipfile: unzip may not be installed)
python3 - "$m" <<'PY'
import glob, sys, zipfile
m = sys.argv[1]
jar = glob.glob(m + "/transport-netty4-*.jar")[0]
with zipfile.ZipFile(jar) as z, open(m + "/plugin-descriptor.properties", "wb") as out:
    out.write(z.read("META-INF/es-plugins/transport-netty4/plugin-descriptor.properties"))
PY
test -s "$m/plugin-descriptor.properties"
