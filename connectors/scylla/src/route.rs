//! Each pipeline's mapping, compiled against the cluster's schema.
//!
//! The sink never guesses a column's type or a table's primary key: it reads
//! them from the cluster's metadata when it connects. A mapping that names a
//! missing keyspace, table or column, or leaves a primary-key column
//! unmapped, fails here, before anything is written, with the fix; `doctor`
//! runs the same lookup and reports every problem.

use pgfanout_sdk::{Check, Op};
use scylla::client::session::Session;
use scylla::frame::response::result::ColumnType;

use crate::config::{Mode, ScyllaMapping, ScyllaSettings, Source};
use crate::error::SchemaProblem;
use crate::session::open_session;

/// One mapped column: its CQL name, where its value comes from, its type in
/// the cluster.
pub(crate) struct Col {
    pub(crate) name: String,
    pub(crate) source: Source,
    pub(crate) typ: ColumnType<'static>,
}

/// One pipeline's mapping onto its table.
pub(crate) struct Route {
    pub(crate) mode: Mode,
    /// `mode: append`: the operations that add a row.
    pub(crate) ops: Vec<Op>,
    /// `USING TTL`, seconds.
    pub(crate) ttl: Option<u64>,
    /// `keyspace.table`.
    pub(crate) qualified: String,
    pub(crate) cols: Vec<Col>,
    /// Indexes into `cols` of the primary key (partition key first).
    pub(crate) pk: Vec<usize>,
    /// How many of `pk` are the partition key.
    pub(crate) partition_len: usize,
}

/// Which mapping a problem is about, as messages and `doctor` name it.
fn what(i: usize, ks: &str, table: &str) -> String {
    format!("route {i}: table {ks}.{table}")
}

/// Looks every mapped table and column up in the cluster's schema. Returns
/// the compiled routes, or every problem found (each with its fix).
pub(crate) fn compile_routes(session: &Session, s: &ScyllaSettings, maps: &[ScyllaMapping]) -> (Vec<Route>, Vec<SchemaProblem>) {
    let state = session.get_cluster_state();
    let mut routes = Vec::new();
    let mut problems = Vec::new();
    for (i, m) in maps.iter().enumerate() {
        let (ks, table) = m.qualified(&s.keyspace);
        let what = what(i, &ks, &table);
        let mut problem = |problem: String| problems.push(SchemaProblem { what: what.clone(), problem });
        let Some(keyspace) = state.get_keyspace(&ks) else {
            problem(format!(
                "keyspace {ks} does not exist; create it (CREATE KEYSPACE {ks} WITH replication = {{...}}) or set `create: true` \
                 on the sink for a demo"
            ));
            continue;
        };
        let Some(t) = keyspace.tables.get(&table) else {
            problem(format!("table {ks}.{table} does not exist; create it (see the scylla connector README)"));
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
                    problem(format!("column {name} does not exist (the table has: {have:?})"));
                }
                (_, Err(e)) => {
                    bad = true;
                    problem(format!("column {name}: {e}"));
                }
            }
        }
        let mut pk = Vec::new();
        for key in t.partition_key.iter().chain(&t.clustering_key) {
            match cols.iter().position(|c| &c.name == key) {
                Some(p) => pk.push(p),
                None => {
                    bad = true;
                    problem(format!("primary key column {key} is not mapped; add it to `columns`"));
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

/// `doctor`: the cluster is reachable and every mapped table and column
/// exists (each problem its own failed check).
pub(crate) async fn doctor(s: &ScyllaSettings, maps: &[ScyllaMapping]) -> Vec<Check> {
    let session = match open_session(s).await {
        Ok(session) => session,
        Err(e) => return vec![Check::failed("connect", e.to_string())],
    };
    let mut checks = vec![Check::ok("connect")];
    let (_, problems) = compile_routes(&session, s, maps);
    for (i, m) in maps.iter().enumerate() {
        let (ks, table) = m.qualified(&s.keyspace);
        let what = what(i, &ks, &table);
        let mut mine = problems.iter().filter(|p| p.what == what).peekable();
        if mine.peek().is_none() {
            checks.push(Check::ok(format!("{what} and its {} mapped columns exist", m.columns.len())));
        }
        for p in mine {
            checks.push(Check::failed(what.clone(), p.problem.clone()));
        }
    }
    checks
}
