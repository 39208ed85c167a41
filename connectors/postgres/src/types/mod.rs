//! Column text to [`Value`]s equal to PostgreSQL's `to_jsonb()`.
//!
//! pgoutput (protocol v1) sends every column in its text output form, written
//! under the session settings the connection fixes (DateStyle ISO, TimeZone
//! UTC, IntervalStyle postgres, extra_float_digits 3, bytea_output hex).
//! `to_jsonb()` (`jsonb.c`, `jsonb_categorize_type` + `datum_to_jsonb`)
//! differs from that text only for a few type categories, which is what a
//! [`TypeDecoder`] captures: numbers (JSON numbers, except NaN and the
//! infinities), booleans, json/jsonb (nested), date/timestamp/timestamptz (XSD
//! form: `T` separator, `+00:00` offsets), arrays (nested
//! JSON arrays of typed elements) and composites (objects). Every other type is
//! the string of its text. Domains use their base type's decoder; enums,
//! ranges and multiranges are text ([`crate::catalog`] resolves OIDs).
//!
//! This is the hot path: [`TypeDecoder::decode_in`] turns text, number,
//! json and date columns into inline copies (short) or slices (long) of the
//! received message (no allocation), timestamps render through a reused
//! buffer (none either when they fit inline), arrays and composites parse
//! in one pass with one scratch buffer for quoted elements, and nothing here
//! uses regexes or `format!`.

use std::sync::Arc;

use bytes::Bytes;
use pgfanout_sdk::{Text, Value};

use crate::pgoutput::DecodeError;
use datetime::{iso_to_xsd_into, timestamp_text};
use literal::{decode_array, decode_record};
use number::decode_number;

mod datetime;
mod literal;
mod number;

/// How to turn one column's text into its `to_jsonb()`-equal [`Value`].
#[derive(Debug, Clone, PartialEq)]
pub enum TypeDecoder {
    /// The text as a JSON string (text, varchar, uuid, interval, time,
    /// timetz, bytea, enums, ranges and everything else).
    Text,
    /// int2/int4/int8/float4/float8/numeric: a JSON number with the server's
    /// digits; `NaN`, `Infinity` and `-Infinity` become strings.
    Number,
    /// `t`/`f` to true/false.
    Bool,
    /// jsonb: the text is the JSON (PostgreSQL prints it canonical).
    Json,
    /// json: the text normalised as `to_jsonb` does (last of duplicate keys,
    /// jsonb's key order, numbers as `numeric`; `pgfanout_sdk::exact`).
    JsonText,
    /// `YYYY-MM-DD[ BC]`, `infinity` kept.
    Date,
    /// `YYYY-MM-DDTHH:MM:SS[.ffffff]`.
    Timestamp,
    /// `YYYY-MM-DDTHH:MM:SS[.ffffff]+HH:MM`.
    Timestamptz,
    /// An array literal (any dimensions, optional bounds) to nested arrays.
    Array { elem: Arc<TypeDecoder>, delim: u8 },
    /// A row literal to an object with the attribute names, in order.
    Composite { fields: Vec<(Arc<str>, Arc<TypeDecoder>)> },
}

impl TypeDecoder {
    /// Decodes one non-NULL value's text. Fails only on text that does not
    /// parse as this type (a malformed array/row literal, a non-number for a
    /// number type), which the server does not produce for a matching type.
    pub fn decode(&self, text: &[u8]) -> Result<Value, DecodeError> {
        match self {
            TypeDecoder::Text => Ok(Value::String(owned_text(text))),
            TypeDecoder::Number => decode_number(text).map(|kind| kind.wrap(owned_text(text))),
            TypeDecoder::Bool => decode_bool(text),
            // json keeps its input's spacing; the ends are trimmed so the
            // record stays compact (jsonb text is already canonical).
            TypeDecoder::Json => Ok(Value::Json(owned_text(text.trim_ascii()))),
            TypeDecoder::JsonText => Ok(json_as_jsonb(text)),
            // ISO date text is already what to_jsonb writes (BC suffix included).
            TypeDecoder::Date => Ok(Value::String(owned_text(text))),
            TypeDecoder::Timestamp => Ok(Value::String(timestamp_text(text, "timestamp", false)?)),
            TypeDecoder::Timestamptz => Ok(Value::String(timestamp_text(text, "timestamptz", true)?)),
            TypeDecoder::Array { elem, delim } => decode_array(text, elem, *delim),
            TypeDecoder::Composite { fields } => decode_record(text, fields),
        }
    }

    /// [`decode`](Self::decode) for `text` lying within `buf` (a received
    /// message, a snapshot's read buffer): values whose JSON is their text
    /// (text, numbers, json, dates) are copied inline when short and slice
    /// `buf` when long; no reference is taken on `buf` for a short value.
    pub fn decode_in(&self, text: &[u8], buf: &Bytes) -> Result<Value, DecodeError> {
        match self {
            TypeDecoder::Text | TypeDecoder::Date | TypeDecoder::Number | TypeDecoder::Json => match Text::from_utf8_in(text, buf) {
                Ok(text) => self.decode_text(text),
                // Not UTF-8 (a UTF-8 server encoding never sends it): a
                // copy with U+FFFD replacements.
                Err(_) => self.decode(text),
            },
            _ => self.decode(text),
        }
    }

    /// True for the types whose value is a string that differs from their
    /// text (timestamps): [`render_into`](Self::render_into) writes it.
    pub fn renders(&self) -> bool {
        matches!(self, TypeDecoder::Timestamp | TypeDecoder::Timestamptz)
    }

    /// For a type that [`renders`](Self::renders): appends to `out` the
    /// string [`decode`](Self::decode) would make of `text` (so a buffer of
    /// many values needs no allocation per value). Other types: appends
    /// `text` unchanged.
    pub fn render_into(&self, text: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
        match self {
            TypeDecoder::Timestamp => iso_to_xsd_into(text, "timestamp", false, out),
            TypeDecoder::Timestamptz => iso_to_xsd_into(text, "timestamptz", true, out),
            _ => {
                out.extend_from_slice(text);
                Ok(())
            }
        }
    }

    /// [`decode`](Self::decode) for text already checked to be UTF-8 and
    /// held in a shared buffer: the same values, slices of `text` where
    /// [`decode_in`](Self::decode_in) would slice.
    pub fn decode_text(&self, text: Text) -> Result<Value, DecodeError> {
        match self {
            TypeDecoder::Text | TypeDecoder::Date => Ok(Value::String(text)),
            TypeDecoder::Number => decode_number(text.as_bytes()).map(|kind| kind.wrap(text)),
            TypeDecoder::Json => Ok(Value::Json(text.slice_ref(text.trim_ascii()))),
            TypeDecoder::JsonText => Ok(json_as_jsonb(text.as_bytes())),
            _ => self.decode(text.as_bytes()),
        }
    }
}

/// A `json` value as `to_jsonb` gives it. Text `jsonb` input would refuse
/// (`\u0000`; PostgreSQL's `to_jsonb` fails on it too) is kept as sent.
fn json_as_jsonb(text: &[u8]) -> Value {
    match pgfanout_sdk::exact::jsonb_text(text) {
        Ok(canonical) => Value::Json(Text::from(canonical)),
        Err(_) => Value::Json(owned_text(text.trim_ascii())),
    }
}

fn decode_bool(text: &[u8]) -> Result<Value, DecodeError> {
    match text {
        b"t" => Ok(Value::Bool(true)),
        b"f" => Ok(Value::Bool(false)),
        _ => Err(DecodeError::value("bool", text, "expected t or f")),
    }
}

fn owned_text(b: &[u8]) -> Text {
    Text::from_utf8(b).unwrap_or_else(|_| Text::from(String::from_utf8_lossy(b).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(elem: TypeDecoder) -> TypeDecoder {
        TypeDecoder::Array { elem: Arc::new(elem), delim: b',' }
    }

    fn json(d: &TypeDecoder, text: &str) -> String {
        d.decode(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}")).to_json_string()
    }

    #[test]
    fn numbers_keep_their_text_and_specials_become_strings() {
        let n = TypeDecoder::Number;
        assert_eq!(json(&n, "12.500"), "12.500");
        // Exponents and -0 as to_jsonb prints them (through numeric).
        assert_eq!(json(&n, "-1.5e-07"), "-0.00000015");
        assert_eq!(json(&n, "1e+20"), "100000000000000000000");
        assert_eq!(json(&n, "3.4028235e+38"), "340282350000000000000000000000000000000");
        assert_eq!(json(&n, "-0"), "0");
        assert_eq!(json(&n, "NaN"), "\"NaN\"");
        assert_eq!(json(&n, "-Infinity"), "\"-Infinity\"");
        for bad in ["", "-", "01", "1.", "1e", "abc", "1 "] {
            assert!(n.decode(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dates_and_timestamps_use_the_xsd_form() {
        assert_eq!(json(&TypeDecoder::Date, "2024-02-29"), "\"2024-02-29\"");
        assert_eq!(json(&TypeDecoder::Date, "0044-03-15 BC"), "\"0044-03-15 BC\"");
        assert_eq!(json(&TypeDecoder::Date, "-infinity"), "\"-infinity\"");
        assert_eq!(json(&TypeDecoder::Timestamp, "2024-02-29 01:02:03.5"), "\"2024-02-29T01:02:03.5\"");
        assert_eq!(json(&TypeDecoder::Timestamp, "0001-01-01 00:00:00 BC"), "\"0001-01-01T00:00:00 BC\"");
        assert_eq!(json(&TypeDecoder::Timestamptz, "2024-02-29 01:02:03.123456+00"), "\"2024-02-29T01:02:03.123456+00:00\"");
        assert_eq!(json(&TypeDecoder::Timestamptz, "2024-02-29 01:02:03-05:30"), "\"2024-02-29T01:02:03-05:30\"");
        assert_eq!(json(&TypeDecoder::Timestamptz, "infinity"), "\"infinity\"");
    }

    #[test]
    fn arrays_nest_quote_and_null() {
        let ints = arr(TypeDecoder::Number);
        assert_eq!(json(&ints, "{}"), "[]");
        assert_eq!(json(&ints, "{1,NULL,3}"), "[1,null,3]");
        assert_eq!(json(&ints, "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
        assert_eq!(json(&ints, "[0:1]={1,2}"), "[1,2]");
        assert_eq!(json(&ints, "[0:1][1:1]={{1},{2}}"), "[[1],[2]]");
        let texts = arr(TypeDecoder::Text);
        assert_eq!(json(&texts, r#"{"a b","NULL",null,"q\"x","b\\s",""}"#), r#"["a b","NULL",null,"q\"x","b\\s",""]"#);
        assert_eq!(json(&texts, r#"{ a , b\,c ,d\ }"#), r#"["a","b,c","d "]"#);
        let boxes = TypeDecoder::Array { elem: Arc::new(TypeDecoder::Text), delim: b';' };
        assert_eq!(json(&boxes, "{(1,1),(0,0);(2,2),(1,1)}"), r#"["(1,1),(0,0)","(2,2),(1,1)"]"#);
        for bad in ["", "{", "{1,2", "{1,2}x", "{1 2}", "[1:2]{1,2}", r#"{"a}"#] {
            assert!(ints.decode(bad.as_bytes()).is_err() || texts.decode(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    fn pair() -> TypeDecoder {
        TypeDecoder::Composite { fields: vec![("n".into(), Arc::new(TypeDecoder::Number)), ("s".into(), Arc::new(TypeDecoder::Text))] }
    }

    #[test]
    fn composites_quote_double_quotes_and_null() {
        let p = pair();
        assert_eq!(json(&p, "(1,\"a b\")"), r#"{"n":1,"s":"a b"}"#);
        assert_eq!(json(&p, "(,)"), r#"{"n":null,"s":null}"#);
        assert_eq!(json(&p, "(2,\"\")"), r#"{"n":2,"s":""}"#);
        assert_eq!(json(&p, r#"(3,"say ""hi"" \\ ok")"#), r#"{"n":3,"s":"say \"hi\" \\ ok"}"#);
        assert_eq!(json(&p, r#"(4,a"b,c"d)"#), r#"{"n":4,"s":"ab,cd"}"#);
        // Written before the attribute `s` was added: it reads as NULL.
        assert_eq!(json(&p, "(1)"), r#"{"n":1,"s":null}"#);
        assert_eq!(json(&p, "()"), r#"{"n":null,"s":null}"#);
        assert!(p.decode(b"(1,2,3)").is_err());
        assert!(p.decode(b"1,2").is_err());
        assert!(p.decode(b"(1,\"x)").is_err());
    }

    #[test]
    fn composites_nest_with_arrays() {
        let outer = TypeDecoder::Composite {
            fields: vec![
                ("inner".into(), Arc::new(pair())),
                ("tags".into(), Arc::new(arr(TypeDecoder::Text))),
                ("pairs".into(), Arc::new(arr(pair()))),
            ],
        };
        let text = r#"("(1,""x y"")","{a,""b c""}","{""(2,z)"",NULL,""(,)""}")"#;
        assert_eq!(
            json(&outer, text),
            r#"{"inner":{"n":1,"s":"x y"},"tags":["a","b c"],"pairs":[{"n":2,"s":"z"},null,{"n":null,"s":null}]}"#
        );
        let arr_of_pairs = arr(pair());
        assert_eq!(json(&arr_of_pairs, r#"{"(1,\"a \"\"q\"\"\")"}"#), r#"[{"n":1,"s":"a \"q\""}]"#);
    }

    #[test]
    fn bools_and_json() {
        assert_eq!(json(&TypeDecoder::Bool, "t"), "true");
        assert!(TypeDecoder::Bool.decode(b"true").is_err());
        assert_eq!(json(&arr(TypeDecoder::Json), r#"{"{\"a\": 1}",null}"#), r#"[{"a": 1},null]"#);
        assert_eq!(json(&arr(TypeDecoder::JsonText), r#"{"{\"a\":1,\"a\":2.50}",null}"#), r#"[{"a": 2.50},null]"#);
        assert_eq!(json(&TypeDecoder::JsonText, r#" {"b":1e2, "a":[1,2], "b":0.5} "#), r#"{"a": [1, 2], "b": 0.5}"#);
    }
}
