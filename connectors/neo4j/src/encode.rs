//! Turns changes into the Bolt parameter rows the generated Cypher expects.
//!
//! Why a conversion of our own: graph properties are typed (integer, float,
//! string, boolean, homogeneous lists without nulls), while a column value is
//! whatever `to_jsonb()` gives. The mapping (README, "Type mapping") never
//! rounds:
//! - a number that is an integer within i64 is an Integer (so a key
//!   `{id: 42}` written from `users.id` and from `order_items.user_id` is the
//!   same node);
//! - any other number is a Float only when the float's shortest decimal form
//!   is the very number PostgreSQL printed (`1.5`, `0.1`, `2.50` = 2.5,
//!   `1e+300`); otherwise (numerics of 17+ significant digits, beyond i64)
//!   it is kept as its exact text, a String;
//! - an array becomes a list when its elements map to one property type and
//!   none is null (integers and floats together become floats when every
//!   integer is exact as a float); otherwise (a NULL element, mixed types,
//!   nested arrays, composites) it is stored as its JSON text, never with
//!   elements dropped;
//! - json/jsonb and composites are stored as their JSON text (Neo4j has no
//!   map properties); strings (dates, timestamps, NaN/Infinity, ...) as
//!   PostgreSQL's `to_jsonb` text.
//!
//! A column the change does not carry (unchanged TOAST) is simply absent from
//! the row, so `SET n += row.p` leaves the stored property alone.

use neo4rs::{BoltList, BoltMap, BoltNull, BoltString, BoltType};
use pgfanout_sdk::{Change, Op, Row, Value};

use crate::config::{EndpointMapping, NodeMapping, RelMapping};

/// A property value for a column value (see the module docs).
pub fn property(value: &Value) -> BoltType {
    match value {
        Value::Null => BoltType::Null(BoltNull),
        Value::Bool(b) => BoltType::from(*b),
        Value::Number(n) => number(n),
        Value::String(s) => BoltType::from(&**s),
        Value::Json(j) => BoltType::from(&**j),
        Value::Array(items) => list(items).unwrap_or_else(|| BoltType::from(value.to_json_string())),
        Value::Object(_) => BoltType::from(value.to_json_string()),
    }
}

/// The list for an array whose elements all map to one property type and
/// none is null; `None` when it must be stored as JSON text.
fn list(items: &[Value]) -> Option<BoltType> {
    let mut out = Vec::with_capacity(items.len());
    for v in items {
        match v {
            Value::Bool(_) | Value::Number(_) | Value::String(_) => out.push(property(v)),
            _ => return None,
        }
    }
    let same = |f: fn(&BoltType) -> bool| out.iter().all(f);
    if same(|b| matches!(b, BoltType::Boolean(_)))
        || same(|b| matches!(b, BoltType::String(_)))
        || same(|b| matches!(b, BoltType::Float(_)))
        || same(|b| matches!(b, BoltType::Integer(_)))
    {
        return Some(BoltType::List(BoltList::from(out)));
    }
    // Integers and floats: floats, when every integer is exact as one.
    let mut floats = Vec::with_capacity(out.len());
    for b in &out {
        match b {
            BoltType::Float(f) => floats.push(BoltType::from(f.value)),
            BoltType::Integer(i) if i.value.unsigned_abs() <= MAX_EXACT_INT => floats.push(BoltType::from(i.value as f64)),
            _ => return None,
        }
    }
    Some(BoltType::List(BoltList::from(floats)))
}

/// The largest integer magnitude every smaller one of which a float holds exactly (2^53).
pub(crate) const MAX_EXACT_INT: u64 = 1 << 53;

fn number(text: &str) -> BoltType {
    if let Ok(i) = text.parse::<i64>() {
        // "-0" is a float's negative zero (integers print no sign for 0).
        if i != 0 || !text.starts_with('-') {
            return BoltType::from(i);
        }
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() && decimal(&format!("{f:e}")) == decimal(text) => BoltType::from(f),
        _ => BoltType::from(text),
    }
}

/// A decimal number's value as (negative, significant digits, exponent):
/// `0.d1d2… × 10^exponent`, without leading or trailing zeros, so that two
/// notations of one number (`2.50`, `2.5e0`, `25e-1`) compare equal. `None`
/// for text that is not a decimal number.
fn decimal(text: &str) -> Option<(bool, String, i64)> {
    let (neg, unsigned) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exp) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().ok()?),
        None => (unsigned, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = int.chars().chain(frac.chars()).collect();
    let mut point = exp.checked_add(i64::try_from(int.len()).ok()?)?;
    let trimmed = digits.trim_start_matches('0');
    point -= i64::try_from(digits.len() - trimmed.len()).ok()?;
    let trimmed = trimmed.trim_end_matches('0');
    if trimmed.is_empty() {
        return Some((neg, String::new(), 0));
    }
    Some((neg, trimmed.to_string(), point))
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

/// Whether the change carries the whole row and says it is all there is:
/// inserts and snapshot/backfill/repair rows without unchanged TOAST. Such a
/// write replaces the entry's properties (stray ones go), where an update
/// only sets the columns it carries.
pub fn is_full(change: &Change) -> bool {
    matches!(change.op, Op::Insert | Op::Read | Op::Message) && change.unchanged_toast.is_empty()
}

/// `{prop: value}` for a key map, reading columns from `after`, `before`
/// then `key`, with its identity text (the JSON of the values in key order).
/// Errors name a missing or null key column.
fn key_values<'a>(change: &Change, key: impl Iterator<Item = (&'a String, &'a String)>, what: &str) -> Result<(BoltType, String), String> {
    let mut entries = Vec::new();
    let mut identity = Vec::new();
    for (prop, column) in key {
        match change.column(column) {
            Some(v) if !v.is_null() => {
                entries.push((prop.clone(), property(v)));
                identity.push(v);
            }
            Some(_) => return Err(format!("{what} key column {column:?} is null")),
            None => return Err(format!("{what} key column {column:?} is not in the change")),
        }
    }
    Ok((map(entries), Value::Array(identity.into_iter().cloned().collect()).to_json_string()))
}

/// The old key of a node whose key columns the change moved: `{prop: value}`
/// from `before` (sent by PostgreSQL when a key column changed, or always
/// under REPLICA IDENTITY FULL) with its identity, when it differs from the
/// new key `new_identity`.
fn old_key(change: &Change, key: &indexmap::IndexMap<String, String>, new_identity: &str) -> Option<(BoltType, String)> {
    let before = change.before.as_ref()?;
    let mut entries = Vec::new();
    let mut identity = Vec::new();
    for (prop, column) in key {
        let v = before.get(column).filter(|v| !v.is_null())?;
        entries.push((prop.clone(), property(v)));
        identity.push(v.clone());
    }
    let identity = Value::Array(identity).to_json_string();
    (identity != new_identity).then(|| (map(entries), identity))
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

/// A node mapping's row, `{k, ok, p, f, v}`: the key, the old key when the
/// change moved the node (else null), the properties (empty for deletes),
/// whether the write is full ([`is_full`]) and the version. With the
/// identities of the nodes it touches (new key, old key), so that no
/// statement carries two rows for one node.
pub fn node_row(m: &NodeMapping, change: &Change) -> Result<(BoltType, Vec<String>), String> {
    let (k, id) = key_values(change, m.key.iter(), "node")?;
    let mut ids = vec![id];
    let ok = match (change.op, old_key(change, &m.key, &ids[0])) {
        (Op::Update, Some((ok, old_id))) => {
            ids.push(old_id);
            ok
        }
        _ => BoltType::Null(BoltNull),
    };
    let p = if change.op == Op::Delete { map([]) } else { properties(change.after.as_ref(), m.properties.as_ref(), &[]) };
    let row = map([
        ("k".into(), k),
        ("ok".into(), ok),
        ("p".into(), p),
        ("f".into(), BoltType::from(is_full(change))),
        ("v".into(), version(change)),
    ]);
    Ok((row, ids))
}

/// The identity of the row a relationship came from: the JSON of its key
/// columns (the mapping's `key`, else the change's replica identity), read
/// from `after`, `before` then `key`.
pub fn row_key(m: &RelMapping, change: &Change) -> Result<String, String> {
    match &m.key {
        Some(cols) => {
            let mut fields = Vec::with_capacity(cols.len());
            for c in cols {
                let v = change.column(c).ok_or_else(|| format!("relationship key column {c:?} is not in the change"))?;
                fields.push((c.as_str(), v));
            }
            Ok(key_json(fields))
        }
        None => {
            let key = change.key.as_ref().ok_or("the change has no key (table without replica identity?)")?;
            if key.0.is_empty() {
                return Err("the change has an empty key: give the relationship mapping a `key`".into());
            }
            Ok(key_json(key.iter().collect()))
        }
    }
}

/// The row key the relationship had before the change, when the change
/// moved it (a key column changed and `before` carries the old values).
fn old_row_key(m: &RelMapping, change: &Change, new: &str) -> Option<String> {
    let before = change.before.as_ref()?;
    let cols: Vec<&str> = match &m.key {
        Some(cols) => cols.iter().map(String::as_str).collect(),
        None => change.key.as_ref()?.iter().map(|(c, _)| c).collect(),
    };
    let fields: Option<Vec<(&str, &Value)>> = cols.into_iter().map(|c| before.get(c).map(|v| (c, v))).collect();
    let old = key_json(fields?);
    (old != new).then_some(old)
}

fn key_json(fields: Vec<(&str, &Value)>) -> String {
    let mut out = Vec::with_capacity(32);
    out.push(b'{');
    for (i, (name, v)) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(Value::String(name.into()).to_json_string().as_bytes());
        out.push(b':');
        v.write_json(&mut out);
    }
    out.push(b'}');
    String::from_utf8(out).unwrap_or_default()
}

fn endpoint(change: &Change, ep: &EndpointMapping, what: &str) -> Result<BoltType, String> {
    key_values(change, ep.key.iter(), what).map(|(k, _)| k)
}

/// A relationship mapping's row for upserts, `{id, oid, f, t, bf, p, full,
/// v}` (`oid`: the old row key when the change moved the row, else null;
/// `bf`: the from-node key in `before`, when sent), with the row keys it
/// touches.
pub fn rel_row(m: &RelMapping, change: &Change) -> Result<(BoltType, Vec<String>), String> {
    let id = row_key(m, change)?;
    let oid = old_row_key(m, change, &id);
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
    let mut ids = vec![id.clone()];
    let oid = match oid {
        Some(o) => {
            ids.push(o.clone());
            BoltType::from(o)
        }
        None => BoltType::Null(BoltNull),
    };
    let row = map([
        ("id".into(), BoltType::from(id)),
        ("oid".into(), oid),
        ("f".into(), f),
        ("t".into(), t),
        ("bf".into(), bf),
        ("p".into(), p),
        ("full".into(), BoltType::from(is_full(change))),
        ("v".into(), version(change)),
    ]);
    Ok((row, ids))
}

/// A relationship delete's parameters: `$id`, `$v`.
pub fn rel_delete_params(m: &RelMapping, change: &Change) -> Result<Vec<(&'static str, BoltType)>, String> {
    Ok(vec![("id", BoltType::from(row_key(m, change)?)), ("v", version(change))])
}

/// A value as a parameter of a user statement: as [`property`], except that
/// an array of scalars with NULL elements is a list with its nulls (a
/// parameter may hold them; what to store is the statement's choice).
fn parameter(value: &Value) -> BoltType {
    match value {
        Value::Array(items)
            if items.iter().any(Value::is_null)
                && items.iter().all(|v| matches!(v, Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_))) =>
        {
            BoltType::List(BoltList::from(items.iter().map(property).collect::<Vec<_>>()))
        }
        other => property(other),
    }
}

fn row_map(row: Option<&Row>) -> BoltType {
    match row {
        Some(r) => map(r.0.iter().map(|(c, v)| (c.to_string(), parameter(v)))),
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

    fn num(s: &str) -> Value {
        Value::Number(s.into())
    }

    #[test]
    fn numbers_keep_their_value_or_their_digits() {
        assert_eq!(number("42"), BoltType::from(42i64));
        assert_eq!(number("-7"), BoltType::from(-7i64));
        assert_eq!(number("9223372036854775807"), BoltType::from(i64::MAX));
        assert_eq!(number("9223372036854775808"), BoltType::from("9223372036854775808"));
        assert_eq!(number("1.5"), BoltType::from(1.5f64));
        assert_eq!(number("0.1"), BoltType::from(0.1f64));
        assert_eq!(number("2.50"), BoltType::from(2.5f64));
        assert_eq!(number("1e+300"), BoltType::from(1e300f64));
        assert_eq!(number("1.2345e-05"), BoltType::from(1.2345e-5f64));
        assert_eq!(number("-0"), BoltType::from(-0.0f64));
        assert_eq!(number("100000000000000000000"), BoltType::from(1e20f64));
        // A float would round these: kept as their exact text.
        assert_eq!(number("12345678901234567890.123456789"), BoltType::from("12345678901234567890.123456789"));
        assert_eq!(number("1234567890123456789012345"), BoltType::from("1234567890123456789012345"));
        assert_eq!(number("0.12345678901234567890123"), BoltType::from("0.12345678901234567890123"));
        assert_eq!(number("1.23456789012345678901e+30"), BoltType::from("1.23456789012345678901e+30"));
        let big = format!("1{}", "0".repeat(400));
        assert_eq!(number(&big), BoltType::from(big.as_str()));
    }

    #[test]
    fn decimal_notations_of_one_number_compare_equal() {
        assert_eq!(decimal("2.50"), decimal("2.5e0"));
        assert_eq!(decimal("25e-1"), decimal("2.5"));
        assert_eq!(decimal("0.00120"), decimal("1.2e-3"));
        assert_ne!(decimal("2.5"), decimal("-2.5"));
        assert_ne!(decimal("0.1"), decimal("0.10000000000000001"));
        assert_eq!(decimal("abc"), None);
        assert_eq!(decimal("1e"), None);
    }

    #[test]
    fn arrays_with_nulls_or_mixed_types_become_json_text() {
        assert_eq!(property(&Value::Array(vec![Value::Null])), BoltType::from("[null]"));
        assert_eq!(property(&Value::Array(vec![num("1"), Value::Null])), BoltType::from("[1,null]"));
        assert_eq!(property(&Value::Array(vec![num("1"), Value::String("a".into())])), BoltType::from("[1,\"a\"]"));
        let long = "1234567890123456789012345";
        assert_eq!(property(&Value::Array(vec![num("1.5"), num(long)])), BoltType::from(format!("[1.5,{long}]")));
        let ints = Value::Array(vec![num("1"), num("2")]);
        assert_eq!(property(&ints), BoltType::List(BoltList::from(vec![BoltType::from(1i64), BoltType::from(2i64)])));
        let mixed = Value::Array(vec![num("1"), num("2.5")]);
        assert_eq!(property(&mixed), BoltType::List(BoltList::from(vec![BoltType::from(1.0f64), BoltType::from(2.5f64)])));
        let huge = Value::Array(vec![num("9007199254740993"), num("2.5")]);
        assert_eq!(property(&huge), BoltType::from("[9007199254740993,2.5]"));
        assert_eq!(property(&Value::Array(vec![])), BoltType::List(BoltList::from(Vec::<BoltType>::new())));
        let nested = Value::Array(vec![Value::Array(vec![])]);
        assert_eq!(property(&nested), BoltType::from("[[]]"));
    }

    #[test]
    fn statement_parameters_keep_null_elements() {
        let arr = Value::Array(vec![num("1"), Value::Null]);
        assert_eq!(parameter(&arr), BoltType::List(BoltList::from(vec![BoltType::from(1i64), BoltType::Null(BoltNull)])));
        assert_eq!(parameter(&num("2.50")), BoltType::from(2.5f64));
    }

    #[test]
    fn json_stays_its_text() {
        let big = r#"{"a": 123456789012345678901234567890, "b": 1.10}"#;
        assert_eq!(property(&Value::Json(big.into())), BoltType::from(big));
    }
}
