//! JSON text read back by `verify`, in a form that compares exactly.
//!
//! The verify driver (`pgfanout_sdk::verify::diff_fields`) compares numbers
//! by exact decimal value, so `2.50` equals `2.5` there (serde_json keeps
//! the digits: the workspace builds it with `arbitrary_precision`). Redis
//! keeps what PostgreSQL wrote as text, so its verify must tell `2.50` from
//! `2.5` too (the store holds what PostgreSQL wrote, digit for digit). So
//! the text is parsed by serde_json, which keeps every number's text, and
//! each number is then tagged: a plain integer of at most 15 digits (exact
//! as an f64, so any comparison of two of them is exact) stays a JSON
//! number, and any other number becomes `{"$number": "<its text>"}`,
//! compared as text (serde_json keeps every digit and spells only the
//! exponent one way: `1E5` and `1e5` read as `1e+5`, the same digits).
//! Strings are decoded (escapes do not count as
//! differences), objects keep the last of duplicate names (as jsonb does),
//! whitespace does not count.

use serde_json::{Map, Value as Json};

/// The member name that marks a number kept as its text.
pub(crate) const NUMBER: &str = "$number";

/// `text` parsed with every number kept exactly, or `None` when it is not
/// one JSON value (or nests deeper than serde_json's limit of 128).
pub(crate) fn parse(text: &str) -> Option<Json> {
    serde_json::from_str(text).ok().map(exact_numbers)
}

/// Every number of `v` as it compares ([`number`]): serde_json kept its
/// text as written (`arbitrary_precision`).
fn exact_numbers(v: Json) -> Json {
    match v {
        Json::Number(n) => number(&n.to_string()),
        Json::Object(m) => Json::Object(m.into_iter().map(|(k, v)| (k, exact_numbers(v))).collect()),
        Json::Array(a) => Json::Array(a.into_iter().map(exact_numbers).collect()),
        other => other,
    }
}

/// A number's text as it compares: a JSON number when that is exact,
/// tagged text otherwise.
pub(crate) fn number(text: &str) -> Json {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let plain = !digits.is_empty()
        && digits.len() <= 15
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && text != "-0";
    match text.parse::<i64>() {
        Ok(n) if plain => Json::from(n),
        _ => tagged(text),
    }
}

fn tagged(text: &str) -> Json {
    let mut m = Map::new();
    m.insert(NUMBER.to_string(), Json::String(text.to_string()));
    Json::Object(m)
}

/// Every number of `v` as a store holding only 64-bit numbers keeps it
/// (RedisJSON: integers as i64/u64, anything else as the nearest f64, in
/// serde_json's shortest spelling); a number too large for an f64 stays
/// as written (such a document is refused on write).
pub(crate) fn as_f64_store(v: Json) -> Json {
    match v {
        Json::Object(m) if m.len() == 1 && m.get(NUMBER).is_some_and(Json::is_string) => {
            let text = m[NUMBER].as_str().unwrap_or_default();
            let integer = text.strip_prefix('-').unwrap_or(text).bytes().all(|b| b.is_ascii_digit());
            let kept = match (integer, text.parse::<i64>(), text.parse::<u64>()) {
                (true, Ok(n), _) => Some(n.to_string()),
                (true, _, Ok(n)) => Some(n.to_string()),
                _ => text.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(|n| n.to_string()),
            };
            number(kept.as_deref().unwrap_or(text))
        }
        Json::Object(m) => Json::Object(m.into_iter().map(|(k, v)| (k, as_f64_store(v))).collect()),
        Json::Array(a) => Json::Array(a.into_iter().map(as_f64_store).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_keep_their_text() {
        let big = format!("1{}", "0".repeat(399));
        let doc = format!(r#"{{ "a": 2.50, "b": 7, "c": [{big}, -0, 1e400, 12345678901234567890], "d": "x\"\u00e9", "a": 2.500 }}"#);
        let v = parse(&doc).unwrap();
        assert_eq!(
            v,
            json!({"a": {"$number": "2.500"}, "b": 7, "c": [{"$number": big}, {"$number": "-0"}, {"$number": "1e+400"},
                   {"$number": "12345678901234567890"}], "d": "x\"é"})
        );
        assert_ne!(parse(r#"{"a":2.5}"#), parse(r#"{"a":2.50}"#));
        assert_ne!(parse("[1]"), parse("[1.0]"));
        assert_ne!(parse("[1e5]"), parse("[1.0e5]"));
        assert_eq!(parse("[1E5]"), parse("[1e+5]"));
        assert_eq!(parse(r#"{"a": [1, {"b": null}], "t": true}"#), parse(r#"{"t":true,"a":[1,{"b":null}]}"#));
    }

    #[test]
    fn invalid_or_too_deep_text_is_not_json() {
        for bad in ["", "{", r#"{"a":}"#, "[1,]", "01", "1.", "{} x", r#"{"a" 1}"#, "tru", "\"abc"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
        assert_eq!(parse(&deep), None);
    }

    #[test]
    fn a_float_store_keeps_64_bit_numbers() {
        let v = as_f64_store(parse(r#"{"a": 2.50, "b": 12345678901234567890123, "c": [10], "d": 1e400}"#).unwrap());
        // (serde_json spells the f64 `1.2345678901234568e22` or `…e+22`
        // depending on its features; stored and expected go through it alike.)
        let b = serde_json::Number::from_f64(1.2345678901234568e22).unwrap().to_string();
        assert_eq!(v, json!({"a": {"$number": "2.5"}, "b": {"$number": b}, "c": [10], "d": {"$number": "1e+400"}}));
    }
}
