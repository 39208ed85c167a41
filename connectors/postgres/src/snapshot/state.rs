//! Per-slot snapshot state, kept in the source database.
//!
//! The daemon must know, across restarts, which tables of a slot were fully
//! copied (and at which version) so that a table added to the config later is
//! snapshotted on its own while the others keep streaming, and so that a copy
//! interrupted by a crash is redone rather than trusted. The state lives next
//! to the data it describes, in `pgfanout.snapshot_state` (schema
//! [`INTERNAL_SCHEMA`], which table wildcards never expand to), so it is
//! dropped, backed up and restored with the database the slot belongs to.

use pgfanout_sdk::Lsn;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::error::SourceError;
use crate::slot::TableName;

crate::sql_text_enum! {
    /// A table's snapshot status in `pgfanout.snapshot_state.status`.
    pub enum SnapshotStatus in "pgfanout.snapshot_state.status" {
        /// Being copied by the initial snapshot (a crash leaves it so: the
        /// next start re-copies every table by backfills).
        InitialRunning = "initial-running",
        /// Written by releases before December 2026 for a table added to
        /// the config; read as "not copied".
        AddedRunning = "added-running",
        /// Copied at the recorded version.
        Done = "done",
    }
}

/// Creates schema `pgfanout` and its tables if missing (all of them: see
/// [`crate::schema`]). Safe to call concurrently from several processes.
/// Needs CREATE on the database (Permanent error otherwise).
pub async fn ensure_state_table(c: &Client) -> Result<(), SourceError> {
    crate::schema::migrate(c).await.map(|_| ())
}

/// Every table recorded for `slot`, ordered by schema and name, with its
/// status (as written by [`mark_tables`]) and version.
/// Empty when the state table does not exist yet.
pub async fn snapshot_state(c: &Client, slot: &str) -> Result<Vec<(TableName, SnapshotStatus, Lsn)>, SourceError> {
    let rows = match c
        .query(
            "SELECT schema_name, table_name, status, version::text FROM pgfanout.snapshot_state \
             WHERE slot = $1 ORDER BY schema_name, table_name",
            &[&slot],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let version: String = r.try_get(3)?;
        let lsn: Lsn = version.parse().map_err(|e| SourceError::permanent(format!("pgfanout.snapshot_state: {e}")))?;
        let status: String = r.try_get(2)?;
        let status: SnapshotStatus = status.parse().map_err(SourceError::permanent)?;
        out.push((TableName::new(r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?), status, lsn));
    }
    Ok(out)
}

/// Records `tables` of `slot` with `status` and `version` (insert or
/// overwrite), in one statement: either all rows change or none.
pub async fn mark_tables(c: &Client, slot: &str, tables: &[TableName], status: SnapshotStatus, version: Lsn) -> Result<(), SourceError> {
    if tables.is_empty() {
        return Ok(());
    }
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    c.execute(
        "INSERT INTO pgfanout.snapshot_state (slot, schema_name, table_name, status, version, updated_at) \
         SELECT $1, s, t, $4, $5::text::pg_lsn, now() FROM unnest($2::text[], $3::text[]) AS u(s, t) \
         ON CONFLICT (slot, schema_name, table_name) \
         DO UPDATE SET status = EXCLUDED.status, version = EXCLUDED.version, updated_at = EXCLUDED.updated_at",
        &[&slot, &schemas, &names, &status.as_str(), &version.to_string()],
    )
    .await?;
    Ok(())
}

/// Forgets every table of `slot` (call it when the slot is dropped or
/// re-created). A missing state table is not an error.
pub async fn clear_state(c: &Client, slot: &str) -> Result<(), SourceError> {
    match c.execute("DELETE FROM pgfanout.snapshot_state WHERE slot = $1", &[&slot]).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
