//! Partitions attached to a published partitioned table.
//!
//! Rows a table held before it was `ATTACH PARTITION`ed to a published
//! root are in no WAL the slot reads: no server streams them. This task
//! watches the leaf partitions of the published partitioned tables; when
//! one appears holding rows, it requests a backfill of its root (an empty
//! new partition, the daily `CREATE TABLE ... PARTITION OF` kind, needs
//! none).
//!
//! PostgreSQL 14 needs more. Its pgoutput remembers, per table and for the
//! life of the walsender, whether the table is published; a table whose
//! changes the walsender decoded before it was attached (created, loaded,
//! then attached: the usual way) stays "not published" after the attach,
//! so its changes never reach pgfanout until the replication connection is
//! made again. PostgreSQL 15 forgets the answer when the table changes. On
//! 14 a new partition therefore also makes the reader reconnect (a new
//! walsender asks again), and the backfill brings what the old one skipped
//! (tests/backfill.rs shows both).
//!
//! The leaves seen are kept in `pgfanout.partition_leaves` (per slot), so
//! that a partition attached while pgfanout was stopped is noticed at the
//! next start the same way: a root the table knows is compared with what
//! it recorded; a root it does not know yet (the first start, a table
//! newly published) is only recorded (the snapshot or the table's own
//! backfill covers it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use pgfanout_postgres::conn::{connect_sql, PgConnectOptions};
use pgfanout_sdk::Lsn;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::backfill::state::{self, SignalKind};

/// How often the partitions are listed.
const WATCH_EVERY: Duration = Duration::from_secs(5);

/// Every (root, leaf) of the partitioned tables `publication` publishes,
/// as `schema.table` names.
async fn leaves(sql: &tokio_postgres::Client, publication: &str) -> Result<BTreeMap<String, BTreeSet<u32>>, tokio_postgres::Error> {
    let rows = sql
        .query(
            "SELECT n.nspname || '.' || r.relname, t.relid::oid
             FROM pg_publication pb
             JOIN pg_class r ON r.relkind = 'p' AND NOT r.relispartition
               AND (pb.puballtables OR EXISTS (SELECT 1 FROM pg_publication_rel pr WHERE pr.prpubid = pb.oid AND pr.prrelid = r.oid))
             JOIN pg_namespace n ON n.oid = r.relnamespace
             CROSS JOIN LATERAL pg_partition_tree(r.oid) t
             WHERE pb.pubname = $1 AND t.isleaf",
            &[&publication],
        )
        .await?;
    let mut out: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for r in rows {
        out.entry(r.try_get(0)?).or_default().insert(r.try_get(1)?);
    }
    Ok(out)
}

/// The leaves recorded for `slot` (empty when nothing was recorded yet).
async fn recorded(sql: &tokio_postgres::Client, slot: &str) -> Result<BTreeMap<String, BTreeSet<u32>>, pgfanout_postgres::SourceError> {
    pgfanout_postgres::schema::migrate(sql).await?;
    let rows = sql.query("SELECT root, leaf FROM pgfanout.partition_leaves WHERE slot = $1", &[&slot]).await?;
    let mut out: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for r in rows {
        out.entry(r.try_get(0)?).or_default().insert(r.try_get(1)?);
    }
    Ok(out)
}

/// Records `now` as the leaves of `slot`'s published partitioned tables.
async fn record(sql: &mut tokio_postgres::Client, slot: &str, now: &BTreeMap<String, BTreeSet<u32>>) -> Result<(), tokio_postgres::Error> {
    let tx = sql.transaction().await?;
    tx.execute("DELETE FROM pgfanout.partition_leaves WHERE slot = $1", &[&slot]).await?;
    for (root, leaves) in now {
        for leaf in leaves {
            tx.execute("INSERT INTO pgfanout.partition_leaves (slot, root, leaf) VALUES ($1, $2, $3)", &[&slot, root, leaf]).await?;
        }
    }
    tx.commit().await
}

/// Watches until shutdown. `reconnect` is signalled when the reader must
/// reconnect (PostgreSQL 14).
pub fn spawn(
    opts: PgConnectOptions,
    slot: String,
    publication: String,
    reconnect: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client: Option<tokio_postgres::Client> = None;
        let mut known: Option<BTreeMap<String, BTreeSet<u32>>> = None;
        let mut reconnects = false;
        // The leaves were recorded once in this run.
        let mut saved = false;
        // PostgreSQL 14: reconnect once the slot has confirmed this position.
        let mut reconnect_after: Option<Lsn> = None;
        loop {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                // The primary when decoding on a standby: the leaves are
                // recorded in the pgfanout schema.
                client = connect_sql(opts.writer()).await.ok();
                if let Some(sql) = &client {
                    let version = sql.query_one("SHOW server_version_num", &[]).await.ok().and_then(|r| r.try_get::<_, String>(0).ok());
                    reconnects = version.and_then(|v| v.parse::<u32>().ok()).is_some_and(|v| v < 150_000);
                }
            }
            if let Some(sql) = &mut client {
                match leaves(sql, &publication).await {
                    Ok(now) => {
                        if known.is_none() {
                            // The first listing of this run: against what
                            // the last run recorded, for the roots it knew.
                            match recorded(sql, &slot).await {
                                Ok(before) => {
                                    let mut before = before;
                                    for (root, leaves) in &now {
                                        before.entry(root.clone()).or_insert_with(|| leaves.clone());
                                    }
                                    known = Some(before);
                                }
                                Err(e) => {
                                    warn!(error = %e, "cannot read pgfanout.partition_leaves: partitions attached while pgfanout was stopped are not noticed")
                                }
                            }
                        }
                        if let Some(before) = &known {
                            let mut grown = false;
                            for (root, leaves) in &now {
                                let new: Vec<u32> =
                                    leaves.iter().filter(|l| before.get(root).is_none_or(|b| !b.contains(l))).copied().collect();
                                if !new.is_empty() {
                                    grown = true;
                                    on_new_partitions(sql, &slot, root, &new).await;
                                }
                            }
                            if grown && reconnects {
                                // Once the slot is past the attach: a new
                                // walsender that decodes the table's
                                // pre-attach writes again would cache it
                                // as unpublished again (after a restart,
                                // the reader starts before the attach).
                                match sql.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await {
                                    Ok(row) => reconnect_after = row.try_get::<_, String>(0).ok().and_then(|s| s.parse().ok()),
                                    Err(_) => reconnect_after = Some(Lsn::ZERO),
                                }
                            }
                        }
                        if !saved || known.as_ref() != Some(&now) {
                            // Tried once per change of the set (a role
                            // without CREATE on the database: said once).
                            if let Err(e) = record(sql, &slot, &now).await {
                                if !saved {
                                    warn!(error = %e, "cannot record the published partitions in pgfanout.partition_leaves: partitions attached while pgfanout is stopped are not noticed");
                                }
                            }
                            saved = true;
                        }
                        known = Some(now);
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot list the published partitions (PostgreSQL 14: attached partitions are not detected)")
                    }
                }
            }
            if let (Some(at), Some(sql)) = (reconnect_after, &client) {
                let confirmed = sql
                    .query_opt("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| r.try_get::<_, Option<String>>(0).ok().flatten())
                    .and_then(|s| s.parse::<Lsn>().ok());
                if confirmed.is_none_or(|c| c >= at) {
                    info!("PostgreSQL 14 streams a new partition only to a new connection: reconnecting");
                    reconnect.notify_one();
                    reconnect_after = None;
                }
            }
            let every = if reconnect_after.is_some() { Duration::from_millis(500) } else { WATCH_EVERY };
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
        }
    })
}

/// New leaves `new` of `root`: a backfill of the root when one of them
/// holds rows (attached with data, or written before the reconnect). An
/// empty new partition (`CREATE TABLE ... PARTITION OF`, the daily kind)
/// needs only the reconnect.
async fn on_new_partitions(sql: &tokio_postgres::Client, slot: &str, root: &str, new: &[u32]) {
    let mut with_rows = false;
    for oid in new {
        let query = sql.query_one("SELECT format('SELECT EXISTS (SELECT 1 FROM %s)', $1::oid::regclass)", &[oid]).await;
        let exists = match query.and_then(|r| r.try_get::<_, String>(0)) {
            Ok(q) => sql.query_one(q.as_str(), &[]).await.and_then(|r| r.try_get::<_, bool>(0)),
            Err(e) => Err(e),
        };
        // When it cannot be told, backfill: the safe side.
        with_rows |= exists.unwrap_or(true);
    }
    if !with_rows {
        info!(table = %root, partitions = new.len(), "a new empty partition of a published table");
        return;
    }
    let data = serde_json::json!({ "table": root, "slot": slot, "reason": "a partition with rows was attached" });
    match state::signal(sql, SignalKind::Backfill, &data).await {
        Ok(id) => info!(table = %root, signal = id, "a partition with rows was attached to a published table; the table is backfilled"),
        Err(e) => {
            warn!(table = %root, error = %e, "a partition with rows was attached to a published table but a backfill could not be requested; run pgfanout backfill --table {root}")
        }
    }
}
