//! A dead letter as it is stored: the JSON object of a file line and the
//! columns of `pgfanout.dead_letters`, and the way back from it.
//!
//! ```json
//! {"id":"…","at":"2026-12-07T05:00:00.000000Z","attempts":1,"stage":"sink",
//!  "pipeline":"catalog","sink":"search","error":"…","commit_lsn":"0/16B3748",
//!  "ordinal":3,"table":"public.products","change":{…},"source":{…}}
//! ```
//!
//! - `change` is the record as the failing step saw it (after the
//!   pipeline's transforms for a sink's refusal), in the change record's
//!   JSON, for people and tools to read.
//! - `source` is the change as read from PostgreSQL, in a typed form that
//!   keeps every value exactly (a json column and a composite both print
//!   as a JSON object; numbers keep their text): `replay` runs it through
//!   the pipeline as configured then.
//! - `id` names the letter: the same change refused by the same pipeline
//!   and sink twice (a replay after a crash) is one letter.

use std::sync::Arc;

use pgfanout_sdk::{json, Change, Lsn, Op, Position, Row, Value};
use serde_json::{json, Map, Value as J};
use sha2::{Digest, Sha256};

/// Where the record failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The pipeline's filter or a transform.
    Pipeline,
    /// The sink refused it.
    Sink,
    /// The row could not be decoded (`on_decode_error: dead_letter`); it
    /// carries raw text and cannot be replayed (backfill the table).
    Decode,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Pipeline => "pipeline",
            Stage::Sink => "sink",
            Stage::Decode => "decode",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        [Stage::Pipeline, Stage::Sink, Stage::Decode].into_iter().find(|st| st.as_str() == s)
    }
}

/// One undeliverable record, as the runtime hands it over.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub stage: Stage,
    pub pipeline: Arc<str>,
    pub sink: Arc<str>,
    pub error: String,
    /// The record as the failing step saw it.
    pub change: Arc<Change>,
    /// The change as read from the source, when `change` is a transformed
    /// copy of it.
    pub source: Option<Arc<Change>>,
}

impl DeadLetter {
    /// The change as read from the source.
    pub fn source(&self) -> &Change {
        self.source.as_deref().unwrap_or(&self.change)
    }

    /// The letter's name: a hash of the slot, pipeline, sink, stage,
    /// position, table and key.
    pub fn id(&self, slot: &str) -> String {
        let c = self.source();
        let key = c.key.as_ref().or(c.row()).map(|r| {
            let mut out = Vec::new();
            r.write_json(&mut out);
            out
        });
        let mut h = Sha256::new();
        for part in [slot.as_bytes(), self.pipeline.as_bytes(), self.sink.as_bytes(), self.stage.as_str().as_bytes()] {
            h.update(part);
            h.update([0]);
        }
        h.update(c.commit_lsn.0.to_be_bytes());
        h.update(c.ordinal.to_be_bytes());
        h.update(c.qualified_table().as_bytes());
        h.update([0]);
        h.update(key.unwrap_or_default());
        h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The letter's JSON object (one line, no newline), first written at
    /// `at` (RFC 3339) and tried `attempts` times.
    pub fn write_json(&self, slot: &str, at: &str, attempts: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"id\":");
        json::write_str(out, &self.id(slot));
        out.extend_from_slice(b",\"at\":");
        json::write_str(out, at);
        out.extend_from_slice(format!(",\"attempts\":{attempts},\"stage\":\"{}\",\"pipeline\":", self.stage.as_str()).as_bytes());
        json::write_str(out, &self.pipeline);
        out.extend_from_slice(b",\"sink\":");
        json::write_str(out, &self.sink);
        out.extend_from_slice(b",\"error\":");
        json::write_str(out, &self.error);
        out.extend_from_slice(b",\"commit_lsn\":");
        json::write_str(out, &self.change.commit_lsn.to_string());
        out.extend_from_slice(format!(",\"ordinal\":{},\"table\":", self.change.ordinal).as_bytes());
        json::write_str(out, &self.change.qualified_table());
        out.extend_from_slice(b",\"change\":");
        self.change.write_json(out);
        out.extend_from_slice(b",\"source\":");
        out.extend_from_slice(typed(self.source()).to_string().as_bytes());
        out.push(b'}');
    }
}

/// A dead letter read back from its destination.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: String,
    /// When it was last written (RFC 3339).
    pub at: String,
    pub attempts: u32,
    pub stage: Stage,
    pub pipeline: String,
    pub sink: String,
    pub error: String,
    pub position: Position,
    pub table: String,
    /// The record as the failing step saw it (the `change` JSON).
    pub change: J,
    /// The change as read from the source; `None` for a letter written by
    /// a pgfanout older than replay (it cannot be replayed exactly).
    pub source: Option<Change>,
}

impl Stored {
    /// Reads a letter's JSON object (a file line, or a table row turned
    /// into one).
    pub fn from_json(v: &J) -> Result<Stored, String> {
        let s = |k: &str| v.get(k).and_then(J::as_str).map(str::to_string).ok_or_else(|| format!("no {k:?}"));
        let commit_lsn: Lsn = s("commit_lsn")?.parse().map_err(|e| format!("commit_lsn: {e}"))?;
        let ordinal = v.get("ordinal").and_then(J::as_u64).ok_or("no \"ordinal\"")? as u32;
        let change = v.get("change").cloned().unwrap_or(J::Null);
        let table = match s("table") {
            Ok(t) => t,
            Err(_) => format!("{}.{}", change["schema"].as_str().unwrap_or("?"), change["table"].as_str().unwrap_or("?")),
        };
        Ok(Stored {
            id: s("id")?,
            at: s("at").unwrap_or_default(),
            attempts: v.get("attempts").and_then(J::as_u64).unwrap_or(1) as u32,
            stage: v.get("stage").and_then(J::as_str).and_then(Stage::parse).unwrap_or(Stage::Sink),
            pipeline: s("pipeline")?,
            sink: s("sink")?,
            error: s("error")?,
            position: Position { commit_lsn, ordinal },
            table,
            change,
            source: match v.get("source") {
                Some(t) if !t.is_null() => Some(untyped(t)?),
                _ => None,
            },
        })
    }

    /// The letter again as JSON, tried once more and refused with `error`
    /// (for a file destination, which keeps the newest line of each id).
    pub fn retried(&self, error: &str, at: &str) -> J {
        json!({
            "id": self.id, "at": at, "attempts": self.attempts + 1, "stage": self.stage.as_str(),
            "pipeline": self.pipeline, "sink": self.sink, "error": error,
            "commit_lsn": self.position.commit_lsn.to_string(), "ordinal": self.position.ordinal,
            "table": self.table, "change": self.change, "source": self.source.as_ref().map(typed),
        })
    }
}

/// The change in the typed form of `source`: rows as `[[column, value]]`;
/// a number as `{"n": text}`, a json value as `{"j": text}`, a composite as
/// `{"o": [[attribute, value]]}`, an array as an array, strings, booleans
/// and null as themselves.
pub fn typed(c: &Change) -> J {
    let row = |r: &Option<Row>| r.as_ref().map_or(J::Null, |r| J::Array(r.iter().map(|(k, v)| json!([k, typed_value(v)])).collect()));
    json!({
        "op": c.op.as_str(), "schema": &*c.schema, "table": &*c.table,
        "key": row(&c.key), "before": row(&c.before), "after": row(&c.after),
        "unchanged_toast": c.unchanged_toast.iter().map(|s| &**s).collect::<Vec<_>>(),
        "lsn": c.lsn.0, "commit_lsn": c.commit_lsn.0, "ordinal": c.ordinal, "xid": c.xid, "commit_ts": c.commit_ts,
    })
}

fn typed_value(v: &Value) -> J {
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Number(n) => json!({ "n": &**n }),
        Value::String(s) => J::String(s.to_string()),
        Value::Json(j) => json!({ "j": &**j }),
        Value::Array(items) => J::Array(items.iter().map(typed_value).collect()),
        Value::Object(fields) => json!({ "o": fields.iter().map(|(k, v)| json!([&**k, typed_value(v)])).collect::<Vec<_>>() }),
    }
}

/// The change back from [`typed`].
pub fn untyped(t: &J) -> Result<Change, String> {
    let str_of = |k: &str| t.get(k).and_then(J::as_str).ok_or_else(|| format!("source.{k}: expected a string"));
    let u64_of = |k: &str| t.get(k).and_then(J::as_u64).ok_or_else(|| format!("source.{k}: expected a number"));
    let row = |k: &str| -> Result<Option<Row>, String> {
        match t.get(k) {
            None | Some(J::Null) => Ok(None),
            Some(J::Array(cols)) => {
                cols.iter().map(|c| column(c).map_err(|e| format!("source.{k}: {e}"))).collect::<Result<Vec<_>, _>>().map(|c| Some(Row(c)))
            }
            Some(_) => Err(format!("source.{k}: expected a list of columns")),
        }
    };
    Ok(Change {
        op: Op::parse(str_of("op")?).ok_or("source.op: unknown")?,
        schema: Arc::from(str_of("schema")?),
        table: Arc::from(str_of("table")?),
        key: row("key")?,
        before: row("before")?,
        after: row("after")?,
        unchanged_toast: t
            .get("unchanged_toast")
            .and_then(J::as_array)
            .map(|a| a.iter().filter_map(J::as_str).map(Arc::from).collect())
            .unwrap_or_default(),
        lsn: Lsn(u64_of("lsn")?),
        commit_lsn: Lsn(u64_of("commit_lsn")?),
        ordinal: u64_of("ordinal")? as u32,
        xid: t.get("xid").and_then(J::as_u64).map(|x| x as u32),
        commit_ts: t.get("commit_ts").and_then(J::as_i64),
    })
}

fn column(c: &J) -> Result<(Arc<str>, Value), String> {
    match c.as_array().map(Vec::as_slice) {
        Some([J::String(name), v]) => Ok((Arc::from(name.as_str()), untyped_value(v)?)),
        _ => Err(format!("expected [name, value], got {c}")),
    }
}

fn untyped_value(v: &J) -> Result<Value, String> {
    Ok(match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::String(s) => Value::String(s.as_str().into()),
        J::Array(items) => Value::Array(items.iter().map(untyped_value).collect::<Result<_, _>>()?),
        J::Object(m) => tagged(m)?,
        J::Number(n) => return Err(format!("bare number {n}: numbers are written as {{\"n\": text}}")),
    })
}

fn tagged(m: &Map<String, J>) -> Result<Value, String> {
    match (m.len(), m.iter().next()) {
        (1, Some((tag, J::String(text)))) if tag == "n" => Ok(Value::Number(text.as_str().into())),
        (1, Some((tag, J::String(text)))) if tag == "j" => Ok(Value::Json(text.as_str().into())),
        (1, Some((tag, J::Array(fields)))) if tag == "o" => Ok(Value::Object(fields.iter().map(column).collect::<Result<_, _>>()?)),
        _ => Err(format!("unknown tagged value {}", J::Object(m.clone()))),
    }
}

/// Now in RFC 3339 (UTC, microseconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change() -> Change {
        let row = Row(vec![
            ("id".into(), Value::Number("12345678901234567890.123456789012345".into())),
            ("doc".into(), Value::Json("{\"a\": [1, 2.50]}".into())),
            (
                "addr".into(),
                Value::Object(vec![("street".into(), Value::String("Main\n\"1\"".into())), ("no".into(), Value::Number("1e+100".into()))]),
            ),
            ("tags".into(), Value::Array(vec![Value::String("x".into()), Value::Null, Value::Bool(false)])),
            ("scalar_json".into(), Value::Json("5".into())),
        ]);
        Change {
            op: Op::Update,
            schema: "public".into(),
            table: "t".into(),
            key: Some(Row(vec![("id".into(), Value::Number("1".into()))])),
            before: None,
            after: Some(row),
            unchanged_toast: vec!["big".into()],
            lsn: Lsn(0x1_0000_0010),
            commit_lsn: Lsn(0x1_0000_0020),
            ordinal: 7,
            xid: Some(42),
            commit_ts: Some(1_700_000_000_123_456),
        }
    }

    #[test]
    fn the_typed_form_gives_back_the_exact_change() {
        let c = change();
        let text = typed(&c).to_string();
        let back = untyped(&serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn a_written_letter_reads_back_with_its_source_and_the_same_id() {
        let c = Arc::new(change());
        let mut shaped = Change::clone(&c);
        shaped.after.as_mut().unwrap().remove("doc");
        let letter = DeadLetter {
            stage: Stage::Sink,
            pipeline: "p".into(),
            sink: "s".into(),
            error: "refused".into(),
            change: Arc::new(shaped),
            source: Some(c.clone()),
        };
        let mut out = Vec::new();
        letter.write_json("slot", "2026-12-07T00:00:00Z", 1, &mut out);
        let stored = Stored::from_json(&serde_json::from_slice(&out).unwrap()).unwrap();
        assert_eq!(stored.id, letter.id("slot"));
        assert_ne!(stored.id, letter.id("other_slot"));
        assert_eq!(stored.source.as_ref(), Some(&*c));
        assert!(stored.change["after"].get("doc").is_none(), "change is what the sink saw");
        assert_eq!(stored.position, c.position());
        assert_eq!((stored.stage, stored.attempts, stored.table.as_str()), (Stage::Sink, 1, "public.t"));
        let again = Stored::from_json(&stored.retried("still refused", "2026-12-07T01:00:00Z")).unwrap();
        assert_eq!((again.id.as_str(), again.attempts, again.error.as_str()), (stored.id.as_str(), 2, "still refused"));
        assert_eq!(again.source.as_ref(), Some(&*c));
    }
}
