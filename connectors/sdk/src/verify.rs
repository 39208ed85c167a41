//! Reading a sink's state back, for `pgfanout verify`.
//!
//! `verify` reads the source rows of a pipeline in key order, routes each
//! through the pipeline as an `op: read` record, asks the route's
//! [`Verifier`] what the mapping says the store must hold for it
//! ([`Verifier::expect`]), reads the store's state for the same entries
//! ([`Verifier::read`]) and compares them field by field
//! ([`diff_fields`]). Where the store can list the route's key space
//! ([`Verifier::list`]), entries no source row maps to are reported as
//! extra. Repairs re-send the source rows through the sink itself (so
//! versions stay monotonic) and remove extra entries with
//! [`Verifier::remove`].
//!
//! Entry ids are the verifier's own strings (`cart:7`, `products/42`);
//! the daemon only passes back ids that the same verifier produced, and
//! prints them in reports.

use serde_json::Value;

use crate::connector::BoxFuture;
use crate::sink::{SinkError, SinkRecord};

/// One entry the mapping says the store must hold for one source row.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// Where it lives, unique in the route's key space (printed in reports).
    pub id: String,
    /// The stored value as the verifier reads it back: usually a JSON object
    /// of field -> value, compared field by field; store bookkeeping
    /// (version fields) left out.
    pub value: Value,
}

/// Reads back one route's (pipeline's) state in one store.
pub trait Verifier: Send {
    /// The entries the route's mapping writes for `record` (a source row as
    /// an `op: read` change, after the pipeline's transforms). Err: the row
    /// cannot be mapped (the sink would dead-letter it); reported as such.
    fn expect(&mut self, record: &SinkRecord) -> Result<Vec<Expected>, String>;

    /// The stored values of `ids` (each produced by [`expect`](Self::expect)
    /// or [`list`](Self::list)), in the same order; `None` = absent.
    fn read<'a>(&'a mut self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<Option<Value>>, SinkError>>;

    /// Every entry id the route's key space holds, or `None` when the store
    /// cannot tell which entries belong to this route (then extras are not
    /// reported). Called after every source row went through `expect`
    /// (key spaces built from templates are known by then).
    fn list(&mut self) -> BoxFuture<'_, Result<Option<Vec<String>>, SinkError>> {
        Box::pin(async { Ok(None) })
    }

    /// Removes entries that no source row maps to (`verify --repair`).
    fn remove<'a>(&'a mut self, ids: &'a [String]) -> BoxFuture<'a, Result<(), SinkError>>;
}

/// The fields in which `actual` differs from `expected`: for two JSON
/// objects, each field missing, extra or unequal (sorted); for anything
/// else, `["value"]` when unequal. Numbers compare by exact decimal value
/// (`1` = `1.0`, `1e+20` = `100000000000000000000`), never through `f64`:
/// a lost digit of a 25-digit numeric is a difference.
pub fn diff_fields(expected: &Value, actual: &Value) -> Vec<String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let mut out: Vec<String> = e
                .iter()
                .filter(|(k, v)| a.get(*k).is_none_or(|x| !same(v, x)))
                .map(|(k, _)| k.clone())
                .chain(a.keys().filter(|k| !e.contains_key(*k)).cloned())
                .collect();
            out.sort();
            out
        }
        (e, a) if same(e, a) => Vec::new(),
        _ => vec!["value".to_string()],
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => crate::exact::same_number(&x.to_string(), &y.to_string()),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w))),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_that_differ() {
        let e = json!({"a": 1, "b": "x", "c": [1, 2]});
        assert_eq!(diff_fields(&e, &json!({"a": 1.0, "b": "x", "c": [1, 2]})), Vec::<String>::new());
        assert_eq!(diff_fields(&e, &json!({"a": 2, "c": [1], "d": null})), vec!["a", "b", "c", "d"]);
        assert_eq!(diff_fields(&json!("x"), &json!("y")), vec!["value"]);
        // Exact: digits beyond f64 count, the scale does not.
        let long: Value = serde_json::from_str(r#"{"n": 648199.3821223196731458777, "m": 2.50, "big": 1e400}"#).unwrap();
        let rounded: Value = serde_json::from_str(r#"{"n": 648199.3821223197, "m": 2.5, "big": 1e400}"#).unwrap();
        assert_eq!(diff_fields(&long, &rounded), vec!["n"]);
        assert!(diff_fields(&long, &long.clone()).is_empty());
        assert!(diff_fields(&json!("x"), &json!("x")).is_empty());
    }
}
