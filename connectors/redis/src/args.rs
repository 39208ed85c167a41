//! The arguments of the script's operations: a row as hash field/value
//! pairs, as JSON text, or as RedisJSON paths, with the unchanged TOAST
//! columns the script keeps as stored.
//!
//! Values are borrowed from the change where they are its text as received
//! (no copy per column on the write path).

use std::borrow::Cow;

use pgfanout_sdk::{Change, Row, Value};

use crate::encode::Arg;

pub(crate) fn json(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    v.write_json(&mut out);
    out
}

/// `H` arguments of a whole row: field/value pairs for its non-NULL columns
/// (the script removes every other field: a missing field reads as NULL).
pub(crate) fn hash_row_args(row: &Row) -> Vec<Arg<'_>> {
    let mut args = Vec::with_capacity(row.len() * 2);
    for (col, v) in row.iter() {
        if !v.is_null() {
            args.push(Cow::Borrowed(col.as_bytes()));
            args.push(template_text(v));
        }
    }
    args
}

fn template_text(v: &Value) -> Arg<'_> {
    match v.to_template_text() {
        Cow::Borrowed(text) => Cow::Borrowed(text.as_bytes()),
        Cow::Owned(text) => Cow::Owned(text.into_bytes()),
    }
}

/// `HP` arguments of a row without its unchanged TOAST columns: the count
/// of set arguments and the field/value pairs of non-NULL columns, the count
/// of NULL columns and their names (removed), then the unchanged columns
/// (kept as stored; the script refuses the change when one is missing).
pub(crate) fn hash_partial_args<'a>(row: &'a Row, change: &'a Change) -> Vec<Arg<'a>> {
    let mut args = vec![Cow::Borrowed(&b""[..])];
    let mut nulls = Vec::new();
    for (col, v) in row.iter() {
        if v.is_null() {
            nulls.push(Cow::Borrowed(col.as_bytes()));
        } else {
            args.push(Cow::Borrowed(col.as_bytes()));
            args.push(template_text(v));
        }
    }
    args[0] = Cow::Owned((args.len() - 1).to_string().into_bytes());
    args.push(Cow::Owned(nulls.len().to_string().into_bytes()));
    args.extend(nulls);
    args.extend(change.unchanged_toast.iter().map(|c| Cow::Borrowed(c.as_bytes())));
    args
}

/// The row's JSON, followed by the unchanged TOAST columns whose stored
/// values the script copies in.
pub(crate) fn row_json_with_toast<'a>(row: &Row, change: &'a Change) -> Vec<Arg<'a>> {
    let mut out = Vec::with_capacity(128);
    row.write_json(&mut out);
    let mut args = vec![Cow::Owned(out)];
    args.extend(change.unchanged_toast.iter().map(|c| Cow::Borrowed(c.as_bytes())));
    args
}

/// RedisJSON: a full row replaces the document (`JSON.SET key $ row`); a row
/// with unchanged TOAST columns sets only the columns present
/// (`JSON.SET key $.col value` each) in the stored document, which must hold
/// the unchanged ones (`JP` arguments: their count, their paths, then
/// path/value pairs).
pub(crate) fn json_op(row: &Row, change: &Change) -> (&'static str, Vec<Arg<'static>>) {
    if change.unchanged_toast.is_empty() {
        let mut doc = Vec::with_capacity(128);
        row.write_json(&mut doc);
        return ("J", vec![Cow::Owned(doc)]);
    }
    let mut args = vec![Cow::Owned(change.unchanged_toast.len().to_string().into_bytes())];
    args.extend(change.unchanged_toast.iter().map(|c| Cow::Owned(json_path(c).into_bytes())));
    for (col, v) in row.iter() {
        args.push(Cow::Owned(json_path(col).into_bytes()));
        args.push(Cow::Owned(json(v)));
    }
    ("JP", args)
}

/// The JSONPath of a top-level member: `$.name`, or `$["odd name"]`.
pub(crate) fn json_path(col: &str) -> String {
    let simple = col.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && col.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if simple {
        format!("$.{col}")
    } else {
        let mut quoted = Vec::new();
        pgfanout_sdk::json::write_str(&mut quoted, col);
        format!("$[{}]", String::from_utf8_lossy(&quoted))
    }
}
