//! `{column}` templates for keys, topics, index names and ids.
//!
//! Syntax: literal text with `{name}` placeholders; `{{` and `}}` are literal
//! braces. A name is a column (looked up in `after`, then `before`, then
//! `key`), one of the metadata names `schema`, `table`, `op`, `lsn`,
//! `commit_lsn`, or an explicit `after.col`, `before.col`, `key.col`. A
//! column that the record lacks, or that is NULL, is an error for that record
//! (it goes to the dead-letter sink) rather than a silently wrong key.

use std::fmt;

use crate::change::Change;
use crate::value::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Column(String),
    RowColumn(RowSel, String),
    Schema,
    Table,
    Op,
    Lsn,
    CommitLsn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowSel {
    After,
    Before,
    Key,
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// A template that does not parse, or cannot be rendered for one record.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("template {template:?}: {reason}")]
    Syntax { template: String, reason: String },
    #[error("template {template:?}: the record has no column {column:?}")]
    MissingColumn { template: String, column: String },
    #[error("template {template:?}: column {column:?} is NULL")]
    NullColumn { template: String, column: String },
}

impl Template {
    /// Parses `source`.
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let syntax = |reason: &str| TemplateError::Syntax { template: source.to_string(), reason: reason.to_string() };
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => return Err(syntax("unmatched '}' (write '}}' for a literal brace)")),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') => return Err(syntax("'{' inside a placeholder")),
                            Some(c) => name.push(c),
                            None => return Err(syntax("unclosed '{' (write '{{' for a literal brace)")),
                        }
                    }
                    let name = name.trim();
                    if name.is_empty() {
                        return Err(syntax("empty placeholder '{}': put a column name inside"));
                    }
                    if !name.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '.' || c == '$' || c == ' ' || c == '-') {
                        return Err(syntax(&format!("{name:?} is not a column name")));
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit)));
                    }
                    parts.push(match name {
                        "schema" => Part::Schema,
                        "table" => Part::Table,
                        "op" => Part::Op,
                        "lsn" => Part::Lsn,
                        "commit_lsn" => Part::CommitLsn,
                        _ => match name.split_once('.') {
                            Some(("after", c)) if !c.is_empty() => Part::RowColumn(RowSel::After, c.into()),
                            Some(("before", c)) if !c.is_empty() => Part::RowColumn(RowSel::Before, c.into()),
                            Some(("key", c)) if !c.is_empty() => Part::RowColumn(RowSel::Key, c.into()),
                            _ => Part::Column(name.into()),
                        },
                    });
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        Ok(Template { source: source.to_string(), parts })
    }

    /// The template text as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Column names the template reads.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Column(c) | Part::RowColumn(_, c) => Some(c.as_str()),
            _ => None,
        })
    }

    /// True when the template is a single placeholder (so a caller may keep
    /// the value's type instead of its text).
    pub fn single_column(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Column(c)] | [Part::RowColumn(_, c)] => Some(c),
            _ => None,
        }
    }

    /// A match pattern for every text the template can render: literal
    /// parts through `literal` (to escape them), each placeholder as
    /// `wildcard`. E.g. `cart:{user_id}` with a glob escape and `*`:
    /// `cart:*` (for Redis `SCAN MATCH`).
    pub fn pattern(&self, literal: impl Fn(&str) -> String, wildcard: &str) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(l) => literal(l),
                _ => wildcard.to_string(),
            })
            .collect()
    }

    /// True when the template has no placeholder.
    pub fn is_constant(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The value of a one-placeholder template, typed.
    pub fn lookup<'c>(&self, change: &'c Change) -> Result<&'c Value, TemplateError> {
        match self.parts.as_slice() {
            [p @ (Part::Column(_) | Part::RowColumn(..))] => self.value(p, change),
            _ => Err(TemplateError::Syntax { template: self.source.clone(), reason: "not a single column".into() }),
        }
    }

    fn value<'c>(&self, part: &Part, change: &'c Change) -> Result<&'c Value, TemplateError> {
        let (found, column) = match part {
            Part::Column(c) => (change.column(c), c),
            Part::RowColumn(sel, c) => {
                let row = match sel {
                    RowSel::After => &change.after,
                    RowSel::Before => &change.before,
                    RowSel::Key => &change.key,
                };
                (row.as_ref().and_then(|r| r.get(c)), c)
            }
            _ => unreachable!("value() is only called for column parts"),
        };
        match found {
            None => Err(TemplateError::MissingColumn { template: self.source.clone(), column: column.clone() }),
            Some(Value::Null) => Err(TemplateError::NullColumn { template: self.source.clone(), column: column.clone() }),
            Some(v) => Ok(v),
        }
    }

    /// Renders the template for one record.
    pub fn render(&self, change: &Change) -> Result<String, TemplateError> {
        let mut out = String::new();
        self.render_into(change, &mut out)?;
        Ok(out)
    }

    /// Renders the template for one record, appending to `out` (a buffer
    /// reused across records); on error `out` may hold part of it.
    pub fn render_into(&self, change: &Change, out: &mut String) -> Result<(), TemplateError> {
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Schema => out.push_str(&change.schema),
                Part::Table => out.push_str(&change.table),
                Part::Op => out.push_str(change.op.as_str()),
                Part::Lsn => out.push_str(&change.lsn.to_string()),
                Part::CommitLsn => out.push_str(&change.commit_lsn.to_string()),
                p => out.push_str(&self.value(p, change)?.to_template_text()),
            }
        }
        Ok(())
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Lsn, Op, Row};

    fn change() -> Change {
        Change {
            op: Op::Delete,
            schema: "public".into(),
            table: "cart_items".into(),
            key: Some(Row(vec![("user_id".into(), Value::Number("7".into()))])),
            before: Some(Row(vec![
                ("user_id".into(), Value::Number("7".into())),
                ("product_id".into(), Value::String("p-1".into())),
                ("note".into(), Value::Null),
            ])),
            after: None,
            unchanged_toast: vec![],
            lsn: Lsn(1),
            commit_lsn: Lsn(2),
            ordinal: 0,
            xid: Some(1),
            commit_ts: None,
        }
    }

    #[test]
    fn renders_columns_and_metadata() {
        let t = Template::parse("cart:{user_id}:{product_id}").unwrap();
        assert_eq!(t.render(&change()).unwrap(), "cart:7:p-1");
        let t = Template::parse("shop.{schema}.{table}.{op}").unwrap();
        assert_eq!(t.render(&change()).unwrap(), "shop.public.cart_items.delete");
        let t = Template::parse("{{literal}} {key.user_id}").unwrap();
        assert_eq!(t.render(&change()).unwrap(), "{literal} 7");
        assert_eq!(Template::parse("{user_id}").unwrap().single_column(), Some("user_id"));
    }

    #[test]
    fn missing_and_null_columns_are_errors() {
        let err = Template::parse("x:{nope}").unwrap().render(&change()).unwrap_err();
        assert!(matches!(err, TemplateError::MissingColumn { .. }), "{err}");
        let err = Template::parse("x:{note}").unwrap().render(&change()).unwrap_err();
        assert!(matches!(err, TemplateError::NullColumn { .. }), "{err}");
    }

    #[test]
    fn syntax_errors_are_reported() {
        for bad in ["cart:{user_id", "cart:}", "{}", "{a{b}}", "{a;b}"] {
            assert!(matches!(Template::parse(bad), Err(TemplateError::Syntax { .. })), "{bad}");
        }
    }
}
