#!/usr/bin/env bash
# Installs FerretDB 1.x (the MongoDB wire protocol over a PostgreSQL
# database of its own) for testkit::FerretDb, once, into
# ${PGFANOUT_BIN:-$HOME/.cache/pgfanout/bin}/ferretdb.
# v2 needs a PostgreSQL extension (DocumentDB) that cannot be had here.
#
# Why not plain `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2`:
# the binary it builds panics at start ("Invalid build/version/version.txt"),
# because FerretDB's release process generates that file and the module
# does not ship it. So: fetch the module from the Go module proxy
# (`go mod download`), copy it, write build/version/version.txt, and build
# cmd/ferretdb from the copy.
# Idempotent: does nothing when the binary reports the pinned version.
# Prints the binary's path.
set -euo pipefail
version=v1.24.2
module=github.com/FerretDB/FerretDB
bin_dir="${PGFANOUT_BIN:-$HOME/.cache/pgfanout/bin}"
bin="$bin_dir/ferretdb"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep "version: $version" >/dev/null; then
  echo "$bin"
  exit 0
fi
go_bin="$(command -v go || true)"
if [ -z "$go_bin" ] && [ -x /usr/local/go/bin/go ]; then go_bin=/usr/local/go/bin/go; fi
[ -n "$go_bin" ] || { echo "install-ferretdb: no Go toolchain found (go on the PATH or /usr/local/go)" >&2; exit 1; }
echo "install-ferretdb: building $module/cmd/ferretdb@$version into $bin_dir" >&2
mkdir -p "$bin_dir"
work="$(mktemp -d)"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
(cd "$work" && GOFLAGS=-mod=mod "$go_bin" mod download -json "$module@$version") > "$work/download.json"
src_dir="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Dir"])' "$work/download.json")"
cp -r "$src_dir" "$work/src"
chmod -R u+w "$work/src"
echo "$version" > "$work/src/build/version/version.txt"
(cd "$work/src" && "$go_bin" build -buildvcs=false -trimpath -o "$bin.tmp" ./cmd/ferretdb)
mv "$bin.tmp" "$bin"
"$bin" --version | grep "version: $version" >/dev/null || { echo "install-ferretdb: $bin does not report $version" >&2; exit 1; }
echo "$bin"
