//! What one change means for one route's table, as CQL values.
//!
//! A mapped column's value comes from a column of the change, a template, a
//! literal or a record field (`$commit_ts`, `$position`, ...), converted to
//! the column's CQL type by [`to_cql`] (README.md, "Type mapping"). A value
//! that does not fit makes a [`RecordError`]: that record alone is rejected.
//! `mode: upsert` changes become [`Action`]s on primary keys (the planner
//! collapses a transaction's actions per row); `mode: append` changes become
//! one row each ([`append_row`]). `verify` builds its expected rows with the
//! same functions, so it compares exactly what the sink writes.

use pgfanout_sdk::{Change, Op, Row, TemplateError, Value};
use scylla::frame::response::result::{ColumnType, NativeType};
use scylla::value::{CqlDate, CqlTimestamp, CqlValue};

use crate::config::{Meta, Source};
use crate::error::RecordError;
use crate::route::{Col, Route};
use crate::types::to_cql;

/// A column's CQL value: `None` is CQL null.
pub(crate) type Cql = Option<CqlValue>;

/// What one change does to one row of one route.
pub(crate) enum Action {
    Delete {
        pk: Vec<Cql>,
    },
    /// Write these columns (indexes into the route's columns, primary key
    /// excluded) of the row `pk`.
    Write {
        pk: Vec<Cql>,
        cols: Vec<(usize, Cql)>,
    },
}

/// The CQL value of `v` for column `col`.
fn convert(col: &Col, v: &Value) -> Result<Cql, RecordError> {
    to_cql(v, &col.typ).map_err(|source| RecordError::Value { column: col.name.clone(), key: false, source })
}

/// [`convert`], as a column that is written.
fn typed(col: &Col, v: &Value) -> Result<Option<Cql>, RecordError> {
    convert(col, v).map(Some)
}

/// The value of one mapped column for a change, reading columns from
/// `row`. `Ok(None)`: the column is absent (unchanged TOAST): not written.
pub(crate) fn column_value(col: &Col, change: &Change, row: Option<&Row>) -> Result<Option<Cql>, RecordError> {
    match &col.source {
        // Absent (unchanged TOAST, or dropped by a transform): not written.
        Source::Column(c) => match row.and_then(|r| r.get(c)) {
            Some(v) => typed(col, v),
            None => Ok(None),
        },
        Source::Template(t) => {
            let got = match t.single_column() {
                Some(_) => t.lookup(change).cloned(),
                None => t.render(change).map(|s| Value::String(s.into())),
            };
            match got {
                Ok(v) => typed(col, &v),
                Err(TemplateError::NullColumn { .. }) => Ok(Some(None)),
                Err(TemplateError::MissingColumn { .. }) => Ok(None),
                Err(source) => Err(RecordError::Template { column: col.name.clone(), source }),
            }
        }
        Source::Literal(s) => typed(col, &Value::String(s.as_str().into())),
        Source::Meta(m) => meta_value(col, *m, change),
    }
}

/// `$commit_ts` (microseconds since 1970) in the column's type: a
/// timestamp (milliseconds, floored), bigint microseconds, the UTC day in a
/// `date` column, or ISO text.
fn commit_ts(col: &Col, micros: Option<i64>) -> Result<Option<Cql>, RecordError> {
    let Some(us) = micros else { return Ok(Some(None)) };
    match col.typ {
        ColumnType::Native(NativeType::Timestamp) => Ok(Some(Some(CqlValue::Timestamp(CqlTimestamp(us.div_euclid(1000)))))),
        ColumnType::Native(NativeType::BigInt) => Ok(Some(Some(CqlValue::BigInt(us)))),
        // The commit's UTC day (a time bucket, asked for by the mapping);
        // any i64 of microseconds is within a CQL date.
        ColumnType::Native(NativeType::Date) => Ok(Some(Some(CqlValue::Date(CqlDate((us.div_euclid(86_400_000_000) + (1 << 31)) as u32))))),
        _ => {
            let mut out = Vec::new();
            pgfanout_sdk::json::write_timestamp_micros(&mut out, us);
            let text = String::from_utf8_lossy(&out).trim_matches('"').to_string();
            typed(col, &Value::String(text.into()))
        }
    }
}

/// A record field in the column's type: positions as numbers in a numeric
/// column, as PostgreSQL's text otherwise.
fn meta_value(col: &Col, m: Meta, change: &Change) -> Result<Option<Cql>, RecordError> {
    let numeric = !matches!(col.typ, ColumnType::Native(NativeType::Text | NativeType::Ascii));
    let v = match m {
        Meta::CommitTs => return commit_ts(col, change.commit_ts),
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
    typed(col, &v)
}

/// The primary key read from `row` (for deletes: the change's own lookup
/// order, after, before, key). `None` when a key column is missing from
/// that row.
fn key_from(route: &Route, change: &Change, row: Option<&Row>) -> Result<Option<Vec<Cql>>, RecordError> {
    let mut pk = Vec::with_capacity(route.pk.len());
    for &i in &route.pk {
        let col = &route.cols[i];
        let key_value =
            |v: &Value| to_cql(v, &col.typ).map_err(|source| RecordError::Value { column: col.name.clone(), key: true, source });
        let v = match (&col.source, row) {
            (Source::Column(c), Some(r)) => match r.get(c) {
                Some(v) => key_value(v)?,
                None => return Ok(None),
            },
            (Source::Template(t), Some(r)) if t.single_column().is_some() => match r.get(t.single_column().unwrap_or_default()) {
                Some(v) => key_value(v)?,
                None => return Ok(None),
            },
            _ => match column_value(col, change, row)? {
                Some(v) => v,
                None => return Ok(None),
            },
        };
        if v.is_none() {
            return Err(RecordError::NullKey(col.name.clone()));
        }
        pk.push(v);
    }
    Ok(Some(pk))
}

/// The actions of one `mode: upsert` change: a delete, or a write (after
/// the delete of the old key when an update moves the row).
pub(crate) fn upsert_actions(route: &Route, change: &Change) -> Result<Vec<Action>, RecordError> {
    match change.op {
        Op::Truncate => Ok(Vec::new()),
        Op::Delete => {
            let row = change.before.as_ref().or(change.key.as_ref());
            let pk = key_from(route, change, row)?.ok_or(RecordError::DeleteWithoutKey)?;
            Ok(vec![Action::Delete { pk }])
        }
        Op::Insert | Op::Update | Op::Read | Op::Message => {
            let after = change.after.as_ref();
            let pk = key_from(route, change, after)?.ok_or(RecordError::RowWithoutKey)?;
            let mut actions = Vec::new();
            if change.op == Op::Update {
                if let Some(old) = key_from(route, change, change.before.as_ref()).ok().flatten() {
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
                if let Some(v) = column_value(col, change, after)? {
                    cols.push((i, v));
                } else if let (Source::Column(c), Some(before)) = (&col.source, change.before.as_ref()) {
                    // An unchanged TOAST value that the old row carries
                    // (REPLICA IDENTITY FULL): completes a moved row.
                    if change.unchanged_toast.iter().any(|t| **t == **c) {
                        if let Some(v) = before.get(c) {
                            cols.push((i, convert(col, v)?));
                        }
                    }
                }
            }
            actions.push(Action::Write { pk, cols });
            Ok(actions)
        }
    }
}

/// One `mode: append` row: the values of the primary key (in key order),
/// then those of the other written columns, and which columns those are.
/// Absent columns (unchanged TOAST) are not written.
pub(crate) fn append_row(route: &Route, change: &Change) -> Result<(Vec<Cql>, Vec<usize>), RecordError> {
    let row = change.row();
    let mut names = Vec::new();
    let mut values = Vec::new();
    for (i, col) in route.cols.iter().enumerate() {
        if let Some(v) = column_value(col, change, row)? {
            names.push(i);
            values.push(v);
        }
    }
    let pk_ok = route.pk.iter().all(|i| names.iter().position(|n| n == i).is_some_and(|p| values[p].is_some()));
    if !pk_ok {
        return Err(RecordError::AppendWithoutKey);
    }
    // The primary key's values first, then the others (the statement
    // shape's order); one more slot for the timestamp.
    let mut ordered: Vec<Cql> = Vec::with_capacity(values.len() + 1);
    for i in &route.pk {
        let p = names.iter().position(|n| n == i).unwrap_or_default();
        ordered.push(values[p].take());
    }
    let others: Vec<usize> = names.iter().copied().filter(|n| !route.pk.contains(n)).collect();
    ordered.extend(names.iter().zip(values).filter(|(n, _)| !route.pk.contains(n)).map(|(_, v)| v));
    Ok((ordered, others))
}
