//! The Neo4j sink: writes batches as `UNWIND $rows` statements inside one
//! explicit transaction per `write`.
//!
//! Why one transaction per batch: the batch is durable exactly when COMMIT
//! succeeds, which is what lets the runtime move the flush position; a
//! failure anywhere rolls everything back so a retry never sees half a batch.
//! Consecutive records of the same route and kind of write (upsert, delete)
//! share one statement; statements run in record order, so per-key order
//! holds within and across batches. A statement error that is not transient
//! (a record the server refuses) rolls back and the batch is replayed record
//! by record, each in its own transaction, so only the failing records are
//! rejected (and dead-lettered by the runtime).
//!
//! Pipelining (`in_flight_batches`, default 2): `submit` encodes a batch on
//! the worker while the batch before it is being written; each batch's
//! transaction runs in a task of its own that starts only once the one
//! before it has committed, so transactions still run one at a time, in
//! order. A batch that fails stops the chain: every batch behind it reports
//! itself failed without running, and the next `submit` is refused, which
//! makes the runtime finish the batches in flight (writing the failed ones
//! again, in order) before it writes anything newer. No transaction of a
//! later batch can run before an earlier one is durable, so a delete never
//! overtakes the upsert it follows (the version guard alone would let a
//! replayed older upsert bring a deleted node back).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use neo4rs::{query, BoltList, BoltType, ConfigBuilder, Graph, Query};
use pgfanout_sdk::{BatchOutcome, Change, InFlight, Op, PipelineStop, Rejected, Sink, SinkError, SinkRecord};
use tokio::sync::oneshot;
use tracing::{debug, info};

use crate::config::{CypherMapping, Neo4jMapping, Neo4jSinkConfig, NodeMapping, RelMapping};
use crate::cypher;
use crate::encode;
use crate::error::Neo4jSinkError;
use crate::ownership;

/// Connects to the configured server (no query run yet).
pub(crate) async fn open_graph(cfg: &Neo4jSinkConfig) -> Result<Graph, Neo4jSinkError> {
    let mut builder = ConfigBuilder::new()
        .uri(cfg.uri.as_str())
        .user(cfg.user.as_str())
        .password(cfg.password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default())
        .fetch_size(cfg.fetch_size)
        .max_connections(cfg.max_connections);
    if let Some(db) = &cfg.database {
        builder = builder.db(db.as_str());
    }
    if let (true, Some(ca)) = (cfg.is_tls(), &cfg.tls.ca_file) {
        builder = builder.with_client_certificate(ca);
    }
    let config = builder.build().map_err(Neo4jSinkError::Config)?;
    Graph::connect(config).await.map_err(|e| Neo4jSinkError::bolt("connect", e))
}

/// A route's mapping with its statements prepared once.
enum Route {
    Node { mapping: NodeMapping, upsert: Arc<str>, delete: Arc<str>, truncate: Arc<str> },
    Rel { mapping: RelMapping, upsert: Arc<str>, delete: Arc<str>, truncate: Arc<str> },
    Cypher(CypherMapping),
}

/// What one record asks of the graph.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Upsert,
    Delete,
    Truncate,
}

fn kind(op: Op) -> Kind {
    match op {
        Op::Insert | Op::Update | Op::Read | Op::Message => Kind::Upsert,
        Op::Delete => Kind::Delete,
        Op::Truncate => Kind::Truncate,
    }
}

/// One statement of a batch and the batch indices it writes.
struct Statement {
    text: Arc<str>,
    /// `Some` for `UNWIND $rows` statements.
    rows: Option<Vec<BoltType>>,
    /// Named parameters for single-record statements.
    params: Vec<(&'static str, BoltType)>,
    records: Vec<usize>,
    /// Identities of the rows in `rows` (a repeated identity starts a new
    /// statement, so no statement touches the same node or relationship
    /// twice: its clauses run over every row before the next clause, so a
    /// second row would not see the first one's write, e.g. a key change
    /// right after the insert it moves).
    seen: HashSet<String>,
    route: usize,
    kind: Kind,
}

impl Statement {
    /// The statement as a query, its parameters moved (not copied) into it.
    fn into_query(self) -> Query {
        let mut q = query(&self.text);
        if let Some(rows) = self.rows {
            q = q.param("rows", BoltType::List(BoltList::from(rows)));
        }
        for (k, v) in self.params {
            q = q.param(k, v);
        }
        q
    }
}

/// Writes changes to a Bolt server (Neo4j 4.4+/5; other Bolt servers that speak openCypher).
pub struct Neo4jSink {
    graph: Graph,
    routes: Vec<Route>,
    max_batch: usize,
    in_flight: usize,
    /// Resolves when the last submitted batch is done: `true` once it
    /// committed. `None`: nothing in flight to wait for.
    last: Option<oneshot::Receiver<bool>>,
    /// Set by a batch in flight that failed (see the module docs).
    stopped: PipelineStop,
    /// Set when a transaction timed out: its connection may be stuck, so
    /// the next write opens a new pool.
    stuck: Arc<AtomicBool>,
    cfg: Neo4jSinkConfig,
}

impl Neo4jSink {
    /// Connects, checks the server answers, and creates an index on every
    /// node key and relationship row key the mappings use (`IF NOT EXISTS`).
    /// `routes[i]` is the mapping of route `i` of the records passed to
    /// `write`. Fails with `Retriable` when the server cannot be reached and
    /// `Permanent` for an invalid configuration or mapping.
    pub async fn connect(cfg: &Neo4jSinkConfig, routes: Vec<Neo4jMapping>) -> Result<Neo4jSink, Neo4jSinkError> {
        if let Some((path, msg)) = cfg.validate().into_iter().next() {
            return Err(Neo4jSinkError::Invalid(format!("neo4j sink: {path}: {msg}")));
        }
        let mut prepared = Vec::with_capacity(routes.len());
        for (i, m) in routes.iter().enumerate() {
            if let Some((path, msg)) = m.validate().into_iter().next() {
                return Err(Neo4jSinkError::Invalid(format!("neo4j mapping of route {i}: {path}: {msg}")));
            }
            prepared.push(prepare(&routes, i));
        }
        let graph = open_graph(cfg).await?;
        let sink = Neo4jSink {
            graph,
            routes: prepared,
            max_batch: cfg.max_batch,
            in_flight: cfg.in_flight_batches.max(1),
            last: None,
            stopped: PipelineStop::default(),
            stuck: Arc::new(AtomicBool::new(false)),
            cfg: cfg.clone(),
        };
        sink.ping().await?;
        if cfg.create_indexes {
            sink.create_indexes().await?;
        }
        info!(uri = %cfg.uri, routes = sink.routes.len(), "neo4j sink connected");
        Ok(sink)
    }

    /// After a timed-out transaction: a new connection pool (the old one,
    /// with the connection that went silent, is dropped).
    async fn reopen_if_stuck(&mut self) -> Result<(), Neo4jSinkError> {
        if self.stuck.swap(false, Ordering::SeqCst) {
            match open_graph(&self.cfg).await {
                Ok(g) => {
                    info!(uri = %self.cfg.uri, "neo4j sink: new connection pool after a timeout");
                    self.graph = g;
                }
                Err(e) => {
                    self.stuck.store(true, Ordering::SeqCst);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), Neo4jSinkError> {
        let mut rows = self.graph.execute(query("RETURN 1 AS one")).await.map_err(|e| Neo4jSinkError::bolt("ping", e))?;
        while rows.next().await.map_err(|e| Neo4jSinkError::bolt("ping", e))?.is_some() {}
        Ok(())
    }

    async fn create_indexes(&self) -> Result<(), Neo4jSinkError> {
        let mut statements = Vec::new();
        for route in &self.routes {
            match route {
                Route::Node { mapping, .. } => statements.push(cypher::node_index(&mapping.label, &mapping.key.keys().collect::<Vec<_>>())),
                Route::Rel { mapping, .. } => {
                    for ep in [&mapping.from, &mapping.to] {
                        statements.push(cypher::node_index(&ep.label, &ep.key.keys().collect::<Vec<_>>()));
                    }
                    statements.push(cypher::rel_index(&mapping.rel_type));
                }
                Route::Cypher(_) => {}
            }
        }
        statements.dedup();
        for s in statements {
            debug!(statement = %s, "creating index");
            self.graph.run(query(&s)).await.map_err(|e| Neo4jSinkError::bolt(format!("creating index ({s})"), e))?;
        }
        Ok(())
    }

    /// Groups the batch into statements. Records that cannot be encoded
    /// (missing key column) are rejected here and never sent.
    fn plan(&self, batch: &[SinkRecord], rejected: &mut Vec<Rejected>) -> Vec<Statement> {
        let mut out: Vec<Statement> = Vec::new();
        for (index, record) in batch.iter().enumerate() {
            let change: &Change = &record.change;
            let Some(route) = self.routes.get(record.route) else {
                rejected.push(Rejected { index, error: format!("no neo4j mapping for route {}", record.route) });
                continue;
            };
            let k = kind(change.op);
            match self.encode(route, k, change) {
                Ok(None) => {}
                Ok(Some(Encoded::Single(text, params))) => out.push(Statement {
                    text,
                    rows: None,
                    params,
                    records: vec![index],
                    seen: HashSet::new(),
                    route: record.route,
                    kind: k,
                }),
                Ok(Some(Encoded::Row(text, row, identity))) => {
                    let fits = out.last().is_some_and(|s| {
                        s.rows.as_ref().is_some_and(|r| r.len() < self.max_batch)
                            && s.route == record.route
                            && s.kind == k
                            && !identity.iter().any(|id| s.seen.contains(id))
                    });
                    if !fits {
                        out.push(Statement {
                            text,
                            rows: Some(Vec::new()),
                            params: Vec::new(),
                            records: Vec::new(),
                            seen: HashSet::new(),
                            route: record.route,
                            kind: k,
                        });
                    }
                    if let Some(s) = out.last_mut() {
                        if let Some(rows) = s.rows.as_mut() {
                            rows.push(row);
                        }
                        s.records.push(index);
                        s.seen.extend(identity);
                    }
                }
                Err(error) => rejected.push(Rejected { index, error }),
            }
        }
        out
    }

    fn encode(&self, route: &Route, k: Kind, change: &Change) -> Result<Option<Encoded>, String> {
        let v = || vec![("v", encode::version(change))];
        Ok(Some(match (route, k) {
            (Route::Node { truncate, .. }, Kind::Truncate) | (Route::Rel { truncate, .. }, Kind::Truncate) => {
                Encoded::Single(truncate.clone(), v())
            }
            (Route::Node { mapping, upsert, delete, .. }, _) => {
                let text = if k == Kind::Upsert { upsert } else { delete };
                let (row, ids) = encode::node_row(mapping, change)?;
                Encoded::Row(text.clone(), row, ids)
            }
            (Route::Rel { mapping, delete, .. }, Kind::Delete) => {
                Encoded::Single(delete.clone(), encode::rel_delete_params(mapping, change)?)
            }
            (Route::Rel { mapping, upsert, .. }, _) => {
                let (row, ids) = encode::rel_row(mapping, change)?;
                Encoded::Row(upsert.clone(), row, ids)
            }
            (Route::Cypher(c), _) => {
                let stmt = match k {
                    Kind::Upsert => &c.on_upsert,
                    Kind::Delete => &c.on_delete,
                    Kind::Truncate => &c.on_truncate,
                };
                let Some(stmt) = stmt else { return Ok(None) };
                let text: Arc<str> = Arc::from(stmt.as_str());
                if k != Kind::Truncate && uses_rows(stmt) {
                    Encoded::Row(text, encode::cypher_row(change), Vec::new())
                } else {
                    Encoded::Single(text, encode::cypher_params(change))
                }
            }
        }))
    }
}

/// [`run_in_txn`] within `timeout`; past it, `stuck` is set (the next
/// write opens a new pool) and the batch fails as retriable.
async fn run_bounded(graph: &Graph, statements: Vec<Statement>, timeout: Duration, stuck: &AtomicBool) -> Result<(), Neo4jSinkError> {
    match tokio::time::timeout(timeout, run_in_txn(graph, statements)).await {
        Ok(outcome) => outcome,
        Err(_) => {
            stuck.store(true, Ordering::SeqCst);
            Err(Neo4jSinkError::TimedOut(timeout))
        }
    }
}

/// Runs statements in one transaction and commits it.
async fn run_in_txn(graph: &Graph, statements: Vec<Statement>) -> Result<(), Neo4jSinkError> {
    if statements.is_empty() {
        return Ok(());
    }
    let mut txn = graph.start_txn().await.map_err(|e| Neo4jSinkError::bolt("begin", e))?;
    for s in statements {
        let records = s.records.len();
        if let Err(e) = txn.run(s.into_query()).await {
            // The pooled connection is RESET when it is recycled, which
            // discards the failed transaction.
            drop(txn);
            return Err(Neo4jSinkError::bolt(format!("statement for {records} record(s)"), e));
        }
    }
    txn.commit().await.map_err(|e| Neo4jSinkError::bolt("commit", e))
}

enum Encoded {
    /// A statement of its own with named parameters.
    Single(Arc<str>, Vec<(&'static str, BoltType)>),
    /// One element of an `UNWIND $rows` statement, with the identities of
    /// the nodes or relationships it touches.
    Row(Arc<str>, BoltType, Vec<String>),
}

fn uses_rows(stmt: &str) -> bool {
    stmt.match_indices("$rows").any(|(i, _)| !stmt[i + 5..].starts_with(|c: char| c.is_alphanumeric() || c == '_'))
}

/// Route `i` of `routes` with its statements (which depend on what the
/// sink's other routes write, see `ownership`).
fn prepare(routes: &[Neo4jMapping], i: usize) -> Route {
    let m = routes[i].clone();
    if let Some(n) = m.node {
        return Route::Node {
            upsert: cypher::node_upsert(&n, &ownership::node_others(routes, i)).into(),
            delete: cypher::node_delete(&n).into(),
            truncate: cypher::node_truncate(&n).into(),
            mapping: n,
        };
    }
    if let Some(r) = m.relationship {
        return Route::Rel {
            upsert: cypher::rel_upsert(&r, ownership::rel_others(routes, i).as_deref()).into(),
            delete: cypher::rel_delete(&r).into(),
            truncate: cypher::rel_truncate(&r).into(),
            mapping: r,
        };
    }
    Route::Cypher(m.cypher.unwrap_or(CypherMapping { on_upsert: None, on_delete: None, on_truncate: None }))
}

impl Sink for Neo4jSink {
    async fn write(&mut self, batch: &[SinkRecord]) -> BatchOutcome {
        self.reopen_if_stuck().await?;
        let mut rejected = Vec::new();
        let statements = self.plan(batch, &mut rejected);
        // A permanent failure of the transaction fails the batch: the
        // runtime then writes its records one by one and dead-letters the
        // ones the server refuses alone (record isolation lives there).
        run_bounded(&self.graph, statements, self.cfg.request_timeout, &self.stuck).await?;
        rejected.sort_by_key(|r| r.index);
        Ok(rejected)
    }

    fn max_in_flight(&self) -> usize {
        self.in_flight
    }

    /// Encodes the batch now; its transaction runs in a task once the batch
    /// before it has committed (see the module docs for failures).
    async fn submit(&mut self, batch: Arc<[SinkRecord]>) -> Result<InFlight, SinkError> {
        if let Some(refused) = self.stopped.refusal("neo4j") {
            // The chain starts afresh at the next submit.
            self.last = None;
            return Err(refused);
        }
        self.reopen_if_stuck().await?;
        let mut rejected = Vec::new();
        let statements = self.plan(&batch, &mut rejected);
        let before = self.last.take();
        let (done, next) = oneshot::channel();
        self.last = Some(next);
        let (graph, stopped, stuck, timeout) = (self.graph.clone(), self.stopped.clone(), self.stuck.clone(), self.cfg.request_timeout);
        let task = tokio::spawn(async move {
            let ready = match before {
                Some(before) => before.await.unwrap_or(false),
                None => true,
            };
            let outcome =
                if ready { run_bounded(&graph, statements, timeout, &stuck).await } else { Err(Neo4jSinkError::EarlierBatchFailed) };
            if outcome.is_err() {
                stopped.set();
            }
            let _ = done.send(outcome.is_ok());
            rejected.sort_by_key(|r| r.index);
            outcome.map(|()| rejected).map_err(SinkError::from)
        });
        Ok(Box::pin(async move { task.await.unwrap_or_else(|e| Err(Neo4jSinkError::Task(e).into())) }))
    }

    async fn check(&mut self) -> Result<(), SinkError> {
        Ok(self.ping().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::uses_rows;

    #[test]
    fn rows_parameter_is_detected_as_a_whole_word() {
        assert!(uses_rows("UNWIND $rows AS row MERGE (n {id: row.after.id})"));
        assert!(!uses_rows("MERGE (n {id: $rowset})"));
        assert!(!uses_rows("MERGE (n:U {id: $after.id})"));
    }
}
