//! Reading pgfanout's own change record (`format: native`) back into the
//! [`Change`] it was written from, value for value.
//!
//! The record's JSON is what [`Change::write_json`] wrote, so every value
//! comes back as the same [`Value`]: a number keeps its text (a 25-digit
//! numeric stays 25 digits), a string is a string, an object is a composite
//! with its attributes in order, an array an array, and a column listed in
//! `json_columns` (json, jsonb) keeps its text verbatim, as PostgreSQL
//! printed it. The position comes from the record's `pgfanout.commit_lsn`
//! and `pgfanout.ordinal` headers, which the Kafka sink writes by default;
//! a record without them cannot be versioned and is refused.
//!
//! Limits: a json value nested inside an array or a composite (a `jsonb[]`
//! column, a composite with a jsonb attribute) comes back as the array or
//! object it contains; stores that write JSON write the same text, stores
//! with typed properties (Neo4j, MongoDB) see a structure instead of the
//! json text.

use std::sync::Arc;

use pgfanout_sdk::{Change, Lsn, Op, Row, Value};
use rdkafka::message::{BorrowedHeaders, Headers};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::encode::header;

#[derive(Deserialize)]
struct Record<'a> {
    op: String,
    schema: String,
    table: String,
    #[serde(borrow)]
    key: Option<Members<'a>>,
    #[serde(borrow)]
    before: Option<Members<'a>>,
    #[serde(borrow)]
    after: Option<Members<'a>>,
    #[serde(default)]
    unchanged_toast: Vec<String>,
    #[serde(default)]
    json_columns: Vec<String>,
    lsn: String,
    commit_lsn: String,
    xid: Option<u32>,
    commit_ts: Option<String>,
}

/// An object's members in their order, values still raw.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Members<'a>, M::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((k, v)) = map.next_entry::<String, &'a RawValue>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The change a native record carries. `headers` must hold the position.
pub fn decode(payload: &[u8], headers: Option<&BorrowedHeaders>) -> Result<Change, String> {
    let r: Record = serde_json::from_slice(payload).map_err(|e| format!("not a pgfanout change record: {e}"))?;
    let op = Op::parse(&r.op).ok_or_else(|| format!("unknown op {:?}", r.op))?;
    let header = |name: &str| -> Option<&str> {
        let h = headers?;
        (0..h.count()).map(|i| h.get(i)).find(|h| h.key == name).and_then(|h| h.value).and_then(|v| std::str::from_utf8(v).ok())
    };
    let ordinal = header(header::ORDINAL)
        .ok_or(
            "the record has no pgfanout.ordinal header, so its version is unknown: keep the producing Kafka sink's headers (headers: all)",
        )?
        .parse::<u32>()
        .map_err(|e| format!("pgfanout.ordinal header: {e}"))?;
    let commit_lsn: Lsn = r.commit_lsn.parse().map_err(|e| format!("commit_lsn: {e}"))?;
    if let Some(h) = header(header::COMMIT_LSN) {
        if h.parse::<Lsn>().ok() != Some(commit_lsn) {
            return Err(format!("the pgfanout.commit_lsn header {h} differs from the record's commit_lsn {commit_lsn}"));
        }
    }
    let json: Vec<&str> = r.json_columns.iter().map(String::as_str).collect();
    let row = |m: Option<Members>| m.map(|m| members(m, &json)).transpose();
    let commit_ts = match &r.commit_ts {
        Some(t) => Some(micros(t)?),
        None => None,
    };
    Ok(Change {
        op,
        schema: Arc::from(r.schema),
        table: Arc::from(r.table),
        key: row(r.key)?,
        before: row(r.before)?,
        after: row(r.after)?,
        unchanged_toast: r.unchanged_toast.into_iter().map(Arc::from).collect(),
        lsn: r.lsn.parse().map_err(|e| format!("lsn: {e}"))?,
        commit_lsn,
        ordinal,
        xid: r.xid,
        commit_ts,
    })
}

/// The old key's tombstone after a key change, when it names the key it
/// removes (its `pgfanout.moved_key` header): the delete of that key, at the
/// key change's position. Read in the old key's partition, after that key's
/// earlier changes, it keeps them from outliving the move, which travels in
/// the new key's partition. `None` for any other tombstone.
pub fn moved(headers: Option<&BorrowedHeaders>) -> Option<Result<Change, String>> {
    let h = headers?;
    let get = |name: &str| (0..h.count()).map(|i| h.get(i)).find(|h| h.key == name).and_then(|h| h.value);
    let old = get(header::MOVED_KEY)?;
    Some((|| {
        let text = |name: &str| {
            get(name).and_then(|v| std::str::from_utf8(v).ok()).ok_or_else(|| format!("a moved key's tombstone without its {name} header"))
        };
        let key = members(serde_json::from_slice::<Members>(old).map_err(|e| format!("{}: {e}", header::MOVED_KEY))?, &[])?;
        Ok(Change {
            op: Op::Delete,
            schema: Arc::from(text(header::SCHEMA)?),
            table: Arc::from(text(header::TABLE)?),
            key: Some(key.clone()),
            before: Some(key),
            after: None,
            unchanged_toast: Vec::new(),
            lsn: text(header::LSN)?.parse().map_err(|e| format!("{}: {e}", header::LSN))?,
            commit_lsn: text(header::COMMIT_LSN)?.parse().map_err(|e| format!("{}: {e}", header::COMMIT_LSN))?,
            ordinal: text(header::ORDINAL)?.parse().map_err(|e| format!("{}: {e}", header::ORDINAL))?,
            xid: get(header::XID).and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()),
            commit_ts: None,
        })
    })())
}

fn members(m: Members, json: &[&str]) -> Result<Row, String> {
    m.0.into_iter()
        .map(|(name, raw)| {
            let v = if json.contains(&name.as_str()) { Value::Json(raw.get().into()) } else { value(raw)? };
            Ok((Arc::from(name), v))
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Row)
}

fn value(raw: &RawValue) -> Result<Value, String> {
    let text = raw.get();
    let bad = |e: serde_json::Error| format!("value {text:?}: {e}");
    Ok(match text.as_bytes().first() {
        Some(b'{') => Value::Object(
            serde_json::from_str::<Members>(text)
                .map_err(bad)?
                .0
                .into_iter()
                .map(|(k, v)| Ok((Arc::from(k), value(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        Some(b'[') => {
            Value::Array(serde_json::from_str::<Vec<&RawValue>>(text).map_err(bad)?.into_iter().map(value).collect::<Result<_, _>>()?)
        }
        Some(b'"') => Value::String(serde_json::from_str::<String>(text).map_err(bad)?.as_str().into()),
        Some(b't') => Value::Bool(true),
        Some(b'f') => Value::Bool(false),
        Some(b'n') => Value::Null,
        // RawValue holds valid JSON: what is left is a number, kept as text.
        _ => Value::Number(text.into()),
    })
}

/// `2026-11-24T10:00:00.123456Z` as microseconds since the Unix epoch.
fn micros(t: &str) -> Result<i64, String> {
    let at = humantime::parse_rfc3339(t).map_err(|e| format!("commit_ts {t:?}: {e}"))?;
    Ok(match at.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_micros()).unwrap_or(i64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders};

    fn headers(ordinal: &str, commit_lsn: &str) -> OwnedHeaders {
        OwnedHeaders::new()
            .insert(Header { key: header::COMMIT_LSN, value: Some(commit_lsn) })
            .insert(Header { key: header::ORDINAL, value: Some(ordinal) })
    }

    fn roundtrip(c: &Change) -> Change {
        let json = c.to_json_string();
        let h = headers(&c.ordinal.to_string(), &c.commit_lsn.to_string());
        decode(json.as_bytes(), Some(h.as_borrowed())).unwrap_or_else(|e| panic!("{e}: {json}"))
    }

    #[test]
    fn every_value_comes_back_as_it_was_written() {
        let row = Row(vec![
            ("id".into(), Value::Number("42".into())),
            ("big".into(), Value::Number("648199.3821223196731458777".into())),
            ("f".into(), Value::Number("1.5e-300".into())),
            ("nan".into(), Value::String("NaN".into())),
            ("s".into(), Value::String("a \"quoted\" \u{1F600} \\ line\nbreak".into())),
            ("doc".into(), Value::Json(r#"{"b": [1, 2.50], "a": null}"#.into())),
            ("scalar_json".into(), Value::Json("5".into())),
            ("string_json".into(), Value::Json(r#""x""#.into())),
            ("arr".into(), Value::Array(vec![Value::Array(vec![Value::Number("1".into()), Value::Null]), Value::Array(vec![])])),
            (
                "comp".into(),
                Value::Object(vec![("z".into(), Value::Bool(true)), ("a".into(), Value::Number("1.10".into())), ("m".into(), Value::Null)]),
            ),
            ("t".into(), Value::Bool(false)),
            ("n".into(), Value::Null),
        ]);
        let c = Change {
            op: Op::Update,
            schema: "public".into(),
            table: "zoo".into(),
            key: Some(Row(vec![("id".into(), Value::Number("42".into()))])),
            before: Some(Row(vec![("id".into(), Value::Number("41".into()))])),
            after: Some(row),
            unchanged_toast: vec!["bio".into()],
            lsn: Lsn(0x1_16B3_7480),
            commit_lsn: Lsn(0x1_16B3_7A00),
            ordinal: 70_000,
            xid: Some(751),
            commit_ts: Some(1_764_000_000_123_456),
        };
        assert_eq!(roundtrip(&c), c);
        let json = c.to_json_string();
        assert!(json.contains(r#""json_columns":["doc","scalar_json","string_json"]"#), "{json}");
        let del = Change { op: Op::Delete, after: None, unchanged_toast: vec![], xid: None, commit_ts: None, ..c.clone() };
        assert_eq!(roundtrip(&del), del);
        let trunc = Change { op: Op::Truncate, key: None, before: None, after: None, unchanged_toast: vec![], ..c };
        assert_eq!(roundtrip(&trunc), trunc);
    }

    #[test]
    fn the_old_keys_tombstone_after_a_key_change_is_the_delete_of_that_key() {
        let h = OwnedHeaders::new()
            .insert(Header { key: header::LSN, value: Some("0/20") })
            .insert(Header { key: header::COMMIT_LSN, value: Some("0/30") })
            .insert(Header { key: header::ORDINAL, value: Some("2") })
            .insert(Header { key: header::SCHEMA, value: Some("public") })
            .insert(Header { key: header::TABLE, value: Some("items") })
            .insert(Header { key: header::MOVED_KEY, value: Some(r#"{"id":142,"region":"eu"}"#) });
        let c = moved(Some(h.as_borrowed())).unwrap().unwrap();
        assert_eq!((c.op, &*c.table, c.commit_lsn, c.ordinal), (Op::Delete, "items", Lsn(0x30), 2));
        let key = Row(vec![("id".into(), Value::Number("142".into())), ("region".into(), Value::String("eu".into()))]);
        assert_eq!((c.key.as_ref(), c.before.as_ref(), c.after.as_ref()), (Some(&key), Some(&key), None));
        assert!(moved(Some(headers("0", "0/9").as_borrowed())).is_none(), "a delete's own tombstone carries nothing");
        assert!(moved(None).is_none());
    }

    #[test]
    fn a_record_without_its_position_or_with_a_wrong_one_is_refused() {
        let c = Change {
            op: Op::Insert,
            schema: "public".into(),
            table: "t".into(),
            key: None,
            before: None,
            after: Some(Row(vec![("id".into(), Value::Number("1".into()))])),
            unchanged_toast: vec![],
            lsn: Lsn(5),
            commit_lsn: Lsn(9),
            ordinal: 0,
            xid: None,
            commit_ts: None,
        };
        let json = c.to_json_string();
        let e = decode(json.as_bytes(), None).unwrap_err();
        assert!(e.contains("headers: all"), "{e}");
        let e = decode(json.as_bytes(), Some(headers("0", "0/8").as_borrowed())).unwrap_err();
        assert!(e.contains("differs"), "{e}");
        let e = decode(b"{\"op\":\"insert\"", Some(headers("0", "0/9").as_borrowed())).unwrap_err();
        assert!(e.contains("not a pgfanout change record"), "{e}");
    }
}
