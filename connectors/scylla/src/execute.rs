//! Running planned statements against the cluster, and retrying them.
//!
//! Every statement carries its own `USING TIMESTAMP`, so the store's result
//! does not depend on the order statements run in: a batch's partition runs
//! go `concurrency` requests at a time (shared by all batches in flight),
//! each run one statement or one unlogged batch. A request that fails
//! retriably ([`ScyllaError::is_retriable`]: unavailable, timeouts,
//! overloaded, connection lost) is sent again, same statements and
//! timestamps (idempotent), with backoff, until the cluster takes it. A
//! request the cluster refuses for its values rejects its records: in an
//! unlogged batch the statements are then run one by one to find the
//! records at fault.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use pgfanout_sdk::settings::Backoff;
use pgfanout_sdk::Rejected;
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;
use tokio::sync::Semaphore;
use tracing::warn;

use crate::error::ScyllaError;
use crate::plan::Stmt;

/// What the statements of a batch in flight need: the session, the
/// prepared statements, the shared request permits. Each batch in flight
/// runs on a clone.
#[derive(Clone)]
pub(crate) struct Exec {
    session: Arc<Session>,
    /// Copied on write (a new statement shape, rare) so batches in flight
    /// keep reading theirs.
    prepared: Arc<HashMap<Arc<str>, PreparedStatement>>,
    consistency: Consistency,
    permits: Arc<Semaphore>,
}

impl Exec {
    /// `concurrency` requests in flight at once across all batches.
    pub(crate) fn new(session: Session, consistency: Consistency, concurrency: usize) -> Self {
        Exec { session: Arc::new(session), prepared: Arc::new(HashMap::new()), consistency, permits: Arc::new(Semaphore::new(concurrency)) }
    }

    pub(crate) fn session(&self) -> &Session {
        &self.session
    }

    pub(crate) fn is_prepared(&self, cql: &str) -> bool {
        self.prepared.contains_key(cql)
    }

    /// Prepares `cql` (idempotent, at the sink's consistency) unless it is.
    pub(crate) async fn prepare(&mut self, cql: &Arc<str>) -> Result<(), ScyllaError> {
        if self.prepared.contains_key(cql) {
            return Ok(());
        }
        let mut p = self.session.prepare(&**cql).await?;
        p.set_consistency(self.consistency);
        p.set_is_idempotent(true);
        Arc::make_mut(&mut self.prepared).insert(cql.clone(), p);
        Ok(())
    }

    /// Runs a batch's partition `runs` of `stmts`, at most `lanes` of its
    /// own at once and within the shared permits, each until it goes
    /// through; returns the rejections.
    pub(crate) async fn run_all(&self, stmts: &[Stmt], runs: Vec<Range<usize>>, lanes: usize) -> Vec<Rejected> {
        let mut rejected = Vec::new();
        // Each request future made when its turn comes (the driver's
        // request futures are kilobytes each: making them all up front
        // cost a large allocation and two copies apiece).
        let mut pending = runs.into_iter();
        let mut running = futures_util::stream::FuturesUnordered::new();
        for r in pending.by_ref().take(lanes) {
            running.push(self.run_until_done(&stmts[r]));
        }
        while let Some(r) = running.next().await {
            rejected.extend(r);
            if let Some(r) = pending.next() {
                running.push(self.run_until_done(&stmts[r]));
            }
        }
        rejected
    }

    /// One partition's run, retried (same statements, same timestamps:
    /// idempotent) until the cluster takes it.
    async fn run_until_done(&self, run: &[Stmt]) -> Vec<Rejected> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let outcome = {
                let _permit = self.permits.acquire().await.expect("the semaphore is never closed");
                self.run(run).await
            };
            match outcome {
                Ok(rejected) => return rejected,
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, code = ?e.db_error(), statements = run.len(), retry_in = ?delay, "scylla write failed; retrying it");
                    pgfanout_sdk::health::retrying(&e);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn run_one(&self, s: &Stmt) -> Result<(), ScyllaError> {
        let p = &self.prepared[&s.cql];
        self.session.execute_unpaged(p, &s.values).await?;
        Ok(())
    }

    /// Runs the statements of one partition (one statement, or an unlogged
    /// batch). Returns the rejected records, or a retriable error.
    async fn run(&self, run: &[Stmt]) -> Result<Vec<Rejected>, ScyllaError> {
        let outcome = if run.len() == 1 {
            self.run_one(&run[0]).await
        } else {
            let mut batch = Batch::new(BatchType::Unlogged);
            batch.set_consistency(self.consistency);
            batch.set_is_idempotent(true);
            for s in run {
                batch.append_statement(self.prepared[&s.cql].clone());
            }
            let values: Vec<_> = run.iter().map(|s| &s.values).collect();
            self.session.batch(&batch, values).await.map(|_| ()).map_err(ScyllaError::from)
        };
        let mut rejected = Vec::new();
        match outcome {
            Ok(()) => {}
            Err(e) if e.is_retriable() => return Err(e),
            Err(e) if run.len() == 1 => reject(&mut rejected, &run[0], &e),
            // Find the statements at fault one by one.
            Err(_) => {
                for s in run {
                    match self.run_one(s).await {
                        Ok(()) => {}
                        Err(e) if e.is_retriable() => return Err(e),
                        Err(e) => reject(&mut rejected, s, &e),
                    }
                }
            }
        }
        Ok(rejected)
    }
}

/// The records of `s` are rejected for `e` (the statement, not the
/// cluster's state, is at fault).
fn reject(rejected: &mut Vec<Rejected>, s: &Stmt, e: &ScyllaError) {
    rejected.extend(s.records.iter().map(|&index| Rejected { index, error: format!("scylla: {e}") }));
}
