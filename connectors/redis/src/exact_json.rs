//! JSON text read back by `verify`, in a form that compares exactly.
//!
//! The verify driver (`pgfanout_sdk::verify::diff_fields`) compares numbers
//! by exact decimal value, so `2.50` equals `2.5` there (serde_json keeps
//! the digits: the workspace builds it with `arbitrary_precision`). Redis
//! keeps what PostgreSQL wrote as text, so its verify must tell `2.50` from
//! `2.5` too (the store holds what PostgreSQL wrote, digit for digit): this
//! parser keeps every number's text: a plain integer of at most 15 digits (exact as an f64, so
//! any comparison of two of them is exact) stays a JSON number, and any
//! other number becomes `{"$number": "<its text>"}`, compared as text.
//! Strings are decoded (escapes do not count as differences), objects keep
//! the last of duplicate names (as jsonb does), whitespace does not count.

use serde_json::{Map, Value as Json};

/// The member name that marks a number kept as its text.
pub(crate) const NUMBER: &str = "$number";

/// Deepest nesting parsed; deeper documents compare as their text.
const MAX_DEPTH: usize = 256;

/// `text` parsed with every number kept exactly, or `None` when it is not
/// one JSON value (or nests deeper than [`MAX_DEPTH`]).
pub(crate) fn parse(text: &str) -> Option<Json> {
    let mut p = Parser { s: text.as_bytes(), text, i: 0 };
    let v = p.value(0)?;
    p.ws();
    (p.i == p.s.len()).then_some(v)
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

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        let ok = self.s.get(self.i) == Some(&b);
        if ok {
            self.i += 1;
        }
        ok
    }

    fn value(&mut self, depth: usize) -> Option<Json> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        match *self.s.get(self.i)? {
            b'{' => {
                self.i += 1;
                let mut m = Map::new();
                if self.eat(b'}') {
                    return Some(Json::Object(m));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    if !self.eat(b':') {
                        return None;
                    }
                    let v = self.value(depth + 1)?;
                    m.insert(k, v);
                    if self.eat(b'}') {
                        return Some(Json::Object(m));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut a = Vec::new();
                if self.eat(b']') {
                    return Some(Json::Array(a));
                }
                loop {
                    a.push(self.value(depth + 1)?);
                    if self.eat(b']') {
                        return Some(Json::Array(a));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'"' => self.string().map(Json::String),
            b't' => self.literal("true", Json::Bool(true)),
            b'f' => self.literal("false", Json::Bool(false)),
            b'n' => self.literal("null", Json::Null),
            _ => {
                let start = self.i;
                while self.s.get(self.i).is_some_and(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')) {
                    self.i += 1;
                }
                let text = &self.text[start..self.i];
                // Checks the grammar; the value itself is not used.
                let valid = !text.is_empty() && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
                valid.then(|| number(text))
            }
        }
    }

    fn literal(&mut self, word: &str, v: Json) -> Option<Json> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Some(v)
        } else {
            None
        }
    }

    /// A string starting at the cursor, decoded.
    fn string(&mut self) -> Option<String> {
        if self.s.get(self.i) != Some(&b'"') {
            return None;
        }
        let start = self.i;
        self.i += 1;
        let mut escaped = false;
        loop {
            match *self.s.get(self.i)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.i += 2;
                }
                _ => self.i += 1,
            }
        }
        self.i += 1;
        let raw = self.text.get(start..self.i)?;
        if escaped {
            serde_json::from_str(raw).ok()
        } else {
            Some(raw[1..raw.len() - 1].to_string())
        }
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
            json!({"a": {"$number": "2.500"}, "b": 7, "c": [{"$number": big}, {"$number": "-0"}, {"$number": "1e400"},
                   {"$number": "12345678901234567890"}], "d": "x\"é"})
        );
        assert_ne!(parse(r#"{"a":2.5}"#), parse(r#"{"a":2.50}"#));
        assert_ne!(parse("[1]"), parse("[1.0]"));
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
        assert_eq!(v, json!({"a": {"$number": "2.5"}, "b": {"$number": b}, "c": [10], "d": {"$number": "1e400"}}));
    }
}
