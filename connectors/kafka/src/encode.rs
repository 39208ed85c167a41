//! Turning one change into the Kafka record(s) that carry it: topic, key,
//! value and headers.
//!
//! Everything here is pure, so the mapping rules are unit-tested without a
//! broker. A record that cannot be encoded (a template column missing or
//! NULL, a rendered topic name Kafka would refuse) is an error for that
//! record only; the sink rejects it to the dead-letter destination.

use std::borrow::Cow;
use std::sync::Arc;

use pgfanout_sdk::{Change, Op, Row, Template};
use rdkafka::message::{Header, OwnedHeaders};

use crate::config::{check_topic_name, DebeziumConfig, Format, HeaderSet, KafkaMapping, OutboxColumns};
use crate::debezium;

/// Header names carried by every record (those `headers` asks for, all by
/// default). Consumers use `pgfanout.commit_lsn`
/// plus `pgfanout.ordinal` as the change's version to drop replays.
pub mod header {
    pub const LSN: &str = "pgfanout.lsn";
    pub const COMMIT_LSN: &str = "pgfanout.commit_lsn";
    pub const ORDINAL: &str = "pgfanout.ordinal";
    pub const XID: &str = "pgfanout.xid";
    pub const OP: &str = "pgfanout.op";
    pub const SCHEMA: &str = "pgfanout.schema";
    pub const TABLE: &str = "pgfanout.table";
    /// On the old key's tombstone after a key change: the old key columns
    /// as a JSON object, so a reader of the old key's partition (an
    /// applier) sees the row leave that key in that partition's order.
    pub const MOVED_KEY: &str = "pgfanout.moved_key";
}

/// The old key columns of a key change (from `before`), as a JSON object:
/// the [`header::MOVED_KEY`] header. `None` when `before` lacks them.
pub fn moved_key(change: &Change) -> Option<Vec<u8>> {
    let (Op::Update, Some(before), Some(key)) = (change.op, &change.before, &change.key) else { return None };
    let old = Row(key.iter().map(|(col, _)| Some((Arc::from(col), before.get(col)?.clone()))).collect::<Option<Vec<_>>>()?);
    let mut out = Vec::with_capacity(32);
    old.write_json(&mut out);
    Some(out)
}

/// A mapping with its templates parsed once.
#[derive(Debug, Clone)]
pub struct CompiledMapping {
    topic: Template,
    /// The topic when the template has no placeholder.
    constant_topic: Option<String>,
    key: Option<Template>,
    format: Format,
    tombstones: bool,
    /// `format: outbox`: the columns of the event id, type and payload.
    outbox: Option<OutboxColumns>,
}

/// One change, ready to produce, owned (the tests' form of [`EncodedRef`]).
/// The tombstone that may follow it is not a separate record: the sink
/// derives it from `tombstone`.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub topic: String,
    /// `None` for a record without key (truncate).
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// Whether a null-value record with the same key follows this one.
    pub tombstone: bool,
    /// For an update that changed the row's key, with tombstones on: the old
    /// key, whose tombstone follows this record so a compacted topic forgets
    /// the row under its old key.
    pub moved_from: Option<Vec<u8>>,
}

/// Reusable buffers for [`CompiledMapping::encode_into`].
#[derive(Debug, Default)]
pub struct EncodeBuf {
    topic: String,
    key: Vec<u8>,
    value: Vec<u8>,
    moved_from: Vec<u8>,
}

/// [`Encoded`], borrowing the mapping and an [`EncodeBuf`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EncodedRef<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub tombstone: bool,
    pub moved_from: Option<&'a [u8]>,
}

impl CompiledMapping {
    /// Parses the mapping's templates; the error names the bad field.
    pub fn compile(m: &KafkaMapping) -> Result<CompiledMapping, String> {
        if let Some((path, msg)) = m.validate().into_iter().next() {
            return Err(format!("{path}: {msg}"));
        }
        let topic = Template::parse(&m.topic).map_err(|e| format!("topic: {e}"))?;
        let constant_topic = topic.is_constant().then(|| m.topic.replace("{{", "{").replace("}}", "}"));
        let key = m.key.as_deref().map(Template::parse).transpose().map_err(|e| format!("key: {e}"))?;
        let outbox = (m.format == Format::Outbox).then(|| m.outbox.clone());
        Ok(CompiledMapping { topic, constant_topic, key, format: m.format, tombstones: m.tombstones, outbox })
    }

    /// Whether `change` publishes nothing: with `format: outbox`, anything
    /// but an insert (the outbox row's later delete, an update, a snapshot
    /// row). A logical message is an event too.
    pub fn skips(&self, change: &Change) -> bool {
        self.outbox.is_some() && !OutboxColumns::publishes(change)
    }

    /// `format: outbox`: the event's `id` and `eventType` headers, as the
    /// columns' text (a column that is missing or NULL sends no header).
    pub fn outbox_headers(&self, change: &Change) -> Vec<(&'static str, String)> {
        self.outbox.as_ref().map(|cols| cols.headers(change)).unwrap_or_default()
    }

    /// The topic when it does not depend on the record.
    pub fn constant_topic(&self) -> Option<&str> {
        self.constant_topic.as_deref()
    }

    /// The topic of `change`'s record, borrowed when it is constant.
    pub fn topic<'a>(&'a self, change: &Change) -> Result<Cow<'a, str>, String> {
        match &self.constant_topic {
            Some(t) => Ok(Cow::Borrowed(t)),
            None => {
                let mut t = String::new();
                self.render_topic(change, &mut t)?;
                Ok(Cow::Owned(t))
            }
        }
    }

    /// Renders the (templated) topic into `out` and checks it is a name
    /// Kafka accepts.
    fn render_topic(&self, change: &Change, out: &mut String) -> Result<(), String> {
        out.clear();
        self.topic.render_into(change, out).map_err(|e| e.to_string())?;
        check_topic_name(out).map_err(|e| format!("topic template {:?}: {e}", self.topic.source()))
    }

    /// The record for `change`, owned. `now_us` is the processing time
    /// (Debezium's top-level `ts_ms`).
    #[cfg(test)]
    pub fn encode(&self, change: &Change, dbz: &DebeziumConfig, now_us: i64) -> Result<Encoded, String> {
        let mut buf = EncodeBuf::default();
        let e = self.encode_into(change, dbz, now_us, &mut buf)?;
        Ok(Encoded {
            topic: e.topic.to_string(),
            key: e.key.map(<[u8]>::to_vec),
            value: e.value.to_vec(),
            tombstone: e.tombstone,
            moved_from: e.moved_from.map(<[u8]>::to_vec),
        })
    }

    /// The record for `change`, in `buf`'s buffers, reused from record to
    /// record: no allocation per record once they have grown. `now_us` is
    /// the processing time (Debezium's top-level `ts_ms`).
    pub fn encode_into<'a>(
        &'a self,
        change: &Change,
        dbz: &DebeziumConfig,
        now_us: i64,
        buf: &'a mut EncodeBuf,
    ) -> Result<EncodedRef<'a>, String> {
        let EncodeBuf { topic: topic_buf, key: key_buf, value, moved_from: moved_buf } = buf;
        let topic: &str = match &self.constant_topic {
            Some(t) => t,
            None => {
                self.render_topic(change, topic_buf)?;
                topic_buf
            }
        };
        key_buf.clear();
        let has_key = if change.op == Op::Truncate {
            false
        } else {
            match &self.key {
                Some(t) => {
                    let mut rendered = String::from_utf8(std::mem::take(key_buf)).unwrap_or_default();
                    let r = t.render_into(change, &mut rendered);
                    *key_buf = rendered.into_bytes();
                    r.map_err(|e| e.to_string())?;
                    true
                }
                None => match &change.key {
                    Some(k) => {
                        k.write_json(key_buf);
                        true
                    }
                    None => false,
                },
            }
        };
        value.clear();
        match self.format {
            Format::Native => change.write_json(value),
            Format::Debezium => debezium::write_envelope(value, change, dbz, now_us),
            Format::Outbox => match &self.outbox {
                Some(cols) => cols.payload(change)?.write_json(value),
                None => return Err("outbox: no outbox columns".into()),
            },
        }
        let key: Option<&[u8]> = has_key.then_some(key_buf.as_slice());
        let tombstone = self.tombstones && change.op == Op::Delete && has_key;
        moved_buf.clear();
        let moved = if self.tombstones {
            match self.old_key(change)? {
                Some(old) if Some(old.as_slice()) != key => {
                    moved_buf.extend_from_slice(&old);
                    true
                }
                _ => false,
            }
        } else {
            false
        };
        let moved_from = moved.then_some(moved_buf.as_slice());
        Ok(EncodedRef { topic, key, value, tombstone, moved_from })
    }

    /// The key the row had before an update, when the server sent the old
    /// key columns (the key changed, or REPLICA IDENTITY FULL).
    fn old_key(&self, change: &Change) -> Result<Option<Vec<u8>>, String> {
        let (Op::Update, Some(before), Some(key)) = (change.op, &change.before, &change.key) else { return Ok(None) };
        if !key.iter().all(|(col, _)| before.contains(col)) {
            return Ok(None);
        }
        match &self.key {
            None => {
                let old = Row(key.iter().filter_map(|(col, _)| before.get(col).map(|v| (Arc::from(col), v.clone()))).collect());
                let mut out = Vec::with_capacity(32);
                old.write_json(&mut out);
                Ok(Some(out))
            }
            Some(t) => {
                let old = Change { after: None, key: None, ..change.clone() };
                Ok(Some(t.render(&old).map_err(|e| format!("old key: {e}"))?.into_bytes()))
            }
        }
    }
}

/// The position and provenance headers of `change` (see [`header`]) that
/// `set` asks for; `None` for [`HeaderSet::None`]. A snapshot row has no
/// transaction: its `pgfanout.xid` header is null. The numbers are
/// formatted into `scratch` (reused across records); librdkafka copies
/// header values.
pub fn headers(change: &Change, set: HeaderSet, scratch: &mut Vec<u8>) -> Option<OwnedHeaders> {
    use std::io::Write;
    if set == HeaderSet::None {
        return None;
    }
    scratch.clear();
    // Writing into a Vec cannot fail.
    let _ = write!(scratch, "{}", change.lsn);
    let lsn_end = scratch.len();
    let _ = write!(scratch, "{}", change.commit_lsn);
    let commit_end = scratch.len();
    let _ = write!(scratch, "{}", change.ordinal);
    let ordinal_end = scratch.len();
    if let (HeaderSet::All, Some(x)) = (set, change.xid) {
        let _ = write!(scratch, "{x}");
    }
    let (lsn, rest) = scratch.split_at(lsn_end);
    let (commit_lsn, rest) = rest.split_at(commit_end - lsn_end);
    let (ordinal, xid) = rest.split_at(ordinal_end - commit_end);
    let position = OwnedHeaders::new_with_capacity(if set == HeaderSet::All { 7 } else { 3 })
        .insert(Header { key: header::LSN, value: Some(lsn) })
        .insert(Header { key: header::COMMIT_LSN, value: Some(commit_lsn) })
        .insert(Header { key: header::ORDINAL, value: Some(ordinal) });
    if set == HeaderSet::Position {
        return Some(position);
    }
    let xid = change.xid.map(|_| xid);
    Some(
        position
            .insert(Header { key: header::XID, value: xid })
            .insert(Header { key: header::OP, value: Some(change.op.as_str()) })
            .insert(Header { key: header::SCHEMA, value: Some(&*change.schema) })
            .insert(Header { key: header::TABLE, value: Some(&*change.table) }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfanout_sdk::{Lsn, Row, Value};
    use rdkafka::message::Headers;

    fn delete() -> Change {
        Change {
            op: Op::Delete,
            schema: "public".into(),
            table: "orders".into(),
            key: Some(Row(vec![("id".into(), Value::Number("7".into()))])),
            before: Some(Row(vec![("id".into(), Value::Number("7".into())), ("note".into(), Value::Null)])),
            after: None,
            unchanged_toast: vec![],
            lsn: Lsn(0x100),
            commit_lsn: Lsn(0x1_0000_0200),
            ordinal: 3,
            xid: Some(42),
            commit_ts: Some(0),
        }
    }

    fn mapping(v: serde_json::Value) -> CompiledMapping {
        CompiledMapping::compile(&serde_json::from_value(v).unwrap()).unwrap()
    }

    /// An outbox row's insert is an event: routed by aggregate type, keyed
    /// by aggregate id, the payload as it is, id and type as headers; the
    /// row's later delete and snapshot rows publish nothing.
    #[test]
    fn an_outbox_insert_is_an_event_and_its_delete_is_nothing() {
        let m = mapping(serde_json::json!({"topic": "outbox.event.{aggregatetype}", "key": "{aggregateid}", "format": "outbox"}));
        let payload = Value::Json(r#"{"total": 12.50, "items": [1, 2]}"#.into());
        let row = Row(vec![
            ("id".into(), Value::String("e-1".into())),
            ("aggregatetype".into(), Value::String("order".into())),
            ("aggregateid".into(), Value::String("o-9".into())),
            ("type".into(), Value::String("order_placed".into())),
            ("payload".into(), payload),
        ]);
        let insert = Change { op: Op::Insert, table: "outbox".into(), before: None, after: Some(row.clone()), ..delete() };
        let e = m.encode(&insert, &DebeziumConfig::default(), 0).unwrap();
        assert_eq!(e.topic, "outbox.event.order");
        assert_eq!(e.key.as_deref(), Some(&b"o-9"[..]));
        assert_eq!(String::from_utf8(e.value).unwrap(), r#"{"total": 12.50, "items": [1, 2]}"#, "the payload, digits kept");
        assert_eq!(m.outbox_headers(&insert), vec![("id", "e-1".to_string()), ("eventType", "order_placed".to_string())]);
        assert!(!m.skips(&insert));
        assert!(m.skips(&Change { op: Op::Delete, table: "outbox".into(), before: Some(row.clone()), after: None, ..delete() }));
        assert!(m.skips(&Change { op: Op::Read, after: Some(row), ..delete() }));
        let plain = mapping(serde_json::json!({"topic": "t"}));
        assert!(!plain.skips(&delete()) && plain.outbox_headers(&insert).is_empty());
        let bad: KafkaMapping = serde_json::from_value(serde_json::json!({"topic": "t", "outbox": {"payload": "body"}})).unwrap();
        assert!(bad.validate().iter().any(|(path, _)| path == "outbox"), "outbox columns without format: outbox");
    }

    #[test]
    fn topic_key_and_native_value() {
        let m = mapping(serde_json::json!({"topic": "shop.{schema}.{table}", "tombstones": true}));
        let e = m.encode(&delete(), &DebeziumConfig::default(), 0).unwrap();
        assert_eq!(e.topic, "shop.public.orders");
        assert_eq!(e.key.as_deref(), Some(&b"{\"id\":7}"[..]));
        assert_eq!(e.value, delete().to_json_string().into_bytes());
        assert!(e.tombstone);

        let m = mapping(serde_json::json!({"topic": "orders", "key": "order-{id}"}));
        let e = m.encode(&delete(), &DebeziumConfig::default(), 0).unwrap();
        assert_eq!((e.topic.as_str(), e.key.as_deref()), ("orders", Some(&b"order-7"[..])));
        assert!(!e.tombstone, "tombstones are off by default");
    }

    #[test]
    fn per_record_errors() {
        let m = mapping(serde_json::json!({"topic": "t.{note}"}));
        let err = m.encode(&delete(), &DebeziumConfig::default(), 0).unwrap_err();
        assert!(err.contains("NULL"), "{err}");
        let m = mapping(serde_json::json!({"topic": "t", "key": "{missing}"}));
        assert!(m.encode(&delete(), &DebeziumConfig::default(), 0).unwrap_err().contains("missing"));
        let mut c = delete();
        c.schema = "has space".into();
        let m = mapping(serde_json::json!({"topic": "{schema}.{table}"}));
        assert!(m.encode(&c, &DebeziumConfig::default(), 0).unwrap_err().contains("Kafka allows only"));
    }

    #[test]
    fn a_key_change_tombstones_the_old_key() {
        let mut c = delete();
        c.op = Op::Update;
        c.before = Some(Row(vec![("id".into(), int(6))]));
        c.after = Some(Row(vec![("id".into(), int(7)), ("note".into(), Value::Null)]));
        let dbz = DebeziumConfig::default();
        let e = mapping(serde_json::json!({"topic": "t", "tombstones": true})).encode(&c, &dbz, 0).unwrap();
        assert_eq!(e.moved_from.as_deref(), Some(&b"{\"id\":6}"[..]));
        assert_eq!(e.key.as_deref(), Some(&b"{\"id\":7}"[..]));
        let e = mapping(serde_json::json!({"topic": "t", "key": "o-{id}", "tombstones": true})).encode(&c, &dbz, 0).unwrap();
        assert_eq!(e.moved_from.as_deref(), Some(&b"o-6"[..]));
        assert_eq!(mapping(serde_json::json!({"topic": "t"})).encode(&c, &dbz, 0).unwrap().moved_from, None, "only with tombstones");
        // REPLICA IDENTITY FULL sends the old row on every update: same key, nothing moved.
        c.before = Some(Row(vec![("id".into(), int(7)), ("note".into(), Value::Null)]));
        assert_eq!(mapping(serde_json::json!({"topic": "t", "tombstones": true})).encode(&c, &dbz, 0).unwrap().moved_from, None);
    }

    fn int(n: i64) -> Value {
        Value::Number(n.to_string().into())
    }

    #[test]
    fn truncates_have_no_key_and_no_tombstone() {
        let mut c = delete();
        c.op = Op::Truncate;
        c.key = None;
        c.before = None;
        let m = mapping(serde_json::json!({"topic": "{table}", "key": "{id}", "tombstones": true}));
        let e = m.encode(&c, &DebeziumConfig::default(), 0).unwrap();
        assert_eq!((e.key, e.tombstone), (None, false));
    }

    #[test]
    fn headers_carry_the_position() {
        let names = |set| -> Vec<String> {
            headers(&delete(), set, &mut Vec::new()).map(|h| h.iter().map(|h| h.key.to_string()).collect()).unwrap_or_default()
        };
        assert_eq!(names(HeaderSet::Position), ["pgfanout.lsn", "pgfanout.commit_lsn", "pgfanout.ordinal"]);
        assert!(names(HeaderSet::None).is_empty());
        let h = headers(&delete(), HeaderSet::All, &mut Vec::new()).unwrap();
        let got: Vec<(String, Option<String>)> =
            h.iter().map(|h| (h.key.to_string(), h.value.map(|v| String::from_utf8_lossy(v).into_owned()))).collect();
        let want = [
            ("pgfanout.lsn", Some("0/100")),
            ("pgfanout.commit_lsn", Some("1/200")),
            ("pgfanout.ordinal", Some("3")),
            ("pgfanout.xid", Some("42")),
            ("pgfanout.op", Some("delete")),
            ("pgfanout.schema", Some("public")),
            ("pgfanout.table", Some("orders")),
        ];
        let want: Vec<(String, Option<String>)> = want.iter().map(|(k, v)| (k.to_string(), v.map(str::to_string))).collect();
        assert_eq!(got, want);
        let mut c = delete();
        c.xid = None;
        assert_eq!(headers(&c, HeaderSet::All, &mut Vec::new()).unwrap().get(3).value, None);
    }
}
