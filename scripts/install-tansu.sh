#!/usr/bin/env bash
# Installs the Tansu Kafka-protocol broker used by the Kafka sink's tests,
# once: the build takes several minutes, so the binary is cached under
# $HOME/.cache/pgfanout/tansu and reused when present.
set -euo pipefail
root="$HOME/.cache/pgfanout/tansu"
if [ -x "$root/bin/tansu" ]; then
    exit 0
fi
cargo install tansu --version 0.6.0 --locked --features dynostore --root "$root"
