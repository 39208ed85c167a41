//! Turns changes into the Bolt parameter rows the generated Cypher expects.
//!
//! Why a conversion of our own: graph properties are typed (integer, float,
//! string, boolean, homogeneous lists), while a column value is whatever
//! `to_jsonb()` gives. Integers that fit i64 become integers (so a key
//! `{id: 42}` written from `users.id` and from `order_items.user_id` is the
//! same node), other finite numbers become floats, exact numerics that a
//! float would round are kept as their text, and json/jsonb/composite values
//! are stored as their JSON text (Neo4j has no map properties). A column the
//! change does not carry (unchanged TOAST) is simply absent from the row, so
//! `SET n += row.p` leaves the stored property alone.

use neo4rs::{BoltList, BoltMap, BoltNull, BoltString, BoltType};
use pgfanout_sdk::{Change, Op, Row, Value};

use crate::config::{EndpointMapping, NodeMapping, RelMapping};

/// A property value for a column value.
pub fn property(value: &Value) -> BoltType {
    match value {
        Value::Null => BoltType::Null(BoltNull),
        Value::Bool(b) => BoltType::from(*b),
        Value::Number(n) => number(n),
        Value::String(s) => BoltType::from(&**s),
        Value::Json(j) => BoltType::from(&**j),
        Value::Array(items) if items.iter().all(is_scalar) => {
            BoltType::List(BoltList::from(items.iter().filter(|v| !v.is_null()).map(property).collect::<Vec<_>>()))
        }
        other => BoltType::from(other.to_json_string()),
    }
}

fn is_scalar(v: &Value) -> bool {
    matches!(v, Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_))
}

fn number(text: &str) -> BoltType {
    if let Ok(i) = text.parse::<i64>() {
        return BoltType::from(i);
    }
    match text.parse::<f64>() {
        // Keep the float only when it prints back to the same digits
        // (modulo a trailing ".0"); otherwise the exact text.
        Ok(f) if f.is_finite() && same_number(f, text) => BoltType::from(f),
        _ => BoltType::from(text),
    }
}

fn same_number(f: f64, text: &str) -> bool {
    let printed = format!("{f}");
    let trim = |s: &str| -> String {
        if s.contains('.') && !s.contains(['e', 'E']) {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    trim(&printed) == trim(text) || text.contains(['e', 'E'])
}

fn map(entries: impl IntoIterator<Item = (String, BoltType)>) -> BoltType {
    let mut m = BoltMap::new();
    for (k, v) in entries {
        m.put(BoltString::from(k), v);
    }
    BoltType::Map(m)
}

/// The change's version: its position as fixed-width text that sorts like
/// positions ([`pgfanout_sdk::Position::sortable_text`]); Cypher compares
/// strings, so the guard needs no packing that could wrap or collide.
pub fn version(change: &Change) -> BoltType {
    BoltType::from(change.position().sortable_text())
}

/// `{prop: value}` for a key map, reading columns from `after`, `before`
/// then `key`. Errors name a missing or null key column.
fn key_values<'a>(change: &Change, key: impl Iterator<Item = (&'a String, &'a String)>, what: &str) -> Result<BoltType, String> {
    let mut entries = Vec::new();
    for (prop, column) in key {
        match change.column(column) {
            Some(v) if !v.is_null() => entries.push((prop.clone(), property(v))),
            Some(_) => return Err(format!("{what} key column {column:?} is null")),
            None => return Err(format!("{what} key column {column:?} is not in the change")),
        }
    }
    Ok(map(entries))
}

/// The row's properties: the mapped columns present in `after` (every column
/// when `mapping` is None, minus `skip`).
fn properties(after: Option<&Row>, mapping: Option<&indexmap::IndexMap<String, String>>, skip: &[&String]) -> BoltType {
    let Some(after) = after else { return map([]) };
    match mapping {
        Some(m) => map(m.iter().filter_map(|(prop, col)| after.get(col).map(|v| (prop.clone(), property(v))))),
        None => map(after.0.iter().filter(|(c, _)| !skip.iter().any(|s| s.as_str() == &**c)).map(|(c, v)| (c.to_string(), property(v)))),
    }
}

/// A node mapping's row: `{k, p, v}` (p empty for deletes).
pub fn node_row(m: &NodeMapping, change: &Change) -> Result<BoltType, String> {
    let k = key_values(change, m.key.iter(), "node")?;
    let p = if change.op == Op::Delete { map([]) } else { properties(change.after.as_ref(), m.properties.as_ref(), &[]) };
    Ok(map([("k".into(), k), ("p".into(), p), ("v".into(), version(change))]))
}

/// The identity of the row a relationship came from: the JSON of its key
/// columns (the mapping's `key`, else the change's replica identity).
pub fn row_key(m: &RelMapping, change: &Change) -> Result<String, String> {
    let mut out = Vec::with_capacity(32);
    out.push(b'{');
    let mut write = |i: usize, name: &str, v: &Value| {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(serde_json::to_string(name).unwrap_or_default().as_bytes());
        out.push(b':');
        v.write_json(&mut out);
    };
    match &m.key {
        Some(cols) => {
            for (i, c) in cols.iter().enumerate() {
                let v = change.column(c).ok_or_else(|| format!("relationship key column {c:?} is not in the change"))?;
                write(i, c, v);
            }
        }
        None => {
            let key = change.key.as_ref().ok_or("the change has no key (table without replica identity?)")?;
            if key.0.is_empty() {
                return Err("the change has an empty key: give the relationship mapping a `key`".into());
            }
            for (i, (c, v)) in key.0.iter().enumerate() {
                write(i, c, v);
            }
        }
    }
    out.push(b'}');
    String::from_utf8(out).map_err(|e| e.to_string())
}

fn endpoint(change: &Change, ep: &EndpointMapping, what: &str) -> Result<BoltType, String> {
    key_values(change, ep.key.iter(), what)
}

/// A relationship mapping's row: `{id, f, t, bf, p, v}` for upserts.
pub fn rel_row(m: &RelMapping, change: &Change) -> Result<BoltType, String> {
    let id = BoltType::from(row_key(m, change)?);
    let f = endpoint(change, &m.from, "from")?;
    let t = endpoint(change, &m.to, "to")?;
    // The old from-node, when `before` carries its key (REPLICA IDENTITY FULL).
    let bf = match &change.before {
        Some(before) if m.from.key.values().all(|c| before.get(c).is_some_and(|v| !v.is_null())) => {
            map(m.from.key.iter().filter_map(|(p, c)| before.get(c).map(|v| (p.clone(), property(v)))))
        }
        _ => BoltType::Null(BoltNull),
    };
    let skip: Vec<&String> = m.from.key.values().chain(m.to.key.values()).collect();
    let p = properties(change.after.as_ref(), m.properties.as_ref(), &skip);
    Ok(map([("id".into(), id), ("f".into(), f), ("t".into(), t), ("bf".into(), bf), ("p".into(), p), ("v".into(), version(change))]))
}

/// A relationship delete's parameters: `$id`, `$v`.
pub fn rel_delete_params(m: &RelMapping, change: &Change) -> Result<Vec<(&'static str, BoltType)>, String> {
    Ok(vec![("id", BoltType::from(row_key(m, change)?)), ("v", version(change))])
}

fn row_map(row: Option<&Row>) -> BoltType {
    match row {
        Some(r) => map(r.0.iter().map(|(c, v)| (c.to_string(), property(v)))),
        None => BoltType::Null(BoltNull),
    }
}

/// The parameters of a user statement: `after`, `before`, `key`, `lsn`,
/// `ordinal`, `version`, `op`.
pub fn cypher_params(change: &Change) -> Vec<(&'static str, BoltType)> {
    vec![
        ("after", row_map(change.after.as_ref())),
        ("before", row_map(change.before.as_ref())),
        ("key", row_map(change.key.as_ref())),
        ("lsn", BoltType::from(change.position().commit_version())),
        ("ordinal", BoltType::from(i64::from(change.ordinal))),
        ("version", version(change)),
        ("op", BoltType::from(change.op.as_str())),
    ]
}

/// The same parameters as one map (an element of `$rows`).
pub fn cypher_row(change: &Change) -> BoltType {
    map(cypher_params(change).into_iter().map(|(k, v)| (k.to_string(), v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_their_type_or_their_digits() {
        assert_eq!(number("42"), BoltType::from(42i64));
        assert_eq!(number("-7"), BoltType::from(-7i64));
        assert_eq!(number("1.5"), BoltType::from(1.5f64));
        assert_eq!(number("2.50"), BoltType::from(2.5f64));
        assert_eq!(number("12345678901234567890.123456789"), BoltType::from("12345678901234567890.123456789"));
        assert_eq!(number("1e+300"), BoltType::from(1e300f64));
    }

    #[test]
    fn json_and_mixed_arrays_become_text() {
        assert_eq!(property(&Value::Json(r#"{"a": 1}"#.into())), BoltType::from(r#"{"a": 1}"#));
        let arr = Value::Array(vec![Value::Number("1".into()), Value::Number("2".into())]);
        assert_eq!(property(&arr), BoltType::List(BoltList::from(vec![BoltType::from(1i64), BoltType::from(2i64)])));
        let nested = Value::Array(vec![Value::Array(vec![])]);
        assert_eq!(property(&nested), BoltType::from("[[]]"));
    }
}
