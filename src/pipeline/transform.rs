//! Transforms: reshaping a record between the filter and the sink.
//!
//! # Which rows each transform touches
//!
//! | transform | `after` | `before` | `key` | `unchanged_toast` |
//! |---|---|---|---|---|
//! | `keep`, `drop` | yes | yes | **no** | yes |
//! | `rename`, `mask`, `hash` | yes | yes | yes | `rename` renames |
//! | `set` | yes (only when the record has `after`) | no | no | the column leaves it |
//!
//! The key is the record's identity: sinks address deletes by it, so `keep`
//! and `drop` never remove key columns from `key` (they do from `after` and
//! `before`). Transforms that change a value or a name (`rename`, `mask`,
//! `hash`) apply to `key` too, so that a `{column}` template renders the
//! same text for an insert (read from `after`) and for the later delete (read
//! from `key`): a hashed e-mail used as a document id stays the same id.
//!
//! # Missing columns
//!
//! A column named by `keep`, `drop`, `rename`, `mask` or `hash` that is absent
//! from `after` is an error for that record (it goes to the dead-letter file),
//! except when the column is listed in `unchanged_toast`: PostgreSQL did not
//! send it because it did not change, and the transform acts on the name
//! only (`drop`/`keep` remove it from the list, `rename` renames it there,
//! `mask`/`hash` leave it: the sink keeps the masked value it already has).
//! Records without `after` (deletes, truncates) are never missing columns:
//! `before` and `key` are changed where the column is present. Transforms
//! never invent unchanged TOAST values. NULL values stay NULL under `mask`
//! and `hash`.

use std::sync::Arc;

use cel::Env;
use pgfanout_sdk::{Change, Row, Value};
use sha2::{Digest, Sha256};

use crate::config::TransformConfig;
use crate::expr::{to_column_value, ChangeVars, Expr};

/// A compiled transform.
#[derive(Debug)]
pub enum Transform {
    Keep(Vec<Arc<str>>),
    Drop(Vec<Arc<str>>),
    Rename(Vec<(Arc<str>, Arc<str>)>),
    Set(Vec<(Arc<str>, Expr)>),
    Mask { columns: Vec<Arc<str>>, with: pgfanout_sdk::Text },
    Hash(Vec<Arc<str>>),
}

fn names<'a>(cols: impl IntoIterator<Item = &'a String>) -> Vec<Arc<str>> {
    cols.into_iter().map(|c| Arc::from(c.as_str())).collect()
}

impl Transform {
    /// Compiles one transform (CEL expressions of `set` included).
    pub fn compile(cfg: &TransformConfig) -> Result<Transform, String> {
        Ok(match cfg {
            TransformConfig::Keep(c) => Transform::Keep(names(c)),
            TransformConfig::Drop(c) => Transform::Drop(names(c)),
            TransformConfig::Rename(m) => {
                Transform::Rename(m.iter().map(|(o, n)| (Arc::from(o.as_str()), Arc::from(n.as_str()))).collect())
            }
            TransformConfig::Set(m) => {
                Transform::Set(m.iter().map(|(c, src)| Ok((Arc::from(c.as_str()), Expr::compile(src)?))).collect::<Result<_, String>>()?)
            }
            TransformConfig::Mask(m) => Transform::Mask { columns: names(&m.columns), with: m.with.as_str().into() },
            TransformConfig::Hash(c) => Transform::Hash(names(c)),
        })
    }

    /// The transform's name as written in the configuration.
    pub fn kind(&self) -> &'static str {
        match self {
            Transform::Keep(_) => "keep",
            Transform::Drop(_) => "drop",
            Transform::Rename(_) => "rename",
            Transform::Set(_) => "set",
            Transform::Mask { .. } => "mask",
            Transform::Hash(_) => "hash",
        }
    }

    /// Applies the transform to `change` in place. On error the change may
    /// be partly transformed; the caller dead-letters the original.
    pub fn apply(&self, change: &mut Change, env: &Arc<Env>) -> Result<(), String> {
        match self {
            Transform::Keep(cols) => {
                for c in cols {
                    require(change, c, self.kind())?;
                }
                let keep = |name: &str| cols.iter().any(|c| &**c == name);
                for row in [&mut change.after, &mut change.before].into_iter().flatten() {
                    row.0.retain(|(k, _)| keep(k));
                }
                change.unchanged_toast.retain(|c| keep(c));
            }
            Transform::Drop(cols) => {
                for c in cols {
                    require(change, c, self.kind())?;
                    for row in [&mut change.after, &mut change.before].into_iter().flatten() {
                        row.remove(c);
                    }
                    change.unchanged_toast.retain(|t| t != c);
                }
            }
            Transform::Rename(pairs) => {
                for (old, new) in pairs {
                    require(change, old, self.kind())?;
                    if change.after.as_ref().is_some_and(|r| r.contains(new)) || change.unchanged_toast.contains(new) {
                        return Err(format!("transform rename: cannot rename {old:?} to {new:?}: the record already has a column {new:?}"));
                    }
                    for row in [&mut change.after, &mut change.before, &mut change.key].into_iter().flatten() {
                        if let Some(entry) = row.0.iter_mut().find(|(k, _)| k == old) {
                            entry.0 = Arc::clone(new);
                        }
                    }
                    for t in change.unchanged_toast.iter_mut().filter(|t| *t == old) {
                        *t = Arc::clone(new);
                    }
                }
            }
            Transform::Set(assignments) => {
                if change.after.is_none() {
                    return Ok(());
                }
                for (col, e) in assignments {
                    let result = e.evaluate(env, &ChangeVars::new(change)).map_err(|err| format!("transform set {col:?}: {err}"))?;
                    let value = to_column_value(&result).map_err(|err| format!("transform set {col:?}: {err}"))?;
                    if let Some(after) = change.after.as_mut() {
                        after.set(Arc::clone(col), value);
                    }
                    change.unchanged_toast.retain(|t| t != col);
                }
            }
            Transform::Mask { columns, with } => {
                for c in columns {
                    require(change, c, self.kind())?;
                    replace_values(change, c, |_| Value::String(with.clone()));
                }
            }
            Transform::Hash(columns) => {
                for c in columns {
                    require(change, c, self.kind())?;
                    replace_values(change, c, |v| Value::String(hex::encode(Sha256::digest(v.to_template_text().as_bytes())).into()));
                }
            }
        }
        Ok(())
    }
}

/// Fails when `column` is missing from `after` (if the record has one) and
/// is not an unchanged TOAST column.
fn require(change: &Change, column: &str, kind: &str) -> Result<(), String> {
    match &change.after {
        Some(after) if !after.contains(column) && !change.unchanged_toast.iter().any(|t| &**t == column) => Err(format!(
            "transform {kind}: the record has no column {column:?} (its columns: {})",
            after.iter().map(|(k, _)| k).collect::<Vec<_>>().join(", ")
        )),
        _ => Ok(()),
    }
}

/// Replaces every non-NULL value of `column` in after, before and key.
fn replace_values(change: &mut Change, column: &str, f: impl Fn(&Value) -> Value) {
    for row in [&mut change.after, &mut change.before, &mut change.key].into_iter().flatten() {
        replace_in(row, column, &f);
    }
}

fn replace_in(row: &mut Row, column: &str, f: &impl Fn(&Value) -> Value) {
    if let Some(v) = row.get_mut(column) {
        if !v.is_null() {
            *v = f(v);
        }
    }
}
