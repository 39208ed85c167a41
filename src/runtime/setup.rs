//! Start-up: server checks, publication, slot and snapshot planning, with
//! retries for transient failures and one clear message for permanent ones.
//!
//! Snapshot state lives in `pgfanout.snapshot_state` in the source database,
//! one row per (slot, table): `initial-running` while the first snapshot of
//! a new slot is copied, `added-running` while a table added to the config
//! later is copied (older versions; tables added now are backfilled while
//! streaming, see `crate::backfill`), `done` afterwards. A crash during the initial snapshot
//! leaves `initial-running` rows and a slot that has confirmed nothing past
//! its consistent point: the next start copies every table again under a
//! fresh snapshot (versioned at an LSN taken before it) and then streams from
//! the slot, so changes made meanwhile — deletes of rows the interrupted copy
//! already delivered included — still arrive. (Dropping the slot and
//! starting over would lose those deletes.) A crash while copying added
//! tables copies those tables again.

use std::collections::HashSet;
use std::time::Duration;

use pgfanout_postgres::conn::{connect_sql, PgConnectOptions};
use pgfanout_postgres::replication::{ReplicationClient, SnapshotAction};
use pgfanout_postgres::slot::{quote_ident, TableName};
use pgfanout_postgres::snapshot::SnapshotStatus;
use pgfanout_postgres::{slot, snapshot, SourceError};
use pgfanout_sdk::Lsn;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::backfill::state::BackfillStatus;
use crate::config::{OnSlotLost, PostgresSourceConfig, SnapshotMode};
use crate::pipeline::Router;
use pgfanout_sdk::settings::Backoff;

/// Tables to copy before streaming.
pub struct SnapshotPlan {
    pub tables: Vec<TableName>,
    /// Version (position) of every copied row.
    pub version: Lsn,
    /// The exported snapshot to read under (initial snapshot of a new slot);
    /// `None` reads under a fresh snapshot taken after `version`.
    pub snapshot_name: Option<String>,
    /// The replication connection that exported the snapshot: it must stay
    /// open and idle until the copy is done.
    pub exporter: Option<ReplicationClient>,
    /// State value written while copying.
    pub running_state: SnapshotStatus,
}

/// What start-up decided.
pub struct Prepared {
    /// The slot's confirmed position.
    pub start: Lsn,
    pub snapshot: Option<SnapshotPlan>,
    /// The slot was lost and created again (`on_slot_lost: recreate`):
    /// every table is being backfilled; entries of rows deleted meanwhile
    /// are removed once those backfills are done.
    pub recreated: bool,
}

/// Checks the server, creates the publication and the slot when missing,
/// plans the snapshot. Retries transient errors until shutdown (then
/// `Ok(None)`).
pub async fn prepare_source(
    opts: &PgConnectOptions,
    pg: &PostgresSourceConfig,
    router: &Router,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Option<Prepared>, SourceError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        match prepare_once(opts, pg, router).await {
            Ok(p) => return Ok(Some(p)),
            Err(e) if e.is_retriable() => {
                let delay = backoff.next_delay();
                warn!(server = %opts.redacted(), error = %e, retry_in = ?delay, "cannot prepare the source; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return Ok(None),
                }
                if *shutdown.borrow() {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

async fn prepare_once(opts: &PgConnectOptions, pg: &PostgresSourceConfig, router: &Router) -> Result<Prepared, SourceError> {
    // With `primary_url`, `opts` names a standby: the slot lives there
    // (`here`), and what pgfanout writes goes to the primary (`sql`).
    let sql = connect_sql(opts.writer()).await?;
    let standby_sql = match &opts.primary {
        Some(_) => Some(connect_sql(opts).await?),
        None => None,
    };
    let here = standby_sql.as_ref().unwrap_or(&sql);
    let server = slot::check_server(here).await?;
    let standby = slot::check_standby(here, &server, opts.primary.is_some()).await?;
    if standby {
        slot::check_server(&sql).await?;
        info!(standby = %opts.redacted(), primary = %opts.writer().redacted(), "decoding on a standby; pgfanout's own writes go to the primary");
    } else if opts.primary.is_some() {
        warn!(server = %opts.redacted(), "source.postgres.url is not a standby (promoted?); source.postgres.primary_url is still used for pgfanout's own writes");
    }
    let tables = slot::resolve_tables(&sql, &router.table_patterns()).await?;
    let problems = slot::replica_identity_problems(&sql, &tables).await?;
    if !problems.is_empty() {
        return Err(SourceError::permanent(problems.join("; ")));
    }
    if tables.is_empty() && router.reads_messages() {
        // Only logical messages: they need no table, but pgoutput needs a
        // publication.
        slot::ensure_empty_publication(&sql, &pg.publication).await?;
    }
    let published = slot::ensure_publication(&sql, &pg.publication, &tables).await?;
    if pg.publish_generated_columns {
        slot::ensure_generated_columns(&sql, &pg.publication).await?;
    }
    if pg.on_type_change == crate::config::OnTypeChange::Backfill {
        if let Err(e) = crate::backfill::shapes::record_current(&sql, &pg.slot, &tables).await {
            warn!(error = %e, "cannot record the tables' column types in pgfanout.relation_shapes: type changes (on_type_change) are not detected; grant the pgfanout role CREATE on the database");
        }
    }
    info!(publication = %pg.publication, tables = published.len(), "publication ready");
    let snapshots = pg.snapshot == SnapshotMode::Initial;
    if snapshots {
        snapshot::ensure_state_table(&sql).await?;
    }
    let info = slot::slot_info(here, &pg.slot).await?;
    // A slot that streamed before and is gone or invalidated: the changes
    // since are lost to it.
    let lost = match &info {
        Some(i) => i.wal_status.as_deref() == Some("lost"),
        None => streamed_before(&sql, &pg.slot).await?,
    };
    if lost {
        return recover_lost_slot(opts, here, &sql, pg, &tables, info.is_some(), standby).await;
    }
    match info {
        Some(info) => {
            slot::check_slot(&pg.slot, &info, &opts.dbname)?;
            if pg.failover_slot && !standby {
                ensure_failover_slot(opts, &sql, &pg.slot).await;
            }
            let start = info.confirmed_flush_lsn.unwrap_or_default();
            info!(slot = %pg.slot, confirmed_flush_lsn = %start, "resuming from existing slot");
            if !snapshots {
                return Ok(Prepared { start, snapshot: None, recreated: false });
            }
            let state = snapshot::snapshot_state(&sql, &pg.slot).await?;
            let interrupted = state.iter().any(|(_, s, _)| *s == SnapshotStatus::InitialRunning);
            let done: HashSet<&TableName> = state.iter().filter(|(_, s, _)| *s == SnapshotStatus::Done).map(|(t, _, _)| t).collect();
            let added: Vec<TableName> = tables.iter().filter(|t| interrupted || !done.contains(t)).cloned().collect();
            if added.is_empty() {
                return Ok(Prepared { start, snapshot: None, recreated: false });
            }
            // Tables added to the config, or every table after an
            // interrupted initial snapshot: published now, then backfilled
            // while the stream goes on from the slot's position
            // (crate::backfill: DBLog watermarks), instead of holding the
            // stream back while they are copied. A re-copy under a fresh
            // snapshot, streamed from the older slot position afterwards,
            // would hand a log sink a key's newer copied row before its
            // older streamed changes; the watermarks keep every key's
            // records in commit order, and the stream still carries the
            // deletes of rows the interrupted copy delivered.
            let reason = if interrupted { INTERRUPTED } else { "added to the config" };
            if interrupted {
                warn!(slot = %pg.slot, confirmed_flush_lsn = %start, "the initial snapshot was interrupted; streaming from the slot's consistent point and backfilling every table while streaming");
            }
            add_to_publication(&sql, &pg.publication, &added).await?;
            crate::backfill::state::ensure(&sql).await?;
            let existing = crate::backfill::state::list(&sql, &pg.slot).await?;
            for t in &added {
                let name = t.to_string();
                let active = existing.iter().any(|b| b.table == name && b.status.is_active());
                if !active {
                    let id = crate::backfill::state::create(&sql, &pg.slot, &name, None, crate::backfill::DEFAULT_CHUNK_SIZE, None, reason)
                        .await?;
                    info!(table = %name, backfill = id, reason, "table backfilled while streaming");
                }
            }
            let version = current_lsn(&sql).await?;
            snapshot::mark_tables(&sql, &pg.slot, &added, SnapshotStatus::Done, version).await?;
            Ok(Prepared { start, snapshot: None, recreated: false })
        }
        None => {
            let mut repl = ReplicationClient::connect(opts).await?;
            let action = if snapshots { SnapshotAction::Export } else { SnapshotAction::NoExport };
            if snapshots {
                // Recorded before the slot exists: a crash from here on is
                // seen as an interrupted initial snapshot.
                snapshot::mark_tables(&sql, &pg.slot, &tables, SnapshotStatus::InitialRunning, Lsn::ZERO).await?;
            }
            let failover = pg.failover_slot && !standby;
            let created = create_slot(&mut repl, &sql, &pg.slot, action, failover, standby).await?;
            let failover = failover && repl.server_major().is_some_and(|m| m >= 17);
            info!(slot = %pg.slot, consistent_point = %created.consistent_point, failover, "replication slot created");
            if !snapshots {
                return Ok(Prepared { start: created.consistent_point, snapshot: None, recreated: false });
            }
            snapshot::mark_tables(&sql, &pg.slot, &tables, SnapshotStatus::InitialRunning, created.consistent_point).await?;
            Ok(Prepared {
                start: created.consistent_point,
                snapshot: Some(SnapshotPlan {
                    tables,
                    version: created.consistent_point,
                    snapshot_name: created.snapshot_name,
                    exporter: Some(repl),
                    running_state: SnapshotStatus::InitialRunning,
                }),
                recreated: false,
            })
        }
    }
}

/// Creates the slot. On a standby, creation waits for the primary to log
/// its running transactions (the bgwriter does every 15 s, and only while
/// the primary writes WAL), so the primary is asked for that record
/// (`pg_log_standby_snapshot()`) every second until the slot exists.
async fn create_slot(
    repl: &mut ReplicationClient,
    primary: &tokio_postgres::Client,
    slot: &str,
    action: SnapshotAction,
    failover: bool,
    standby: bool,
) -> Result<pgfanout_postgres::replication::CreatedSlot, SourceError> {
    let created = repl.create_logical_slot_with(slot, action, failover);
    if !standby {
        return created.await;
    }
    let nudge = async {
        loop {
            if let Err(e) = primary.execute("SELECT pg_log_standby_snapshot()", &[]).await {
                warn!(error = %e, "cannot ask the primary to log its running transactions (pg_log_standby_snapshot); the standby's slot waits for the primary's next one");
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    tokio::select! {
        created = created => created,
        _ = nudge => unreachable!("the nudge never ends"),
    }
}

/// On PostgreSQL 17+, makes an existing slot a failover slot if it is not
/// one (a slot created before pgfanout asked for it, or by hand). Best
/// effort: a failure is logged, and streaming goes on without it.
async fn ensure_failover_slot(opts: &PgConnectOptions, sql: &tokio_postgres::Client, slot: &str) {
    let Ok(row) = sql.query_one("SELECT current_setting('server_version_num')::int", &[]).await else { return };
    if row.try_get::<_, i32>(0).unwrap_or(0) < 170_000 {
        return;
    }
    let failover = sql.query_opt("SELECT failover FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await;
    if !matches!(failover, Ok(Some(ref r)) if !r.try_get::<_, bool>(0).unwrap_or(true)) {
        return;
    }
    let altered = async {
        let mut repl = ReplicationClient::connect(opts).await?;
        repl.make_failover_slot(slot).await
    };
    match altered.await {
        Ok(()) => info!(slot = %slot, "the slot is now a failover slot (a standby with sync_replication_slots = on keeps a copy)"),
        Err(e) => {
            warn!(slot = %slot, error = %e, "cannot make the slot a failover slot; set source.postgres.failover_slot: false to stop trying")
        }
    }
}

/// Whether pgfanout recorded work for `slot` before (snapshot state or
/// backfills): then a missing slot was dropped, not never created.
async fn streamed_before(sql: &tokio_postgres::Client, slot: &str) -> Result<bool, SourceError> {
    let row = sql
        .query_one(
            "SELECT (to_regclass('pgfanout.snapshot_state') IS NOT NULL AND EXISTS (SELECT 1 FROM pgfanout.snapshot_state s WHERE s.slot = $1 AND s.status = $2)) \
             OR (to_regclass('pgfanout.backfills') IS NOT NULL AND EXISTS (SELECT 1 FROM pgfanout.backfills b WHERE b.slot = $1))",
            &[&slot, &SnapshotStatus::Done],
        )
        .await;
    match row {
        Ok(r) => Ok(r.try_get(0).unwrap_or(false)),
        // The tables do not exist yet (first start): nothing streamed.
        Err(_) => Ok(false),
    }
}

/// `on_slot_lost`: `fail` says what happened and how to recover;
/// `recreate` makes a new slot and backfills every table.
async fn recover_lost_slot(
    opts: &PgConnectOptions,
    here: &tokio_postgres::Client,
    sql: &tokio_postgres::Client,
    pg: &PostgresSourceConfig,
    tables: &[TableName],
    exists: bool,
    standby: bool,
) -> Result<Prepared, SourceError> {
    let slot_name = &pg.slot;
    let what = if exists {
        format!(
            "replication slot {slot_name:?} was invalidated (wal_status lost: the WAL it needed was removed, see max_slot_wal_keep_size)"
        )
    } else {
        format!("replication slot {slot_name:?} was dropped while pgfanout was stopped (pgfanout streamed from it before)")
    };
    if pg.on_slot_lost == OnSlotLost::Fail {
        let drop = if exists { format!("SELECT pg_drop_replication_slot('{slot_name}'); ") } else { String::new() };
        return Err(SourceError::permanent(format!(
            "{what}: the changes made since are lost to it. Set source.postgres.on_slot_lost: recreate to let pgfanout create a new slot \
             and backfill every table, or recover by hand: {drop}SELECT pg_create_logical_replication_slot('{slot_name}', 'pgoutput'); \
             then start pgfanout and run pgfanout backfill -c FILE --table T for each table"
        )));
    }
    warn!("{what}; on_slot_lost: recreate: creating a new slot and backfilling every table");
    if exists {
        here.execute("SELECT pg_drop_replication_slot($1)", &[slot_name]).await?;
    }
    let mut repl = ReplicationClient::connect(opts).await?;
    let created = create_slot(&mut repl, sql, slot_name, SnapshotAction::NoExport, pg.failover_slot && !standby, standby).await?;
    drop(repl);
    crate::backfill::state::ensure(sql).await?;
    // Backfills of the lost slot's run are moot: the new ones cover every table.
    sql.execute(
        "UPDATE pgfanout.backfills SET status = $2, error = 'slot recreated', updated_at = now() \
         WHERE slot = $1 AND status IN ($3, $4, $5)",
        &[&slot_name, &BackfillStatus::Cancelled, &BackfillStatus::ACTIVE[0], &BackfillStatus::ACTIVE[1], &BackfillStatus::ACTIVE[2]],
    )
    .await?;
    for t in tables {
        crate::backfill::state::create(sql, slot_name, &t.to_string(), None, crate::backfill::DEFAULT_CHUNK_SIZE, None, RECREATED).await?;
    }
    if pg.snapshot == SnapshotMode::Initial {
        snapshot::ensure_state_table(sql).await?;
        snapshot::mark_tables(sql, slot_name, tables, SnapshotStatus::Done, created.consistent_point).await?;
    }
    metrics::counter!(crate::metrics::SLOT_RECREATED_TOTAL).increment(1);
    info!(slot = %slot_name, consistent_point = %created.consistent_point, tables = tables.len(), "replication slot recreated; every table is backfilled while streaming");
    Ok(Prepared { start: created.consistent_point, snapshot: None, recreated: true })
}

/// The `reason` of the backfills that replace an interrupted initial snapshot.
pub const INTERRUPTED: &str = "initial snapshot interrupted";

/// The `reason` of the backfills a recreated slot starts.
pub const RECREATED: &str = "slot recreated";

async fn current_lsn(sql: &tokio_postgres::Client) -> Result<Lsn, SourceError> {
    let text: String = sql.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await?.get(0);
    text.parse().map_err(|e| SourceError::permanent(format!("unexpected LSN from the server: {e}")))
}

/// Adds tables the publication lacks (unless it publishes all tables).
async fn add_to_publication(sql: &tokio_postgres::Client, publication: &str, tables: &[TableName]) -> Result<(), SourceError> {
    let all: bool = sql.query_one("SELECT puballtables FROM pg_publication WHERE pubname = $1", &[&publication]).await?.get(0);
    if all {
        return Ok(());
    }
    let rows = sql.query("SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1", &[&publication]).await?;
    let have: HashSet<TableName> = rows.iter().map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1))).collect();
    let missing: Vec<&TableName> = tables.iter().filter(|t| !have.contains(*t)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.iter().map(|t| t.quoted()).collect::<Vec<_>>().join(", ");
    sql.batch_execute(&format!("ALTER PUBLICATION {} ADD TABLE {list}", quote_ident(publication))).await.map_err(|e| {
        SourceError::permanent(format!(
            "cannot add {list} to publication {publication}: {}; run ALTER PUBLICATION {publication} ADD TABLE {list} as the tables' owner",
            SourceError::from(e)
        ))
    })?;
    info!(publication = %publication, tables = %list, "tables added to the publication");
    Ok(())
}
