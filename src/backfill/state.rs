//! Backfill requests and progress, kept in the source database next to the
//! data (schema `pgfanout`), so that a crash or restart resumes a backfill
//! from its last durable chunk and every way of starting one (CLI, SQL,
//! HTTP) is the same insert.
//!
//! - `pgfanout.signals`: requests, as Debezium's signal table: `type` is
//!   `backfill` (`data`: `{"table": "public.orders", "where": "...",
//!   "chunk_size": 1000, "max_rows_per_second": 5000}`), or
//!   `pause-backfill` / `resume-backfill` / `cancel-backfill` (`data`:
//!   `{"id": 3}`). The daemon applies each unprocessed signal once and sets
//!   `processed_at`.
//! - `pgfanout.backfills`: one row per backfill: status (`pending`,
//!   `running`, `paused`, `done`, `cancelled`, `failed`), the key of the
//!   last row of the last chunk durable in every sink, row and chunk counts.

use pgfanout_postgres::SourceError;
use serde_json::Value as Json;
use tokio_postgres::Client;

pgfanout_postgres::sql_text_enum! {
    /// Where a backfill stands (`pgfanout.backfills.status`).
    pub enum BackfillStatus in "pgfanout.backfills.status" {
        /// Requested, not started.
        Pending = "pending",
        /// Copying (resumes from `last_key` after a restart).
        Running = "running",
        /// Paused by a signal; resumes where it stopped.
        Paused = "paused",
        Done = "done",
        Cancelled = "cancelled",
        /// Stopped by an error (in `error`).
        Failed = "failed",
    }
}

impl BackfillStatus {
    /// The states of a backfill that is not over.
    pub const ACTIVE: [BackfillStatus; 3] = [BackfillStatus::Pending, BackfillStatus::Running, BackfillStatus::Paused];

    pub fn is_active(self) -> bool {
        Self::ACTIVE.contains(&self)
    }
}

pgfanout_postgres::sql_text_enum! {
    /// What a row of `pgfanout.signals` asks for (`type`).
    pub enum SignalKind in "pgfanout.signals.type" {
        /// Start a backfill (`data`: table, where, chunk_size, max_rows_per_second).
        Backfill = "backfill",
        /// Pause, resume or cancel backfill `data.id`.
        Pause = "pause-backfill",
        Resume = "resume-backfill",
        Cancel = "cancel-backfill",
    }
}

/// Creates schema `pgfanout` and its tables when missing, or upgrades them
/// (see [`pgfanout_postgres::schema`]).
pub async fn ensure(c: &Client) -> Result<(), SourceError> {
    pgfanout_postgres::schema::migrate(c).await.map(|_| ())
}

/// Inserts a signal; returns its id.
pub async fn signal(c: &Client, kind: SignalKind, data: &Json) -> Result<i64, SourceError> {
    ensure(c).await?;
    let row = c
        .query_one("INSERT INTO pgfanout.signals (type, data) VALUES ($1, $2::text::jsonb) RETURNING id", &[&kind, &data.to_string()])
        .await?;
    Ok(row.try_get(0)?)
}

/// One backfill, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Backfill {
    pub id: i64,
    pub table: String,
    pub filter: Option<String>,
    pub status: BackfillStatus,
    pub part: i32,
    pub last_key: Option<Vec<String>>,
    pub rows: i64,
    pub chunks: i64,
    pub chunk_size: i32,
    pub max_rows_per_second: Option<i32>,
    pub reason: Option<String>,
    pub error: Option<String>,
}

impl Backfill {
    pub fn to_json(&self) -> Json {
        serde_json::json!({
            "id": self.id, "table": self.table, "where": self.filter, "status": self.status.as_str(),
            "rows": self.rows, "chunks": self.chunks, "chunk_size": self.chunk_size,
            "max_rows_per_second": self.max_rows_per_second, "reason": self.reason, "error": self.error,
            "last_key": self.last_key,
        })
    }
}

const COLUMNS: &str =
    "id, table_name, filter, status, part, last_key, rows_done, chunks_done, chunk_size, max_rows_per_second, reason, error";

fn from_row(r: &tokio_postgres::Row) -> Result<Backfill, tokio_postgres::Error> {
    Ok(Backfill {
        id: r.try_get(0)?,
        table: r.try_get(1)?,
        filter: r.try_get(2)?,
        status: r.try_get(3)?,
        part: r.try_get(4)?,
        last_key: r.try_get(5)?,
        rows: r.try_get(6)?,
        chunks: r.try_get(7)?,
        chunk_size: r.try_get(8)?,
        max_rows_per_second: r.try_get(9)?,
        reason: r.try_get(10)?,
        error: r.try_get(11)?,
    })
}

/// Every backfill of `slot`, newest first.
pub async fn list(c: &Client, slot: &str) -> Result<Vec<Backfill>, SourceError> {
    ensure(c).await?;
    let rows = c.query(&format!("SELECT {COLUMNS} FROM pgfanout.backfills WHERE slot = $1 ORDER BY id DESC"), &[&slot]).await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

/// The next backfill to work on: the oldest running or pending one.
pub async fn next_active(c: &Client, slot: &str) -> Result<Option<Backfill>, SourceError> {
    let row = c
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM pgfanout.backfills WHERE slot = $1 AND status IN ($2, $3) \
                 ORDER BY (status = $2) DESC, id LIMIT 1"
            ),
            &[&slot, &BackfillStatus::Running, &BackfillStatus::Pending],
        )
        .await?;
    Ok(row.as_ref().map(from_row).transpose()?)
}

pub async fn status(c: &Client, id: i64) -> Result<Option<BackfillStatus>, SourceError> {
    match c.query_opt("SELECT status FROM pgfanout.backfills WHERE id = $1", &[&id]).await? {
        Some(r) => Ok(Some(r.try_get(0)?)),
        None => Ok(None),
    }
}

/// Records a chunk durable in every sink.
pub async fn chunk_done(c: &Client, id: i64, part: i32, last_key: &[String], rows: i64) -> Result<(), SourceError> {
    c.execute(
        "UPDATE pgfanout.backfills SET part = $2, last_key = $3, rows_done = rows_done + $4, chunks_done = chunks_done + 1, \
         status = CASE WHEN status = $5 THEN $6 ELSE status END, updated_at = now() WHERE id = $1",
        &[&id, &part, &last_key, &rows, &BackfillStatus::Pending, &BackfillStatus::Running],
    )
    .await?;
    Ok(())
}

/// Moves to the next partition (leaf) of a partitioned table.
pub async fn next_part(c: &Client, id: i64, part: i32) -> Result<(), SourceError> {
    c.execute("UPDATE pgfanout.backfills SET part = $2, last_key = NULL, updated_at = now() WHERE id = $1", &[&id, &part]).await?;
    Ok(())
}

pub async fn set_status(c: &Client, id: i64, status: BackfillStatus, error: Option<&str>) -> Result<(), SourceError> {
    c.execute("UPDATE pgfanout.backfills SET status = $2, error = $3, updated_at = now() WHERE id = $1", &[&id, &status, &error]).await?;
    Ok(())
}

/// Creates a backfill; returns its id.
#[allow(clippy::too_many_arguments)]
pub async fn create(
    c: &Client,
    slot: &str,
    table: &str,
    filter: Option<&str>,
    chunk_size: i32,
    max_rows_per_second: Option<i32>,
    reason: &str,
) -> Result<i64, SourceError> {
    let row = c
        .query_one(
            "INSERT INTO pgfanout.backfills (slot, table_name, filter, chunk_size, max_rows_per_second, reason) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            &[&slot, &table, &filter, &chunk_size, &max_rows_per_second, &reason],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Unprocessed signals, oldest first: (id, type, data). The type is text:
/// a signal of a type this release does not know is answered, not fatal.
pub async fn pending_signals(c: &Client) -> Result<Vec<(i64, String, Json)>, SourceError> {
    let rows = c.query("SELECT id, type, data::text FROM pgfanout.signals WHERE processed_at IS NULL ORDER BY id", &[]).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let data: String = r.try_get(2)?;
        out.push((r.try_get(0)?, r.try_get(1)?, serde_json::from_str(&data).unwrap_or(Json::Null)));
    }
    Ok(out)
}

pub async fn signal_processed(c: &Client, id: i64, result: &str) -> Result<(), SourceError> {
    c.execute("UPDATE pgfanout.signals SET processed_at = now(), result = $2 WHERE id = $1", &[&id, &result]).await?;
    Ok(())
}
