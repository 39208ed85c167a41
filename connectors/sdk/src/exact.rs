//! JSON without rounding: PostgreSQL's `json` → `jsonb` normalisation, and
//! number equality by exact decimal value.
//!
//! `to_jsonb()` of a `json` value is not its text: the value is parsed into
//! `jsonb`, which keeps only the last of duplicate keys, orders an object's
//! keys (shorter first, then bytewise), stores every number as a `numeric`
//! (`1.0e2` becomes `100`, `-0` becomes `0`) and prints with its own spacing
//! (`{"a": 1, "b": [1, 2]}`). [`jsonb_text`] does the same to JSON text, so a
//! `json` column reaches every store as `to_jsonb` writes it (a store that
//! refuses duplicate keys, OpenSearch, would otherwise refuse the document).
//!
//! [`same_number`] compares two JSON numbers by their exact decimal value
//! (`1e+20` = `100000000000000000000`, `2.50` = `2.5`) without going through
//! `f64`, so `verify` neither misses a lost digit nor reports a float that
//! only prints differently.

use std::cmp::Ordering;

use crate::json::write_str;
use crate::value::{write_array, write_members};

/// Why JSON text could not be normalised (the caller keeps the text as is:
/// `to_jsonb` itself would fail on it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonbError(pub String);

impl std::fmt::Display for JsonbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Deeper nesting than this is left as it is (PostgreSQL's own limit is its
/// stack depth; this keeps ours bounded).
const MAX_DEPTH: usize = 4096;

/// `numeric` refuses exponents beyond this (`NUMERIC_MAX_PRECISION` in the
/// exponent check of `numeric.c`'s `set_var_from_str`).
const MAX_EXPONENT: i64 = 1000;

/// JSON text as PostgreSQL prints `text::jsonb` (what `to_jsonb` gives for a
/// `json` value). Errors where `jsonb` input would fail (`\u0000`, a number
/// `numeric` cannot hold, invalid JSON).
pub fn jsonb_text(input: &[u8]) -> Result<String, JsonbError> {
    let mut p = Parser { s: input, i: 0 };
    p.ws();
    let node = p.value(0)?;
    p.ws();
    if p.i != input.len() {
        return Err(p.err("trailing characters"));
    }
    let mut out = Vec::with_capacity(input.len());
    node.write(&mut out);
    // Only UTF-8 goes in (a `&[u8]` from UTF-8 text) and strings are
    // re-encoded from chars.
    String::from_utf8(out).map_err(|_| JsonbError("not UTF-8".into()))
}

enum Node {
    Null,
    True,
    False,
    Number(String),
    String(String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Node {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Node::Null => out.extend_from_slice(b"null"),
            Node::True => out.extend_from_slice(b"true"),
            Node::False => out.extend_from_slice(b"false"),
            Node::Number(n) => out.extend_from_slice(n.as_bytes()),
            Node::String(s) => write_str(out, s),
            Node::Array(items) => write_array(out, items, b", ", |out, v| v.write(out)),
            Node::Object(fields) => write_members(out, fields.iter().map(|(k, v)| (k.as_str(), v)), (b", ", b": "), |out, v| v.write(out)),
        }
    }
}

/// jsonb's key order (`lengthCompareJsonbString`): shorter keys first, then
/// bytewise.
fn jsonb_key_order(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> JsonbError {
        JsonbError(format!("{what} at byte {}", self.i))
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn eat(&mut self, lit: &[u8]) -> bool {
        if self.s[self.i..].starts_with(lit) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    /// The members of an object or array, after its opening bracket and up
    /// to its `close`: `member` parses one (whitespace around it skipped);
    /// commas separate them.
    fn members(
        &mut self,
        close: &[u8],
        expected: &str,
        mut member: impl FnMut(&mut Self) -> Result<(), JsonbError>,
    ) -> Result<(), JsonbError> {
        self.ws();
        if self.eat(close) {
            return Ok(());
        }
        loop {
            self.ws();
            member(self)?;
            self.ws();
            if self.eat(b",") {
                continue;
            }
            if self.eat(close) {
                return Ok(());
            }
            return Err(self.err(expected));
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, JsonbError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut fields: Vec<(String, Node)> = Vec::new();
                self.members(b"}", "expected ',' or '}'", |p| {
                    if p.s.get(p.i) != Some(&b'"') {
                        return Err(p.err("expected a key"));
                    }
                    let k = p.string()?;
                    p.ws();
                    if !p.eat(b":") {
                        return Err(p.err("expected ':'"));
                    }
                    p.ws();
                    fields.push((k, p.value(depth + 1)?));
                    Ok(())
                })?;
                // Stable sort keeps duplicates in input order; the last wins.
                fields.sort_by(|a, b| jsonb_key_order(&a.0, &b.0));
                let mut out: Vec<(String, Node)> = Vec::with_capacity(fields.len());
                for (k, v) in fields {
                    match out.last_mut() {
                        Some(last) if last.0 == k => last.1 = v,
                        _ => out.push((k, v)),
                    }
                }
                Ok(Node::Object(out))
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.members(b"]", "expected ',' or ']'", |p| {
                    items.push(p.value(depth + 1)?);
                    Ok(())
                })?;
                Ok(Node::Array(items))
            }
            Some(b'"') => Ok(Node::String(self.string()?)),
            Some(b't') if self.eat(b"true") => Ok(Node::True),
            Some(b'f') if self.eat(b"false") => Ok(Node::False),
            Some(b'n') if self.eat(b"null") => Ok(Node::Null),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                self.i += 1;
                while let Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') = self.s.get(self.i) {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| self.err("bad number"))?;
                numeric_text(text).map(Node::Number).ok_or_else(|| JsonbError(format!("number {text:?} is not a numeric")))
            }
            _ => Err(self.err("expected a value")),
        }
    }

    /// A string literal at `self.i` (the opening quote), unescaped.
    fn string(&mut self) -> Result<String, JsonbError> {
        self.i += 1;
        let mut out = String::new();
        loop {
            let start = self.i;
            while let Some(&b) = self.s.get(self.i) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.i += 1;
            }
            out.push_str(std::str::from_utf8(&self.s[start..self.i]).map_err(|_| self.err("not UTF-8"))?);
            match self.s.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = *self.s.get(self.i).ok_or_else(|| self.err("unterminated escape"))?;
                    self.i += 1;
                    match c {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if !self.eat(b"\\u") {
                                    return Err(self.err("lone surrogate"));
                                }
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("bad surrogate pair"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            // jsonb refuses \u0000 ("unsupported Unicode escape sequence").
                            match char::from_u32(cp) {
                                Some(ch) if cp != 0 => out.push(ch),
                                _ => return Err(self.err("unsupported Unicode escape")),
                            }
                        }
                        _ => return Err(self.err("bad escape")),
                    }
                }
                _ => return Err(self.err("unterminated string")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonbError> {
        let h = self.s.get(self.i..self.i + 4).ok_or_else(|| self.err("short \\u escape"))?;
        let v = std::str::from_utf8(h).ok().and_then(|h| u32::from_str_radix(h, 16).ok()).ok_or_else(|| self.err("bad \\u escape"))?;
        self.i += 4;
        Ok(v)
    }
}

/// A JSON number's parts: sign, significant digits (no leading zeros, may
/// be empty for zero) and the power of ten of the last digit.
struct Decimal<'a> {
    negative: bool,
    int: &'a str,
    frac: &'a str,
    exp: i64,
}

fn split_number(text: &str) -> Option<Decimal<'_>> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => {
            let e = &rest[i + 1..];
            let e = e.strip_prefix('+').unwrap_or(e);
            // Absurd exponents are not numbers any store holds: no value.
            (&rest[..i], e.parse::<i64>().ok().filter(|e| e.abs() <= i64::from(i32::MAX))?)
        }
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if mantissa.contains('.') && frac.is_empty() {
        return None;
    }
    Some(Decimal { negative, int, frac, exp })
}

/// A JSON number as `numeric_in` + `numeric_out` print it: decimal notation,
/// as many fraction digits as the input's scale after the exponent, no sign
/// on zero. None for text that is not a JSON number or whose exponent
/// `numeric` refuses.
pub fn numeric_text(text: &str) -> Option<String> {
    let d = split_number(text)?;
    if d.exp.abs() > MAX_EXPONENT {
        return None;
    }
    // value = digits * 10^(exp - frac.len())
    let digits: String = format!("{}{}", d.int, d.frac);
    let shift = d.exp - d.frac.len() as i64;
    let scale = (-shift).max(0) as usize;
    let mut body = digits.trim_start_matches('0').to_string();
    if shift > 0 && !body.is_empty() {
        body.extend(std::iter::repeat_n('0', shift as usize));
    }
    let zero = body.is_empty();
    let mut out = String::with_capacity(body.len() + scale + 3);
    if d.negative && !zero {
        out.push('-');
    }
    if scale == 0 {
        out.push_str(if zero { "0" } else { &body });
    } else {
        if body.len() <= scale {
            out.push('0');
            out.push('.');
            out.extend(std::iter::repeat_n('0', scale - body.len()));
            out.push_str(&body);
        } else {
            let (i, f) = body.split_at(body.len() - scale);
            out.push_str(i);
            out.push('.');
            out.push_str(f);
        }
    }
    Some(out)
}

/// Whether two JSON numbers have the same exact decimal value (`2.50` =
/// `2.5`, `1e+20` = `100000000000000000000`, `-0` = `0`). Text that is not
/// a JSON number equals only itself.
pub fn same_number(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (normal(a), normal(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// (negative, significant digits without leading or trailing zeros, the
/// power of ten of the last of them); zero is (false, "", 0).
fn normal(text: &str) -> Option<(bool, String, i64)> {
    let d = split_number(text)?;
    let digits = format!("{}{}", d.int, d.frac);
    let lead = digits.len() - digits.trim_start_matches('0').len();
    let sig = digits[lead..].trim_end_matches('0');
    if sig.is_empty() {
        return Some((false, String::new(), 0));
    }
    let trailing = digits.len() - lead - sig.len();
    Some((d.negative, sig.to_string(), d.exp - d.frac.len() as i64 + trailing as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jsonb(s: &str) -> String {
        jsonb_text(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// Expected texts are PostgreSQL 15's `SELECT 'input'::json::jsonb`.
    #[test]
    fn normalises_like_jsonb() {
        assert_eq!(jsonb(r#"{"a":1,"a":2}"#), r#"{"a": 2}"#);
        assert_eq!(
            jsonb(r#"{"bb":1, "a":[1,2,{"z":null,"y":true}], "c":false}"#),
            r#"{"a": [1, 2, {"y": true, "z": null}], "c": false, "bb": 1}"#
        );
        assert_eq!(jsonb(r#" [ ] "#), "[]");
        assert_eq!(jsonb(r#"{}"#), "{}");
        assert_eq!(jsonb(r#""\u0041\/\n\u00e9\ud83d\ude00""#), "\"A/\\né😀\"");
        assert_eq!(jsonb("1.0e2"), "100");
        assert_eq!(jsonb("1E-3"), "0.001");
        assert_eq!(jsonb("-0"), "0");
        assert_eq!(jsonb("-0.00"), "0.00");
        assert_eq!(jsonb("2.50"), "2.50");
        assert_eq!(jsonb("12.5e1"), "125");
        assert_eq!(jsonb("1.25e1"), "12.5");
        assert_eq!(jsonb("123456789012345678901234567890.123456789"), "123456789012345678901234567890.123456789");
        assert_eq!(jsonb("1e20"), "100000000000000000000");
        assert_eq!(jsonb("0.5e-2"), "0.005");
        assert_eq!(jsonb("-12e-1"), "-1.2");
        assert!(jsonb_text(br#""\u0000""#).is_err());
        assert!(jsonb_text(b"1e1001").is_err());
        assert!(jsonb_text(b"{\"a\" 1}").is_err());
    }

    #[test]
    fn numbers_compare_by_exact_value() {
        assert!(same_number("2.50", "2.5"));
        assert!(same_number("1e+20", "100000000000000000000"));
        assert!(same_number("1e20", "1E+20"));
        assert!(same_number("-0", "0.000"));
        assert!(same_number("0.001", "1e-3"));
        assert!(!same_number("648199.3821223196731458777", "648199.3821223197"));
        assert!(!same_number("1.2345678901234567890123456789e+29", "1.2345678901235e+29"));
        assert!(!same_number("-1", "1"));
        assert!(!same_number("10", "1"));
        assert!(same_number(&format!("1{}", "0".repeat(400)), "1e400"));
    }
}
