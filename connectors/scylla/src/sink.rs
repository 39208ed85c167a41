//! The running sink: session, schema lookup, planning a batch into CQL
//! statements with their `USING TIMESTAMP`, and writing them `concurrency`
//! requests at a time (one partition's statements as one unlogged batch).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use futures_util::StreamExt;
use indexmap::IndexMap;
use pgfanout_sdk::settings::Backoff;
use pgfanout_sdk::{BatchOutcome, Change, Check, InFlight, Lsn, Op, Rejected, Row, Sink, SinkError, SinkRecord, Value};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, PrepareError, RequestAttemptError};
use scylla::frame::response::result::{ColumnType, NativeType};
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlDate, CqlTimestamp, CqlValue};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::config::{Meta, Mode, Order, ScyllaMapping, ScyllaSettings, Source};
use crate::types::to_cql;

/// Timestamps below a transaction's commit LSN that one row may use for
/// the writes of that transaction (see the crate docs).
pub const SLOTS: i64 = 16;

pub(crate) struct Col {
    pub(crate) name: String,
    source: Source,
    typ: ColumnType<'static>,
}

pub(crate) struct Route {
    pub(crate) mode: Mode,
    ops: Vec<Op>,
    ttl: Option<u64>,
    pub(crate) qualified: String,
    pub(crate) cols: Vec<Col>,
    /// Indexes into `cols` of the primary key (partition key first).
    pub(crate) pk: Vec<usize>,
    /// How many of `pk` are the partition key.
    partition_len: usize,
}

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
    routes: Vec<Route>,
    lanes: usize,
    in_flight: usize,
    batch_statements: usize,
    /// Per-row write counters of the current transaction, carried across
    /// batches (a transaction may span several).
    slots: SlotTable,
    /// CQL text per statement shape (`[route, 0]` for its delete, `[route,
    /// 1, written columns...]` for an insert), so a statement's text is built
    /// once; looked up through `shape` without allocating.
    cql: HashMap<Vec<usize>, Arc<str>>,
    shape: Vec<usize>,
}

/// Buckets of [`SlotTable`]: 1 MiB of counters.
const SLOT_BUCKETS: usize = 1 << 20;

/// How many times each row was written in the current transaction, for the
/// `USING TIMESTAMP` slots (crate docs), in bounded memory: a counter per
/// bucket of a hash of (route, primary key). Rows that share a bucket share
/// a counter, which only makes their slots climb faster: each row's
/// successive writes still get strictly increasing slots until the counter
/// reaches [`SLOTS`] (the documented limit, reached sooner by a transaction
/// that writes millions of rows several times each).
struct SlotTable {
    lsn: Lsn,
    counters: Vec<u8>,
    /// Buckets set in this transaction (cleared when the next begins),
    /// until there are too many to list: then the whole table is cleared.
    touched: Vec<u32>,
    overflow: bool,
}

impl SlotTable {
    fn new() -> Self {
        SlotTable { lsn: Lsn(u64::MAX), counters: Vec::new(), touched: Vec::new(), overflow: false }
    }

    fn bucket(hash: u64) -> u32 {
        (hash % SLOT_BUCKETS as u64) as u32
    }

    /// The counter of `bucket` in transaction `lsn` (0 in a new transaction).
    fn get(&self, lsn: Lsn, bucket: u32) -> u8 {
        if lsn != self.lsn || self.counters.is_empty() {
            0
        } else {
            self.counters[bucket as usize]
        }
    }

    /// Keeps the counters a successful batch ended with (`lsn` = its last
    /// transaction).
    fn commit(&mut self, lsn: Lsn, updates: HashMap<u32, u8>) {
        if lsn != self.lsn {
            if self.overflow {
                self.counters.iter_mut().for_each(|c| *c = 0);
            } else {
                for &b in &self.touched {
                    self.counters[b as usize] = 0;
                }
            }
            self.touched.clear();
            self.overflow = false;
            self.lsn = lsn;
        }
        if updates.is_empty() {
            return;
        }
        if self.counters.is_empty() {
            self.counters = vec![0; SLOT_BUCKETS];
        }
        for (b, v) in updates {
            if self.counters[b as usize] == 0 && !self.overflow {
                if self.touched.len() >= SLOT_BUCKETS / 8 {
                    self.overflow = true;
                    self.touched = Vec::new();
                } else {
                    self.touched.push(b);
                }
            }
            self.counters[b as usize] = v;
        }
    }
}

/// A primary key as a map key: compared by value, hashed once.
#[derive(Debug, Clone)]
struct PkKey {
    hash: u64,
    pk: Vec<Option<CqlValue>>,
}

impl PartialEq for PkKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.pk == other.pk
    }
}

impl Eq for PkKey {}

impl Hash for PkKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.hash.hash(state);
    }
}

/// Hashes one key value without formatting it (the common key types);
/// others through their debug text.
fn hash_cql(v: &Option<CqlValue>, h: &mut impl Hasher) {
    match v {
        None => 0u8.hash(h),
        Some(CqlValue::Int(i)) => i.hash(h),
        Some(CqlValue::BigInt(i)) => i.hash(h),
        Some(CqlValue::SmallInt(i)) => i.hash(h),
        Some(CqlValue::TinyInt(i)) => i.hash(h),
        Some(CqlValue::Text(t)) | Some(CqlValue::Ascii(t)) => t.hash(h),
        Some(CqlValue::Boolean(b)) => b.hash(h),
        Some(CqlValue::Uuid(u)) => u.hash(h),
        Some(CqlValue::Blob(b)) => b.hash(h),
        Some(CqlValue::Timestamp(t)) => t.0.hash(h),
        Some(CqlValue::Date(d)) => d.0.hash(h),
        Some(other) => format!("{other:?}").hash(h),
    }
}

/// One statement to run: CQL text, bound values, the records it serves,
/// its partition's hash.
struct Stmt {
    records: Vec<usize>,
    cql: Arc<str>,
    values: Vec<Option<CqlValue>>,
    partition: u64,
}

enum Failure {
    Retry(String),
    Record(String),
}

fn classify_attempt(e: &RequestAttemptError) -> Failure {
    match e {
        RequestAttemptError::DbError(db, msg) => match db {
            DbError::Invalid | DbError::SyntaxError | DbError::FunctionFailure { .. } | DbError::AlreadyExists { .. } => {
                Failure::Record(format!("{db:?}: {msg}"))
            }
            _ => Failure::Retry(format!("{db:?}: {msg}")),
        },
        RequestAttemptError::SerializationError(e) => Failure::Record(e.to_string()),
        RequestAttemptError::CqlRequestSerialization(e) => Failure::Record(e.to_string()),
        other => Failure::Retry(other.to_string()),
    }
}

fn classify(e: &ExecutionError) -> Failure {
    match e {
        ExecutionError::BadQuery(b) => Failure::Record(b.to_string()),
        ExecutionError::LastAttemptError(a) => classify_attempt(a),
        ExecutionError::PrepareError(p) => classify_prepare(p),
        other => Failure::Retry(other.to_string()),
    }
}

fn classify_prepare(e: &PrepareError) -> Failure {
    match e {
        PrepareError::AllAttemptsFailed { first_attempt } => classify_attempt(first_attempt),
        other => Failure::Retry(other.to_string()),
    }
}

/// The session for these settings. Bad credentials are permanent (with
/// the fix), an unreachable cluster retriable.
pub(crate) async fn open_session(s: &ScyllaSettings) -> Result<Session, SinkError> {
    if s.tls_enabled() {
        return Err(SinkError::Permanent(
            "scylla sink: `tls` is set, but TLS to ScyllaDB/Cassandra is not built into this version of pgfanout; \
             remove `tls` (use a private network or a TLS tunnel)"
                .into(),
        ));
    }
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &s.local_datacenter {
        policy = policy.prefer_datacenter(dc.clone()).permit_dc_failover(false);
    }
    let profile = ExecutionProfile::builder()
        .consistency(s.consistency.to_driver())
        .request_timeout(Some(s.request_timeout))
        .load_balancing_policy(policy.build())
        .build()
        .into_handle();
    let mut builder =
        SessionBuilder::new().known_nodes(&s.nodes).connection_timeout(s.connect_timeout).default_execution_profile_handle(profile);
    if let Some(user) = &s.username {
        builder = builder.user(user, s.password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default());
    }
    builder.build().await.map_err(|e| {
        let text = format!("{e} {e:?}");
        if text.contains("Authentication") || text.contains("authenticat") {
            SinkError::Permanent(format!(
                "scylla {:?}: authentication failed ({e}); check `username` and `password` (and that the cluster uses \
                 PasswordAuthenticator)",
                s.nodes
            ))
        } else {
            SinkError::Retriable(format!("scylla {:?}: cannot connect: {e}", s.nodes))
        }
    })
}

/// CREATE statements for `create: true`.
pub(crate) fn create_statements(s: &ScyllaSettings, maps: &[ScyllaMapping]) -> Vec<String> {
    let mut out = vec![format!(
        "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': {}}}",
        s.keyspace, s.replication_factor
    )];
    for m in maps {
        let (ks, table) = m.qualified(&s.keyspace);
        if ks != s.keyspace {
            out.push(format!(
                "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': {}}}",
                s.replication_factor
            ));
        }
        if m.partition_key.is_empty() {
            continue;
        }
        let cols: Vec<String> = m.columns.keys().map(|c| format!("{c} {}", m.types.get(c).map(String::as_str).unwrap_or("text"))).collect();
        let mut cql = format!(
            "CREATE TABLE IF NOT EXISTS {ks}.{table} ({}, PRIMARY KEY (({}){}{}))",
            cols.join(", "),
            m.partition_key.join(", "),
            if m.clustering_key.is_empty() { "" } else { ", " },
            m.clustering_key.join(", ")
        );
        if !m.clustering_key.is_empty() && m.clustering_order == Order::Desc {
            let order: Vec<String> = m.clustering_key.iter().map(|c| format!("{c} DESC")).collect();
            cql.push_str(&format!(" WITH CLUSTERING ORDER BY ({})", order.join(", ")));
        }
        out.push(cql);
    }
    out
}

/// Looks every mapped table and column up in the cluster's schema. Returns
/// the compiled routes, or every problem found (each with its fix).
pub(crate) fn compile_routes(session: &Session, s: &ScyllaSettings, maps: &[ScyllaMapping]) -> (Vec<Route>, Vec<(String, String)>) {
    let state = session.get_cluster_state();
    let mut routes = Vec::new();
    let mut problems = Vec::new();
    for (i, m) in maps.iter().enumerate() {
        let (ks, table) = m.qualified(&s.keyspace);
        let what = format!("route {i}: table {ks}.{table}");
        let Some(keyspace) = state.get_keyspace(&ks) else {
            problems.push((
                what,
                format!(
                    "keyspace {ks} does not exist; create it (CREATE KEYSPACE {ks} WITH replication = {{...}}) or set `create: true` \
                     on the sink for a demo"
                ),
            ));
            continue;
        };
        let Some(t) = keyspace.tables.get(&table) else {
            problems.push((what, format!("table {ks}.{table} does not exist; create it (see the scylla connector README)")));
            continue;
        };
        let mut cols = Vec::new();
        let mut bad = false;
        for (name, src) in &m.columns {
            match (t.columns.get(name), Source::parse(src)) {
                (Some(c), Ok(source)) => cols.push(Col { name: name.clone(), source, typ: c.typ.clone() }),
                (None, _) => {
                    bad = true;
                    let mut have: Vec<&String> = t.columns.keys().collect();
                    have.sort();
                    problems.push((what.clone(), format!("column {name} does not exist (the table has: {have:?})")));
                }
                (_, Err(e)) => {
                    bad = true;
                    problems.push((what.clone(), format!("column {name}: {e}")));
                }
            }
        }
        let mut pk = Vec::new();
        for key in t.partition_key.iter().chain(&t.clustering_key) {
            match cols.iter().position(|c| &c.name == key) {
                Some(p) => pk.push(p),
                None => {
                    bad = true;
                    problems.push((what.clone(), format!("primary key column {key} is not mapped; add it to `columns`")));
                }
            }
        }
        if !bad {
            routes.push(Route {
                mode: m.mode,
                ops: m.ops.clone(),
                ttl: m.ttl.map(|d| d.as_secs()),
                qualified: format!("{ks}.{table}"),
                cols,
                pk,
                partition_len: t.partition_key.len(),
            });
        }
    }
    (routes, problems)
}

/// `doctor`: every mapped table and column exists.
pub(crate) async fn doctor(s: &ScyllaSettings, maps: &[ScyllaMapping]) -> Vec<Check> {
    let session = match open_session(s).await {
        Ok(session) => session,
        Err(e) => return vec![Check::failed("connect", e.to_string())],
    };
    let mut checks = vec![Check::ok("connect")];
    let (_, problems) = compile_routes(&session, s, maps);
    for (i, m) in maps.iter().enumerate() {
        let (ks, table) = m.qualified(&s.keyspace);
        let what = format!("route {i}: table {ks}.{table}");
        let mine: Vec<&String> = problems.iter().filter(|(w, _)| *w == what).map(|(_, p)| p).collect();
        if mine.is_empty() {
            checks.push(Check::ok(format!("{what} and its {} mapped columns exist", m.columns.len())));
        } else {
            for p in mine {
                checks.push(Check::failed(what.clone(), p.clone()));
            }
        }
    }
    checks
}

/// What one change does to one row of one route.
pub(crate) enum Action {
    Delete { pk: Vec<Option<CqlValue>> },
    Write { pk: Vec<Option<CqlValue>>, cols: Vec<(usize, Option<CqlValue>)> },
}

/// The collapsed writes of one row within one transaction of one batch
/// (its key is the map key it is filed under).
struct Group {
    route: usize,
    lsn: Lsn,
    records: Vec<usize>,
    delete: bool,
    delete_first: bool,
    /// Written columns in first-written order, the last value of each.
    cols: Vec<(usize, Option<CqlValue>)>,
}

impl ScyllaSink {
    /// Connects, creates the schema when `create: true`, and checks every
    /// mapped table and column (a missing one is permanent, with the fix).
    pub async fn connect(s: &ScyllaSettings, maps: &[ScyllaMapping]) -> Result<ScyllaSink, SinkError> {
        if let Some((p, m)) = s.validate().into_iter().next() {
            return Err(SinkError::Permanent(format!("scylla sink: {p}: {m}")));
        }
        let session = open_session(s).await?;
        if s.create {
            for cql in create_statements(s, maps) {
                session.query_unpaged(cql.as_str(), ()).await.map_err(|e| match classify(&e) {
                    Failure::Record(m) => SinkError::Permanent(format!("scylla create: {cql}: {m}")),
                    Failure::Retry(m) => SinkError::Retriable(format!("scylla create: {m}")),
                })?;
            }
            session.await_schema_agreement().await.map_err(|e| SinkError::Retriable(format!("scylla schema agreement: {e}")))?;
            session.refresh_metadata().await.map_err(|e| SinkError::Retriable(format!("scylla metadata: {e}")))?;
        }
        let (routes, problems) = compile_routes(&session, s, maps);
        if !problems.is_empty() {
            let text: Vec<String> = problems.into_iter().map(|(w, p)| format!("{w}: {p}")).collect();
            return Err(SinkError::Permanent(format!("scylla sink: {}", text.join("; "))));
        }
        info!(nodes = ?s.nodes, keyspace = %s.keyspace, routes = routes.len(), "scylla sink connected");
        Ok(ScyllaSink {
            exec: Exec {
                session: Arc::new(session),
                prepared: Arc::new(HashMap::new()),
                consistency: s.consistency.to_driver(),
                permits: Arc::new(Semaphore::new(s.concurrency.max(1))),
            },
            routes,
            lanes: s.concurrency.max(1),
            in_flight: s.in_flight_batches.max(1),
            batch_statements: s.batch_statements,
            slots: SlotTable::new(),
            cql: HashMap::new(),
            shape: Vec::new(),
        })
    }

    /// The value of one mapped column for a change, reading columns from
    /// `row`. `Ok(None)`: the column is absent (unchanged TOAST): not written.
    fn eval(col: &Col, change: &Change, row: Option<&Row>) -> Result<Option<Option<CqlValue>>, String> {
        let typed = |v: &Value| to_cql(v, &col.typ).map(Some).map_err(|e| format!("column {}: {e}", col.name));
        match &col.source {
            // Absent (unchanged TOAST, or dropped by a transform): not written.
            Source::Column(c) => match row.and_then(|r| r.get(c)) {
                Some(v) => typed(v),
                None => Ok(None),
            },
            Source::Template(t) => {
                let got = match t.single_column() {
                    Some(_) => t.lookup(change).cloned(),
                    None => t.render(change).map(|s| Value::String(s.into())),
                };
                match got {
                    Ok(v) => typed(&v),
                    Err(pgfanout_sdk::TemplateError::NullColumn { .. }) => Ok(Some(None)),
                    Err(pgfanout_sdk::TemplateError::MissingColumn { .. }) => Ok(None),
                    Err(e) => Err(format!("column {}: {e}", col.name)),
                }
            }
            Source::Literal(s) => typed(&Value::String(s.as_str().into())),
            Source::Meta(m) => {
                let numeric = !matches!(col.typ, ColumnType::Native(NativeType::Text | NativeType::Ascii));
                let v = match m {
                    Meta::CommitTs => {
                        return match change.commit_ts {
                            None => Ok(Some(None)),
                            Some(us) => match col.typ {
                                ColumnType::Native(NativeType::Timestamp) => {
                                    Ok(Some(Some(CqlValue::Timestamp(CqlTimestamp(us.div_euclid(1000))))))
                                }
                                ColumnType::Native(NativeType::BigInt) => Ok(Some(Some(CqlValue::BigInt(us)))),
                                // The commit's UTC day (a time bucket, asked for by the
                                // mapping); any i64 of microseconds is within a CQL date.
                                ColumnType::Native(NativeType::Date) => {
                                    Ok(Some(Some(CqlValue::Date(CqlDate((us.div_euclid(86_400_000_000) + (1 << 31)) as u32)))))
                                }
                                _ => {
                                    let mut out = Vec::new();
                                    pgfanout_sdk::json::write_timestamp_micros(&mut out, us);
                                    let text = String::from_utf8_lossy(&out).trim_matches('"').to_string();
                                    typed(&Value::String(text.into()))
                                }
                            },
                        };
                    }
                    Meta::Op => Value::String(change.op.as_str().into()),
                    Meta::Table => Value::String((*change.table).into()),
                    Meta::Schema => Value::String((*change.schema).into()),
                    Meta::Position => Value::String(change.position().sortable_text().into()),
                    Meta::CommitLsn if numeric => Value::Number(change.commit_lsn.0.to_string().into()),
                    Meta::CommitLsn => Value::String(change.commit_lsn.to_string().into()),
                    Meta::Lsn if numeric => Value::Number(change.lsn.0.to_string().into()),
                    Meta::Lsn => Value::String(change.lsn.to_string().into()),
                    Meta::Ordinal => Value::Number(change.ordinal.to_string().into()),
                    Meta::Xid => change.xid.map_or(Value::Null, |x| Value::Number(x.to_string().into())),
                    Meta::Row => match change.row() {
                        Some(r) => {
                            let mut out = Vec::new();
                            r.write_json(&mut out);
                            Value::String(String::from_utf8_lossy(&out).into_owned().into())
                        }
                        None => Value::Null,
                    },
                };
                typed(&v)
            }
        }
    }

    /// The primary key read from `row` (for deletes: the change's own
    /// lookup order, after, before, key). `None` when a key column is
    /// missing from that row.
    fn key_from(route: &Route, change: &Change, row: Option<&Row>) -> Result<Option<Vec<Option<CqlValue>>>, String> {
        let mut pk = Vec::with_capacity(route.pk.len());
        for &i in &route.pk {
            let col = &route.cols[i];
            let v = match (&col.source, row) {
                (Source::Column(c), Some(r)) => match r.get(c) {
                    Some(v) => to_cql(v, &col.typ).map_err(|e| format!("key column {}: {e}", col.name))?,
                    None => return Ok(None),
                },
                (Source::Template(t), Some(r)) if t.single_column().is_some() => match r.get(t.single_column().unwrap_or_default()) {
                    Some(v) => to_cql(v, &col.typ).map_err(|e| format!("key column {}: {e}", col.name))?,
                    None => return Ok(None),
                },
                _ => match Self::eval(col, change, row)? {
                    Some(v) => v,
                    None => return Ok(None),
                },
            };
            if v.is_none() {
                return Err(format!("primary key column {} is null", col.name));
            }
            pk.push(v);
        }
        Ok(Some(pk))
    }

    /// The actions of one upsert change.
    pub(crate) fn upsert_actions(route: &Route, change: &Change) -> Result<Vec<Action>, String> {
        match change.op {
            Op::Truncate => Ok(Vec::new()),
            Op::Delete => {
                let row = change.before.as_ref().or(change.key.as_ref());
                let pk = Self::key_from(route, change, row)?.ok_or("the delete lacks a primary key column")?;
                Ok(vec![Action::Delete { pk }])
            }
            Op::Insert | Op::Update | Op::Read => {
                let after = change.after.as_ref();
                let pk = Self::key_from(route, change, after)?.ok_or("the row lacks a primary key column")?;
                let mut actions = Vec::new();
                if change.op == Op::Update {
                    if let Some(old) = Self::key_from(route, change, change.before.as_ref()).ok().flatten() {
                        if old != pk {
                            actions.push(Action::Delete { pk: old });
                        }
                    }
                }
                let mut cols = Vec::new();
                for (i, col) in route.cols.iter().enumerate() {
                    if route.pk.contains(&i) {
                        continue;
                    }
                    if let Some(v) = Self::eval(col, change, after)? {
                        cols.push((i, v));
                    } else if let (Source::Column(c), Some(before)) = (&col.source, change.before.as_ref()) {
                        // An unchanged TOAST value that the old row carries
                        // (REPLICA IDENTITY FULL): completes a moved row.
                        if change.unchanged_toast.iter().any(|t| **t == **c) {
                            if let Some(v) = before.get(c) {
                                cols.push((i, to_cql(v, &col.typ).map_err(|e| format!("column {}: {e}", col.name))?));
                            }
                        }
                    }
                }
                actions.push(Action::Write { pk, cols });
                Ok(actions)
            }
        }
    }

    fn partition_hash(route_index: usize, pk: &[Option<CqlValue>], partition_len: usize) -> u64 {
        Self::pk_hash(route_index, &pk[..partition_len.min(pk.len())])
    }

    fn pk_hash(route_index: usize, pk: &[Option<CqlValue>]) -> u64 {
        let mut h = DefaultHasher::new();
        route_index.hash(&mut h);
        for v in pk {
            hash_cql(v, &mut h);
        }
        h.finish()
    }

    /// The CQL text of an insert of the columns `cols` (`Some`: the
    /// primary key's first, then these) or of the delete (`None`) of route
    /// `route`, built once per shape.
    fn cql_for<'a>(&mut self, route: usize, cols: Option<impl Iterator<Item = &'a usize>>) -> Arc<str> {
        self.shape.clear();
        self.shape.push(route);
        match cols {
            Some(cols) => {
                self.shape.push(1);
                self.shape.extend(self.routes[route].pk.iter().copied());
                self.shape.extend(cols.copied());
            }
            None => self.shape.push(0),
        }
        if let Some(c) = self.cql.get(self.shape.as_slice()) {
            return c.clone();
        }
        let r = &self.routes[route];
        let text: Arc<str> = match self.shape[1] {
            1 => Self::insert_cql(r, &self.shape[2..]).into(),
            _ => Self::delete_cql(r).into(),
        };
        self.cql.insert(self.shape.clone(), text.clone());
        text
    }

    fn insert_cql(route: &Route, cols: &[usize]) -> String {
        let names: Vec<&str> = cols.iter().map(|&i| route.cols[i].name.as_str()).collect();
        let marks = vec!["?"; names.len()].join(", ");
        let ttl = route.ttl.map(|t| format!("TTL {t} AND ")).unwrap_or_default();
        format!("INSERT INTO {} ({}) VALUES ({marks}) USING {ttl}TIMESTAMP ?", route.qualified, names.join(", "))
    }

    fn delete_cql(route: &Route) -> String {
        let wh: Vec<String> = route.pk.iter().map(|&i| format!("{} = ?", route.cols[i].name)).collect();
        format!("DELETE FROM {} USING TIMESTAMP ? WHERE {}", route.qualified, wh.join(" AND "))
    }

    /// Plans the batch: statements, rejected records, and the slot
    /// counters to keep if it succeeds.
    #[allow(clippy::type_complexity)]
    fn plan(&mut self, batch: &[SinkRecord]) -> (Vec<Stmt>, Vec<Rejected>, (Lsn, HashMap<u32, u8>)) {
        let mut rejected = Vec::new();
        let mut stmts = Vec::new();
        let mut groups: IndexMap<(u64, usize, PkKey), Group> = IndexMap::new();
        let mut truncates = 0usize;
        for (index, record) in batch.iter().enumerate() {
            let Some(route) = self.routes.get(record.route) else {
                rejected.push(Rejected { index, error: format!("scylla sink has no mapping for route {}", record.route) });
                continue;
            };
            let change = &record.change;
            if change.op == Op::Truncate {
                truncates += 1;
                continue;
            }
            match route.mode {
                Mode::Append => {
                    if !route.ops.contains(&change.op) {
                        continue;
                    }
                    let row = change.row();
                    let mut names = Vec::new();
                    let mut values = Vec::new();
                    let mut failed = None;
                    for (i, col) in route.cols.iter().enumerate() {
                        match Self::eval(col, change, row) {
                            Ok(Some(v)) => {
                                names.push(i);
                                values.push(v);
                            }
                            Ok(None) => {}
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    let pk_ok = route.pk.iter().all(|i| names.iter().position(|n| n == i).is_some_and(|p| values[p].is_some()));
                    if failed.is_none() && !pk_ok {
                        failed = Some("a primary key column is null or missing".into());
                    }
                    if let Some(e) = failed {
                        rejected.push(Rejected { index, error: format!("scylla {}: {e}", route.qualified) });
                        continue;
                    }
                    // The primary key's values first, then the others (the
                    // statement shape's order).
                    let mut ordered: Vec<Option<CqlValue>> = Vec::with_capacity(values.len() + 1);
                    for i in &route.pk {
                        let p = names.iter().position(|n| n == i).unwrap_or_default();
                        ordered.push(values[p].take());
                    }
                    let partition = Self::partition_hash(record.route, &ordered, route.partition_len);
                    let others: Vec<usize> = names.iter().copied().filter(|n| !route.pk.contains(n)).collect();
                    ordered.extend(names.iter().zip(values).filter(|(n, _)| !route.pk.contains(n)).map(|(_, v)| v));
                    ordered.push(Some(CqlValue::BigInt(change.position().commit_version())));
                    let cql = self.cql_for(record.route, Some(others.iter()));
                    stmts.push(Stmt { records: vec![index], cql, values: ordered, partition });
                }
                Mode::Upsert => match Self::upsert_actions(route, change) {
                    Err(e) => rejected.push(Rejected { index, error: format!("scylla {}: {e}", route.qualified) }),
                    Ok(actions) => {
                        for action in actions {
                            let (pk, write) = match action {
                                Action::Delete { pk } => (pk, None),
                                Action::Write { pk, cols } => (pk, Some(cols)),
                            };
                            let key = PkKey { hash: Self::pk_hash(record.route, &pk), pk };
                            let g = groups.entry((change.commit_lsn.0, record.route, key)).or_insert_with(|| Group {
                                route: record.route,
                                lsn: change.commit_lsn,
                                records: Vec::new(),
                                delete: false,
                                delete_first: false,
                                cols: Vec::new(),
                            });
                            if g.records.last() != Some(&index) {
                                g.records.push(index);
                            }
                            match write {
                                None => {
                                    g.delete = true;
                                    g.delete_first = false;
                                    g.cols.clear();
                                }
                                Some(cols) => {
                                    if g.delete {
                                        g.delete = false;
                                        g.delete_first = true;
                                    }
                                    if g.cols.is_empty() {
                                        g.cols = cols;
                                    } else {
                                        for (i, v) in cols {
                                            match g.cols.iter_mut().find(|c| c.0 == i) {
                                                Some(c) => c.1 = v,
                                                None => g.cols.push((i, v)),
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                },
            }
        }
        if truncates > 0 {
            warn!(count = truncates, "TRUNCATE is not applied to ScyllaDB/Cassandra tables; truncate them yourself");
        }
        // Timestamps: the rows of one transaction use slots below its commit
        // LSN; the counters this batch moves are kept aside until it succeeds.
        let mut overlay: (Lsn, HashMap<u32, u8>) = (self.slots.lsn, HashMap::new());
        for ((_, _, key), g) in groups {
            if overlay.0 != g.lsn {
                overlay = (g.lsn, HashMap::new());
            }
            let bucket = SlotTable::bucket(key.hash);
            let base_count = self.slots.get(g.lsn, bucket);
            let slot = overlay.1.entry(bucket).or_insert(base_count);
            let base = i64::try_from(g.lsn.0).unwrap_or(i64::MAX);
            let mut next_ts = || {
                let ts = base.saturating_sub(SLOTS) + i64::from(*slot).min(SLOTS);
                *slot = slot.saturating_add(1).min(SLOTS as u8 + 1);
                ts
            };
            let partition = Self::partition_hash(g.route, &key.pk, self.routes[g.route].partition_len);
            if g.delete || g.delete_first {
                let mut values = Vec::with_capacity(key.pk.len() + 1);
                values.push(Some(CqlValue::BigInt(next_ts())));
                values.extend(key.pk.iter().cloned());
                let cql = self.cql_for(g.route, None::<std::slice::Iter<usize>>);
                stmts.push(Stmt { records: g.records.clone(), cql, values, partition });
            }
            if !g.delete {
                let cql = self.cql_for(g.route, Some(g.cols.iter().map(|c| &c.0)));
                let mut values: Vec<Option<CqlValue>> = key.pk;
                values.reserve(g.cols.len() + 1);
                values.extend(g.cols.into_iter().map(|c| c.1));
                values.push(Some(CqlValue::BigInt(next_ts())));
                stmts.push(Stmt { records: g.records, cql, values, partition });
            }
        }
        (stmts, rejected, overlay)
    }

    async fn prepare(&mut self, cql: &Arc<str>) -> Result<(), Failure> {
        let exec = &mut self.exec;
        if exec.prepared.contains_key(cql) {
            return Ok(());
        }
        let mut p = exec.session.prepare(&**cql).await.map_err(|e| classify_prepare(&e))?;
        p.set_consistency(exec.consistency);
        p.set_is_idempotent(true);
        Arc::make_mut(&mut exec.prepared).insert(cql.clone(), p);
        Ok(())
    }
}

/// What the statements of a batch in flight need: the session, the
/// prepared statements, the shared request permits.
#[derive(Clone)]
struct Exec {
    session: Arc<Session>,
    /// Copied on write (a new statement shape, rare) so batches in flight
    /// keep reading theirs.
    prepared: Arc<HashMap<Arc<str>, PreparedStatement>>,
    consistency: scylla::statement::Consistency,
    permits: Arc<Semaphore>,
}

impl Exec {
    /// Runs a batch's partition chunks (`stmts` sorted by partition, cut
    /// into `chunks`), at most `lanes` of its own at once and within the
    /// shared permits, each until it goes through; returns the rejections.
    async fn run_all(&self, stmts: &[Stmt], chunks: Vec<std::ops::Range<usize>>, lanes: usize) -> Vec<Rejected> {
        let mut rejected = Vec::new();
        // Each request future made when its turn comes (the driver's
        // request futures are kilobytes each: making them all up front
        // cost a large allocation and two copies apiece).
        let mut pending = chunks.into_iter();
        let mut running = futures_util::stream::FuturesUnordered::new();
        for c in pending.by_ref().take(lanes) {
            running.push(self.run_until_done(&stmts[c]));
        }
        while let Some(r) = running.next().await {
            rejected.extend(r);
            if let Some(c) = pending.next() {
                running.push(self.run_until_done(&stmts[c]));
            }
        }
        rejected
    }

    /// One partition's chunk, retried (same statements, same timestamps:
    /// idempotent) until the cluster takes it.
    async fn run_until_done(&self, chunk: &[Stmt]) -> Vec<Rejected> {
        let mut backoff = Backoff::new(std::time::Duration::from_millis(100), std::time::Duration::from_secs(10));
        loop {
            let outcome = {
                let _permit = self.permits.acquire().await.expect("the semaphore is never closed");
                self.run_chunk(chunk).await
            };
            match outcome {
                Ok(rejected) => return rejected,
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, statements = chunk.len(), retry_in = ?delay, "scylla write failed; retrying it");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn run_one(&self, s: &Stmt) -> Result<(), Failure> {
        let p = &self.prepared[&s.cql];
        self.session.execute_unpaged(p, &s.values).await.map(|_| ()).map_err(|e| classify(&e))
    }

    /// Runs statements of one partition (one statement, or an unlogged
    /// batch). Returns the rejected records, or a retriable error.
    async fn run_chunk(&self, chunk: &[Stmt]) -> Result<Vec<Rejected>, SinkError> {
        let mut rejected = Vec::new();
        let outcome = if chunk.len() == 1 {
            self.run_one(&chunk[0]).await
        } else {
            let mut batch = Batch::new(BatchType::Unlogged);
            batch.set_consistency(self.consistency);
            batch.set_is_idempotent(true);
            for s in chunk {
                batch.append_statement(self.prepared[&s.cql].clone());
            }
            let values: Vec<&Vec<Option<CqlValue>>> = chunk.iter().map(|s| &s.values).collect();
            self.session.batch(&batch, values).await.map(|_| ()).map_err(|e| classify(&e))
        };
        match outcome {
            Ok(()) => {}
            Err(Failure::Retry(m)) => return Err(SinkError::Retriable(format!("scylla: {m}"))),
            Err(Failure::Record(m)) if chunk.len() == 1 => {
                for &index in &chunk[0].records {
                    rejected.push(Rejected { index, error: format!("scylla: {m}") });
                }
            }
            Err(Failure::Record(_)) => {
                // Find the statements at fault one by one.
                for s in chunk {
                    match self.run_one(s).await {
                        Ok(()) => {}
                        Err(Failure::Retry(m)) => return Err(SinkError::Retriable(format!("scylla: {m}"))),
                        Err(Failure::Record(m)) => {
                            for &index in &s.records {
                                rejected.push(Rejected { index, error: format!("scylla: {m}") });
                            }
                        }
                    }
                }
            }
        }
        Ok(rejected)
    }
}

impl Sink for ScyllaSink {
    /// Applies the batch; see the crate docs for the timestamps.
    async fn write(&mut self, batch: &[SinkRecord]) -> BatchOutcome {
        self.submit(batch.into()).await?.await
    }

    fn max_in_flight(&self) -> usize {
        self.in_flight
    }

    async fn submit(&mut self, batch: Arc<[SinkRecord]>) -> Result<InFlight, SinkError> {
        let (stmts, mut rejected, overlay) = self.plan(&batch);
        let mut unprepared: Vec<Arc<str>> = Vec::new();
        let mut bad_cql: HashMap<Arc<str>, String> = HashMap::new();
        for s in &stmts {
            if !self.exec.prepared.contains_key(&s.cql) && !unprepared.contains(&s.cql) {
                unprepared.push(s.cql.clone());
            }
        }
        for cql in unprepared {
            match self.prepare(&cql).await {
                Ok(()) => {}
                // Nothing started and no counter kept: the batch is planned
                // again, to the same timestamps.
                Err(Failure::Retry(m)) => return Err(SinkError::Retriable(format!("scylla prepare: {m}"))),
                Err(Failure::Record(m)) => {
                    bad_cql.insert(cql, m);
                }
            }
        }
        // From here on the batch's statements are retried until they go
        // through, with these timestamps: the next batch counts on them.
        self.slots.commit(overlay.0, overlay.1);
        // Every statement carries its own timestamp, so the store's result
        // does not depend on the order they run in: they run `concurrency`
        // at a time, the statements of one partition together as one
        // unlogged batch (up to `batch_statements`).
        let mut runnable: Vec<Stmt> = Vec::with_capacity(stmts.len());
        for s in stmts {
            if let Some(m) = bad_cql.get(&*s.cql) {
                for &index in &s.records {
                    rejected.push(Rejected { index, error: format!("scylla: {}: {m}", s.cql) });
                }
                continue;
            }
            runnable.push(s);
        }
        runnable.sort_by_key(|s| s.partition);
        let mut chunks = Vec::new();
        let mut i = 0;
        while i < runnable.len() {
            let mut j = i + 1;
            while j < runnable.len() && j - i < self.batch_statements && runnable[j].partition == runnable[i].partition {
                j += 1;
            }
            chunks.push(i..j);
            i = j;
        }
        let exec = self.exec.clone();
        let lanes = self.lanes;
        let records = batch.len();
        Ok(Box::pin(async move {
            rejected.extend(exec.run_all(&runnable, chunks, lanes).await);
            rejected.sort_by_key(|r| r.index);
            rejected.dedup_by_key(|r| r.index);
            debug!(records, statements = runnable.len(), rejected = rejected.len(), "scylla batch written");
            Ok(rejected)
        }))
    }

    async fn check(&mut self) -> Result<(), SinkError> {
        self.exec
            .session
            .query_unpaged("SELECT release_version FROM system.local", ())
            .await
            .map(|_| ())
            .map_err(|e| SinkError::Retriable(format!("scylla: {e}")))
    }
}
