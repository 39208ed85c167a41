//! The change record: one row-level change (or truncate) from PostgreSQL.

use std::fmt;
use std::sync::Arc;

use crate::json;
use crate::lsn::Lsn;
use crate::value::Row;

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
    /// A row copied by the initial snapshot.
    Read,
}

impl Op {
    pub const ALL: [Op; 5] = [Op::Insert, Op::Update, Op::Delete, Op::Truncate, Op::Read];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
            Op::Read => "read",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == s)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change's place in commit order: its transaction's commit LSN and its
/// ordinal inside that transaction. This, not the change's own WAL LSN, is the
/// version sinks use to reject stale writes. Snapshot rows are
/// `(consistent_point, 0)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub commit_lsn: Lsn,
    pub ordinal: u32,
}

/// # The version every sink compares
///
/// A sink's version is the position, compared as the pair
/// (`commit_lsn`, `ordinal`): commit LSN first, ordinal second. It is never
/// packed into one 64-bit integer (`commit_lsn << 16 | ordinal` wraps once
/// WAL passes 128 TiB and gives every change past ordinal 65,535 of a
/// transaction the same version). What each store receives:
///
/// - [`Position::sortable_text`]: 30 decimal digits (20 for the commit LSN,
///   10 for the ordinal), so comparing two strings compares the positions.
///   Redis version hashes and Neo4j's `_pgfanout_version` property.
/// - [`Position::commit_version`]: the commit LSN alone, as a non-negative
///   i64, for stores that take one integer (Elasticsearch's external
///   version, CQL's `USING TIMESTAMP`). Such sinks must keep per-key order
///   inside a transaction themselves (the runtime hands them changes in
///   order and they write them in order, so the last change of a key within
///   one transaction wins), because equal versions apply.
impl Position {
    /// Fixed-width decimal text that sorts exactly like positions:
    /// `{commit_lsn:020}{ordinal:010}`. Cannot overflow (u64 has at most 20
    /// decimal digits, u32 at most 10) and never collides.
    pub fn sortable_text(self) -> String {
        format!("{:020}{:010}", self.commit_lsn.0, self.ordinal)
    }

    /// The commit LSN as a store version that fits a signed 64-bit field.
    /// PostgreSQL's WAL positions stay below 2^63 in practice (8 EiB of WAL);
    /// larger values saturate rather than wrap, so the order never inverts.
    pub fn commit_version(self) -> i64 {
        i64::try_from(self.commit_lsn.0).unwrap_or(i64::MAX)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.commit_lsn, self.ordinal)
    }
}

/// One change record (docs/design.md section 3).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub op: Op,
    pub schema: Arc<str>,
    pub table: Arc<str>,
    /// Replica identity columns; `None` for truncate.
    pub key: Option<Row>,
    /// The old row where the server sent one (REPLICA IDENTITY FULL, or the
    /// key columns when the key changed).
    pub before: Option<Row>,
    /// The new row; `None` for delete and truncate.
    pub after: Option<Row>,
    /// Columns whose unchanged TOASTed value was not sent. They are absent
    /// from `after`; sinks must leave their stored value alone.
    pub unchanged_toast: Vec<Arc<str>>,
    /// This change's own WAL LSN (informational).
    pub lsn: Lsn,
    /// The commit LSN of its transaction (Begin's final_lsn).
    pub commit_lsn: Lsn,
    /// Ordinal of this change inside its transaction.
    pub ordinal: u32,
    /// Transaction id; `None` for snapshot rows.
    pub xid: Option<u32>,
    /// Commit time in microseconds since the Unix epoch; `None` for snapshot rows.
    pub commit_ts: Option<i64>,
}

impl Change {
    /// Roughly the memory the change holds: its rows' values plus a fixed
    /// part. Queues are bounded with it (`runtime.queue_memory`).
    pub fn approx_size(&self) -> usize {
        let rows = [&self.key, &self.before, &self.after].into_iter().flatten().map(Row::approx_size).sum::<usize>();
        std::mem::size_of::<Change>() + rows + self.unchanged_toast.len() * 16
    }

    pub fn position(&self) -> Position {
        Position { commit_lsn: self.commit_lsn, ordinal: self.ordinal }
    }

    /// `schema.table`.
    pub fn qualified_table(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The row that best describes the record's current state: `after` for
    /// inserts, updates and reads, `before` (or the key) for deletes.
    pub fn row(&self) -> Option<&Row> {
        self.after.as_ref().or(self.before.as_ref()).or(self.key.as_ref())
    }

    /// Looks a column up in `after`, then `before`, then `key`.
    pub fn column(&self, name: &str) -> Option<&crate::Value> {
        [&self.after, &self.before, &self.key].into_iter().flatten().find_map(|r| r.get(name))
    }

    /// Appends the record's JSON (one line, no newline).
    pub fn write_json<O: json::JsonOut + ?Sized>(&self, out: &mut O) {
        out.extend_from_slice(b"{\"op\":\"");
        out.extend_from_slice(self.op.as_str().as_bytes());
        out.extend_from_slice(b"\",\"schema\":");
        json::write_str(out, &self.schema);
        out.extend_from_slice(b",\"table\":");
        json::write_str(out, &self.table);
        for (name, row) in [(&b",\"key\":"[..], &self.key), (b",\"before\":", &self.before), (b",\"after\":", &self.after)] {
            out.extend_from_slice(name);
            match row {
                Some(r) => r.write_json(out),
                None => out.extend_from_slice(b"null"),
            }
        }
        if !self.unchanged_toast.is_empty() {
            out.extend_from_slice(b",\"unchanged_toast\":[");
            for (i, c) in self.unchanged_toast.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json::write_str(out, c);
            }
            out.push(b']');
        }
        out.extend_from_slice(b",\"lsn\":\"");
        json::write_lsn(out, self.lsn.0);
        out.extend_from_slice(b"\",\"commit_lsn\":\"");
        json::write_lsn(out, self.commit_lsn.0);
        out.extend_from_slice(b"\",\"xid\":");
        match self.xid {
            Some(x) => json::write_u64(out, u64::from(x)),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"commit_ts\":");
        match self.commit_ts {
            Some(ts) => json::write_timestamp_micros(out, ts),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
    }

    pub fn to_json_string(&self) -> String {
        let mut out = Vec::with_capacity(256);
        self.write_json(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// The record as `serde_json` (for filter expressions and templates).
    pub fn to_serde(&self) -> serde_json::Value {
        serde_json::from_str(&self.to_json_string()).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Value;

    #[test]
    fn json_matches_the_design_shape() {
        let c = Change {
            op: Op::Update,
            schema: "public".into(),
            table: "users".into(),
            key: Some(Row(vec![("id".into(), Value::Number("42".into()))])),
            before: None,
            after: Some(Row(vec![
                ("id".into(), Value::Number("42".into())),
                ("email".into(), Value::String("a@b.c".into())),
                ("prefs".into(), Value::Json(r#"{"theme": "dark"}"#.into())),
            ])),
            unchanged_toast: vec!["bio".into()],
            lsn: "0/16B3748".parse().unwrap(),
            commit_lsn: "0/16B37A0".parse().unwrap(),
            ordinal: 0,
            xid: Some(751),
            commit_ts: Some(1_795_514_400_123_456),
        };
        let v: serde_json::Value = serde_json::from_str(&c.to_json_string()).unwrap();
        let expected: serde_json::Value = serde_json::from_str(
            r#"{"op":"update","schema":"public","table":"users",
             "key":{"id":42},
             "before":null,
             "after":{"id":42,"email":"a@b.c","prefs":{"theme":"dark"}},
             "unchanged_toast":["bio"],
             "lsn":"0/16B3748","commit_lsn":"0/16B37A0","xid":751,
             "commit_ts":"2026-11-24T10:00:00.123456Z"}"#,
        )
        .unwrap();
        assert_eq!(v, expected);
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert!(keys.contains(&"unchanged_toast".to_string()));
    }

    #[test]
    fn versions_order_like_positions_past_2_47_and_65536_changes() {
        let big = Lsn((1u64 << 47) + 5);
        let cases = [
            Position { commit_lsn: Lsn(9), ordinal: 99 },
            Position { commit_lsn: Lsn(10), ordinal: 0 },
            Position { commit_lsn: Lsn(10), ordinal: 65_535 },
            Position { commit_lsn: Lsn(10), ordinal: 65_536 },
            Position { commit_lsn: Lsn(10), ordinal: 200_000 },
            Position { commit_lsn: big, ordinal: 0 },
            Position { commit_lsn: big, ordinal: 70_000 },
            Position { commit_lsn: Lsn(1u64 << 48), ordinal: 1 },
            Position { commit_lsn: Lsn(u64::MAX), ordinal: u32::MAX },
        ];
        for w in cases.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].sortable_text() < w[1].sortable_text(), "{} vs {}", w[0], w[1]);
            assert!(w[0].commit_version() <= w[1].commit_version(), "{} vs {}", w[0], w[1]);
            assert_eq!(w[0].sortable_text().len(), 30);
        }
        // The old packing collided here and wrapped past 2^47.
        assert_ne!(cases[3].sortable_text(), cases[4].sortable_text());
        assert!(cases[5].commit_version() > cases[4].commit_version());
        assert_eq!(cases[8].commit_version(), i64::MAX);
    }
}
