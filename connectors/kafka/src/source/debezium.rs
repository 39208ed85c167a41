//! Reading Debezium's PostgreSQL change events (`format: debezium`): the
//! envelope Kafka Connect's JsonConverter writes, with its schema
//! (`schemas.enable=true`, exact) or without it.
//!
//! **Values.** With the schema, each column's logical type says how its
//! JSON became what PostgreSQL's `to_jsonb` prints, so the stores get the
//! values pgfanout's own source would give them:
//! - `Decimal` and `VariableScaleDecimal` (numeric, money) are unscaled
//!   two's-complement bytes: they come back as the exact number text
//!   (`1.50`, a 25-digit numeric stays 25 digits);
//! - `Json` is the column's text (json, jsonb);
//! - `MicroTimestamp`/`Timestamp`/`NanoTimestamp`, `Date`, `MicroTime`/
//!   `Time`/`NanoTime` become PostgreSQL's ISO text, `ZonedTimestamp` its
//!   `+00:00` form (equal to `to_jsonb` when the server's `TimeZone` is UTC);
//! - bytes (bytea) become `\x` hex; floats get PostgreSQL's digits, in
//!   decimal as `to_jsonb` stores them (`0.00001`), `NaN` a string;
//! - `__debezium_unavailable_value` (an unchanged TOASTed value) marks the
//!   column unchanged, as pgoutput's `u` does.
//!
//! What Debezium itself loses stays lost: a numeric `NaN` or `Infinity`
//! (null), an `infinity` timestamp (a far-future instant), an interval
//! (`MicroDuration` micros, not months and days; use
//! `interval.handling.mode=string` for its ISO text), money as a number
//! rather than PostgreSQL's `$1.00`. Without the schema a value is taken as
//! its JSON is (a `VariableScaleDecimal` object still becomes its number):
//! decimals in `precise` mode, dates and times come as Debezium encodes them,
//! and json columns as strings.
//!
//! **Versions.** Debezium's `source.sequence` is `[last commit LSN, LSN]`:
//! the end of the transaction that committed before this one, and the
//! change's own LSN. The first is the same for every change of a
//! transaction and grows with each commit, so `(sequence[0], order in the
//! transaction)` orders every change of a row the way PostgreSQL committed
//! them; the order is `transaction.total_order` when Debezium is asked for it
//! (`provide.transaction.metadata=true`, recommended), else the change's
//! LSN relative to `sequence[0]`. The first transaction after Debezium
//! starts afresh has no last commit: its change's own LSN stands in (a row's
//! change always comes after the commit of that row's previous change).
//! Snapshot rows (`op: r`) get the lowest version, so no streamed change is
//! ever taken for older than a snapshot read of its row.
//!
//! **Keys.** The record key (the primary key columns) is the change's key.
//! A key change is Debezium's delete of the old key (in that key's
//! partition) and a create of the new one carrying `__debezium.oldkey`: the
//! create becomes the key-change update pgfanout's own source gives (its
//! `before` is the old key), so the stores move the entry and copy
//! unchanged TOASTed values from it. Tombstones, heartbeats, transaction
//! metadata and logical messages carry no change and are skipped.

use std::sync::Arc;

use base64::Engine as _;
use pgfanout_sdk::{Change, Lsn, Op, Row, Value};
use rdkafka::message::{BorrowedHeaders, Headers};
use serde::Deserialize;
use serde_json::Value as Json;

/// Debezium's stand-in for an unchanged TOASTed value.
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

#[derive(Deserialize)]
struct Envelope {
    op: Option<String>,
    before: Option<Json>,
    after: Option<Json>,
    source: Option<Source>,
    transaction: Option<Transaction>,
}

#[derive(Deserialize)]
struct Source {
    schema: String,
    table: String,
    #[serde(rename = "txId")]
    tx_id: Option<u64>,
    lsn: Option<u64>,
    sequence: Option<String>,
    ts_us: Option<i64>,
}

#[derive(Deserialize)]
struct Transaction {
    total_order: u64,
}

/// A field's Connect schema: its type, logical name and parameters.
#[derive(Deserialize, Default, Clone)]
struct Field {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, Json>>,
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    fields: Vec<Field>,
    #[serde(default)]
    items: Option<Box<Field>>,
}

/// The change a Debezium record carries; `None` for a record that carries
/// none (heartbeat, transaction metadata, logical message).
pub fn decode(key: Option<&[u8]>, payload: &[u8], headers: Option<&BorrowedHeaders>) -> Option<Result<Change, String>> {
    let doc: Json = match serde_json::from_slice(payload) {
        Ok(d) => d,
        Err(e) => return Some(Err(format!("not a Debezium change event: {e}"))),
    };
    let (schema, body) = split(doc);
    if body.get("op").is_none() && (body.get("status").is_some() || body.get("ts_ms").is_some()) {
        return None; // transaction metadata (BEGIN/END) or a heartbeat
    }
    let env: Envelope = match serde_json::from_value(body) {
        Ok(e) => e,
        Err(e) => return Some(Err(format!("not a Debezium change event: {e}"))),
    };
    let op = env.op.clone().unwrap_or_default();
    if op == "m" {
        return None;
    }
    Some(change(&op, env, schema.as_ref(), key, headers))
}

/// `{schema, payload}` (schemas enabled) or the payload alone.
fn split(doc: Json) -> (Option<Field>, Json) {
    match doc {
        Json::Object(mut m) if m.contains_key("payload") && m.contains_key("schema") => {
            let schema = m.remove("schema").and_then(|s| serde_json::from_value::<Field>(s).ok());
            (schema, m.remove("payload").unwrap_or(Json::Null))
        }
        other => (None, other),
    }
}

fn change(
    op: &str,
    env: Envelope,
    schema: Option<&Field>,
    key: Option<&[u8]>,
    headers: Option<&BorrowedHeaders>,
) -> Result<Change, String> {
    let source = env.source.ok_or("a Debezium event without its source block")?;
    let op = match op {
        "c" => Op::Insert,
        "r" => Op::Read,
        "u" => Op::Update,
        "d" => Op::Delete,
        "t" => Op::Truncate,
        other => return Err(format!("unknown Debezium op {other:?}")),
    };
    let snapshot = env.op.as_deref() == Some("r");
    let side = |name: &str| schema.and_then(|s| s.fields.iter().find(|f| f.field.as_deref() == Some(name)));
    let mut unchanged = Vec::new();
    let after = match env.after {
        Some(Json::Null) | None => None,
        Some(v) => {
            let r = row(v, side("after"), Some(&mut unchanged))?;
            // A column the schema lists but the row lacks was left out, as
            // an unchanged TOASTed value is.
            for f in side("after").map(|s| s.fields.as_slice()).unwrap_or_default() {
                if let Some(name) = f.field.as_deref() {
                    if !r.0.iter().any(|(n, _)| &**n == name) && !unchanged.iter().any(|u| &**u == name) {
                        unchanged.push(Arc::from(name));
                    }
                }
            }
            Some(r)
        }
    };
    let before = match env.before {
        Some(Json::Null) | None => None,
        Some(v) => Some(row(v, side("before"), None)?),
    };
    let key_row = match key {
        Some(k) if op != Op::Truncate => Some(key_of(k)?),
        _ => None,
    };
    // Default replica identity: Debezium's `before` of a delete is the key
    // with every other column null; pgoutput sends the key alone (its own
    // values: after a key change, the old key).
    let before = match (before, &key_row) {
        (Some(b), Some(k)) if b.0.iter().all(|(n, v)| *v == Value::Null || k.0.iter().any(|(kn, _)| kn == n)) => {
            Some(Row(b.0.into_iter().filter(|(n, _)| k.0.iter().any(|(kn, _)| kn == n)).collect()))
        }
        (b, _) => b,
    };
    // A key change: the create of the new key names the old one.
    let (op, before) = match (op, header(headers, "__debezium.oldkey")) {
        (Op::Insert, Some(old)) if !snapshot => (Op::Update, Some(key_of(old.as_bytes())?)),
        (op, _) => (op, before),
    };
    let lsn = Lsn(source.lsn.unwrap_or(0));
    let last_commit = source
        .sequence
        .as_deref()
        .and_then(|s| serde_json::from_str::<Vec<Option<String>>>(s).ok())
        .and_then(|s| s.into_iter().next().flatten())
        .and_then(|s| s.parse::<u64>().ok());
    let (commit_lsn, ordinal) = if snapshot {
        (Lsn(0), 0)
    } else {
        let base = last_commit.unwrap_or(lsn.0);
        let ordinal = match &env.transaction {
            Some(t) => u32::try_from(t.total_order).unwrap_or(u32::MAX),
            // The change's place after the last commit (2^31 = at it).
            None => (i128::from(lsn.0) - i128::from(base) + (1i128 << 31)).clamp(0, i128::from(u32::MAX)) as u32,
        };
        (Lsn(base), ordinal)
    };
    let key_row = key_row.or_else(|| before.clone());
    Ok(Change {
        op,
        schema: Arc::from(source.schema),
        table: Arc::from(source.table),
        key: key_row,
        before,
        after,
        unchanged_toast: unchanged,
        lsn,
        commit_lsn,
        ordinal,
        xid: if snapshot { None } else { source.tx_id.map(|x| x as u32) },
        commit_ts: if snapshot { None } else { source.ts_us },
    })
}

fn header(headers: Option<&BorrowedHeaders>, name: &str) -> Option<String> {
    let h = headers?;
    (0..h.count()).map(|i| h.get(i)).find(|h| h.key == name)?.value.and_then(|v| std::str::from_utf8(v).ok()).map(String::from)
}

/// A record key (or a `__debezium.oldkey` header): the key columns.
fn key_of(key: &[u8]) -> Result<Row, String> {
    let doc: Json = serde_json::from_slice(key).map_err(|e| format!("the record key is not JSON: {e}"))?;
    let (schema, body) = split(doc);
    row(body, schema.as_ref(), None)
}

fn row(v: Json, schema: Option<&Field>, mut unchanged: Option<&mut Vec<Arc<str>>>) -> Result<Row, String> {
    let Json::Object(m) = v else { return Err(format!("a row that is not an object: {v}")) };
    let mut out = Vec::with_capacity(m.len());
    for (name, v) in m {
        let field = schema.and_then(|s| s.fields.iter().find(|f| f.field.as_deref() == Some(name.as_str())));
        if let Some(u) = unchanged.as_deref_mut() {
            if is_unavailable(&v, field) {
                u.push(Arc::from(name.as_str()));
                continue;
            }
        }
        let value = value(v, field).map_err(|e| format!("column {name}: {e}"))?;
        out.push((Arc::from(name), value));
    }
    Ok(Row(out))
}

fn is_unavailable(v: &Json, field: Option<&Field>) -> bool {
    match v {
        Json::String(s) if s == UNAVAILABLE => true,
        // bytea: the placeholder's bytes, base64
        Json::String(s) if field.is_some_and(|f| f.kind == "bytes" && f.name.is_none()) => {
            base64::engine::general_purpose::STANDARD.decode(s).is_ok_and(|b| b == UNAVAILABLE.as_bytes())
        }
        Json::Array(items) if items.len() == 1 => is_unavailable(&items[0], None),
        _ => false,
    }
}

fn value(v: Json, field: Option<&Field>) -> Result<Value, String> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    let Some(f) = field else { return Ok(untyped(v)) };
    let name = f.name.as_deref().unwrap_or_default();
    Ok(match (name, v) {
        ("io.debezium.data.VariableScaleDecimal", v) => variable_decimal(&v)?,
        ("org.apache.kafka.connect.data.Decimal", Json::String(b)) => {
            let scale = f.parameters.as_ref().and_then(|p| p.get("scale")).and_then(Json::as_str).and_then(|s| s.parse().ok()).unwrap_or(0);
            Value::Number(decimal(&b, scale)?.into())
        }
        ("io.debezium.data.Json", Json::String(s)) => Value::Json(s.into()),
        ("io.debezium.time.MicroTimestamp", Json::Number(n)) => Value::String(timestamp(int(&n)?)?.into()),
        ("io.debezium.time.NanoTimestamp", Json::Number(n)) => Value::String(timestamp_nanos(int(&n)?)?.into()),
        ("io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp", Json::Number(n)) => {
            Value::String(timestamp(int(&n)?.saturating_mul(1_000))?.into())
        }
        ("io.debezium.time.ZonedTimestamp" | "io.debezium.time.ZonedTime", Json::String(s)) => Value::String(zoned(&s).into()),
        ("io.debezium.time.Date" | "org.apache.kafka.connect.data.Date", Json::Number(n)) => Value::String(date(int(&n)?)?.into()),
        ("io.debezium.time.MicroTime", Json::Number(n)) => Value::String(time_of_day(int(&n)?).into()),
        ("io.debezium.time.NanoTime", Json::Number(n)) => Value::String(time_of_day(int(&n)? / 1_000).into()),
        ("io.debezium.time.Time" | "org.apache.kafka.connect.data.Time", Json::Number(n)) => {
            Value::String(time_of_day(int(&n)?.saturating_mul(1_000)).into())
        }
        (_, Json::String(b)) if f.kind == "bytes" => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(&b).map_err(|e| format!("bytes {b:?}: {e}"))?;
            Value::String(format!("\\x{}", hex(&bytes)).into())
        }
        (_, Json::Number(n)) if f.kind == "double" => Value::Number(float(&n, 15)?.into()),
        (_, Json::Number(n)) if f.kind == "float" => Value::Number(float(&n, 6)?.into()),
        (_, Json::Array(items)) => Value::Array(items.into_iter().map(|i| value(i, f.items.as_deref())).collect::<Result<_, _>>()?),
        (_, Json::Object(m)) if !f.fields.is_empty() => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let sub = f.fields.iter().find(|s| s.field.as_deref() == Some(k.as_str()));
                    Ok((Arc::from(k.as_str()), value(v, sub)?))
                })
                .collect::<Result<_, String>>()?,
        ),
        (_, v) => untyped(v),
    })
}

/// One value in Connect's JSON form, read with its field's schema
/// (JsonConverter's form, as `crate::connect` writes it).
pub fn read_value(v: Json, schema: &Json) -> Result<Value, String> {
    let field: Field = serde_json::from_value(schema.clone()).map_err(|e| format!("schema {schema}: {e}"))?;
    value(v, Some(&field))
}

/// A value without a schema: as its JSON is, but a `VariableScaleDecimal`
/// (`{"scale":.., "value":"<base64>"}`) is its number.
fn untyped(v: Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(b),
        Json::Number(n) => Value::Number(n.to_string().into()),
        Json::String(s) => Value::String(s.into()),
        Json::Array(items) => Value::Array(items.into_iter().map(untyped).collect()),
        Json::Object(m) => {
            if m.len() == 2 && m.get("scale").is_some_and(Json::is_i64) && m.get("value").is_some_and(Json::is_string) {
                if let Ok(v) = variable_decimal(&Json::Object(m.clone())) {
                    return v;
                }
            }
            Value::Object(m.into_iter().map(|(k, v)| (Arc::from(k.as_str()), untyped(v))).collect())
        }
    }
}

fn int(n: &serde_json::Number) -> Result<i64, String> {
    n.as_i64().ok_or_else(|| format!("{n} is not a whole number"))
}

fn variable_decimal(v: &Json) -> Result<Value, String> {
    let scale = v.get("scale").and_then(Json::as_i64).ok_or("a VariableScaleDecimal without its scale")?;
    let bytes = v.get("value").and_then(Json::as_str).ok_or("a VariableScaleDecimal without its value")?;
    Ok(Value::Number(decimal(bytes, scale)?.into()))
}

/// Base64 of a big-endian two's-complement unscaled value, with `scale`
/// digits after the point: the number's exact text.
fn decimal(b64: &str, scale: i64) -> Result<String, String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| format!("decimal {b64:?}: {e}"))?;
    let unscaled = num_bigint::BigInt::from_signed_bytes_be(&bytes);
    let (negative, digits) = {
        let s = unscaled.to_string();
        match s.strip_prefix('-') {
            Some(d) => (true, d.to_string()),
            None => (false, s),
        }
    };
    let sign = if negative { "-" } else { "" };
    if scale <= 0 {
        let zeros = if digits == "0" { String::new() } else { "0".repeat(scale.unsigned_abs() as usize) };
        return Ok(format!("{sign}{digits}{zeros}"));
    }
    let scale = scale as usize;
    let padded = if digits.len() <= scale { format!("{}{digits}", "0".repeat(scale + 1 - digits.len())) } else { digits };
    let (int, frac) = padded.split_at(padded.len() - scale);
    Ok(format!("{sign}{int}.{frac}"))
}

/// `micros` since the epoch as PostgreSQL prints a timestamp in JSON
/// (`2024-01-02T03:04:05.123456`, the fraction without trailing zeros).
fn timestamp(micros: i64) -> Result<String, String> {
    let t = chrono::DateTime::from_timestamp_micros(micros).ok_or_else(|| format!("timestamp {micros} is out of range"))?;
    Ok(iso(t.naive_utc()))
}

fn timestamp_nanos(nanos: i64) -> Result<String, String> {
    Ok(iso(chrono::DateTime::from_timestamp_nanos(nanos).naive_utc()))
}

fn iso(t: chrono::NaiveDateTime) -> String {
    use chrono::Timelike;
    let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    push_fraction(&mut s, t.nanosecond() / 1_000);
    s
}

fn push_fraction(s: &mut String, micros: u32) {
    if micros != 0 {
        let f = format!(".{micros:06}");
        s.push_str(f.trim_end_matches('0'));
    }
}

/// `2024-01-02T01:04:05.500000Z` -> `2024-01-02T01:04:05.5+00:00`.
fn zoned(s: &str) -> String {
    let (body, zone) = match s.strip_suffix('Z') {
        Some(b) => (b, "+00:00"),
        None => match s.rfind(['+', '-']).filter(|&i| i > 10 || !s.contains('T')) {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, ""),
        },
    };
    let body = match body.split_once('.') {
        Some((whole, frac)) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                whole.to_string()
            } else {
                format!("{whole}.{frac}")
            }
        }
        None => body.to_string(),
    };
    format!("{body}{zone}")
}

fn date(days: i64) -> Result<String, String> {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch");
    let d = epoch.checked_add_signed(chrono::TimeDelta::days(days)).ok_or_else(|| format!("date {days} is out of range"))?;
    Ok(d.format("%Y-%m-%d").to_string())
}

fn time_of_day(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let mut s = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    push_fraction(&mut s, micros.rem_euclid(1_000_000) as u32);
    s
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A float as `to_jsonb` prints it: PostgreSQL's shortest digits
/// (`float8out`: exponent form below 1e-4 or from 1e`digits`), and a float
/// printed with an exponent or as `-0` stored as `numeric`, so in decimal
/// (`0.00001`, `10000000000000000`), as pgfanout's own source does.
fn float(n: &serde_json::Number, digits: i32) -> Result<String, String> {
    let x = n.as_f64().ok_or_else(|| format!("{n} is not a float"))?;
    let sci = if digits == 6 { format!("{:e}", x as f32) } else { format!("{x:e}") };
    let (mantissa, exp) = sci.split_once('e').ok_or("a float without its exponent")?;
    let exp: i32 = exp.parse().map_err(|e| format!("float {n}: {e}"))?;
    let text = if exp < -4 || exp >= digits {
        format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    } else if digits == 6 {
        format!("{}", x as f32)
    } else {
        format!("{x}")
    };
    if text.contains('e') || text == "-0" {
        return Ok(pgfanout_sdk::exact::numeric_text(&text).unwrap_or(text));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders};

    const KEY: &str = r#"{"schema":{"type":"struct","fields":[{"type":"int32","optional":false,"field":"id"}],"optional":false,"name":"dbz.public.zoo.Key"},"payload":{"id":2}}"#;

    fn fields() -> &'static str {
        r#"[{"type":"int32","optional":false,"field":"id"},
            {"type":"struct","fields":[{"type":"int32","field":"scale"},{"type":"bytes","field":"value"}],"optional":true,"name":"io.debezium.data.VariableScaleDecimal","field":"n"},
            {"type":"bytes","optional":true,"name":"org.apache.kafka.connect.data.Decimal","parameters":{"scale":"5"},"field":"n2"},
            {"type":"double","optional":true,"field":"f"},{"type":"float","optional":true,"field":"r"},
            {"type":"string","optional":true,"field":"t"},
            {"type":"string","optional":true,"name":"io.debezium.data.Json","field":"j"},
            {"type":"int64","optional":true,"name":"io.debezium.time.MicroTimestamp","field":"ts"},
            {"type":"string","optional":true,"name":"io.debezium.time.ZonedTimestamp","field":"tstz"},
            {"type":"int32","optional":true,"name":"io.debezium.time.Date","field":"d"},
            {"type":"int64","optional":true,"name":"io.debezium.time.MicroTime","field":"tm"},
            {"type":"bytes","optional":true,"field":"by"},
            {"type":"array","items":{"type":"double","optional":true},"optional":true,"field":"arr"}]"#
    }

    fn event(op: &str, after: &str, before: &str, seq: &str, tx: &str) -> String {
        let f = fields();
        format!(
            r#"{{"schema":{{"type":"struct","fields":[{{"type":"struct","fields":{f},"field":"before"}},{{"type":"struct","fields":{f},"field":"after"}}]}},
               "payload":{{"before":{before},"after":{after},"source":{{"schema":"public","table":"zoo","txId":728,"lsn":26381056,"sequence":"{seq}","ts_us":1796668448511084}},
               "transaction":{tx},"op":"{op}"}}}}"#
        )
    }

    const ROW: &str = r#"{"id":2,"n":{"scale":19,"value":"BVydltKPWtYBRNk="},"n2":"Aknw","f":1.5E-300,"r":3.25,"t":"__debezium_unavailable_value",
        "j":"{\"a\": null, \"b\": [1, 2.50]}","ts":1704164645123456,"tstz":"2024-01-02T01:04:05.500000Z","d":19782,"tm":45296789000,
        "by":"3q2+7w==","arr":[1.0E16,"NaN",null]}"#;

    #[test]
    fn every_logical_type_becomes_what_to_jsonb_prints() {
        let e =
            event("u", ROW, "null", r#"[\"26380000\",\"26381056\"]"#, r#"{"id":"728:26381056","total_order":2,"data_collection_order":2}"#);
        let c = decode(Some(KEY.as_bytes()), e.as_bytes(), None).unwrap().unwrap();
        let after = c.after.as_ref().unwrap();
        let get = |n: &str| after.0.iter().find(|(k, _)| &**k == n).map(|(_, v)| v.clone()).unwrap_or_else(|| panic!("{n}"));
        assert_eq!(get("n"), Value::Number("648199.3821223196731458777".into()));
        assert_eq!(get("n2"), Value::Number("1.50000".into()));
        assert_eq!(get("f"), Value::Number(format!("0.{}15", "0".repeat(299)).into()));
        assert_eq!(get("r"), Value::Number("3.25".into()));
        assert_eq!(get("j"), Value::Json(r#"{"a": null, "b": [1, 2.50]}"#.into()));
        assert_eq!(get("ts"), Value::String("2024-01-02T03:04:05.123456".into()));
        assert_eq!(get("tstz"), Value::String("2024-01-02T01:04:05.5+00:00".into()));
        assert_eq!(get("d"), Value::String("2024-02-29".into()));
        assert_eq!(get("tm"), Value::String("12:34:56.789".into()));
        assert_eq!(get("by"), Value::String("\\xdeadbeef".into()));
        assert_eq!(get("arr"), Value::Array(vec![Value::Number("10000000000000000".into()), Value::String("NaN".into()), Value::Null]));
        assert!(after.0.iter().all(|(k, _)| &**k != "t"));
        assert_eq!(c.unchanged_toast, vec![Arc::<str>::from("t")]);
        assert_eq!((c.op, c.commit_lsn, c.ordinal, c.lsn, c.xid), (Op::Update, Lsn(26380000), 2, Lsn(26381056), Some(728)));
        assert_eq!(c.key, Some(Row(vec![("id".into(), Value::Number("2".into()))])));
    }

    #[test]
    fn versions_follow_commits_and_snapshot_reads_are_oldest() {
        let no_tx = event("c", ROW, "null", r#"[\"26381000\",\"26381056\"]"#, "null");
        let c = decode(Some(KEY.as_bytes()), no_tx.as_bytes(), None).unwrap().unwrap();
        assert_eq!((c.commit_lsn, c.ordinal), (Lsn(26381000), (1u32 << 31) + 56));
        let first = event("c", ROW, "null", r#"[null,\"26381056\"]"#, "null");
        let c = decode(Some(KEY.as_bytes()), first.as_bytes(), None).unwrap().unwrap();
        assert_eq!((c.commit_lsn, c.ordinal), (Lsn(26381056), 1u32 << 31));
        let read = event("r", ROW, "null", r#"[null,\"26381056\"]"#, "null");
        let c = decode(Some(KEY.as_bytes()), read.as_bytes(), None).unwrap().unwrap();
        assert_eq!((c.op, c.commit_lsn, c.ordinal, c.xid, c.commit_ts), (Op::Read, Lsn(0), 0, None, None));
    }

    #[test]
    fn deletes_key_changes_and_records_without_a_change() {
        let before = r#"{"id":2,"n":null,"n2":null,"f":null,"r":null,"t":null,"j":null,"ts":null,"tstz":null,"d":null,"tm":null,"by":null,"arr":null}"#;
        let del = event("d", "null", before, r#"[\"1\",\"2\"]"#, "null");
        let c = decode(Some(KEY.as_bytes()), del.as_bytes(), None).unwrap().unwrap();
        let key = Row(vec![("id".into(), Value::Number("2".into()))]);
        assert_eq!((c.op, c.before.as_ref(), c.after.as_ref()), (Op::Delete, Some(&key), None));
        let old = KEY.replace(r#""id":2"#, r#""id":1"#);
        let h = OwnedHeaders::new().insert(Header { key: "__debezium.oldkey", value: Some(&old) });
        let moved = event("c", ROW, "null", r#"[\"1\",\"2\"]"#, "null");
        let c = decode(Some(KEY.as_bytes()), moved.as_bytes(), Some(h.as_borrowed())).unwrap().unwrap();
        assert_eq!((c.op, c.before), (Op::Update, Some(Row(vec![("id".into(), Value::Number("1".into()))]))));
        assert!(decode(None, br#"{"status":"BEGIN","id":"571:53195829","event_count":null,"ts_ms":1}"#, None).is_none());
        assert!(decode(None, br#"{"ts_ms":1}"#, None).is_none());
        let e = decode(None, b"junk", None).unwrap().unwrap_err();
        assert!(e.contains("not a Debezium change event"), "{e}");
    }

    #[test]
    fn without_schemas_values_are_taken_as_they_come() {
        let plain = r#"{"before":null,"after":{"id":7,"n":{"scale":2,"value":"AJY="},"s":"x"},"source":{"schema":"public","table":"t","lsn":5,"sequence":"[\"4\",\"5\"]"},"op":"c"}"#;
        let c = decode(Some(br#"{"id":7}"#), plain.as_bytes(), None).unwrap().unwrap();
        let after = c.after.unwrap();
        assert_eq!(after.0[1].1, Value::Number("1.50".into()));
        assert_eq!(after.0[2].1, Value::String("x".into()));
    }

    #[test]
    fn pgfanouts_own_debezium_envelope_reads_back() {
        let key = |id: &str| Row(vec![("id".into(), Value::Number(id.into()))]);
        let moved = Change {
            op: Op::Update,
            schema: "public".into(),
            table: "items".into(),
            key: Some(key("1")),
            before: Some(key("1")),
            after: Some(Row(vec![("id".into(), Value::Number("2".into())), ("n".into(), Value::Number("1.50".into()))])),
            unchanged_toast: vec![],
            lsn: Lsn(0x100),
            commit_lsn: Lsn(0x180),
            ordinal: 0,
            xid: Some(9),
            commit_ts: Some(1),
        };
        let mut out = Vec::new();
        crate::debezium::write_envelope(&mut out, &moved, &Default::default(), 5);
        let c = decode(Some(br#"{"id":2}"#), &out, None).unwrap().unwrap();
        assert_eq!(
            (c.op, c.before.as_ref(), c.after.as_ref(), c.commit_lsn),
            (Op::Update, Some(&key("1")), moved.after.as_ref(), Lsn(0x180))
        );
        assert!(c.ordinal < 1 << 31, "a change comes before its commit");
        let del = Change { op: Op::Delete, after: None, key: Some(key("2")), before: Some(key("2")), ..moved };
        out.clear();
        crate::debezium::write_envelope(&mut out, &del, &Default::default(), 5);
        let c = decode(Some(br#"{"id":2}"#), &out, None).unwrap().unwrap();
        assert_eq!((c.op, c.before.as_ref()), (Op::Delete, Some(&key("2"))));
    }

    #[test]
    fn a_column_the_schema_lists_and_the_row_lacks_is_unchanged() {
        let row = ROW.replace(r#""t":"__debezium_unavailable_value","#, "");
        let e = event("u", &row, "null", r#"[\"1\",\"2\"]"#, "null");
        let c = decode(Some(KEY.as_bytes()), e.as_bytes(), None).unwrap().unwrap();
        assert_eq!(c.unchanged_toast, vec![Arc::<str>::from("t")]);
    }

    #[test]
    fn decimals_and_floats_at_the_edges() {
        assert_eq!(decimal("/w==", 0).unwrap(), "-1");
        assert_eq!(decimal("/w==", 3).unwrap(), "-0.001");
        assert_eq!(decimal("AA==", 2).unwrap(), "0.00");
        assert_eq!(decimal("DA==", -2).unwrap(), "1200");
        let n = |s: &str| serde_json::from_str::<serde_json::Number>(s).unwrap();
        assert_eq!(float(&n("1.0E15"), 15).unwrap(), "1000000000000000");
        assert_eq!(float(&n("1.0E14"), 15).unwrap(), "100000000000000");
        assert_eq!(float(&n("1.0E-5"), 15).unwrap(), "0.00001");
        assert_eq!(float(&n("1.25E-5"), 15).unwrap(), "0.0000125");
        assert_eq!(float(&n("0.0001"), 15).unwrap(), "0.0001");
        assert_eq!(float(&n("-0.0"), 15).unwrap(), "0");
        assert_eq!(float(&n("0.1"), 6).unwrap(), "0.1");
        assert_eq!(float(&n("1000000.0"), 6).unwrap(), "1000000");
        assert_eq!(time_of_day(0), "00:00:00");
        assert_eq!(timestamp(-1).unwrap(), "1969-12-31T23:59:59.999999");
    }
}
