#!/usr/bin/env bash
# Installs Toxiproxy (Shopify's fault-injection TCP proxy with an HTTP API)
# for testkit::Toxiproxy, once, into
# ${PGFANOUT_BIN:-$HOME/.cache/pgfanout/bin}/toxiproxy-server, from the Go
# module proxy (github.com/Shopify/toxiproxy/v2, cmd/server).
# Prints the binary's path.
set -euo pipefail
version=v2.5.0
module=github.com/Shopify/toxiproxy/v2
bin_dir="${PGFANOUT_BIN:-$HOME/.cache/pgfanout/bin}"
bin="$bin_dir/toxiproxy-server"
if [ -x "$bin" ] && "$bin" -version 2>&1 | grep -F "${version#v}" >/dev/null; then
  echo "$bin"
  exit 0
fi
go_bin="$(command -v go || true)"
if [ -z "$go_bin" ] && [ -x /usr/local/go/bin/go ]; then go_bin=/usr/local/go/bin/go; fi
[ -n "$go_bin" ] || { echo "install-toxiproxy: no Go toolchain found (go on the PATH or /usr/local/go)" >&2; exit 1; }
echo "install-toxiproxy: building $module/cmd/server@$version into $bin_dir" >&2
mkdir -p "$bin_dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
GOBIN="$work" "$go_bin" install -ldflags "-X github.com/Shopify/toxiproxy/v2.Version=${version#v}" "$module/cmd/server@$version"
mv "$work/server" "$bin"
"$bin" -version 2>&1 | grep -F "${version#v}" >/dev/null || { echo "install-toxiproxy: $bin does not report $version" >&2; exit 1; }
echo "$bin"
