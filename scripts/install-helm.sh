#!/usr/bin/env bash
# Installs Helm (the Kubernetes package manager) for tests/helm_chart.rs,
# which lints and renders deploy/helm/pgfanout, once, into
# ${PGFANOUT_BIN:-$HOME/.cache/pgfanout/bin}/helm, built from the Go module
# proxy (helm.sh/helm/v4, cmd/helm): `go install` with the version stamped
# the way Helm's Makefile does (without it the binary reports "v4.3").
# A cold build (115 module downloads and the compile) took 3 minutes on two
# shared cores under nice (December 2026); the binary is 67 MB.
# Idempotent: does nothing when `helm version` reports the pinned version.
# Prints the binary's path.
set -euo pipefail
version=v4.3.2
module=helm.sh/helm/v4
bin_dir="${PGFANOUT_BIN:-$HOME/.cache/pgfanout/bin}"
bin="$bin_dir/helm"
if [ -x "$bin" ] && "$bin" version --template '{{.Version}}' 2>/dev/null | grep -Fx "$version" >/dev/null; then
  echo "$bin"
  exit 0
fi
go_bin="$(command -v go || true)"
if [ -z "$go_bin" ] && [ -x /usr/local/go/bin/go ]; then go_bin=/usr/local/go/bin/go; fi
[ -n "$go_bin" ] || { echo "install-helm: no Go toolchain found (go on the PATH or /usr/local/go)" >&2; exit 1; }
echo "install-helm: building $module/cmd/helm@$version into $bin_dir" >&2
mkdir -p "$bin_dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
CGO_ENABLED=0 GOBIN="$work" "$go_bin" install -trimpath \
  -ldflags "-w -s -X $module/internal/version.version=$version" "$module/cmd/helm@$version"
mv "$work/helm" "$bin"
"$bin" version --template '{{.Version}}' | grep -Fx "$version" >/dev/null || { echo "install-helm: $bin does not report $version" >&2; exit 1; }
echo "$bin"
