//! Pipelines: routing each change to the sinks whose pipelines want it.
//!
//! The [`Router`] is built once from the validated configuration (CEL
//! expressions compiled, table patterns parsed) and then called for every
//! change in commit order. It never reorders: for one change it emits at most
//! one output per pipeline, in pipeline order, so every sink sees the changes
//! of every pipeline in commit order.
//!
//! Hot-path costs: a (schema, table) -> pipelines table is filled the first
//! time a table is seen, so a change on a table no pipeline reads costs one
//! hash lookup; a pipeline without transforms forwards the same
//! `Arc<Change>` (no copy); CEL runs only for pipelines with a filter, and
//! reads only the variables the expression touches (see [`crate::expr`]).

pub mod transform;

use rustc_hash::FxHashMap;
use std::sync::Arc;

use pgfanout_sdk::{Change, Op, SinkRecord};

use crate::config::{Config, ConfigErrors, TablePattern};
use crate::expr::{self, ChangeVars, Expr};
use transform::Transform;

/// What the router decided for one change in one pipeline.
#[derive(Debug, Clone)]
pub enum Routed {
    /// Deliver `record` to sink number `sink` (index into `cfg.sinks` in
    /// config order). `record.route` = index of this pipeline among the
    /// pipelines targeting that sink (see [`Router::routes_for_sink`]).
    Deliver { sink: usize, record: SinkRecord },
    /// The filter or a transform failed for this change in this pipeline:
    /// the runtime writes it to the dead-letter file. `change` is the
    /// change as read from the source (before any transform).
    DeadLetter { pipeline: Arc<str>, sink: usize, error: String, change: Arc<Change> },
}

/// One pipeline, compiled.
#[derive(Debug)]
struct Route {
    name: Arc<str>,
    sink: usize,
    /// Index among the pipelines of the same sink.
    route: usize,
    patterns: Vec<TablePattern>,
    /// Bit `1 << op_bit(op)` set when the op passes.
    ops: u8,
    filter: Option<Expr>,
    transforms: Vec<Transform>,
    mapping: Option<serde_json::Value>,
}

fn op_bit(op: Op) -> u8 {
    match op {
        Op::Insert => 1,
        Op::Update => 2,
        Op::Delete => 4,
        Op::Truncate => 8,
        Op::Read => 16,
        Op::Message => 32,
    }
}

/// table -> indices into `Router::routes` of the pipelines reading it.
type TableRoutes = FxHashMap<Arc<str>, Box<[u32]>>;

/// A schema name, a table name and the routes reading that table.
type LastTable = (Arc<str>, Arc<str>, Box<[u32]>);

/// Routes changes through the configured pipelines. See the module docs.
pub struct Router {
    routes: Vec<Route>,
    sinks: Vec<String>,
    /// schema -> table -> indices into `routes` (in pipeline order).
    /// Per schema and table, the routes reading it (Fx hashing: looked up
    /// for every change).
    by_table: FxHashMap<Arc<str>, TableRoutes>,
    /// The last change's schema and table names and their routes: changes
    /// come in runs of one table sharing the same name pointers, so most
    /// need no lookup.
    last: Option<LastTable>,
    env: Arc<cel::Env>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("routes", &self.routes).field("sinks", &self.sinks).finish_non_exhaustive()
    }
}

impl Router {
    /// Compiles the pipelines of a configuration that passed
    /// [`crate::config::validate`]. Errors (which validation would have
    /// reported) name the pipeline's dotted path.
    pub fn new(cfg: &Config) -> Result<Router, ConfigErrors> {
        let mut errors = Vec::new();
        let sinks: Vec<String> = cfg.sinks.keys().cloned().collect();
        let mut per_sink = vec![0usize; sinks.len()];
        let mut routes = Vec::with_capacity(cfg.pipelines.len());
        for (i, p) in cfg.pipelines.iter().enumerate() {
            let path = format!("pipelines[{i}]");
            let Some(sink) = cfg.sinks.get_index_of(&p.to) else {
                errors.push(format!("{path}.to: unknown sink {:?}", p.to));
                continue;
            };
            let mut patterns = Vec::new();
            for item in p.from.items() {
                match TablePattern::parse(item) {
                    Ok(t) => patterns.push(t),
                    Err(e) => errors.push(format!("{path}.from: {e}")),
                }
            }
            let filter = match p.filter.as_deref().map(Expr::compile).transpose() {
                Ok(f) => f,
                Err(e) => {
                    errors.push(format!("{path}.filter: {e}"));
                    None
                }
            };
            let mut transforms = Vec::with_capacity(p.transforms.len());
            for (k, t) in p.transforms.iter().enumerate() {
                match Transform::compile(t) {
                    Ok(t) => transforms.push(t),
                    Err(e) => errors.push(format!("{path}.transforms[{k}]: {e}")),
                }
            }
            let ops = match &p.ops {
                None => 0xff,
                Some(ops) => ops.iter().fold(0, |acc, op| acc | op_bit(*op)),
            };
            routes.push(Route {
                name: p.name.as_str().into(),
                sink,
                route: per_sink[sink],
                patterns,
                ops,
                filter,
                transforms,
                mapping: p.mapping_section().cloned(),
            });
            per_sink[sink] += 1;
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Router { routes, sinks, by_table: FxHashMap::default(), last: None, env: expr::new_env() })
    }

    /// Whether some pipeline reads logical messages (`message:`).
    pub fn reads_messages(&self) -> bool {
        self.routes.iter().flat_map(|r| &r.patterns).any(|p| !p.is_table())
    }

    /// Table patterns of all pipelines (for the publication), deduplicated,
    /// in first-seen order, always schema-qualified: `["public.users",
    /// "public.*"]` (a bare `users` in the file is `public.users`).
    pub fn table_patterns(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in self.routes.iter().flat_map(|r| &r.patterns).filter(|p| p.is_table()) {
            let s = p.to_string();
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }

    /// Routes one change through every pipeline whose `from` matches its
    /// table and whose `ops` include its op: filter, then transforms in
    /// order. Pushes at most one [`Routed`] per pipeline, in pipeline order,
    /// into `out` (the caller clears it). A pipeline without transforms
    /// forwards the same `Arc<Change>`. Nothing is pushed for a pipeline that
    /// does not match or whose filter is false: the change is done for it.
    pub fn route(&mut self, change: &Arc<Change>, out: &mut Vec<Routed>) {
        let same = matches!(&self.last, Some((s, t, _)) if Arc::ptr_eq(s, &change.schema) && Arc::ptr_eq(t, &change.table));
        if !same {
            let indices = self.routes_of(change);
            self.last = Some((Arc::clone(&change.schema), Arc::clone(&change.table), indices));
        }
        let Some((_, _, indices)) = &self.last else {
            return;
        };
        let bit = op_bit(change.op);
        let mut vars: Option<ChangeVars<'_>> = None;
        for &i in indices.iter() {
            let r = &self.routes[i as usize];
            if r.ops & bit == 0 {
                continue;
            }
            if let Some(routed) = self.apply(r, change, &mut vars) {
                out.push(routed);
            }
        }
    }

    /// The routes reading `change`'s table, in pipeline order.
    fn routes_of(&mut self, change: &Change) -> Box<[u32]> {
        if !self.by_table.get(&*change.schema).is_some_and(|t| t.contains_key(&*change.table)) {
            let matching: Box<[u32]> = self
                .routes
                .iter()
                .enumerate()
                .filter(|(_, r)| r.patterns.iter().any(|p| p.matches(&change.schema, &change.table)))
                .map(|(i, _)| i as u32)
                .collect();
            self.by_table.entry(Arc::clone(&change.schema)).or_default().insert(Arc::clone(&change.table), matching);
        }
        self.by_table.get(&*change.schema).and_then(|t| t.get(&*change.table)).cloned().unwrap_or_default()
    }

    /// Routes `change` through pipeline number `pipeline` alone (for
    /// `verify` and repairs): its tables, filter and transforms, but not its
    /// `ops` (a row read back is what its inserts and updates left).
    /// `None` when the pipeline does not read the table or its filter is
    /// false.
    pub fn route_pipeline(&self, pipeline: usize, change: &Arc<Change>) -> Option<Routed> {
        let r = self.routes.get(pipeline)?;
        if !r.patterns.iter().any(|p| p.matches(&change.schema, &change.table)) {
            return None;
        }
        self.apply(r, change, &mut None)
    }

    /// Filter, then transforms, of one pipeline.
    fn apply<'c>(&self, r: &Route, change: &'c Arc<Change>, vars: &mut Option<ChangeVars<'c>>) -> Option<Routed> {
        if let Some(filter) = &r.filter {
            let vars = vars.get_or_insert_with(|| ChangeVars::new(change));
            match filter.evaluate_bool(&self.env, vars) {
                Ok(true) => {}
                Ok(false) => return None,
                Err(error) => {
                    return Some(Routed::DeadLetter { pipeline: Arc::clone(&r.name), sink: r.sink, error, change: Arc::clone(change) })
                }
            }
        }
        if r.transforms.is_empty() {
            return Some(Routed::Deliver { sink: r.sink, record: SinkRecord { change: Arc::clone(change), route: r.route, source: None } });
        }
        let mut changed = Change::clone(change);
        Some(match r.transforms.iter().try_for_each(|t| t.apply(&mut changed, &self.env)) {
            Ok(()) => Routed::Deliver {
                sink: r.sink,
                record: SinkRecord { change: Arc::new(changed), route: r.route, source: Some(Arc::clone(change)) },
            },
            Err(error) => Routed::DeadLetter { pipeline: Arc::clone(&r.name), sink: r.sink, error, change: Arc::clone(change) },
        })
    }

    /// For sink index `sink`, the pipelines targeting it in route order:
    /// name and the mapping section for that sink's type (if written).
    pub fn routes_for_sink(&self, sink: usize) -> Vec<(Arc<str>, Option<serde_json::Value>)> {
        self.routes.iter().filter(|r| r.sink == sink).map(|r| (Arc::clone(&r.name), r.mapping.clone())).collect()
    }

    /// Sink names in config order (sink index = position).
    pub fn sink_names(&self) -> Vec<String> {
        self.sinks.clone()
    }
}

#[cfg(test)]
mod tests;
