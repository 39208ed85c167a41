//! Column values, encoded the way PostgreSQL's `to_jsonb()` encodes them.
//!
//! The source turns each column's text into a [`Value`] whose JSON equals
//! `to_jsonb()` of the same value (session TimeZone UTC). Numbers are kept as
//! PostgreSQL printed them, so `numeric` never loses a digit; json and jsonb
//! keep their text. Everything downstream (templates, filters, sinks) works on
//! these values.

use std::sync::Arc;

use crate::json;

pub use crate::text::Text;

/// One column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// A JSON number exactly as PostgreSQL printed it (integers, finite
    /// floats, numerics of any precision). Always valid JSON number text.
    Number(Text),
    String(Text),
    /// JSON text from a json or jsonb column; always valid JSON.
    Json(Text),
    Array(Vec<Value>),
    /// A composite (row) value: attribute names and values, in order.
    Object(Vec<(Arc<str>, Value)>),
}

impl Value {
    /// Roughly the memory this value holds: its text plus a fixed slot.
    /// Used to bound queues in bytes, not for exact accounting.
    pub fn approx_size(&self) -> usize {
        const SLOT: usize = std::mem::size_of::<Value>();
        match self {
            Value::Null | Value::Bool(_) => SLOT,
            Value::Number(t) | Value::String(t) | Value::Json(t) => SLOT + t.as_str().len(),
            Value::Array(items) => SLOT + items.iter().map(Value::approx_size).sum::<usize>(),
            Value::Object(fields) => SLOT + fields.iter().map(|(_, v)| 16 + v.approx_size()).sum::<usize>(),
        }
    }

    /// Appends this value's JSON to `out`.
    pub fn write_json<O: json::JsonOut + ?Sized>(&self, out: &mut O) {
        match self {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(true) => out.extend_from_slice(b"true"),
            Value::Bool(false) => out.extend_from_slice(b"false"),
            Value::Number(n) => out.extend_from_slice(n.as_bytes()),
            Value::String(s) => json::write_text(out, s),
            Value::Json(j) => out.verbatim(j, 0..j.len()),
            Value::Array(items) => write_array(out, items, b",", |out, v| v.write_json(out)),
            Value::Object(fields) => write_object(out, fields.iter().map(|(k, v)| (&**k, v))),
        }
    }

    /// This value's JSON text.
    pub fn to_json_string(&self) -> String {
        let mut out = Vec::new();
        self.write_json(&mut out);
        // write_json only ever emits UTF-8.
        String::from_utf8(out).unwrap_or_default()
    }

    /// The value as `serde_json`. Numbers beyond f64/i64 precision are
    /// approximated: use this for filters and templates, never to write data.
    pub fn to_serde(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Number(n) => serde_json::from_str(n).unwrap_or_else(|_| serde_json::Value::String(n.to_string())),
            Value::String(s) => serde_json::Value::String(s.to_string()),
            Value::Json(j) => serde_json::from_str(j).unwrap_or(serde_json::Value::Null),
            Value::Array(a) => serde_json::Value::Array(a.iter().map(Value::to_serde).collect()),
            Value::Object(f) => serde_json::Value::Object(f.iter().map(|(k, v)| (k.to_string(), v.to_serde())).collect()),
        }
    }

    /// Converts from `serde_json` (used by transforms that compute values).
    pub fn from_serde(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => Value::Number(n.to_string().into()),
            serde_json::Value::String(s) => Value::String(s.as_str().into()),
            serde_json::Value::Array(a) => Value::Array(a.iter().map(Value::from_serde).collect()),
            serde_json::Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (Arc::from(k.as_str()), Value::from_serde(v))).collect()),
        }
    }

    /// Text for templates (keys, ids, topics): strings and numbers bare,
    /// null empty, anything else as JSON.
    pub fn to_template_text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Value::Null => "".into(),
            Value::Bool(true) => "true".into(),
            Value::Bool(false) => "false".into(),
            Value::Number(n) => (&**n).into(),
            Value::String(s) => (&**s).into(),
            other => other.to_json_string().into(),
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

pub(crate) fn write_object<'a, O: json::JsonOut + ?Sized>(out: &mut O, fields: impl Iterator<Item = (&'a str, &'a Value)>) {
    write_members(out, fields, (b",", b":"), |out, v| v.write_json(out));
}

/// `[item,item]` with `comma` between items, each written by `write`
/// (`comma` is `,` in pgfanout's compact JSON, `, ` as jsonb prints).
pub(crate) fn write_array<O: json::JsonOut + ?Sized, T>(
    out: &mut O,
    items: impl IntoIterator<Item = T>,
    comma: &[u8],
    mut write: impl FnMut(&mut O, T),
) {
    out.push(b'[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(comma);
        }
        write(out, item);
    }
    out.push(b']');
}

/// `{"name":value}` with the given `(comma, colon)` punctuation, each value
/// written by `write`.
pub(crate) fn write_members<'a, O: json::JsonOut + ?Sized, T>(
    out: &mut O,
    members: impl IntoIterator<Item = (&'a str, T)>,
    (comma, colon): (&[u8], &[u8]),
    mut write: impl FnMut(&mut O, T),
) {
    out.push(b'{');
    for (i, (name, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(comma);
        }
        json::write_str(out, name);
        out.extend_from_slice(colon);
        write(out, value);
    }
    out.push(b'}');
}

/// A row: column names (shared with the relation) and values, in table order.
/// Columns PostgreSQL did not send (unchanged TOAST) are absent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row(pub Vec<(Arc<str>, Value)>);

impl Row {
    pub fn new() -> Self {
        Row(Vec::new())
    }

    pub fn with_capacity(n: usize) -> Self {
        Row(Vec::with_capacity(n))
    }

    pub fn get(&self, column: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| &**k == column).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, column: &str) -> Option<&mut Value> {
        self.0.iter_mut().find(|(k, _)| &**k == column).map(|(_, v)| v)
    }

    pub fn contains(&self, column: &str) -> bool {
        self.get(column).is_some()
    }

    /// Sets a column, replacing it where present, appending otherwise.
    pub fn set(&mut self, column: Arc<str>, value: Value) {
        match self.get_mut(&column) {
            Some(v) => *v = value,
            None => self.0.push((column, value)),
        }
    }

    pub fn remove(&mut self, column: &str) -> Option<Value> {
        let i = self.0.iter().position(|(k, _)| &**k == column)?;
        Some(self.0.remove(i).1)
    }

    pub fn push(&mut self, column: Arc<str>, value: Value) {
        self.0.push((column, value));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (&**k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Roughly the memory the row holds (see [`Value::approx_size`]).
    pub fn approx_size(&self) -> usize {
        24 + self.0.iter().map(|(_, v)| 16 + v.approx_size()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn write_json<O: json::JsonOut + ?Sized>(&self, out: &mut O) {
        write_object(out, self.iter());
    }

    pub fn to_serde(&self) -> serde_json::Value {
        serde_json::Value::Object(self.iter().map(|(k, v)| (k.to_string(), v.to_serde())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_values_as_json() {
        let row = Row(vec![
            ("id".into(), Value::Number("42".into())),
            ("price".into(), Value::Number("12345678901234567890.000000000000000001".into())),
            ("name".into(), Value::String("a \"b\"".into())),
            ("prefs".into(), Value::Json("{\"theme\": \"dark\"}".into())),
            ("tags".into(), Value::Array(vec![Value::String("x".into()), Value::Null])),
            ("ok".into(), Value::Bool(true)),
            ("addr".into(), Value::Object(vec![("zip".into(), Value::Number("1".into()))])),
        ]);
        let mut out = Vec::new();
        row.write_json(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"id":42,"price":12345678901234567890.000000000000000001,"name":"a \"b\"","prefs":{"theme": "dark"},"tags":["x",null],"ok":true,"addr":{"zip":1}}"#
        );
    }

    #[test]
    fn row_set_and_remove() {
        let mut row = Row::new();
        row.set("a".into(), Value::Null);
        row.set("a".into(), Value::Bool(true));
        assert_eq!(row.len(), 1);
        assert_eq!(row.get("a"), Some(&Value::Bool(true)));
        assert_eq!(row.remove("a"), Some(Value::Bool(true)));
        assert!(row.is_empty());
    }
}
