//! Builders for hand-made changes, for connector tests (cargo feature
//! `test-util`, enabled from each connector's `[dev-dependencies]`).
//!
//! A sink's tests feed it [`Change`]s shaped as the source produces them.
//! Building one by hand means twelve fields, most of them the same in every
//! test; writing them here once keeps each test down to what it varies (the
//! operation, the position, the columns) and keeps every connector's tests
//! building the same shape when [`Change`] grows a field.

use std::sync::Arc;

use crate::{Change, Lsn, Op, Row, SinkRecord, Value};

/// A change's place in commit order: (commit LSN, ordinal inside its
/// transaction). The change's own LSN is the commit LSN.
#[derive(Debug, Clone, Copy)]
pub struct At(pub u64, pub u32);

/// Commit times of built changes: this many microseconds after the Unix
/// epoch (November 2023), plus the commit LSN.
pub const COMMIT_TS_BASE: i64 = 1_700_000_000_000_000;

/// A row from `(column, JSON text)` pairs: `1` is a number, `"a"` a string,
/// `null` NULL. Panics on text that is not JSON.
pub fn row(cols: &[(&str, &str)]) -> Row {
    Row(cols
        .iter()
        .map(|(c, v)| {
            let json = serde_json::from_str(v).unwrap_or_else(|e| panic!("column {c}: {v:?} is not JSON: {e}"));
            (Arc::from(*c), Value::from_serde(&json))
        })
        .collect())
}

/// A row from `(column, value)` pairs, values as they leave PostgreSQL
/// (numbers and JSON as their exact text).
pub fn row_of(cols: &[(&str, Value)]) -> Row {
    Row(cols.iter().map(|(c, v)| (Arc::from(*c), v.clone())).collect())
}

/// An integer value.
pub fn number(n: i64) -> Value {
    Value::Number(n.to_string().into())
}

/// The table built changes are of: `public.{0}`. Its builders take rows
/// as `(column, JSON text)` pairs (see [`row`]) or, with the `_row`
/// suffix, as a built [`Row`].
#[derive(Debug, Clone, Copy)]
pub struct Table<'a>(pub &'a str);

impl Table<'_> {
    /// A change at `at`, in transaction 1, committed at [`COMMIT_TS_BASE`]
    /// plus the commit LSN microseconds. `toast` names the columns whose
    /// unchanged TOASTed value was not sent.
    pub fn change(self, op: Op, at: At, key: Row, before: Option<Row>, after: Option<Row>, toast: &[&str]) -> Change {
        Change {
            op,
            schema: "public".into(),
            table: self.0.into(),
            key: Some(key),
            before,
            after,
            unchanged_toast: toast.iter().map(|c| Arc::from(*c)).collect(),
            lsn: Lsn(at.0),
            commit_lsn: Lsn(at.0),
            ordinal: at.1,
            xid: Some(1),
            commit_ts: Some(COMMIT_TS_BASE + at.0 as i64),
        }
    }

    /// An insert of `after`, keyed by its first column.
    pub fn insert(self, at: At, after: &[(&str, &str)]) -> Change {
        self.insert_row(at, row(after))
    }

    /// An update to `after` (no old row sent), keyed by its first column;
    /// `toast` names the unchanged TOAST columns absent from `after`.
    pub fn update(self, at: At, after: &[(&str, &str)], toast: &[&str]) -> Change {
        self.update_row(at, row(after), toast)
    }

    /// A delete of `before` (the old row as sent), keyed by its first column.
    pub fn delete(self, at: At, before: &[(&str, &str)]) -> Change {
        let before = row(before);
        self.change(Op::Delete, at, first_column(&before), Some(before), None, &[])
    }

    /// [`Table::insert`] of a built row.
    pub fn insert_row(self, at: At, after: Row) -> Change {
        self.change(Op::Insert, at, first_column(&after), None, Some(after), &[])
    }

    /// [`Table::update`] of a built row.
    pub fn update_row(self, at: At, after: Row, toast: &[&str]) -> Change {
        self.change(Op::Update, at, first_column(&after), None, Some(after), toast)
    }
}

/// The first column of `row`: the key of the built inserts, updates and
/// deletes.
fn first_column(row: &Row) -> Row {
    Row(row.0[..1].to_vec())
}

/// The changes as one batch for the sink's route `route`.
pub fn records(changes: impl IntoIterator<Item = Change>, route: usize) -> Vec<SinkRecord> {
    changes.into_iter().map(|c| SinkRecord { change: Arc::new(c), route, source: None }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_key_on_the_first_column() {
        let t = Table("t");
        let after = [("id", "1"), ("name", r#""a""#), ("note", "null")];
        let c = t.update(At(200, 3), &after, &["bio"]);
        assert_eq!(c.key, Some(row(&[("id", "1")])));
        assert_eq!(c.after, Some(row(&after)));
        assert_eq!((c.commit_lsn, c.lsn, c.ordinal), (Lsn(200), Lsn(200), 3));
        assert_eq!(c.commit_ts, Some(COMMIT_TS_BASE + 200));
        assert_eq!(c.unchanged_toast, vec![Arc::<str>::from("bio")]);
        assert_eq!(c.qualified_table(), "public.t");
        let d = t.delete(At(300, 0), &[("id", "1"), ("name", r#""a""#)]);
        assert_eq!((d.op, d.key, d.after), (Op::Delete, Some(row(&[("id", "1")])), None));
        assert_eq!(row_of(&[("n", number(7))]), row(&[("n", "7")]));
        let batch = records([t.insert_row(At(1, 0), row(&[("id", "2")]))], 4);
        assert_eq!(batch[0].route, 4);
    }
}
