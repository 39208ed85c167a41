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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use pgfanout_postgres::conn::{connect_sql, PgConnectOptions};
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
        loop {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = connect_sql(&opts).await.ok();
                if let Some(sql) = &client {
                    let version = sql.query_one("SHOW server_version_num", &[]).await.ok().and_then(|r| r.try_get::<_, String>(0).ok());
                    reconnects = version.and_then(|v| v.parse::<u32>().ok()).is_some_and(|v| v < 150_000);
                }
            }
            if let Some(sql) = &client {
                match leaves(sql, &publication).await {
                    Ok(now) => {
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
                                info!("PostgreSQL 14 streams a new partition only to a new connection: reconnecting");
                                reconnect.notify_one();
                            }
                        }
                        known = Some(now);
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot list the published partitions (PostgreSQL 14: attached partitions are not detected)")
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(WATCH_EVERY) => {}
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
