//! Values to BSON and back, without losing a digit.
//!
//! A column value arrives as `to_jsonb` prints it ([`Value`]). Numbers keep
//! their digits in BSON:
//! - integers become int32, or int64 beyond 32 bits;
//! - other numbers become a double when the double prints the same exact
//!   value back (`19.99`, `0.1`, `1e300`: what a float8 column sends, and
//!   most numerics);
//! - the rest (a 25-digit numeric, integers beyond 64 bits) become
//!   decimal128 when it holds them exactly (34 significant digits), and
//!   their exact text otherwise, or always with [`Decimals::String`].
//!
//! json/jsonb columns become embedded documents with the same rule for
//! their numbers (or their text, [`JsonMode::String`]); arrays become
//! arrays and composites embedded documents. Timestamps, dates, uuids and
//! the like stay the strings `to_jsonb` prints.
//!
//! [`to_json`] reads a stored value back as JSON for `verify`: each number
//! with its exact text, so comparing it with the expected document finds a
//! lost digit.

use std::str::FromStr;

use mongodb::bson::{Bson, Decimal128, Document};
use pgfanout_sdk::exact::same_number;
use pgfanout_sdk::Value;
use serde_json::Value as Json;

use crate::config::JsonMode;

/// How numbers that no double holds are written (resolved from
/// [`crate::config::Decimals`] once the server is known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inexact {
    Decimal128,
    String,
}

/// The conversion settings of one route.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Convert {
    pub(crate) inexact: Inexact,
    pub(crate) json: JsonMode,
}

impl Convert {
    /// One column value as BSON.
    pub(crate) fn value(&self, v: &Value) -> Bson {
        match v {
            Value::Null => Bson::Null,
            Value::Bool(b) => Bson::Boolean(*b),
            Value::Number(n) => self.number(n),
            Value::String(s) => Bson::String(s.to_string()),
            Value::Json(text) => match self.json {
                JsonMode::String => Bson::String(text.to_string()),
                // The source only makes valid JSON; text that is not stays text.
                JsonMode::Document => match serde_json::from_str::<Json>(text) {
                    Ok(j) => self.json_value(&j),
                    Err(_) => Bson::String(text.to_string()),
                },
            },
            Value::Array(items) => Bson::Array(items.iter().map(|v| self.value(v)).collect()),
            Value::Object(fields) => Bson::Document(fields.iter().map(|(k, v)| (k.to_string(), self.value(v))).collect()),
        }
    }

    /// A JSON value (inside a json/jsonb column) as BSON; numbers keep
    /// their text (serde_json's `arbitrary_precision`).
    fn json_value(&self, j: &Json) -> Bson {
        match j {
            Json::Null => Bson::Null,
            Json::Bool(b) => Bson::Boolean(*b),
            Json::Number(n) => self.number(&n.to_string()),
            Json::String(s) => Bson::String(s.clone()),
            Json::Array(a) => Bson::Array(a.iter().map(|v| self.json_value(v)).collect()),
            Json::Object(m) => Bson::Document(m.iter().map(|(k, v)| (k.clone(), self.json_value(v))).collect()),
        }
    }

    /// A JSON number's text as BSON, exactly (see the module docs).
    pub(crate) fn number(&self, text: &str) -> Bson {
        let integer = text.bytes().enumerate().all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'-'));
        if integer {
            if let Ok(i) = text.parse::<i64>() {
                return match i32::try_from(i) {
                    Ok(small) => Bson::Int32(small),
                    Err(_) => Bson::Int64(i),
                };
            }
        } else if let Ok(f) = text.parse::<f64>() {
            if f.is_finite() && same_number(text, &format!("{f:e}")) {
                return Bson::Double(f);
            }
        }
        if self.inexact == Inexact::Decimal128 {
            if let Ok(d) = Decimal128::from_str(text) {
                if same_number(text, &decimal_json(&d)) {
                    return Bson::Decimal128(d);
                }
            }
        }
        Bson::String(text.to_string())
    }
}

/// A decimal128's value as JSON number text (`1.2345E+29` is one already;
/// NaN and infinities are not numbers and stay as printed).
fn decimal_json(d: &Decimal128) -> String {
    d.to_string()
}

/// A stored BSON value as JSON, numbers with their exact text: what
/// `verify` compares. Types pgfanout never writes (dates, object ids)
/// appear as relaxed extended JSON.
pub(crate) fn to_json(b: &Bson) -> Json {
    let number = |text: String| serde_json::from_str::<Json>(&text).unwrap_or(Json::String(text));
    match b {
        Bson::Null => Json::Null,
        Bson::Boolean(x) => Json::Bool(*x),
        Bson::Int32(i) => Json::from(*i),
        Bson::Int64(i) => Json::from(*i),
        Bson::Double(f) if f.is_finite() => serde_json::Number::from_f64(*f).map(Json::Number).unwrap_or(Json::Null),
        Bson::Decimal128(d) => number(decimal_json(d)),
        Bson::String(s) => Json::String(s.clone()),
        Bson::Array(a) => Json::Array(a.iter().map(to_json).collect()),
        Bson::Document(d) => document_json(d),
        other => other.clone().into_relaxed_extjson(),
    }
}

/// A document as a JSON object (see [`to_json`]).
pub(crate) fn document_json(d: &Document) -> Json {
    Json::Object(d.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
}

/// An `_id` as the text `verify` prints and keys documents by: its
/// relaxed extended JSON (`42`, `"a:b"`).
pub(crate) fn id_text(id: &Bson) -> String {
    id.clone().into_relaxed_extjson().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(inexact: Inexact) -> Convert {
        Convert { inexact, json: JsonMode::Document }
    }

    #[test]
    fn numbers_keep_every_digit() {
        let c = conv(Inexact::Decimal128);
        assert_eq!(c.number("42"), Bson::Int32(42));
        assert_eq!(c.number("-9000000000"), Bson::Int64(-9_000_000_000));
        assert_eq!(c.number("19.99"), Bson::Double(19.99));
        assert_eq!(c.number("2.50"), Bson::Double(2.5));
        assert_eq!(c.number("1e300"), Bson::Double(1e300));
        let long = "648199.3821223196731458777";
        assert!(matches!(c.number(long), Bson::Decimal128(_)), "{:?}", c.number(long));
        assert!(same_number(&to_json(&c.number(long)).to_string(), long));
        let huge = format!("1{}", "0".repeat(400));
        assert!(matches!(c.number(&huge), Bson::Decimal128(_)), "10^400 is one significant digit");
        assert!(same_number(&to_json(&c.number(&huge)).to_string(), &huge));
        let digits40 = "1234567890123456789012345678901234567890.5";
        assert_eq!(c.number(digits40), Bson::String(digits40.into()), "beyond 34 digits: its text");
        let beyond_i64 = "123456789012345678901234567890";
        assert!(same_number(&to_json(&c.number(beyond_i64)).to_string(), beyond_i64));
        let s = conv(Inexact::String);
        assert_eq!(s.number(long), Bson::String(long.into()));
        assert_eq!(s.number("19.99"), Bson::Double(19.99));
    }

    #[test]
    fn json_columns_become_documents_with_exact_numbers() {
        let c = conv(Inexact::String);
        let v = Value::Json(r#"{"n": 648199.3821223196731458777, "m": 2.50, "a": [1, "x", null]}"#.into());
        let b = c.value(&v);
        let Bson::Document(d) = &b else { panic!("{b:?}") };
        assert_eq!(d.get("n"), Some(&Bson::String("648199.3821223196731458777".into())));
        assert_eq!(d.get("m"), Some(&Bson::Double(2.5)));
        assert_eq!(d.get("a"), Some(&Bson::Array(vec![Bson::Int32(1), Bson::String("x".into()), Bson::Null])));
        let text = Convert { inexact: Inexact::String, json: JsonMode::String }.value(&v);
        assert!(matches!(text, Bson::String(_)));
    }

    #[test]
    fn read_back_json_is_exact() {
        assert_eq!(to_json(&Bson::Double(0.1)).to_string(), "0.1");
        assert_eq!(to_json(&Bson::Int64(7)), Json::from(7));
        assert_eq!(id_text(&Bson::Int32(42)), "42");
        assert_eq!(id_text(&Bson::String("a:b".into())), "\"a:b\"");
    }
}
