//! CEL expressions over one change record (filters and `set` transforms).
//!
//! Expressions are compiled once at start. At run time the record's
//! variables are resolved lazily: a filter such as `op == 'delete'` never
//! converts `after` into CEL values, and a row is converted at most once per
//! evaluation context however often the expression reads it. Strings are
//! borrowed from the change, not copied.
//!
//! Variables: `op`, `schema`, `table` (strings), `key`, `before`, `after`
//! (maps, or null when the record has none), `unchanged_toast` (list of
//! column names), `lsn`, `commit_lsn` (strings like `0/16B3748`), `xid`
//! (int or null), `commit_ts` (ISO-8601 UTC string or null). Column values
//! follow docs/design.md section 3: numbers become int, uint or double (a numeric
//! beyond double precision is approximated, for comparisons only), json and
//! jsonb become nested maps and lists.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use cel::common::types::{CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, ExecutionError, Program};
use pgfanout_sdk::{Change, Row, Value};

/// The variables an expression may read.
pub const VARIABLES: [&str; 11] =
    ["op", "schema", "table", "key", "before", "after", "unchanged_toast", "lsn", "commit_lsn", "xid", "commit_ts"];

/// The shared evaluation environment (standard CEL functions and macros).
/// Build it once and share it: building one is not free.
pub fn new_env() -> Arc<Env> {
    Arc::new(Env::stdlib())
}

/// A compiled CEL expression.
#[derive(Debug)]
pub struct Expr {
    source: String,
    program: Program,
}

impl Expr {
    /// Compiles `source`. The error is one line: the position and what the
    /// parser expected.
    pub fn compile(source: &str) -> Result<Expr, String> {
        if source.trim().is_empty() {
            return Err("empty expression".into());
        }
        match Program::compile(source) {
            Ok(program) => Ok(Expr { source: source.to_string(), program }),
            Err(errs) => {
                let parts: Vec<String> =
                    errs.errors.iter().map(|e| format!("at line {} column {}: {}", e.pos.0, e.pos.1 + 1, e.msg)).collect();
                Err(format!("invalid CEL expression {source:?}: {}", parts.join("; ")))
            }
        }
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the expression for one record.
    pub fn evaluate(&self, env: &Arc<Env>, vars: &ChangeVars<'_>) -> Result<cel::Value, String> {
        let mut ctx = Context::with_env(Arc::clone(env));
        ctx.set_variable_resolver(vars);
        self.program.execute(&ctx).map_err(|e| format!("expression {:?} failed: {}", self.source, describe(&e)))
    }

    /// Evaluates a filter: the result must be a bool.
    ///
    /// Unchanged TOAST columns are absent from `after` (`has(after.col)` is
    /// false). A filter that reads one without `has()` cannot be decided from
    /// the record: PostgreSQL did not send the value because it did not
    /// change. Such a record passes the filter (it is delivered, and sinks
    /// keep the stored value of the column) instead of failing; guard with
    /// `has(after.col) && ...` to decide otherwise.
    pub fn evaluate_bool(&self, env: &Arc<Env>, vars: &ChangeVars<'_>) -> Result<bool, String> {
        let mut ctx = Context::with_env(Arc::clone(env));
        ctx.set_variable_resolver(vars);
        let value = match self.program.execute(&ctx) {
            Ok(v) => v,
            Err(ExecutionError::NoSuchKey(k)) if vars.change.unchanged_toast.iter().any(|c| **c == *k) => return Ok(true),
            Err(e) => return Err(format!("expression {:?} failed: {}", self.source, describe(&e))),
        };
        match value {
            cel::Value::Bool(b) => Ok(b),
            other => Err(format!("filter {:?} returned {} {}, expected a bool", self.source, other.type_of(), short(&other))),
        }
    }

    /// Offline check made by `pgfanout check`: evaluates the expression once
    /// against a synthetic insert on `schema.table` whose rows are empty.
    /// Errors that depend on the data (missing columns, type mismatches) are
    /// ignored; a reference to an unknown variable, or (with `want_bool`) a
    /// successful non-bool result, is reported.
    pub fn check_offline(&self, env: &Arc<Env>, schema: &str, table: &str, want_bool: bool) -> Result<(), String> {
        let change = Change {
            op: pgfanout_sdk::Op::Insert,
            schema: schema.into(),
            table: table.into(),
            key: Some(Row::new()),
            before: None,
            after: Some(Row::new()),
            unchanged_toast: Vec::new(),
            lsn: Default::default(),
            commit_lsn: Default::default(),
            ordinal: 0,
            xid: Some(1),
            commit_ts: Some(0),
        };
        let vars = ChangeVars::new(&change);
        let mut ctx = Context::with_env(Arc::clone(env));
        ctx.set_variable_resolver(&vars);
        match self.program.execute(&ctx) {
            Ok(cel::Value::Bool(_)) => Ok(()),
            Ok(other) if want_bool => Err(format!(
                "filter {:?} returns {}, expected a bool (write a comparison such as `after.quantity > 0`)",
                self.source,
                other.type_of()
            )),
            Ok(_) => Ok(()),
            Err(ExecutionError::UndeclaredReference(name)) if !VARIABLES.contains(&name.as_str()) => Err(format!(
                "expression {:?} reads unknown variable or function {name:?}; the variables are {}",
                self.source,
                VARIABLES.join(", ")
            )),
            Err(_) => Ok(()),
        }
    }
}

fn describe(e: &ExecutionError) -> String {
    match e {
        ExecutionError::NoSuchKey(k) => format!("no such key {k:?} (the record has no such column, or the row is null for this op)"),
        other => other.to_string(),
    }
}

fn short(v: &cel::Value) -> String {
    let s = format!("{v:?}");
    if s.len() > 60 {
        format!("{}...", &s[..s.char_indices().nth(57).map_or(s.len(), |(i, _)| i)])
    } else {
        s
    }
}

/// The variables of one record for CEL, converted on first use.
pub struct ChangeVars<'c> {
    change: &'c Change,
    key: OnceLock<Box<dyn Val + 'c>>,
    before: OnceLock<Box<dyn Val + 'c>>,
    after: OnceLock<Box<dyn Val + 'c>>,
    toast: OnceLock<Box<dyn Val + 'c>>,
}

impl<'c> ChangeVars<'c> {
    /// Cheap: nothing is converted until an expression reads it.
    pub fn new(change: &'c Change) -> Self {
        ChangeVars { change, key: OnceLock::new(), before: OnceLock::new(), after: OnceLock::new(), toast: OnceLock::new() }
    }
}

impl VariableResolver for ChangeVars<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let c = self.change;
        Some(match variable {
            "op" => CowVal::owned(CelString::from(c.op.as_str())),
            "schema" => CowVal::owned(CelString::from(&*c.schema)),
            "table" => CowVal::owned(CelString::from(&*c.table)),
            "key" => CowVal::Borrowed(&**self.key.get_or_init(|| row_val(c.key.as_ref()))),
            "before" => CowVal::Borrowed(&**self.before.get_or_init(|| row_val(c.before.as_ref()))),
            "after" => CowVal::Borrowed(&**self.after.get_or_init(|| row_val(c.after.as_ref()))),
            "unchanged_toast" => CowVal::Borrowed(&**self.toast.get_or_init(|| {
                let items: Vec<Box<dyn Val + '_>> =
                    c.unchanged_toast.iter().map(|s| Box::new(CelString::from(&**s)) as Box<dyn Val>).collect();
                Box::new(CelList::from(items))
            })),
            "lsn" => CowVal::owned(CelString::from(c.lsn.to_string())),
            "commit_lsn" => CowVal::owned(CelString::from(c.commit_lsn.to_string())),
            "xid" => match c.xid {
                Some(x) => CowVal::owned(CelInt::from(i64::from(x))),
                None => CowVal::owned(CelNull),
            },
            "commit_ts" => match c.commit_ts {
                Some(ts) => {
                    let mut out = Vec::with_capacity(32);
                    pgfanout_sdk::json::write_timestamp_micros(&mut out, ts);
                    let text = String::from_utf8_lossy(&out).trim_matches('"').to_string();
                    CowVal::owned(CelString::from(text))
                }
                None => CowVal::owned(CelNull),
            },
            _ => return None,
        })
    }
}

fn row_val<'c>(row: Option<&'c Row>) -> Box<dyn Val + 'c> {
    match row {
        None => Box::new(CelNull),
        Some(r) => {
            let map: HashMap<CelMapKey<'c>, Box<dyn Val + 'c>> = r.0.iter().map(|(k, v)| (CelMapKey::from(&**k), value_val(v))).collect();
            Box::new(CelMap::from(map))
        }
    }
}

/// A column value as a CEL value, borrowing its text.
fn value_val(v: &Value) -> Box<dyn Val + '_> {
    match v {
        Value::Null => Box::new(CelNull),
        Value::Bool(b) => Box::new(CelBool::from(*b)),
        Value::Number(n) => {
            if let Ok(i) = n.parse::<i64>() {
                Box::new(CelInt::from(i))
            } else if let Ok(u) = n.parse::<u64>() {
                Box::new(CelUInt::from(u))
            } else if let Ok(f) = n.parse::<f64>() {
                Box::new(CelDouble::from(f))
            } else {
                Box::new(CelString::from(&**n))
            }
        }
        Value::String(s) => Box::new(CelString::from(&**s)),
        Value::Json(j) => match serde_json::from_str::<serde_json::Value>(j) {
            Ok(v) => json_val(&v),
            Err(_) => Box::new(CelString::from(&**j)),
        },
        Value::Array(items) => Box::new(CelList::from(items.iter().map(value_val).collect::<Vec<_>>())),
        Value::Object(fields) => {
            let map: HashMap<CelMapKey<'_>, Box<dyn Val + '_>> =
                fields.iter().map(|(k, v)| (CelMapKey::from(&**k), value_val(v))).collect();
            Box::new(CelMap::from(map))
        }
    }
}

fn json_val(v: &serde_json::Value) -> Box<dyn Val + 'static> {
    match v {
        serde_json::Value::Null => Box::new(CelNull),
        serde_json::Value::Bool(b) => Box::new(CelBool::from(*b)),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Box::new(CelInt::from(i)),
            (None, Some(u), _) => Box::new(CelUInt::from(u)),
            (None, None, Some(f)) => Box::new(CelDouble::from(f)),
            _ => Box::new(CelString::from(n.to_string())),
        },
        serde_json::Value::String(s) => Box::new(CelString::from(s.clone())),
        serde_json::Value::Array(a) => Box::new(CelList::from(a.iter().map(json_val).collect::<Vec<_>>())),
        serde_json::Value::Object(m) => {
            let map: HashMap<CelMapKey<'static>, Box<dyn Val>> = m.iter().map(|(k, v)| (CelMapKey::from(k.clone()), json_val(v))).collect();
            Box::new(CelMap::from(map))
        }
    }
}

/// Converts an expression's result into a column value (for `set`).
/// Doubles that are not finite become the strings PostgreSQL writes
/// (`NaN`, `Infinity`, `-Infinity`); bytes become `\x…` hex as for bytea;
/// map entries are sorted by key so the output is deterministic.
pub fn to_column_value(v: &cel::Value) -> Result<Value, String> {
    Ok(match v {
        cel::Value::Null => Value::Null,
        cel::Value::Bool(b) => Value::Bool(*b),
        cel::Value::Int(i) => Value::Number(i.to_string().into()),
        cel::Value::UInt(u) => Value::Number(u.to_string().into()),
        cel::Value::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => Value::Number(n.to_string().into()),
            None if f.is_nan() => Value::String("NaN".into()),
            None if *f > 0.0 => Value::String("Infinity".into()),
            None => Value::String("-Infinity".into()),
        },
        cel::Value::String(s) => Value::String(s.as_str().into()),
        cel::Value::Bytes(b) => Value::String(format!("\\x{}", hex::encode(b.as_slice())).into()),
        cel::Value::List(items) => Value::Array(items.iter().map(to_column_value).collect::<Result<_, _>>()?),
        cel::Value::Map(m) => {
            let mut fields: Vec<(Arc<str>, Value)> = Vec::with_capacity(m.map.len());
            for (k, v) in m.map.iter() {
                let name: Arc<str> = match k {
                    cel::objects::Key::String(s) => s.as_str().into(),
                    cel::objects::Key::Int(i) => i.to_string().into(),
                    cel::objects::Key::Uint(u) => u.to_string().into(),
                    cel::objects::Key::Bool(b) => b.to_string().into(),
                };
                fields.push((name, to_column_value(v)?));
            }
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(fields)
        }
        other => return Err(format!("cannot store a {} value in a column", other.type_of())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfanout_sdk::testing::{At, Table};
    use pgfanout_sdk::Op;

    fn change(op: Op) -> Change {
        let row = Row(vec![
            ("id".into(), Value::Number("7".into())),
            ("quantity".into(), Value::Number("3".into())),
            ("price".into(), Value::Number("9.50".into())),
            ("email".into(), Value::String("a@b.c".into())),
            ("prefs".into(), Value::Json(r#"{"theme":"dark","n":[1,2]}"#.into())),
        ]);
        let key = Row(row.0[..1].to_vec());
        let after = (op != Op::Delete).then_some(row);
        let built = Table("cart_items").change(op, At(0x16B_37A0, 0), key, None, after, &["bio"]);
        // its own LSN before the commit's, a real xid and commit time
        Change { lsn: "0/16B3748".parse().unwrap(), xid: Some(751), commit_ts: Some(1_795_514_400_123_456), ..built }
    }

    fn eval(src: &str, c: &Change) -> Result<cel::Value, String> {
        Expr::compile(src).unwrap().evaluate(&new_env(), &ChangeVars::new(c))
    }

    #[test]
    fn reads_every_variable() {
        let c = change(Op::Update);
        let t = |src: &str| assert_eq!(eval(src, &c), Ok(cel::Value::Bool(true)), "{src}");
        t("op == 'update' && schema == 'public' && table == 'cart_items'");
        t("key.id == 7 && after.quantity > 0 && after.price > 9.4 && after.price < 9.6");
        t("after.email.endsWith('@b.c') && after.prefs.theme == 'dark' && after.prefs.n[1] == 2");
        t("before == null && 'bio' in unchanged_toast && size(unchanged_toast) == 1");
        t("lsn == '0/16B3748' && commit_lsn == '0/16B37A0' && xid == 751");
        t("commit_ts == '2026-11-24T10:00:00.123456Z'");
        t("has(after.email) && !has(after.bio)");
        t("after.prefs.n.exists(x, x == 2)");
    }

    #[test]
    fn a_filter_reading_an_unchanged_toast_column_passes_the_record() {
        let c = change(Op::Update);
        let f = |src: &str| Expr::compile(src).unwrap().evaluate_bool(&new_env(), &ChangeVars::new(&c));
        assert_eq!(f("after.bio.size() > 1000"), Ok(true), "undecidable: delivered");
        assert_eq!(f("has(after.bio) && after.bio.size() > 1000"), Ok(false), "guarded: decided");
        assert!(f("after.nope > 1").unwrap_err().contains("nope"), "a column that does not exist is still an error");
    }

    #[test]
    fn short_circuit_on_delete_and_errors_otherwise() {
        let d = change(Op::Delete);
        assert_eq!(eval("op == 'delete' || after.quantity > 0", &d), Ok(cel::Value::Bool(true)));
        let err = eval("after.quantity > 0", &d).unwrap_err();
        assert!(err.contains("after.quantity"), "{err}");
        let err = Expr::compile("op").unwrap().evaluate_bool(&new_env(), &ChangeVars::new(&d)).unwrap_err();
        assert!(err.contains("expected a bool"), "{err}");
    }

    #[test]
    fn compile_and_offline_checks() {
        let env = new_env();
        assert!(Expr::compile("after.quantity >").unwrap_err().contains("invalid CEL expression"));
        assert!(Expr::compile("  ").is_err());
        let ok = |s: &str| Expr::compile(s).unwrap().check_offline(&env, "public", "t", true);
        assert_eq!(ok("after.quantity > 0 || op == 'delete'"), Ok(()));
        assert_eq!(ok("after.tags.exists(t, t == 'x')"), Ok(()));
        assert!(ok("1 + 2").unwrap_err().contains("expected a bool"));
        assert!(ok("afterr.quantity > 0").unwrap_err().contains("afterr"));
        assert_eq!(Expr::compile("1 + 2").unwrap().check_offline(&env, "public", "t", false), Ok(()));
    }

    #[test]
    fn converts_results_back() {
        let c = change(Op::Insert);
        let v = |s: &str| to_column_value(&eval(s, &c).unwrap()).unwrap();
        assert_eq!(v("after.quantity * 2"), Value::Number("6".into()));
        assert_eq!(v("after.email + '!'"), Value::String("a@b.c!".into()));
        assert_eq!(v("1.5"), Value::Number("1.5".into()));
        assert_eq!(v("[1, 'a', null]"), Value::Array(vec![Value::Number("1".into()), Value::String("a".into()), Value::Null]));
        assert_eq!(v("{'b': 1, 'a': true}"), Value::Object(vec![("a".into(), Value::Bool(true)), ("b".into(), Value::Number("1".into()))]));
    }
}
