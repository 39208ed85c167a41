//! PostgreSQL columns as Kafka Connect schemas and values, the way the
//! Debezium PostgreSQL connector writes them with its default settings
//! (`decimal.handling.mode: precise`, `time.precision.mode: adaptive`,
//! `interval.handling.mode: numeric`, `binary.handling.mode: bytes`).
//!
//! This is the typed half of the schema formats of issue 34 (`avro`,
//! `json_schema`): Confluent's converters derive their Avro and JSON
//! schemas from these Connect schemas. It is not wired to a topic format
//! yet; see the module's tests for what is covered, and the table below
//! for the mapping.
//!
//! | PostgreSQL | Connect type | Connect name |
//! |---|---|---|
//! | `smallint` | `int16` | |
//! | `integer`, `oid` | `int32` | |
//! | `bigint` | `int64` | |
//! | `real` | `float32` | |
//! | `double precision` | `float64` | |
//! | `boolean` | `boolean` | |
//! | `numeric(p, s)`, `money` (scale 2) | `bytes` | `org.apache.kafka.connect.data.Decimal` (`scale`, `connect.decimal.precision`) |
//! | `numeric` | `struct {scale int32, value bytes}` | `io.debezium.data.VariableScaleDecimal` |
//! | `date` | `int32` (days since the epoch) | `io.debezium.time.Date` |
//! | `timestamp(0..3)` | `int64` (ms) | `io.debezium.time.Timestamp` |
//! | `timestamp`, `timestamp(4..6)` | `int64` (µs) | `io.debezium.time.MicroTimestamp` |
//! | `timestamptz` | `string` (ISO 8601, UTC, `Z`) | `io.debezium.time.ZonedTimestamp` |
//! | `time(0..3)` | `int32` (ms) | `io.debezium.time.Time` |
//! | `time`, `time(4..6)` | `int64` (µs) | `io.debezium.time.MicroTime` |
//! | `timetz` | `string` (UTC, `Z`) | `io.debezium.time.ZonedTime` |
//! | `interval` | `int64` (µs, a month = 30.4375 days) | `io.debezium.time.MicroDuration` |
//! | `json`, `jsonb` | `string` | `io.debezium.data.Json` |
//! | `uuid` | `string` | `io.debezium.data.Uuid` |
//! | `xml` | `string` | `io.debezium.data.Xml` |
//! | `bytea` | `bytes` | |
//! | an enum | `string` | `io.debezium.data.Enum` (`allowed`) |
//! | an array of any of these | `array` of it | |
//! | anything else (text, varchar, inet, ...) | `string` | |
//!
//! Values come in `to_jsonb`'s form (pgfanout's [`Value`]); money's text
//! (`-$1,234.50`) becomes its number. What cannot be written in a type (a
//! numeric `NaN` or `Infinity`, a date or timestamp at infinity) is an
//! error for that record, never a silent substitute.

use base64::Engine;
use num_bigint::BigInt;
use pgfanout_sdk::Value;
use serde_json::{json, Value as Json};

/// A column's PostgreSQL type.
#[derive(Debug, Clone, Default)]
pub struct ColumnType {
    pub oid: u32,
    /// `atttypmod` (`-1`: none).
    pub typmod: i32,
    /// For an array: its element type's OID.
    pub element: Option<u32>,
    /// For an enum: its labels, in order.
    pub labels: Option<Vec<String>>,
}

/// A Connect type, with what its values need.
#[derive(Debug, Clone, PartialEq)]
pub enum Connect {
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Boolean,
    /// A string; with a logical name for uuid, json, xml, ...
    Text(Option<&'static str>),
    Bytes,
    Decimal {
        scale: u32,
        precision: Option<u32>,
    },
    VariableScaleDecimal,
    Date,
    /// `io.debezium.time.Timestamp`: milliseconds.
    MillisTimestamp,
    MicroTimestamp,
    ZonedTimestamp,
    /// `io.debezium.time.Time`: milliseconds, int32.
    MillisTime,
    MicroTime,
    ZonedTime,
    MicroDuration,
    Enum(Vec<String>),
    Array(Box<Connect>),
}

mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const MONEY: u32 = 790;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// The Connect type of a column (see the module docs' table).
pub fn connect_type(t: &ColumnType) -> Connect {
    if let Some(element) = t.element {
        let inner = ColumnType { oid: element, typmod: t.typmod, element: None, labels: t.labels.clone() };
        return Connect::Array(Box::new(connect_type(&inner)));
    }
    if let Some(labels) = &t.labels {
        return Connect::Enum(labels.clone());
    }
    // Fractional-second precision of a time type (`-1`: the default, 6).
    let precision = if t.typmod >= 0 { t.typmod } else { 6 };
    match t.oid {
        oid::INT2 => Connect::Int16,
        oid::INT4 | oid::OID => Connect::Int32,
        oid::INT8 => Connect::Int64,
        oid::FLOAT4 => Connect::Float32,
        oid::FLOAT8 => Connect::Float64,
        oid::BOOL => Connect::Boolean,
        oid::BYTEA => Connect::Bytes,
        oid::NUMERIC if t.typmod >= 4 => {
            let m = (t.typmod - 4) as u32;
            Connect::Decimal { scale: m & 0xffff, precision: Some(m >> 16) }
        }
        oid::NUMERIC => Connect::VariableScaleDecimal,
        oid::MONEY => Connect::Decimal { scale: 2, precision: None },
        oid::DATE => Connect::Date,
        oid::TIMESTAMP if precision <= 3 => Connect::MillisTimestamp,
        oid::TIMESTAMP => Connect::MicroTimestamp,
        oid::TIMESTAMPTZ => Connect::ZonedTimestamp,
        oid::TIME if precision <= 3 => Connect::MillisTime,
        oid::TIME => Connect::MicroTime,
        oid::TIMETZ => Connect::ZonedTime,
        oid::INTERVAL => Connect::MicroDuration,
        oid::JSON | oid::JSONB => Connect::Text(Some("io.debezium.data.Json")),
        oid::UUID => Connect::Text(Some("io.debezium.data.Uuid")),
        oid::XML => Connect::Text(Some("io.debezium.data.Xml")),
        _ => Connect::Text(None),
    }
}

impl Connect {
    /// The field's Connect schema (JsonConverter's form), named `field`.
    pub fn schema(&self, field: Option<&str>, optional: bool) -> Json {
        let (kind, name, parameters): (&str, Option<&str>, Option<Json>) = match self {
            Connect::Int16 => ("int16", None, None),
            Connect::Int32 => ("int32", None, None),
            Connect::Int64 => ("int64", None, None),
            Connect::Float32 => ("float", None, None),
            Connect::Float64 => ("double", None, None),
            Connect::Boolean => ("boolean", None, None),
            Connect::Text(name) => ("string", *name, None),
            Connect::Bytes => ("bytes", None, None),
            Connect::Decimal { scale, precision } => {
                let mut p = json!({ "scale": scale.to_string() });
                if let Some(precision) = precision {
                    p["connect.decimal.precision"] = Json::from(precision.to_string());
                }
                ("bytes", Some("org.apache.kafka.connect.data.Decimal"), Some(p))
            }
            Connect::VariableScaleDecimal => {
                let mut s = json!({
                    "type": "struct",
                    "fields": [{"type": "int32", "optional": false, "field": "scale"}, {"type": "bytes", "optional": false, "field": "value"}],
                    "optional": optional,
                    "name": "io.debezium.data.VariableScaleDecimal",
                    "version": 1,
                });
                if let Some(f) = field {
                    s["field"] = Json::from(f);
                }
                return s;
            }
            Connect::Date => ("int32", Some("io.debezium.time.Date"), None),
            Connect::MillisTimestamp => ("int64", Some("io.debezium.time.Timestamp"), None),
            Connect::MicroTimestamp => ("int64", Some("io.debezium.time.MicroTimestamp"), None),
            Connect::ZonedTimestamp => ("string", Some("io.debezium.time.ZonedTimestamp"), None),
            Connect::MillisTime => ("int32", Some("io.debezium.time.Time"), None),
            Connect::MicroTime => ("int64", Some("io.debezium.time.MicroTime"), None),
            Connect::ZonedTime => ("string", Some("io.debezium.time.ZonedTime"), None),
            Connect::MicroDuration => ("int64", Some("io.debezium.time.MicroDuration"), None),
            Connect::Enum(labels) => ("string", Some("io.debezium.data.Enum"), Some(json!({ "allowed": labels.join(",") }))),
            Connect::Array(items) => {
                let mut s = json!({ "type": "array", "items": items.schema(None, true), "optional": optional });
                if let Some(f) = field {
                    s["field"] = Json::from(f);
                }
                return s;
            }
        };
        let mut s = json!({ "type": kind, "optional": optional });
        if let Some(name) = name {
            s["name"] = Json::from(name);
            s["version"] = Json::from(1);
        }
        if let Some(p) = parameters {
            s["parameters"] = p;
        }
        if let Some(f) = field {
            s["field"] = Json::from(f);
        }
        s
    }

    /// `v` (in `to_jsonb`'s form) as this type's Connect value (JsonConverter's
    /// form: bytes in base64).
    pub fn value(&self, v: &Value) -> Result<Json, String> {
        if matches!(v, Value::Null) {
            return Ok(Json::Null);
        }
        let text = || match v {
            Value::Number(t) | Value::String(t) | Value::Json(t) => Ok(t.as_str()),
            Value::Bool(b) => Ok(if *b { "true" } else { "false" }),
            other => Err(format!("{} is not a scalar", other.to_json_string())),
        };
        Ok(match self {
            Connect::Int16 | Connect::Int32 | Connect::Int64 => {
                let t = text()?;
                Json::from(t.parse::<i64>().map_err(|e| format!("{t:?} is not an integer: {e}"))?)
            }
            Connect::Float32 | Connect::Float64 => {
                let t = text()?;
                let x: f64 = t.parse().map_err(|e| format!("{t:?} is not a number: {e}"))?;
                serde_json::Number::from_f64(x).map(Json::Number).ok_or_else(|| format!("{t} cannot be written as a JSON number"))?
            }
            Connect::Boolean => match v {
                Value::Bool(b) => Json::Bool(*b),
                other => return Err(format!("{} is not a boolean", other.to_json_string())),
            },
            Connect::ZonedTime => Json::from(utc_time(text()?)?),
            Connect::Text(_) | Connect::Enum(_) => match v {
                Value::Json(j) => Json::from(j.as_str()),
                _ => Json::from(text()?),
            },
            Connect::Bytes => Json::from(base64::engine::general_purpose::STANDARD.encode(bytea(text()?)?)),
            Connect::Decimal { scale, .. } => {
                // money prints as `-$1,234.50`.
                let (unscaled, own) = unscaled(&text()?.replace(['$', ','], ""))?;
                if own > *scale {
                    return Err(format!("{} has more than the column's {scale} decimal places", text()?));
                }
                let unscaled = unscaled * BigInt::from(10u32).pow(scale - own);
                Json::from(base64::engine::general_purpose::STANDARD.encode(unscaled.to_signed_bytes_be()))
            }
            Connect::VariableScaleDecimal => {
                let (unscaled, scale) = unscaled(text()?)?;
                json!({ "scale": scale, "value": base64::engine::general_purpose::STANDARD.encode(unscaled.to_signed_bytes_be()) })
            }
            Connect::Date => Json::from(days(text()?)?),
            Connect::MillisTimestamp => Json::from(micros_since_epoch(text()?)?.div_euclid(1_000)),
            Connect::MicroTimestamp => Json::from(micros_since_epoch(text()?)?),
            Connect::ZonedTimestamp => Json::from(utc_timestamp(text()?)?),
            Connect::MillisTime => Json::from(micros_of_day(text()?)?.div_euclid(1_000)),
            Connect::MicroTime => Json::from(micros_of_day(text()?)?),
            Connect::MicroDuration => Json::from(interval_micros(text()?)?),
            Connect::Array(items) => match v {
                Value::Array(values) => Json::Array(values.iter().map(|i| items.value(i)).collect::<Result<_, _>>()?),
                other => return Err(format!("{} is not an array", other.to_json_string())),
            },
        })
    }
}

/// `\x0a0b` (bytea_output hex) -> its bytes.
fn bytea(t: &str) -> Result<Vec<u8>, String> {
    let hex = t.strip_prefix("\\x").ok_or_else(|| format!("{t:?} is not bytea hex"))?;
    if hex.len() % 2 != 0 {
        return Err(format!("{t:?} is not bytea hex"));
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| format!("{t:?}: {e}"))).collect()
}

/// A decimal's text as its unscaled integer and scale (`-1.50` -> (-150, 2)).
fn unscaled(t: &str) -> Result<(BigInt, u32), String> {
    if matches!(t, "NaN" | "Infinity" | "-Infinity") {
        return Err(format!("numeric {t} has no decimal form"));
    }
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = format!("{int}{frac}");
    let n: BigInt = digits.parse().map_err(|e| format!("{t:?} is not a decimal: {e}"))?;
    Ok((n, frac.len() as u32))
}

fn epoch() -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch")
}

fn finite(t: &str, what: &str) -> Result<(), String> {
    if t.contains("infinity") || t.ends_with(" BC") {
        Err(format!("{what} {t:?} has no value in this type (infinity or BC)"))
    } else {
        Ok(())
    }
}

fn days(t: &str) -> Result<i64, String> {
    finite(t, "date")?;
    let d = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d").map_err(|e| format!("date {t:?}: {e}"))?;
    Ok((d - epoch()).num_days())
}

fn naive_timestamp(t: &str) -> Result<chrono::NaiveDateTime, String> {
    chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f").map_err(|e| format!("timestamp {t:?}: {e}"))
}

fn micros_since_epoch(t: &str) -> Result<i64, String> {
    finite(t, "timestamp")?;
    Ok(naive_timestamp(t)?.and_utc().timestamp_micros())
}

/// `2024-01-02T03:04:05.5+02:00` -> `2024-01-02T01:04:05.5Z`.
fn utc_timestamp(t: &str) -> Result<String, String> {
    finite(t, "timestamptz")?;
    let d = chrono::DateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f%:z").map_err(|e| format!("timestamptz {t:?}: {e}"))?;
    Ok(d.with_timezone(&chrono::Utc).format("%Y-%m-%dT%H:%M:%S%.fZ").to_string())
}

fn micros_of_day(t: &str) -> Result<i64, String> {
    if t.starts_with("24:00:00") {
        return Ok(86_400_000_000);
    }
    let time = chrono::NaiveTime::parse_from_str(t, "%H:%M:%S%.f").map_err(|e| format!("time {t:?}: {e}"))?;
    Ok((time - chrono::NaiveTime::MIN).num_microseconds().unwrap_or(0))
}

/// `03:04:05+02:00` -> `01:04:05Z`.
fn utc_time(t: &str) -> Result<String, String> {
    let at = t.rfind(['+', '-']).ok_or_else(|| format!("timetz {t:?} without its offset"))?;
    let (time, offset) = t.split_at(at);
    let (sign, hm) = offset.split_at(1);
    let mut parts = hm.split(':').map(|p| p.parse::<i64>().map_err(|e| format!("timetz {t:?}: {e}")));
    let secs = parts.next().transpose()?.unwrap_or(0) * 3600
        + parts.next().transpose()?.unwrap_or(0) * 60
        + parts.next().transpose()?.unwrap_or(0);
    let offset = if sign == "-" { -secs } else { secs } * 1_000_000;
    let utc = (micros_of_day(time)? - offset).rem_euclid(86_400_000_000);
    let (s, frac) = (utc / 1_000_000, utc % 1_000_000);
    let mut out = format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
    if frac != 0 {
        out.push_str(format!(".{frac:06}").trim_end_matches('0'));
    }
    out.push('Z');
    Ok(out)
}

/// An interval in `IntervalStyle = postgres` (`1 year 2 mons -3 days
/// 04:05:06.5`) as Debezium's MicroDuration: a month is 30.4375 days.
fn interval_micros(t: &str) -> Result<i64, String> {
    const DAY: f64 = 86_400_000_000.0;
    let mut micros = 0f64;
    let mut words = t.split_whitespace().peekable();
    while let Some(w) = words.next() {
        if w.contains(':') {
            let negative = w.starts_with('-');
            let mut parts = w.trim_start_matches(['-', '+']).split(':');
            let h: f64 = parts.next().unwrap_or("0").parse().map_err(|e| format!("interval {t:?}: {e}"))?;
            let m: f64 = parts.next().unwrap_or("0").parse().map_err(|e| format!("interval {t:?}: {e}"))?;
            let s: f64 = parts.next().unwrap_or("0").parse().map_err(|e| format!("interval {t:?}: {e}"))?;
            let v = (h * 3600.0 + m * 60.0 + s) * 1_000_000.0;
            micros += if negative { -v } else { v };
            continue;
        }
        let n: f64 = w.parse().map_err(|e| format!("interval {t:?}: {e}"))?;
        let unit = words.next().ok_or_else(|| format!("interval {t:?}: {w} without its unit"))?;
        micros += n * match unit.trim_end_matches('s') {
            "year" => 12.0 * 30.4375 * DAY,
            "mon" => 30.4375 * DAY,
            "day" => DAY,
            other => return Err(format!("interval {t:?}: unit {other:?}")),
        };
    }
    Ok(micros.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(oid: u32, typmod: i32) -> ColumnType {
        ColumnType { oid, typmod, ..Default::default() }
    }

    /// Every type, encoded and read back by pgfanout's own Debezium
    /// decoder (`source::debezium`, which reads Debezium's topics): the
    /// value `to_jsonb` printed comes back, except where the mapping
    /// changes it on purpose (timetz in UTC).
    #[test]
    fn every_type_reads_back_through_the_debezium_decoder() {
        let n = |s: &str| Value::Number(s.into());
        let s = |s: &str| Value::String(s.into());
        let cases: Vec<(ColumnType, Value, Value)> = vec![
            (t(oid::INT2, -1), n("-32768"), n("-32768")),
            (t(oid::INT4, -1), n("2147483647"), n("2147483647")),
            (t(oid::INT8, -1), n("-9223372036854775808"), n("-9223372036854775808")),
            (t(oid::FLOAT8, -1), n("1.5"), n("1.5")),
            (t(oid::FLOAT8, -1), n("0.1"), n("0.1")),
            (t(oid::FLOAT4, -1), n("3.14"), n("3.14")),
            (t(oid::BOOL, -1), Value::Bool(true), Value::Bool(true)),
            (t(oid::NUMERIC, ((30 << 16) | 5) + 4), n("1234567890123456789012345.12345"), n("1234567890123456789012345.12345")),
            (t(oid::NUMERIC, ((10 << 16) | 2) + 4), n("-0.01"), n("-0.01")),
            (t(oid::NUMERIC, ((10 << 16) | 2) + 4), n("5"), n("5.00")),
            (
                t(oid::NUMERIC, -1),
                n("-1234567890123456789012345.0000000000000000000000001"),
                n("-1234567890123456789012345.0000000000000000000000001"),
            ),
            (t(oid::NUMERIC, -1), n("0"), n("0")),
            (t(oid::MONEY, -1), s("-$1,234.50"), n("-1234.50")),
            (t(oid::DATE, -1), s("2024-02-29"), s("2024-02-29")),
            (t(oid::DATE, -1), s("1900-01-01"), s("1900-01-01")),
            (t(oid::TIMESTAMP, -1), s("2024-01-02T03:04:05.123456"), s("2024-01-02T03:04:05.123456")),
            (t(oid::TIMESTAMP, 3), s("1960-01-02T03:04:05.5"), s("1960-01-02T03:04:05.5")),
            (t(oid::TIMESTAMPTZ, -1), s("2024-01-02T03:04:05.5+00:00"), s("2024-01-02T03:04:05.5+00:00")),
            (t(oid::TIMESTAMPTZ, -1), s("2024-01-02T03:04:05+02:00"), s("2024-01-02T01:04:05+00:00")),
            (t(oid::TIME, -1), s("23:59:59.999999"), s("23:59:59.999999")),
            (t(oid::TIME, 0), s("12:00:00"), s("12:00:00")),
            (t(oid::TIMETZ, -1), s("03:04:05.25+02:00"), s("01:04:05.25+00:00")),
            (t(oid::JSONB, -1), Value::Json(r#"{"a": [1, 2.50]}"#.into()), Value::Json(r#"{"a": [1, 2.50]}"#.into())),
            (t(oid::UUID, -1), s("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), s("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
            (t(oid::BYTEA, -1), s("\\x00ff10"), s("\\x00ff10")),
            (t(25, -1), s("text with \"quotes\" and ünïcödé"), s("text with \"quotes\" and ünïcödé")),
            (ColumnType { oid: 0, typmod: -1, element: None, labels: Some(vec!["red".into(), "green".into()]) }, s("green"), s("green")),
            (
                ColumnType { oid: 1231, typmod: ((12 << 16) | 3) + 4, element: Some(oid::NUMERIC), labels: None },
                Value::Array(vec![n("1.500"), Value::Null, n("-2.000")]),
                Value::Array(vec![n("1.500"), Value::Null, n("-2.000")]),
            ),
            (t(oid::INT4, -1), Value::Null, Value::Null),
        ];
        for (ty, input, want) in cases {
            let c = connect_type(&ty);
            let schema = c.schema(Some("c"), true);
            let encoded = c.value(&input).unwrap_or_else(|e| panic!("{ty:?} {input:?}: {e}"));
            let back = crate::source::debezium::read_value(encoded.clone(), &schema).unwrap_or_else(|e| panic!("{ty:?} {encoded}: {e}"));
            assert_eq!(back, want, "{ty:?}: {input:?} -> {encoded} ({schema})");
        }
    }

    #[test]
    fn schemas_name_debeziums_logical_types() {
        let decimal = connect_type(&t(oid::NUMERIC, ((10 << 16) | 2) + 4)).schema(Some("price"), false);
        assert_eq!(
            decimal,
            json!({"type": "bytes", "optional": false, "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
                   "parameters": {"scale": "2", "connect.decimal.precision": "10"}, "field": "price"})
        );
        assert_eq!(connect_type(&t(oid::TIMESTAMP, 3)), Connect::MillisTimestamp);
        assert_eq!(connect_type(&t(oid::TIME, 6)), Connect::MicroTime);
        assert_eq!(connect_type(&t(oid::NUMERIC, -1)).schema(None, true)["name"], "io.debezium.data.VariableScaleDecimal");
    }

    #[test]
    fn values_a_type_cannot_hold_are_errors() {
        let decimal = connect_type(&t(oid::NUMERIC, ((10 << 16) | 2) + 4));
        assert!(decimal.value(&Value::Number("NaN".into())).is_err());
        assert!(decimal.value(&Value::Number("1.234".into())).is_err(), "more places than the column");
        assert!(Connect::Date.value(&Value::String("infinity".into())).is_err());
        assert!(Connect::MicroTimestamp.value(&Value::String("-infinity".into())).is_err());
        assert!(Connect::Float64.value(&Value::String("NaN".into())).is_err(), "no JSON number for NaN");
    }

    #[test]
    fn intervals_count_a_month_as_debezium_does() {
        let day = 86_400_000_000i64;
        assert_eq!(interval_micros("1 day").unwrap(), day);
        assert_eq!(interval_micros("1 mon").unwrap(), (30.4375 * day as f64) as i64);
        assert_eq!(
            interval_micros("1 year 2 mons -3 days 04:05:06.5").unwrap(),
            ((14.0 * 30.4375 - 3.0) * day as f64) as i64 + 14_706_500_000
        );
        assert_eq!(interval_micros("-00:00:01").unwrap(), -1_000_000);
        assert_eq!(interval_micros("00:00:00").unwrap(), 0);
    }
}
