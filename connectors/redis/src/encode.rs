//! Turning one change into the versioned operations the server-side script
//! applies (`apply.lua`).
//!
//! This is pure (no I/O) so every mapping's command building is unit-tested
//! without a server, including RedisJSON which the test machines lack. Errors
//! here are per record (a missing or NULL column in a template, a score that
//! is not a number): the record is rejected and the rest of the batch goes on.

use std::borrow::Cow;

use pgfanout_sdk::{Change, Op, Position, Row, Template, Value};

use crate::args::{hash_partial_args, hash_row_args, json, json_op, row_json_with_toast};
use crate::config::{MappingKind, RedisMapping};
use crate::moves::{into_move, old_target, old_view};
use crate::toast::{toast_from_before, unchanged_value};

/// The version-hash field used for targets that are a whole key.
pub(crate) const WHOLE_KEY: &str = "_key";

/// A mapping with its templates parsed.
#[derive(Debug, Clone)]
pub(crate) struct CompiledMapping {
    pub(crate) kind: MappingKind,
    pub(crate) key: Template,
    pub(crate) field: Option<Template>,
    pub(crate) value: Option<Template>,
    column: Option<String>,
    member: Option<Template>,
    score: Option<String>,
    maxlen: Option<u64>,
    ttl_secs: u64,
}

impl CompiledMapping {
    /// Parses a mapping; the error names the first invalid option.
    pub(crate) fn compile(m: &RedisMapping) -> Result<CompiledMapping, String> {
        if let Some((path, msg)) = m.validate().into_iter().next() {
            return Err(format!("{path}: {msg}"));
        }
        let parse = |t: &Option<String>| t.as_deref().map(Template::parse).transpose().map_err(|e| e.to_string());
        Ok(CompiledMapping {
            kind: m.kind,
            key: Template::parse(&m.key).map_err(|e| e.to_string())?,
            field: parse(&m.field)?,
            value: parse(&m.value)?,
            column: m.column.as_ref().map(|c| c.trim().to_string()),
            member: parse(&m.member)?,
            score: m.score.as_ref().map(|c| c.trim().to_string()),
            maxlen: m.maxlen,
            ttl_secs: m.ttl.map_or(0, |d| d.as_secs()),
        })
    }

    pub(crate) fn kind(&self) -> MappingKind {
        self.kind
    }
}

/// One argument of an operation: borrowed from the change where it is a
/// column name or a value's text as received, built where it is not.
pub(crate) type Arg<'a> = Cow<'a, [u8]>;

/// One operation of the script: `code key sub version ttl nargs args...`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ScriptOp<'a> {
    pub code: &'static str,
    pub key: String,
    /// Field or member, or [`WHOLE_KEY`].
    pub sub: String,
    pub version: String,
    pub ttl_secs: u64,
    pub args: Vec<Arg<'a>>,
}

/// The operations of one record, and the key that picks its lane.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Encoded<'a> {
    pub lane_key: String,
    /// A row that moved and is completed from its old entry: the old key,
    /// whose lane the record must travel in (after every earlier change of
    /// the old key); see the sink's lane rules.
    pub lane_from: Option<String>,
    pub ops: Vec<ScriptOp<'a>>,
}

impl Encoded<'_> {
    /// The same operations, owning their arguments.
    fn into_owned(self) -> Encoded<'static> {
        let ops = self
            .ops
            .into_iter()
            .map(|op| ScriptOp { args: op.args.into_iter().map(|a| Cow::Owned(a.into_owned())).collect(), ..op })
            .collect();
        Encoded { lane_key: self.lane_key, lane_from: self.lane_from, ops }
    }
}

/// The version string of a position: fixed-width decimal, so comparing the
/// strings compares the positions.
pub(crate) fn version(p: Position) -> String {
    p.sortable_text()
}

/// Builds the operations for one change. `Ok` with no operations means there
/// is nothing to write (a truncate on a non-stream mapping).
pub(crate) fn encode<'a>(m: &CompiledMapping, change: &'a Change) -> Result<Encoded<'a>, String> {
    if change.op == Op::Truncate && m.kind != MappingKind::Stream {
        return Ok(Encoded { lane_key: String::new(), lane_from: None, ops: Vec::new() });
    }
    // A stream records the change as PostgreSQL sent it.
    match if m.kind == MappingKind::Stream { None } else { toast_from_before(change) } {
        Some(completed) => encode_complete(m, &completed).map(Encoded::into_owned),
        None => encode_complete(m, change),
    }
}

/// [`encode`] of a change whose TOAST columns are as complete as they get.
fn encode_complete<'a>(m: &CompiledMapping, change: &'a Change) -> Result<Encoded<'a>, String> {
    let ver = version(change.position());
    let key = m.key.render(change).map_err(|e| format!("key: {e}"))?;
    let op = |code: &'static str, key: &str, sub: &str, args: Vec<Arg<'a>>| ScriptOp {
        code,
        key: key.to_string(),
        sub: sub.to_string(),
        version: ver.clone(),
        ttl_secs: m.ttl_secs,
        args,
    };
    let delete = change.op == Op::Delete;
    let mut ops = Vec::with_capacity(1);
    // Where an update moved the row (key or member changed), the old target
    // is removed at the same version before the new one is written (after
    // it, when the new one is completed from it: see `into_move`).
    let old = if change.op == Op::Update && change.before.is_some() { Some(old_view(change)) } else { None };
    let mut moved_from: Option<(String, String)> = None;
    // A whole key that moved: the old key is removed.
    let remove_old_key = |ops: &mut Vec<ScriptOp<'a>>, moved_from: &mut Option<(String, String)>| {
        if let Some((old_key, _)) = old_target(&m.key, None, old.as_ref(), &key, None) {
            ops.push(op("D", &old_key, WHOLE_KEY, vec![]));
            *moved_from = Some((old_key, WHOLE_KEY.to_string()));
        }
    };
    match m.kind {
        MappingKind::Hash => match &m.field {
            None => {
                remove_old_key(&mut ops, &mut moved_from);
                if delete {
                    ops.push(op("D", &key, WHOLE_KEY, vec![]));
                } else if change.unchanged_toast.is_empty() {
                    ops.push(op("H", &key, WHOLE_KEY, hash_row_args(after(change)?)));
                } else {
                    ops.push(op("HP", &key, WHOLE_KEY, hash_partial_args(after(change)?, change)));
                }
            }
            Some(field_t) => {
                let field = field_t.render(change).map_err(|e| format!("field: {e}"))?;
                if let Some((k, f)) = old_target(&m.key, Some(field_t), old.as_ref(), &key, Some(&field)) {
                    let f = f.unwrap_or_default();
                    ops.push(op("HFD", &k, &f, vec![]));
                    moved_from = Some((k, f));
                }
                if delete {
                    ops.push(op("HFD", &key, &field, vec![]));
                } else if let Some(value_t) = &m.value {
                    match value_t.render(change) {
                        Ok(v) => ops.push(op("HF", &key, &field, vec![Cow::Owned(v.into_bytes())])),
                        Err(e) => match unchanged_value(value_t, &e, change)? {
                            Some(col) => ops.push(op("V", &key, &field, vec![Cow::Owned(col.as_bytes().to_vec())])),
                            None => return Err(format!("value: {e}")),
                        },
                    }
                } else {
                    let code = if change.unchanged_toast.is_empty() { "HF" } else { "HM" };
                    ops.push(op(code, &key, &field, row_json_with_toast(after(change)?, change)));
                }
            }
        },
        MappingKind::String => {
            remove_old_key(&mut ops, &mut moved_from);
            if delete {
                ops.push(op("D", &key, WHOLE_KEY, vec![]));
            } else if let Some(col) = &m.column {
                let row = after(change)?;
                match row.get(col) {
                    Some(v) => ops.push(op("S", &key, WHOLE_KEY, vec![Cow::Owned(json(v))])),
                    None if change.unchanged_toast.iter().any(|c| &**c == col) => {
                        ops.push(op("V", &key, WHOLE_KEY, vec![Cow::Owned(col.as_bytes().to_vec())]))
                    }
                    None => return Err(format!("column: the record has no column {col:?}")),
                }
            } else {
                ops.push(op("S", &key, WHOLE_KEY, row_json_with_toast(after(change)?, change)));
            }
        }
        MappingKind::Json => {
            remove_old_key(&mut ops, &mut moved_from);
            if delete {
                ops.push(op("D", &key, WHOLE_KEY, vec![]));
            } else {
                let (code, args) = json_op(after(change)?, change);
                ops.push(op(code, &key, WHOLE_KEY, args));
            }
        }
        MappingKind::Set | MappingKind::SortedSet => {
            let (add, remove) = if m.kind == MappingKind::Set { ("SA", "SR") } else { ("ZA", "ZR") };
            let member_t = m.member.as_ref().ok_or("member: missing")?;
            let member = member_t.render(change).map_err(|e| format!("member: {e}"))?;
            if let Some((k, mem)) = old_target(&m.key, Some(member_t), old.as_ref(), &key, Some(&member)) {
                ops.push(op(remove, &k, &mem.unwrap_or_default(), vec![]));
            }
            if delete {
                ops.push(op(remove, &key, &member, vec![]));
            } else if add == "SA" {
                ops.push(op(add, &key, &member, vec![]));
            } else {
                let col = m.score.as_deref().unwrap_or_default();
                let score = match after(change)?.get(col) {
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::String(s)) if s.trim().parse::<f64>().is_ok() => s.trim().to_string(),
                    Some(Value::Null) => return Err(format!("score: column {col:?} is NULL")),
                    Some(other) => return Err(format!("score: column {col:?} is not a number: {}", other.to_json_string())),
                    None => return Err(format!("score: the record has no column {col:?}")),
                };
                ops.push(op(add, &key, &member, vec![Cow::Owned(score.into_bytes())]));
            }
        }
        MappingKind::Stream => {
            let mut record = Vec::with_capacity(256);
            change.write_json(&mut record);
            let maxlen = m.maxlen.unwrap_or(0).to_string();
            // A replayed change has the same position as the entry already
            // appended: skip it. Snapshot rows share one position, so they
            // cannot be told apart and are appended again on a replay.
            let skip_equal = if change.op == Op::Read { "0" } else { "1" };
            let args = vec![
                Cow::Owned(maxlen.into_bytes()),
                Cow::Borrowed(skip_equal.as_bytes()),
                Cow::Borrowed(&b"op"[..]),
                Cow::Borrowed(change.op.as_str().as_bytes()),
                Cow::Borrowed(&b"table"[..]),
                Cow::Owned(change.qualified_table().into_bytes()),
                Cow::Borrowed(&b"change"[..]),
                Cow::Owned(record),
            ];
            ops.push(op("X", &key, WHOLE_KEY, args));
        }
    }
    let lane_from = match moved_from {
        Some(from) if ops.len() == 2 => into_move(&mut ops, from),
        _ => None,
    };
    Ok(Encoded { lane_key: key, lane_from, ops })
}
fn after(change: &Change) -> Result<&Row, String> {
    change.after.as_ref().ok_or_else(|| format!("a {} record has no row to write", change.op))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfanout_sdk::Lsn;
    use std::sync::Arc;

    fn mapping(json: &str) -> CompiledMapping {
        CompiledMapping::compile(&serde_json::from_str(json).unwrap()).unwrap()
    }

    fn row(cols: &[(&str, Value)]) -> Row {
        Row(cols.iter().map(|(c, v)| (Arc::from(*c), v.clone())).collect())
    }

    fn num(n: &str) -> Value {
        Value::Number(n.into())
    }

    fn change(op: Op, after: Option<Row>, before: Option<Row>) -> Change {
        Change {
            op,
            schema: "public".into(),
            table: "items".into(),
            key: Some(row(&[("id", num("1"))])),
            before,
            after,
            unchanged_toast: vec![],
            lsn: Lsn(10),
            commit_lsn: Lsn(0x20),
            ordinal: 3,
            xid: Some(7),
            commit_ts: None,
        }
    }

    fn text(args: &[Arg<'_>]) -> Vec<String> {
        args.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect()
    }

    #[test]
    fn versions_sort_like_positions() {
        let a = version(Position { commit_lsn: Lsn(9), ordinal: 99 });
        let b = version(Position { commit_lsn: Lsn(10), ordinal: 0 });
        let c = version(Position { commit_lsn: Lsn(u64::MAX), ordinal: u32::MAX });
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_eq!(a.len(), c.len());
    }

    #[test]
    fn hash_row_sets_present_columns_and_removes_nulls() {
        let m = mapping(r#"{"type":"hash","key":"item:{id}"}"#);
        let c = change(Op::Insert, Some(row(&[("id", num("1")), ("name", Value::String("a".into())), ("note", Value::Null)])), None);
        let e = encode(&m, &c).unwrap();
        assert_eq!(e.lane_key, "item:1");
        assert_eq!(e.ops.len(), 1);
        assert_eq!(e.ops[0].code, "H");
        assert_eq!(text(&e.ops[0].args), ["id", "1", "name", "a"]);
        // Without its unchanged TOAST columns: set, removed, kept.
        let mut c = change(Op::Update, Some(row(&[("id", num("1")), ("note", Value::Null)])), None);
        c.unchanged_toast = vec!["bio".into()];
        let e = encode(&m, &c).unwrap();
        assert_eq!((e.ops[0].code, text(&e.ops[0].args)), ("HP", ["2", "id", "1", "1", "note", "bio"].map(String::from).to_vec()));
        assert_eq!(e.ops[0].version, "000000000000000000320000000003");
    }

    #[test]
    fn hash_field_value_and_toast() {
        let m = mapping(r#"{"type":"hash","key":"cart:{user_id}","field":"{product_id}","value":"{quantity}","ttl":"7d"}"#);
        let mut c = change(Op::Update, Some(row(&[("user_id", num("7")), ("product_id", num("3"))])), None);
        c.unchanged_toast = vec!["quantity".into()];
        let e = encode(&m, &c).unwrap();
        assert_eq!((e.ops[0].code, e.ops[0].key.as_str(), e.ops[0].sub.as_str(), e.ops[0].ttl_secs), ("V", "cart:7", "3", 7 * 86400));
        assert_eq!(text(&e.ops[0].args), ["quantity"]);
        // A value that also reads a column that was sent cannot be built.
        let m = mapping(r#"{"type":"hash","key":"cart:{user_id}","field":"{product_id}","value":"{note}:{quantity}"}"#);
        let mut c = change(Op::Update, Some(row(&[("user_id", num("7")), ("product_id", num("3")), ("note", num("1"))])), None);
        c.unchanged_toast = vec!["quantity".into()];
        let err = encode(&m, &c).unwrap_err();
        assert!(err.contains("\"quantity\"") && err.contains("\"note\"") && err.contains("REPLICA IDENTITY FULL"), "{err}");
        let c = change(Op::Delete, None, Some(row(&[("user_id", num("7")), ("product_id", num("3"))])));
        assert_eq!(encode(&m, &c).unwrap().ops[0].code, "HFD");
        let c = change(Op::Insert, Some(row(&[("user_id", num("7"))])), None);
        assert!(encode(&m, &c).unwrap_err().contains("product_id"));
    }

    #[test]
    fn moved_member_is_removed_from_the_old_key() {
        let m = mapping(r#"{"type":"sorted_set","key":"cat:{cat}","member":"{id}","score":"price"}"#);
        let c = change(
            Op::Update,
            Some(row(&[("id", num("1")), ("cat", num("2")), ("price", num("9.5"))])),
            Some(row(&[("id", num("1")), ("cat", num("1")), ("price", num("9.5"))])),
        );
        let e = encode(&m, &c).unwrap();
        let ops: Vec<_> = e.ops.iter().map(|o| (o.code, o.key.as_str(), o.sub.as_str())).collect();
        assert_eq!(ops, [("ZR", "cat:1", "1"), ("ZA", "cat:2", "1")]);
        assert_eq!(text(&e.ops[1].args), ["9.5"]);
        let bad = change(Op::Insert, Some(row(&[("id", num("1")), ("cat", num("2")), ("price", Value::Bool(true))])), None);
        assert!(encode(&m, &bad).unwrap_err().contains("not a number"));
    }

    #[test]
    fn json_full_and_partial_commands() {
        let m = mapping(r#"{"type":"json","key":"p:{id}"}"#);
        let full = change(Op::Insert, Some(row(&[("id", num("1")), ("tags", Value::Json(r#"["a"]"#.into()))])), None);
        let e = encode(&m, &full).unwrap();
        assert_eq!((e.ops[0].code, text(&e.ops[0].args)), ("J", vec![r#"{"id":1,"tags":["a"]}"#.to_string()]));
        let mut partial = change(Op::Update, Some(row(&[("id", num("1")), ("odd col", Value::Null)])), None);
        partial.unchanged_toast = vec!["body".into()];
        let e = encode(&m, &partial).unwrap();
        assert_eq!(e.ops[0].code, "JP");
        assert_eq!(text(&e.ops[0].args), ["1", "$.body", "$.id", "1", r#"$["odd col"]"#, "null"]);
        let del = change(Op::Delete, None, Some(row(&[("id", num("1"))])));
        assert_eq!(encode(&m, &del).unwrap().ops[0].code, "D");
    }

    #[test]
    fn string_column_and_row() {
        let m = mapping(r#"{"type":"string","key":"u:{id}","column":"prefs"}"#);
        let c = change(Op::Insert, Some(row(&[("id", num("1")), ("prefs", Value::Json(r#"{"a":1}"#.into()))])), None);
        assert_eq!(text(&encode(&m, &c).unwrap().ops[0].args), [r#"{"a":1}"#]);
        let m = mapping(r#"{"type":"string","key":"u:{id}"}"#);
        let mut c = change(Op::Update, Some(row(&[("id", num("1"))])), None);
        c.unchanged_toast = vec!["bio".into()];
        let e = encode(&m, &c).unwrap();
        assert_eq!((e.ops[0].code, text(&e.ops[0].args)), ("S", vec![r#"{"id":1}"#.to_string(), "bio".to_string()]));
    }

    #[test]
    fn unchanged_toast_comes_from_a_full_old_row() {
        let m = mapping(r#"{"type":"hash","key":"item:{id}"}"#);
        let big = Value::String("x".repeat(3000).into());
        let mut c = change(
            Op::Update,
            Some(row(&[("id", num("2")), ("name", Value::String("b".into()))])),
            Some(row(&[("id", num("1")), ("name", Value::String("a".into())), ("big", big.clone())])),
        );
        c.unchanged_toast = vec!["big".into()];
        let e = encode(&m, &c).unwrap();
        let ops: Vec<_> = e.ops.iter().map(|o| (o.code, o.key.as_str())).collect();
        assert_eq!(ops, [("D", "item:1"), ("H", "item:2")]);
        assert_eq!(e.ops[1].code, "H");
        assert_eq!(text(&e.ops[1].args), ["id".to_string(), "2".into(), "name".into(), "b".into(), "big".into(), "x".repeat(3000)]);
        assert_eq!(e.lane_from, None);
        // Without the old row (the default replica identity sends the old
        // key columns only) the column is copied from the old hash: the move
        // goes first, in the old key's lane, then the old key is removed.
        c.before = Some(row(&[("id", num("1"))]));
        let e = encode(&m, &c).unwrap();
        let ops: Vec<_> = e.ops.iter().map(|o| (o.code, o.key.as_str(), o.sub.as_str())).collect();
        assert_eq!(ops, [("HPM", "item:2", "_key"), ("D", "item:1", "_key")]);
        assert_eq!(text(&e.ops[0].args), ["item:1", "_key", "4", "id", "2", "name", "b", "0", "big"].map(String::from).to_vec());
        assert_eq!((e.lane_key.as_str(), e.lane_from.as_deref()), ("item:2", Some("item:1")));
        assert_eq!(e.ops[0].version, e.ops[1].version);
    }

    #[test]
    fn a_moved_row_with_unchanged_toast_is_copied_from_its_old_target() {
        let mut c = change(Op::Update, Some(row(&[("id", num("2")), ("name", Value::String("b".into()))])), Some(row(&[("id", num("1"))])));
        c.unchanged_toast = vec!["big".into()];
        let cases = [
            (
                r#"{"type":"string","key":"doc:{id}"}"#,
                [("SM", "doc:2", "_key"), ("D", "doc:1", "_key")],
                vec!["doc:1", "_key", r#"{"id":2,"name":"b"}"#, "big"],
            ),
            (
                r#"{"type":"hash","key":"docs","field":"{id}"}"#,
                [("HMM", "docs", "2"), ("HFD", "docs", "1")],
                vec!["docs", "1", r#"{"id":2,"name":"b"}"#, "big"],
            ),
            (
                r#"{"type":"string","key":"big:{id}","column":"big"}"#,
                [("VM", "big:2", "_key"), ("D", "big:1", "_key")],
                vec!["big:1", "_key", "big"],
            ),
            (
                r#"{"type":"hash","key":"bigs:{id}","field":"f","value":"{big}"}"#,
                [("VM", "bigs:2", "f"), ("HFD", "bigs:1", "f")],
                vec!["bigs:1", "f", "big"],
            ),
            (
                r#"{"type":"json","key":"j:{id}"}"#,
                [("JPM", "j:2", "_key"), ("D", "j:1", "_key")],
                vec!["j:1", "_key", "1", "$.big", "$.id", "2", "$.name", "\"b\""],
            ),
        ];
        for (json, want, args) in cases {
            let e = encode(&mapping(json), &c).unwrap();
            let ops: Vec<_> = e.ops.iter().map(|o| (o.code, o.key.as_str(), o.sub.as_str())).collect();
            assert_eq!(ops, want, "{json}");
            assert_eq!(text(&e.ops[0].args), args, "{json}");
            assert_eq!(e.lane_from.as_deref(), Some(want[1].1), "{json}");
        }
        // Nothing stored is needed: whole rows and members keep the old
        // order (removal first) and their own lane.
        let whole = change(Op::Update, Some(row(&[("id", num("2")), ("big", num("1"))])), Some(row(&[("id", num("1"))])));
        let e = encode(&mapping(r#"{"type":"string","key":"doc:{id}"}"#), &whole).unwrap();
        assert_eq!((e.ops[0].code, e.ops[1].code, e.lane_from), ("D", "S", None));
        let e = encode(&mapping(r#"{"type":"set","key":"s","member":"{id}"}"#), &c).unwrap();
        assert_eq!((e.ops[0].code, e.ops[1].code, e.lane_from), ("SR", "SA", None));
        // Not moved: a plain partial write.
        let mut same = c.clone();
        same.before = Some(row(&[("id", num("2"))]));
        let e = encode(&mapping(r#"{"type":"string","key":"doc:{id}"}"#), &same).unwrap();
        assert_eq!((e.ops.len(), e.ops[0].code, e.lane_from), (1, "S", None));
    }

    #[test]
    fn stream_appends_every_op_and_truncate_elsewhere_is_a_no_op() {
        let m = mapping(r#"{"type":"stream","key":"changes:{table}","maxlen":1000}"#);
        let mut t = change(Op::Truncate, None, None);
        t.key = None;
        let e = encode(&m, &t).unwrap();
        let args = text(&e.ops[0].args);
        assert_eq!(
            (e.ops[0].code, e.lane_key.as_str(), &args[..6]),
            ("X", "changes:items", &["1000", "1", "op", "truncate", "table", "public.items"].map(String::from)[..])
        );
        assert!(args[7].starts_with(r#"{"op":"truncate""#));
        let h = mapping(r#"{"type":"hash","key":"item:{id}"}"#);
        assert!(encode(&h, &t).unwrap().ops.is_empty());
    }
}
