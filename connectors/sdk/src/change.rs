//! The change record: one row-level change (or truncate) from PostgreSQL.

use std::fmt;
use std::sync::Arc;

use crate::json;
use crate::lsn::Lsn;
use crate::value::{Row, Value};

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
    /// A transactional logical message (`pg_logical_emit_message(true,
    /// prefix, content)`): an event with no table. Its change has schema
    /// [`MESSAGE_SCHEMA`], the prefix as its table, and the columns of
    /// [`message_row`](crate::message_row).
    Message,
}

/// The schema name of logical messages' changes. PostgreSQL refuses schema
/// names starting with `pg_`, so no table can have it.
pub const MESSAGE_SCHEMA: &str = "pg_message";

impl Op {
    pub const ALL: [Op; 6] = [Op::Insert, Op::Update, Op::Delete, Op::Truncate, Op::Read, Op::Message];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
            Op::Read => "read",
            Op::Message => "message",
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
        self.write_json_columns(out);
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

    /// `,"json_columns":[...]`: the columns whose value is json or jsonb
    /// text ([`Value::Json`]), when there are any. Their JSON is the
    /// column's text as PostgreSQL printed it, which a reader could not
    /// otherwise tell from a composite, an array or a number: the list lets
    /// a reader of the record (the Kafka source) rebuild exactly the values
    /// it was written from.
    fn write_json_columns<O: json::JsonOut + ?Sized>(&self, out: &mut O) {
        let rows = [&self.after, &self.before, &self.key];
        let mut first = true;
        let mut seen: Vec<&str> = Vec::new();
        for row in rows.into_iter().flatten() {
            for (name, value) in &row.0 {
                if !matches!(value, Value::Json(_)) || seen.contains(&&**name) {
                    continue;
                }
                seen.push(name);
                out.extend_from_slice(if first { b",\"json_columns\":[" } else { b"," });
                first = false;
                json::write_str(out, name);
            }
        }
        if !first {
            out.push(b']');
        }
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

/// The row of a logical message's change ([`Op::Message`]), as pipelines,
/// templates and sinks see it:
///
/// - `prefix`: the message's prefix (also the change's table);
/// - `content`: the content as JSON when it is valid JSON (kept verbatim),
///   else as text when it is UTF-8, else as bytea's hex text (`\x0a0b`, as
///   `to_jsonb` prints bytea);
/// - when the content is a JSON object, each of its top-level fields as a
///   column of its own (except `prefix` and `content`), so an event
///   written as `{"aggregatetype": .., "aggregateid": .., "type": ..,
///   "payload": ..}` routes exactly like an outbox table's row.
pub fn message_row(prefix: &str, content: &[u8]) -> Row {
    let mut row = Row::with_capacity(2);
    row.push("prefix".into(), Value::String(prefix.into()));
    let Ok(text) = std::str::from_utf8(content) else {
        let mut hex = String::with_capacity(2 + content.len() * 2);
        hex.push_str("\\x");
        for b in content {
            let _ = std::fmt::Write::write_fmt(&mut hex, format_args!("{b:02x}"));
        }
        row.push("content".into(), Value::String(hex.into()));
        return row;
    };
    let fields = match serde_json::from_str::<&serde_json::value::RawValue>(text) {
        Ok(_) => {
            row.push("content".into(), Value::Json(text.into()));
            // Each field kept as written (numbers keep their digits,
            // objects their text).
            serde_json::from_str::<std::collections::BTreeMap<String, &serde_json::value::RawValue>>(text).unwrap_or_default()
        }
        Err(_) => {
            row.push("content".into(), Value::String(text.into()));
            return row;
        }
    };
    for (name, raw) in fields {
        if name == "prefix" || name == "content" {
            continue;
        }
        let raw = raw.get();
        let value = match raw.as_bytes().first() {
            Some(b'"') => serde_json::from_str::<String>(raw).map(|s| Value::String(s.into())).unwrap_or(Value::Null),
            Some(b'{' | b'[') => Value::Json(raw.into()),
            Some(b't') => Value::Bool(true),
            Some(b'f') => Value::Bool(false),
            Some(b'n') | None => Value::Null,
            Some(_) => Value::Number(raw.into()),
        };
        row.push(name.into(), value);
    }
    row
}

/// The bytes a logical message carried, from its `content` column (the
/// inverse of [`message_row`]).
pub fn message_content(content: &Value) -> Vec<u8> {
    match content {
        Value::String(s) => match s.strip_prefix("\\x").filter(|h| h.len() % 2 == 0 && h.bytes().all(|b| b.is_ascii_hexdigit())) {
            Some(hex) => (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0)).collect(),
            None => s.as_bytes().to_vec(),
        },
        Value::Json(s) | Value::Number(s) => s.as_bytes().to_vec(),
        other => {
            let mut out = Vec::new();
            other.write_json(&mut out);
            out
        }
    }
}

impl Change {
    /// A transactional logical message as a change ([`Op::Message`]): schema
    /// [`MESSAGE_SCHEMA`], table and key the prefix, `after` the
    /// [`message_row`].
    #[allow(clippy::too_many_arguments)]
    pub fn message(prefix: &str, content: &[u8], lsn: Lsn, commit_lsn: Lsn, ordinal: u32, xid: u32, commit_ts: i64) -> Change {
        let mut key = Row::with_capacity(1);
        key.push("prefix".into(), Value::String(prefix.into()));
        Change {
            op: Op::Message,
            schema: MESSAGE_SCHEMA.into(),
            table: prefix.into(),
            key: Some(key),
            before: None,
            after: Some(message_row(prefix, content)),
            unchanged_toast: Vec::new(),
            lsn,
            commit_lsn,
            ordinal,
            xid: Some(xid),
            commit_ts: Some(commit_ts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message's content: JSON kept verbatim (numbers keep every digit,
    /// objects their spacing), its top-level fields as columns; text as
    /// text; bytes as bytea hex. [`message_content`] gives the bytes back.
    #[test]
    fn a_logical_message_is_a_row_of_its_content() {
        let json = r#"{"id": "p-1", "amount": 0.10000000000000000000001, "ok": true, "payload": {"a":  [1, 2]}, "prefix": "x"}"#;
        let c = Change::message("payments", json.as_bytes(), Lsn(5), Lsn(9), 2, 7, 11);
        assert_eq!(
            (c.op, &*c.schema, &*c.table, c.position()),
            (Op::Message, MESSAGE_SCHEMA, "payments", Position { commit_lsn: Lsn(9), ordinal: 2 })
        );
        let row = c.after.as_ref().unwrap();
        assert_eq!(row.get("prefix"), Some(&Value::String("payments".into())), "the message's prefix, not the content's field");
        assert_eq!(row.get("content"), Some(&Value::Json(json.into())));
        assert_eq!(row.get("amount"), Some(&Value::Number("0.10000000000000000000001".into())));
        assert_eq!(row.get("payload"), Some(&Value::Json(r#"{"a":  [1, 2]}"#.into())));
        assert_eq!((row.get("id"), row.get("ok")), (Some(&Value::String("p-1".into())), Some(&Value::Bool(true))));
        assert_eq!(message_content(row.get("content").unwrap()), json.as_bytes());
        let text = message_row("audit", b"order 7 placed");
        assert_eq!(text.get("content"), Some(&Value::String("order 7 placed".into())));
        let bytes = message_row("bin", &[0, 0xff, 0x10]);
        assert_eq!(bytes.get("content"), Some(&Value::String("\\x00ff10".into())));
        assert_eq!(message_content(bytes.get("content").unwrap()), vec![0, 0xff, 0x10]);
    }
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
             "json_columns":["prefs"],
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
