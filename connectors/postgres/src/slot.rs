//! Replication slot inspection and the server start-up checks.
//!
//! Everything here runs on a normal SQL connection ([`crate::conn::connect_sql`])
//! before streaming starts, and turns the conditions that would make
//! streaming fail later, or silently lose data, into Permanent errors that
//! say what to change: a server that cannot decode logically, a slot that
//! was invalidated or belongs to another database. Which tables are streamed
//! (patterns, the publication, replica identity) is [`crate::publication`]'s;
//! their names are [`crate::table_name`]'s (both re-exported here).
//!
//! The slot itself is created on the replication connection
//! ([`crate::replication::ReplicationClient::create_logical_slot`]) because
//! only there can its snapshot be exported; it is never dropped here.

use pgfanout_sdk::Lsn;
use tokio_postgres::Client;

use crate::error::SourceError;
pub use crate::publication::{
    ensure_empty_publication, ensure_generated_columns, ensure_publication, replica_identity_problems, resolve_tables,
};
pub use crate::table_name::{quote_ident, TableName, INTERNAL_SCHEMA};

/// Server settings the source depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub version_num: i32,
    pub wal_level: String,
    pub max_replication_slots: i32,
    pub max_wal_senders: i32,
}

/// Reads [`ServerInfo`].
pub async fn server_info(c: &Client) -> Result<ServerInfo, SourceError> {
    let row = c
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('wal_level'), \
             current_setting('max_replication_slots')::int, current_setting('max_wal_senders')::int",
            &[],
        )
        .await?;
    Ok(ServerInfo {
        version_num: row.try_get(0)?,
        wal_level: row.try_get(1)?,
        max_replication_slots: row.try_get(2)?,
        max_wal_senders: row.try_get(3)?,
    })
}

/// [`server_info`], then a Permanent error with the fix if the server is
/// older than 14, `wal_level` is not `logical`, or it allows no replication
/// slots or WAL senders.
pub async fn check_server(c: &Client) -> Result<ServerInfo, SourceError> {
    let info = server_info(c).await?;
    check_server_info(&info)?;
    Ok(info)
}

/// Whether the server decodes as a physical standby (`pg_is_in_recovery()`),
/// after checking that it can: PostgreSQL 16+, and a primary to write to
/// (`has_primary`: `source.postgres.primary_url`).
pub async fn check_standby(c: &Client, info: &ServerInfo, has_primary: bool) -> Result<bool, SourceError> {
    let standby: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).await?.try_get(0)?;
    if standby && info.version_num < 160000 {
        return Err(SourceError::permanent(format!(
            "source.postgres.url names a standby (in recovery) running PostgreSQL {}: logical decoding on a standby needs 16 or later; \
             point url at the primary, or upgrade",
            info.version_num
        )));
    }
    if standby && !has_primary {
        return Err(SourceError::permanent(
            "source.postgres.url names a standby (in recovery): set source.postgres.primary_url to the primary, where pgfanout writes \
             its publication, state and heartbeats (the slot and the stream stay on the standby), or point url at the primary",
        ));
    }
    Ok(standby)
}

fn check_server_info(info: &ServerInfo) -> Result<(), SourceError> {
    if info.version_num < 140000 {
        return Err(SourceError::permanent(format!(
            "PostgreSQL {} is not supported: pgfanout needs PostgreSQL 14 or later",
            info.version_num
        )));
    }
    if info.wal_level != "logical" {
        return Err(SourceError::permanent(format!(
            "wal_level is {:?}: set wal_level = logical in postgresql.conf and restart PostgreSQL",
            info.wal_level
        )));
    }
    if info.max_replication_slots < 1 || info.max_wal_senders < 1 {
        return Err(SourceError::permanent(
            "max_replication_slots or max_wal_senders is 0: raise both (e.g. to 10) in postgresql.conf and restart PostgreSQL",
        ));
    }
    Ok(())
}

/// SQL for the end of the server's WAL: the current write position on a
/// primary, the last position received on a standby (where
/// `pg_current_wal_lsn()` is an error).
pub const WAL_END: &str = "(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END)";

/// A row of `pg_replication_slots`, with the WAL it retains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub active: bool,
    pub active_pid: Option<i32>,
    pub restart_lsn: Option<Lsn>,
    pub confirmed_flush_lsn: Option<Lsn>,
    /// reserved | extended | unreserved | lost.
    pub wal_status: Option<String>,
    /// Bytes of WAL between restart_lsn and the current WAL position.
    pub retained_bytes: Option<i64>,
}

/// The slot's row, or None if there is no such slot.
pub async fn slot_info(c: &Client, slot: &str) -> Result<Option<SlotInfo>, SourceError> {
    let query = format!(
        "SELECT plugin::text, database::text, active, active_pid, restart_lsn::text, confirmed_flush_lsn::text, wal_status, \
           pg_wal_lsn_diff({WAL_END}, restart_lsn)::bigint \
         FROM pg_replication_slots WHERE slot_name = $1"
    );
    let row = c.query_opt(&query, &[&slot]).await?;
    let Some(row) = row else { return Ok(None) };
    let lsn = |i: usize| -> Result<Option<Lsn>, SourceError> {
        let s: Option<String> = row.try_get(i)?;
        s.map(|s| s.parse().map_err(|_| SourceError::transient(format!("invalid LSN {s:?} in pg_replication_slots")))).transpose()
    };
    Ok(Some(SlotInfo {
        plugin: row.try_get(0)?,
        database: row.try_get(1)?,
        active: row.try_get(2)?,
        active_pid: row.try_get(3)?,
        restart_lsn: lsn(4)?,
        confirmed_flush_lsn: lsn(5)?,
        wal_status: row.try_get(6)?,
        retained_bytes: row.try_get(7)?,
    }))
}

/// Permanent error, saying what to do, if the slot cannot be streamed from:
/// invalidated (`wal_status = 'lost'`), not a pgoutput logical slot, or
/// created in another database than `dbname`.
pub fn check_slot(slot: &str, info: &SlotInfo, dbname: &str) -> Result<(), SourceError> {
    if info.wal_status.as_deref() == Some("lost") {
        return Err(SourceError::permanent(format!(
            "replication slot {slot:?} was invalidated (the WAL it needed was removed, see max_slot_wal_keep_size): \
             drop it with SELECT pg_drop_replication_slot('{slot}') and start again; data changed since is lost to this slot"
        )));
    }
    match info.plugin.as_deref() {
        Some("pgoutput") => {}
        None => {
            return Err(SourceError::permanent(format!(
                "replication slot {slot:?} is a physical slot: choose another slot name for pgfanout"
            )))
        }
        Some(other) => {
            return Err(SourceError::permanent(format!(
                "replication slot {slot:?} uses output plugin {other:?} but pgfanout needs pgoutput: choose another slot name, \
                 or drop it with SELECT pg_drop_replication_slot('{slot}') if nothing else uses it"
            )))
        }
    }
    if info.database.as_deref() != Some(dbname) {
        return Err(SourceError::permanent(format!(
            "replication slot {slot:?} belongs to database {:?}, not {dbname:?}: choose another slot name or connect to that database",
            info.database.as_deref().unwrap_or("?")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> SlotInfo {
        SlotInfo {
            plugin: Some("pgoutput".into()),
            database: Some("shop".into()),
            active: false,
            active_pid: None,
            restart_lsn: Some(Lsn(1)),
            confirmed_flush_lsn: Some(Lsn(2)),
            wal_status: Some("reserved".into()),
            retained_bytes: Some(0),
        }
    }

    #[test]
    fn check_slot_cases() {
        assert!(check_slot("s", &info(), "shop").is_ok());
        let lost = SlotInfo { wal_status: Some("lost".into()), ..info() };
        let e = check_slot("s", &lost, "shop").unwrap_err();
        assert!(!e.is_retriable());
        assert!(e.to_string().contains("pg_drop_replication_slot('s')"), "{e}");
        let other_plugin = SlotInfo { plugin: Some("wal2json".into()), ..info() };
        assert!(check_slot("s", &other_plugin, "shop").unwrap_err().to_string().contains("wal2json"));
        let physical = SlotInfo { plugin: None, database: None, ..info() };
        assert!(check_slot("s", &physical, "shop").unwrap_err().to_string().contains("physical"));
        let e = check_slot("s", &info(), "other").unwrap_err();
        assert!(e.to_string().contains("belongs to database \"shop\""), "{e}");
    }

    #[test]
    fn check_server_cases() {
        let ok = ServerInfo { version_num: 150004, wal_level: "logical".into(), max_replication_slots: 10, max_wal_senders: 10 };
        assert!(check_server_info(&ok).is_ok());
        let e = check_server_info(&ServerInfo { wal_level: "replica".into(), ..ok.clone() }).unwrap_err();
        assert!(e.to_string().contains("set wal_level = logical in postgresql.conf and restart PostgreSQL"));
        assert!(check_server_info(&ServerInfo { version_num: 130010, ..ok.clone() }).unwrap_err().to_string().contains("14"));
        assert!(check_server_info(&ServerInfo { max_replication_slots: 0, ..ok }).is_err());
    }
}
