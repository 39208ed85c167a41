#!/usr/bin/env bash
# The long crash campaign: tests/campaign.rs with many runs.
#
#   scripts/campaign.sh [--runs N] [--seed S]
#
# Each run: a fresh database with a pre-filled table, pgfanout started with
# an initial snapshot into a persistent Redis and the file sink, then 3-6
# random steps while a writer commits transactions: SIGKILLs at random
# moments (during the slot creation and snapshot, mid-stream, after an
# ALTER TABLE, during a backfill, during a Redis outage) and Redis outages.
# After each kill the ack rule is checked in both stores (everything at or
# before confirmed_flush_lsn is there); after each run both equal the
# table. Each run's line carries the running totals; the last lines
# printed are the seed and the totals (runs, kills, transactions, row
# states checked, losses). Needs what scripts/test.sh installs (PostgreSQL, Redis,
# cargo-nextest). About 10 s per run on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=100
seed=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    *) echo "usage: scripts/campaign.sh [--runs N] [--seed S]" >&2; exit 2 ;;
  esac
done
export PGFANOUT_CAMPAIGN_RUNS="$runs"
if [ -n "$seed" ]; then export PGFANOUT_CAMPAIGN_SEED="$seed"; fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pgfanout-target}"
# One test, however long it takes (nextest profile `campaign`).
exec cargo nextest run --profile campaign -p pgfanout --test campaign --no-capture 2>&1
