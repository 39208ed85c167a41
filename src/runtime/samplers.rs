//! Gauges read from the source database on their own schedule: the WAL the
//! slot retains (`pgfanout_slot_retained_wal_bytes`) and what the last
//! `pgfanout verify` of each pipeline found (`pgfanout_verify_*`). They run
//! in their own task on their own connection, so a slow catalog query never
//! delays the replication reader.

use std::time::Duration;

use pgfanout_postgres::conn::{connect_sql, PgConnectOptions};
use tokio::sync::watch;

use crate::metrics as m;

/// How often the gauges are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// Sets the retained-WAL gauge from `pg_replication_slots` (best effort).
async fn sample_retained_wal(sql: &tokio_postgres::Client, slot: &str) {
    let query = pgfanout_postgres::slot::slot_info(sql, slot);
    if let Ok(Ok(Some(info))) = tokio::time::timeout(Duration::from_secs(2), query).await {
        if let Some(bytes) = info.retained_bytes {
            metrics::gauge!(m::SLOT_RETAINED_WAL_BYTES).set(bytes as f64);
        }
    }
}

/// Exports what the last `pgfanout verify` of each pipeline found (it
/// records that in `pgfanout.verify_results`, see `crate::verify`).
async fn sample_verify_results(sql: &tokio_postgres::Client) {
    let exists = sql.query_one("SELECT to_regclass('pgfanout.verify_results') IS NOT NULL", &[]);
    if !matches!(tokio::time::timeout(Duration::from_secs(2), exists).await, Ok(Ok(row)) if row.try_get::<_, bool>(0).unwrap_or(false)) {
        return;
    }
    let query = sql.query("SELECT pipeline, divergent::float8, extract(epoch FROM finished_at)::float8 FROM pgfanout.verify_results", &[]);
    if let Ok(Ok(rows)) = tokio::time::timeout(Duration::from_secs(2), query).await {
        for row in rows {
            let (Ok(pipeline), Ok(divergent), Ok(at)) = (row.try_get::<_, String>(0), row.try_get::<_, f64>(1), row.try_get::<_, f64>(2))
            else {
                continue;
            };
            metrics::gauge!(m::VERIFY_DIVERGENT_KEYS, m::LABEL_PIPELINE => pipeline.clone()).set(divergent);
            metrics::gauge!(m::VERIFY_LAST_RUN_TIMESTAMP_SECONDS, m::LABEL_PIPELINE => pipeline).set(at);
        }
    }
}

/// Samples every [`SAMPLE_EVERY`] until shutdown, connecting (again) as
/// needed; errors only leave the gauges as they were.
pub fn spawn(opts: PgConnectOptions, slot: String, mut shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = None;
        loop {
            if client.as_ref().is_none_or(|c: &tokio_postgres::Client| c.is_closed()) {
                client = connect_sql(&opts).await.ok();
            }
            if let Some(sql) = &client {
                sample_retained_wal(sql, &slot).await;
                sample_verify_results(sql).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
        }
    })
}
