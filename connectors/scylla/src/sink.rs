//! The running sink: the path of a batch.
//!
//! [`ScyllaSink::submit`] plans the batch ([`Planner`]: statements and
//! their timestamps), prepares the statement shapes it has not seen,
//! keeps the batch's slot counters (from here on its statements run until
//! they go through, and the next batch counts on them), cuts the statements
//! into partition runs, and returns the future that runs them ([`Exec`]).
//! Errors are [`ScyllaError`]s inside the crate and become the runtime's
//! `SinkError` here, at the boundary.

use std::collections::HashMap;
use std::sync::Arc;

use pgfanout_sdk::{BatchOutcome, InFlight, Rejected, Sink, SinkError, SinkRecord};
use tracing::{debug, info};

use crate::config::{ScyllaMapping, ScyllaSettings};
use crate::error::ScyllaError;
use crate::execute::Exec;
use crate::plan::{partition_runs, Plan, Planner, Stmt};
use crate::route::compile_routes;
use crate::session::{create_schema, open_session};

/// A connected ScyllaDB / Cassandra sink.
///
/// Batches are pipelined ([`Sink::submit`]): a batch is planned (its
/// timestamps fixed) and its statements start while earlier batches still
/// run. Order does not matter to the store (every statement carries its own
/// timestamp), a failed request is retried with the same timestamps until it
/// goes through, and all batches share `concurrency` request permits.
pub struct ScyllaSink {
    /// Session, prepared statements, consistency and request permits; each
    /// batch in flight runs on a clone.
    exec: Exec,
    /// Routes, statement texts and the slot counters of the current
    /// transaction (carried across batches: a transaction may span several).
    planner: Planner,
    /// Requests in flight at once for one batch (`concurrency`).
    lanes: usize,
    /// Batches in flight at once (`in_flight_batches`).
    in_flight: usize,
    /// Statements of one partition per unlogged batch (`batch_statements`).
    batch_statements: usize,
}

impl ScyllaSink {
    /// Connects, creates the schema when `create: true`, and checks every
    /// mapped table and column (a missing one is permanent, with the fix).
    pub async fn connect(s: &ScyllaSettings, maps: &[ScyllaMapping]) -> Result<ScyllaSink, ScyllaError> {
        if let Some((path, rule)) = s.validate().into_iter().next() {
            return Err(ScyllaError::Settings { path, rule });
        }
        let session = open_session(s).await?;
        if s.create {
            create_schema(&session, s, maps).await?;
        }
        let (routes, problems) = compile_routes(&session, s, maps);
        if !problems.is_empty() {
            return Err(ScyllaError::Schema(problems).during("sink"));
        }
        info!(nodes = ?s.nodes, keyspace = %s.keyspace, routes = routes.len(), "scylla sink connected");
        Ok(ScyllaSink {
            exec: Exec::new(session, s.consistency.to_driver(), s.concurrency.max(1)),
            planner: Planner::new(routes),
            lanes: s.concurrency.max(1),
            in_flight: s.in_flight_batches.max(1),
            batch_statements: s.batch_statements,
        })
    }

    /// Prepares every statement shape of `stmts` not prepared yet. A shape
    /// the cluster refuses rejects the records of its statements; a
    /// retriable failure fails the whole start (nothing has run yet).
    async fn prepare_all(&mut self, stmts: &[Stmt]) -> Result<HashMap<Arc<str>, ScyllaError>, ScyllaError> {
        let mut unprepared: Vec<&Arc<str>> = Vec::new();
        for s in stmts {
            if !self.exec.is_prepared(&s.cql) && !unprepared.contains(&&s.cql) {
                unprepared.push(&s.cql);
            }
        }
        let mut refused = HashMap::new();
        for cql in unprepared {
            match self.exec.prepare(cql).await {
                Ok(()) => {}
                Err(e) if e.is_retriable() => return Err(e.during("prepare")),
                Err(e) => {
                    refused.insert(cql.clone(), e);
                }
            }
        }
        Ok(refused)
    }

    /// Starts a batch: see the module docs.
    async fn start(&mut self, batch: Arc<[SinkRecord]>) -> Result<InFlight, ScyllaError> {
        let Plan { stmts, mut rejected, slots } = self.planner.plan(&batch);
        // Nothing started and no counter kept if this fails: the batch is
        // planned again, to the same timestamps.
        let refused = self.prepare_all(&stmts).await?;
        self.planner.commit(slots);
        let mut runnable: Vec<Stmt> = Vec::with_capacity(stmts.len());
        for s in stmts {
            match refused.get(&s.cql) {
                Some(e) => rejected.extend(s.records.iter().map(|&index| Rejected { index, error: format!("scylla: {}: {e}", s.cql) })),
                None => runnable.push(s),
            }
        }
        let runs = partition_runs(&mut runnable, self.batch_statements);
        let exec = self.exec.clone();
        let lanes = self.lanes;
        let records = batch.len();
        Ok(Box::pin(async move {
            rejected.extend(exec.run_all(&runnable, runs, lanes).await);
            rejected.sort_by_key(|r| r.index);
            rejected.dedup_by_key(|r| r.index);
            debug!(records, statements = runnable.len(), rejected = rejected.len(), "scylla batch written");
            Ok(rejected)
        }))
    }
}

impl Sink for ScyllaSink {
    /// Plans and starts the batch; see the crate docs for the timestamps.
    async fn submit(&mut self, batch: Arc<[SinkRecord]>) -> Result<InFlight, SinkError> {
        Ok(self.start(batch).await?)
    }

    fn max_in_flight(&self) -> usize {
        self.in_flight
    }

    /// Writes one batch alone: started, then awaited.
    async fn write(&mut self, batch: &[SinkRecord]) -> BatchOutcome {
        self.start(batch.into()).await?.await
    }

    async fn check(&mut self) -> Result<(), SinkError> {
        let session = self.exec.session();
        session.query_unpaged("SELECT release_version FROM system.local", ()).await.map_err(|e| ScyllaError::from(e).during("check"))?;
        Ok(())
    }
}
