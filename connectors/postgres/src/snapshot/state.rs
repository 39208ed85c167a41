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
use crate::slot::{TableName, INTERNAL_SCHEMA};

const CREATE: &str = "CREATE SCHEMA IF NOT EXISTS pgfanout; \
    CREATE TABLE IF NOT EXISTS pgfanout.snapshot_state (\
        slot text NOT NULL, schema_name text NOT NULL, table_name text NOT NULL, \
        status text NOT NULL, version pg_lsn NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), \
        PRIMARY KEY (slot, schema_name, table_name))";

/// Creates schema `pgfanout` and table `pgfanout.snapshot_state` if missing.
/// Safe to call concurrently from several processes. Needs CREATE on the
/// database (Permanent error otherwise).
pub async fn ensure_state_table(c: &Client) -> Result<(), SourceError> {
    debug_assert_eq!(INTERNAL_SCHEMA, "pgfanout");
    match c.batch_execute(CREATE).await {
        Ok(()) => Ok(()),
        // Two CREATE ... IF NOT EXISTS racing: the loser sees a duplicate; the
        // object exists now, so run it again to create what may still miss.
        Err(e) if is_duplicate(&e) => Ok(c.batch_execute(CREATE).await?),
        Err(e) => Err(e.into()),
    }
}

fn is_duplicate(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::UNIQUE_VIOLATION || *c == SqlState::DUPLICATE_SCHEMA || *c == SqlState::DUPLICATE_TABLE
    )
}

/// Every table recorded for `slot`, ordered by schema and name, with its
/// status (`running` or `done`, as written by [`mark_tables`]) and version.
/// Empty when the state table does not exist yet.
pub async fn snapshot_state(c: &Client, slot: &str) -> Result<Vec<(TableName, String, Lsn)>, SourceError> {
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
        out.push((TableName::new(r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?), r.try_get(2)?, lsn));
    }
    Ok(out)
}

/// Records `tables` of `slot` with `status` and `version` (insert or
/// overwrite), in one statement: either all rows change or none.
pub async fn mark_tables(c: &Client, slot: &str, tables: &[TableName], status: &str, version: Lsn) -> Result<(), SourceError> {
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
        &[&slot, &schemas, &names, &status, &version.to_string()],
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
