//! Recovering from a failover that lost changes pgfanout had delivered.
//!
//! When the primary dies and a standby that lagged is promoted (no
//! `synchronized_standby_slots` on the old primary), the stores hold
//! changes the new primary never had ("ghosts"), at positions the new
//! primary's own transactions will reuse. Streaming on from where pgfanout
//! was would skip the new primary's transactions committed between the fork
//! and that position, and those rows would lose against the ghosts' higher
//! versions anyway. With `source.postgres.on_slot_lost: recreate` the reader
//! recovers as it does from a lost slot:
//!
//! 1. it writes WAL on the new primary (non-transactional logical messages,
//!    which every reader skips: they come before its start position) until
//!    the server's position is past what pgfanout had received, so that
//!    every later write, and every backfilled row, has a higher version than
//!    any ghost;
//! 2. it streams on from that old position (the server skips what comes
//!    before it);
//! 3. it backfills every table (reason [`LOST_IN_FAILOVER`]); the rows the
//!    skipped transactions wrote arrive that way;
//! 4. once those backfills are done, `verify --repair` removes the ghosts
//!    of rows the new primary does not have (the daemon's reconciler, as
//!    after a recreated slot; log sinks such as files and Kafka keep what
//!    they received).

use pgfanout_postgres::slot::{self, TableName};
use pgfanout_postgres::SourceError;
use pgfanout_sdk::Lsn;
use tracing::info;

/// The `reason` of the backfills started after a failover that lost
/// delivered changes.
pub const LOST_IN_FAILOVER: &str = "failover lost changes";

/// Writes WAL until the server's insert position is past `past`, in
/// non-transactional logical messages of at most 16 MiB (prefix
/// `pgfanout_pad`, which no pipeline reads). Returns the position reached.
pub async fn pad_wal_past(sql: &tokio_postgres::Client, past: Lsn) -> Result<Lsn, SourceError> {
    const CHUNK: u64 = 16 << 20;
    let mut written = 0u64;
    loop {
        let text: String = sql.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await?.get(0);
        let at: Lsn = text.parse().map_err(|e| SourceError::transient(format!("pg_current_wal_insert_lsn {text:?}: {e}")))?;
        if at > past {
            info!(past = %past, at = %at, written, "the new primary's WAL is past what pgfanout received from the old one");
            return Ok(at);
        }
        let n = (past.0 - at.0 + 1).clamp(1024, CHUNK) as i32;
        sql.execute("SELECT pg_logical_emit_message(false, 'pgfanout_pad', repeat(' ', $1))", &[&n]).await?;
        written += n as u64;
    }
}

/// Starts a backfill of every table a pipeline reads (`patterns`: the
/// router's table patterns), for reason [`LOST_IN_FAILOVER`]. Returns the
/// tables.
pub async fn backfill_every_table(
    sql: &tokio_postgres::Client,
    slot_name: &str,
    patterns: &[String],
) -> Result<Vec<TableName>, SourceError> {
    let tables = slot::resolve_tables(sql, patterns).await?;
    crate::backfill::state::ensure(sql).await?;
    for t in &tables {
        crate::backfill::state::create(sql, slot_name, &t.to_string(), None, crate::backfill::DEFAULT_CHUNK_SIZE, None, LOST_IN_FAILOVER)
            .await?;
    }
    Ok(tables)
}
