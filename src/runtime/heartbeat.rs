//! The heartbeat: a non-transactional logical message emitted every
//! `source.postgres.heartbeat_interval`, so a slot whose tables are quiet
//! still has a position to confirm. Without it, a database busy with other
//! tables keeps WAL for this slot until one of its tables changes.

use std::time::Duration;

use pgfanout_postgres::conn::{connect_sql, PgConnectOptions};
use tracing::debug;

/// Aborts the heartbeat task when the streaming session ends.
pub struct HeartbeatGuard(pub Option<tokio::task::JoinHandle<()>>);

impl Drop for HeartbeatGuard {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// Emits `pg_logical_emit_message(false, 'pgfanout_heartbeat', '')` every
/// `every`, reconnecting as needed. The message reaches this slot between
/// transactions, so its position can be confirmed when nothing is in flight.
pub fn spawn(opts: PgConnectOptions, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = None;
        loop {
            tokio::time::sleep(every).await;
            if client.is_none() {
                client = connect_sql(opts.writer()).await.ok();
            }
            if let Some(c) = &client {
                if let Err(e) = c.batch_execute("SELECT pg_logical_emit_message(false, 'pgfanout_heartbeat', '')").await {
                    debug!(error = %e, "heartbeat failed");
                    client = None;
                }
            }
        }
    })
}
