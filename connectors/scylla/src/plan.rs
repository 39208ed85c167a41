//! Planning a batch: its records become CQL statements with their
//! `USING TIMESTAMP`, grouped by partition.
//!
//! `mode: upsert`: the changes of one row within one transaction of the
//! batch are collapsed into one group (last value wins, partial TOAST
//! updates merge their columns, a delete followed by a write becomes a
//! delete then a write), and each statement a group gets takes the row's
//! next timestamp slot ([`crate::slots`]). `mode: append`: one insert per
//! change, at the commit LSN. A record that cannot be mapped is rejected
//! alone. Planning does no I/O, so a batch whose start fails is planned
//! again to the same statements and timestamps.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::Arc;

use indexmap::IndexMap;
use pgfanout_sdk::{Lsn, Op, Rejected, SinkRecord};
use scylla::value::CqlValue;
use tracing::warn;

use crate::config::Mode;
use crate::encode::{append_row, upsert_actions, Action, Cql};
use crate::route::Route;
use crate::slots::{SlotOverlay, SlotTable};
use crate::statements::StatementTexts;

/// One statement to run: CQL text, bound values, the records it serves,
/// its partition's hash.
pub(crate) struct Stmt {
    /// Indexes into the batch.
    pub(crate) records: Vec<usize>,
    pub(crate) cql: Arc<str>,
    pub(crate) values: Vec<Cql>,
    pub(crate) partition: u64,
}

/// A planned batch.
pub(crate) struct Plan {
    pub(crate) stmts: Vec<Stmt>,
    /// Records that cannot be written (dead letters), with the reason.
    pub(crate) rejected: Vec<Rejected>,
    /// The slot counters to keep once the statements are sure to run.
    pub(crate) slots: SlotOverlay,
}

/// What planning keeps across batches: the compiled routes, the CQL text
/// of each statement shape, the slot counters of the current transaction.
pub(crate) struct Planner {
    routes: Vec<Route>,
    texts: StatementTexts,
    slots: SlotTable,
}

/// A primary key as a map key: compared by value, hashed once.
#[derive(Debug, Clone)]
struct PkKey {
    hash: u64,
    pk: Vec<Cql>,
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

/// The collapsed writes of one row within one transaction of one batch
/// (its key is the map key it is filed under).
struct Group {
    route: usize,
    lsn: Lsn,
    records: Vec<usize>,
    delete: bool,
    delete_first: bool,
    /// Written columns in first-written order, the last value of each.
    cols: Vec<(usize, Cql)>,
}

impl Group {
    /// Folds one action of record `index` into the row's group.
    fn fold(&mut self, index: usize, write: Option<Vec<(usize, Cql)>>) {
        if self.records.last() != Some(&index) {
            self.records.push(index);
        }
        match write {
            None => {
                self.delete = true;
                self.delete_first = false;
                self.cols.clear();
            }
            Some(cols) => {
                if self.delete {
                    self.delete = false;
                    self.delete_first = true;
                }
                if self.cols.is_empty() {
                    self.cols = cols;
                } else {
                    for (i, v) in cols {
                        match self.cols.iter_mut().find(|c| c.0 == i) {
                            Some(c) => c.1 = v,
                            None => self.cols.push((i, v)),
                        }
                    }
                }
            }
        }
    }
}

impl Planner {
    pub(crate) fn new(routes: Vec<Route>) -> Self {
        Planner { routes, texts: StatementTexts::default(), slots: SlotTable::new() }
    }

    /// Keeps the slot counters of a batch whose statements will run (they
    /// are retried until they do): the next batch counts on them.
    pub(crate) fn commit(&mut self, slots: SlotOverlay) {
        self.slots.commit(slots);
    }

    /// Plans the batch: statements, rejected records, and the slot
    /// counters to keep if it starts.
    pub(crate) fn plan(&mut self, batch: &[SinkRecord]) -> Plan {
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
                Mode::Append if !route.ops.contains(&change.op) => {}
                Mode::Append => match append_row(route, change) {
                    Err(e) => rejected.push(Rejected { index, error: format!("scylla {}: {e}", route.qualified) }),
                    Ok((mut values, others)) => {
                        let partition = partition_hash(record.route, &values, route.partition_len);
                        values.push(Some(CqlValue::BigInt(change.position().commit_version())));
                        let cql = self.texts.insert(&self.routes, record.route, others.iter());
                        stmts.push(Stmt { records: vec![index], cql, values, partition });
                    }
                },
                Mode::Upsert => match upsert_actions(route, change) {
                    Err(e) => rejected.push(Rejected { index, error: format!("scylla {}: {e}", route.qualified) }),
                    Ok(actions) => {
                        for action in actions {
                            let (pk, write) = match action {
                                Action::Delete { pk } => (pk, None),
                                Action::Write { pk, cols } => (pk, Some(cols)),
                            };
                            let key = PkKey { hash: pk_hash(record.route, &pk), pk };
                            groups
                                .entry((change.commit_lsn.0, record.route, key))
                                .or_insert_with(|| Group {
                                    route: record.route,
                                    lsn: change.commit_lsn,
                                    records: Vec::new(),
                                    delete: false,
                                    delete_first: false,
                                    cols: Vec::new(),
                                })
                                .fold(index, write);
                        }
                    }
                },
            }
        }
        if truncates > 0 {
            warn!(count = truncates, "TRUNCATE is not applied to ScyllaDB/Cassandra tables; truncate them yourself");
        }
        // Timestamps: the rows of one transaction use slots below its commit
        // LSN; the counters this batch moves are kept aside until it starts.
        let mut slots = self.slots.overlay();
        for ((_, _, key), g) in groups {
            let mut next_ts = slots.timestamps(&self.slots, g.lsn, key.hash);
            let partition = partition_hash(g.route, &key.pk, self.routes[g.route].partition_len);
            if g.delete || g.delete_first {
                let mut values = Vec::with_capacity(key.pk.len() + 1);
                values.push(Some(CqlValue::BigInt(next_ts())));
                values.extend(key.pk.iter().cloned());
                let cql = self.texts.delete(&self.routes, g.route);
                stmts.push(Stmt { records: g.records.clone(), cql, values, partition });
            }
            if !g.delete {
                let cql = self.texts.insert(&self.routes, g.route, g.cols.iter().map(|c| &c.0));
                let mut values: Vec<Cql> = key.pk;
                values.reserve(g.cols.len() + 1);
                values.extend(g.cols.into_iter().map(|c| c.1));
                values.push(Some(CqlValue::BigInt(next_ts())));
                stmts.push(Stmt { records: g.records, cql, values, partition });
            }
        }
        Plan { stmts, rejected, slots }
    }
}

/// Sorts `stmts` by partition and cuts them into runs of one partition, at
/// most `max` statements each: each run is one request (one statement, or
/// an unlogged batch).
pub(crate) fn partition_runs(stmts: &mut [Stmt], max: usize) -> Vec<Range<usize>> {
    stmts.sort_by_key(|s| s.partition);
    let mut runs = Vec::new();
    let mut i = 0;
    while i < stmts.len() {
        let mut j = i + 1;
        while j < stmts.len() && j - i < max && stmts[j].partition == stmts[i].partition {
            j += 1;
        }
        runs.push(i..j);
        i = j;
    }
    runs
}

/// The hash of the partition key (the first `partition_len` of `pk`).
fn partition_hash(route_index: usize, pk: &[Cql], partition_len: usize) -> u64 {
    pk_hash(route_index, &pk[..partition_len.min(pk.len())])
}

fn pk_hash(route_index: usize, pk: &[Cql]) -> u64 {
    let mut h = DefaultHasher::new();
    route_index.hash(&mut h);
    for v in pk {
        hash_cql(v, &mut h);
    }
    h.finish()
}

/// Hashes one key value without formatting it (the common key types);
/// others through their debug text.
fn hash_cql(v: &Cql, h: &mut impl Hasher) {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pgfanout_sdk::{Change, Row, Value};
    use scylla::frame::response::result::{ColumnType, NativeType};

    use super::*;
    use crate::config::Source;
    use crate::route::Col;

    fn planner() -> Planner {
        let col = |name: &str, t| Col { name: name.into(), source: Source::Column(name.into()), typ: ColumnType::Native(t) };
        let cols = vec![col("id", NativeType::Int), col("name", NativeType::Text), col("qty", NativeType::BigInt)];
        Planner::new(vec![Route {
            mode: Mode::Upsert,
            ops: Vec::new(),
            ttl: None,
            qualified: "k.items".into(),
            cols,
            pk: vec![0],
            partition_len: 1,
        }])
    }

    fn row(cols: &[(&str, &str)]) -> Row {
        Row(cols.iter().map(|(c, v)| (Arc::from(*c), Value::from_serde(&serde_json::from_str(v).unwrap()))).collect())
    }

    fn record(op: Op, commit_lsn: u64, cols: &[(&str, &str)]) -> SinkRecord {
        let (before, after) = if op == Op::Delete { (Some(row(cols)), None) } else { (None, Some(row(cols))) };
        let change = Change {
            op,
            schema: "public".into(),
            table: "items".into(),
            key: Some(row(&cols[..1])),
            before,
            after,
            unchanged_toast: Vec::new(),
            lsn: Lsn(commit_lsn),
            commit_lsn: Lsn(commit_lsn),
            ordinal: 0,
            xid: Some(1),
            commit_ts: None,
        };
        SinkRecord { change: Arc::new(change), route: 0, source: None }
    }

    fn ts(s: &Stmt, at: usize) -> &Cql {
        &s.values[at]
    }

    #[test]
    fn a_rows_changes_in_one_transaction_collapse_and_take_successive_slots() {
        let mut p = planner();
        let batch = [
            record(Op::Insert, 1000, &[("id", "1"), ("name", "\"a\""), ("qty", "1")]),
            record(Op::Update, 1000, &[("id", "1"), ("name", "\"b\"")]),
            record(Op::Delete, 1000, &[("id", "2")]),
            record(Op::Insert, 1000, &[("id", "2"), ("qty", "\"x\"")]),
            record(Op::Insert, 1000, &[("id", "3"), ("name", "\"c\"")]),
            record(Op::Delete, 1000, &[("id", "2")]),
            record(Op::Insert, 1000, &[("id", "2"), ("qty", "7")]),
        ];
        let plan = p.plan(&batch);
        assert_eq!(plan.rejected.len(), 1, "the value that does not fit is rejected alone");
        assert_eq!(plan.rejected[0].index, 3);
        assert!(plan.rejected[0].error.starts_with("scylla k.items: column qty: \"x\" does not fit CQL bigint"), "{:?}", plan.rejected);
        let by_text: Vec<(&str, &[usize])> = plan.stmts.iter().map(|s| (&*s.cql, s.records.as_slice())).collect();
        assert_eq!(
            by_text,
            vec![
                ("INSERT INTO k.items (id, name, qty) VALUES (?, ?, ?) USING TIMESTAMP ?", &[0, 1][..]),
                ("DELETE FROM k.items USING TIMESTAMP ? WHERE id = ?", &[2, 5, 6][..]),
                ("INSERT INTO k.items (id, qty) VALUES (?, ?) USING TIMESTAMP ?", &[2, 5, 6][..]),
                ("INSERT INTO k.items (id, name) VALUES (?, ?) USING TIMESTAMP ?", &[4][..]),
            ]
        );
        let insert_1 = &plan.stmts[0];
        assert_eq!(insert_1.values[1], Some(CqlValue::Text("b".into())), "last value wins");
        assert_eq!(insert_1.values[2], Some(CqlValue::BigInt(1)), "columns merge");
        assert_eq!(ts(insert_1, 3), &Some(CqlValue::BigInt(1000 - 16)));
        assert_eq!(ts(&plan.stmts[1], 0), &Some(CqlValue::BigInt(984)), "the delete first");
        assert_eq!(ts(&plan.stmts[2], 2), &Some(CqlValue::BigInt(985)), "then the write");
        // The next batch of the transaction continues the row's slots once
        // this one started; planned again before that, it does not.
        let again = p.plan(&batch[1..2]);
        assert_eq!(ts(&again.stmts[0], 2), &Some(CqlValue::BigInt(984)));
        p.commit(plan.slots);
        let next = p.plan(&batch[1..2]);
        assert_eq!(ts(&next.stmts[0], 2), &Some(CqlValue::BigInt(985)));
    }

    #[test]
    fn runs_hold_one_partition_and_at_most_max_statements() {
        let stmt = |partition| Stmt { records: Vec::new(), cql: Arc::from("x"), values: Vec::new(), partition };
        let mut stmts: Vec<Stmt> = [3, 1, 3, 3, 2, 3].into_iter().map(stmt).collect();
        let runs = partition_runs(&mut stmts, 2);
        let parts: Vec<Vec<u64>> = runs.into_iter().map(|r| stmts[r].iter().map(|s| s.partition).collect()).collect();
        assert_eq!(parts, vec![vec![1], vec![2], vec![3, 3], vec![3, 3]]);
    }
}
