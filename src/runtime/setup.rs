//! Start-up: server checks, publication and slot, with retries for
//! transient failures and one clear message for permanent ones.

use std::time::Duration;

use pgfanout_postgres::conn::{connect_sql, PgConnectOptions, TlsFiles};
use pgfanout_postgres::replication::{ReplicationClient, SnapshotAction};
use pgfanout_postgres::{slot, SourceError};
use pgfanout_sdk::Lsn;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::PostgresSourceConfig;
use crate::pipeline::Router;
use crate::runtime::backoff::Backoff;

/// Connection options from `source.postgres`.
pub fn connect_options(pg: &PostgresSourceConfig) -> Result<PgConnectOptions, SourceError> {
    let tls = TlsFiles { ca_file: pg.tls.ca_file.clone(), cert_file: pg.tls.cert_file.clone(), key_file: pg.tls.key_file.clone() };
    PgConnectOptions::from_url(&pg.url, tls)
}

/// Checks the server, creates the publication and the slot when missing and
/// returns the slot's confirmed position. Retries transient errors until
/// shutdown (then `Ok(None)`).
pub async fn prepare_source(
    opts: &PgConnectOptions,
    pg: &PostgresSourceConfig,
    router: &Router,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Option<Lsn>, SourceError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        match prepare_once(opts, pg, router).await {
            Ok(lsn) => return Ok(Some(lsn)),
            Err(e) if e.is_retriable() => {
                let delay = backoff.next_delay();
                warn!(server = %opts.redacted(), error = %e, retry_in = ?delay, "cannot prepare the source; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return Ok(None),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

async fn prepare_once(opts: &PgConnectOptions, pg: &PostgresSourceConfig, router: &Router) -> Result<Lsn, SourceError> {
    let sql = connect_sql(opts).await?;
    slot::check_server(&sql).await?;
    let tables = slot::resolve_tables(&sql, &router.table_patterns()).await?;
    let problems = slot::replica_identity_problems(&sql, &tables).await?;
    if !problems.is_empty() {
        return Err(SourceError::permanent(problems.join("; ")));
    }
    let published = slot::ensure_publication(&sql, &pg.publication, &tables).await?;
    info!(publication = %pg.publication, tables = published.len(), "publication ready");
    match slot::slot_info(&sql, &pg.slot).await? {
        Some(info) => {
            slot::check_slot(&pg.slot, &info, &opts.dbname)?;
            let lsn = info.confirmed_flush_lsn.unwrap_or_default();
            info!(slot = %pg.slot, confirmed_flush_lsn = %lsn, "resuming from existing slot");
            Ok(lsn)
        }
        None => {
            let mut repl = ReplicationClient::connect(opts).await?;
            let created = repl.create_logical_slot(&pg.slot, SnapshotAction::NoExport).await?;
            info!(slot = %pg.slot, consistent_point = %created.consistent_point, "replication slot created");
            Ok(created.consistent_point)
        }
    }
}
