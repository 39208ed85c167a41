//! `pipelines[]`: which tables feed which sink, through which filter and
//! transforms, with which sink-specific mapping.
//!
//! These are plain serde types; what each field means at run time is in
//! [`crate::pipeline`], and the checks made before start are in
//! [`super::validate`].

use std::fmt;

use indexmap::IndexMap;
use pgfanout_sdk::Op;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// The fields of a pipeline other than its mapping section.
pub const PIPELINE_FIELDS: [&str; 6] = ["name", "from", "to", "ops", "filter", "transforms"];

/// One pipeline: tables -> (ops, filter, transforms) -> one sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Unique among pipelines; appears in dead letters and metrics.
    pub name: String,
    /// `schema.table`, `table` (schema `public`), `schema.*`, or
    /// `message:prefix` / `message:*` (logical messages); one or a list.
    pub from: OneOrMany,
    /// The name of a sink under `sinks:`.
    pub to: String,
    /// Which operations pass; all when absent.
    pub ops: Option<Vec<Op>>,
    /// A CEL expression over the change record; the change passes when true.
    pub filter: Option<String>,
    /// Applied in order after the filter.
    #[serde(default)]
    pub transforms: Vec<TransformConfig>,
    /// The mapping section for the sink, under the key its connector owns
    /// (`redis: {...}`), as (key, section). Set aside by the loader (every
    /// other key is a field above); its content is parsed by the sink's
    /// connector. More than one, or one under another sink type's key, is
    /// reported by validation.
    #[serde(skip)]
    pub mappings: Vec<(String, serde_json::Value)>,
}

impl PipelineConfig {
    /// The (first) mapping section, whatever its key.
    pub fn mapping_section(&self) -> Option<&serde_json::Value> {
        self.mappings.first().map(|(_, v)| v)
    }

    /// Whether `op` passes the `ops` list.
    pub fn accepts(&self, op: Op) -> bool {
        self.ops.as_ref().is_none_or(|ops| ops.contains(&op))
    }
}

/// A single string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn items(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// A `from` entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TablePattern {
    /// `schema.table` (a bare `table` means `public.table`).
    Table { schema: String, table: String },
    /// `schema.*`: every table of the schema.
    Schema { schema: String },
    /// `message:prefix` or `message:*`: transactional logical messages
    /// (`pg_logical_emit_message(true, prefix, content)`) with that prefix,
    /// or with any prefix but pgfanout's own (`pgfanout_*`).
    Message { prefix: Option<String> },
}

impl TablePattern {
    /// Parses `schema.table`, `table` or `schema.*`. Names are taken as
    /// written (case-sensitive, as PostgreSQL sends them); they may not
    /// contain whitespace, quotes or more than one dot.
    pub fn parse(s: &str) -> Result<TablePattern, String> {
        if let Some(prefix) = s.strip_prefix("message:") {
            return match prefix {
                "" => Err(format!("{s:?} names no prefix; expected message:<prefix> or message:*")),
                "*" => Ok(TablePattern::Message { prefix: None }),
                p if p.starts_with("pgfanout_") => {
                    Err(format!("{s:?}: the prefix pgfanout_ is pgfanout's own (backfill watermarks, heartbeats)"))
                }
                p => Ok(TablePattern::Message { prefix: Some(p.into()) }),
            };
        }
        let bad = |why: &str| format!("{s:?} is not a table pattern ({why}); expected schema.table, table or schema.*");
        let ident_ok =
            |p: &str| !p.is_empty() && !p.chars().any(|c| c.is_whitespace() || c == '"' || c == '*' || c == '.' || c.is_control());
        let (schema, table) = match s.split_once('.') {
            Some((schema, table)) => (schema, table),
            None => ("public", s),
        };
        if table.contains('.') {
            return Err(bad("more than one dot"));
        }
        if !ident_ok(schema) {
            return Err(bad("bad schema name"));
        }
        if schema == pgfanout_sdk::MESSAGE_SCHEMA {
            return Err(bad("pg_message is the schema of logical messages: write message:<prefix>"));
        }
        if table == "*" {
            if !s.contains('.') {
                return Err(bad("a bare * is not allowed: write public.*"));
            }
            return Ok(TablePattern::Schema { schema: schema.into() });
        }
        if !ident_ok(table) {
            return Err(bad("bad table name"));
        }
        if table.len() > 63 || schema.len() > 63 {
            return Err(bad("PostgreSQL names are at most 63 bytes"));
        }
        Ok(TablePattern::Table { schema: schema.into(), table: table.into() })
    }

    pub fn matches(&self, schema: &str, table: &str) -> bool {
        match self {
            TablePattern::Table { schema: s, table: t } => s == schema && t == table,
            TablePattern::Schema { schema: s } => s == schema,
            TablePattern::Message { prefix } => {
                schema == pgfanout_sdk::MESSAGE_SCHEMA && prefix.as_deref().is_none_or(|p| p == table) && !table.starts_with("pgfanout_")
            }
        }
    }

    /// Whether the pattern names tables (of the publication, the snapshot,
    /// backfills and `verify`), not logical messages.
    pub fn is_table(&self) -> bool {
        !matches!(self, TablePattern::Message { .. })
    }
}

impl fmt::Display for TablePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TablePattern::Table { schema, table } => write!(f, "{schema}.{table}"),
            TablePattern::Schema { schema } => write!(f, "{schema}.*"),
            TablePattern::Message { prefix } => write!(f, "message:{}", prefix.as_deref().unwrap_or("*")),
        }
    }
}

/// One transform, written as a one-key map: `{ drop: [cost_price] }`.
///
/// Which of `key`, `before` and `after` each transform touches is documented
/// in [`crate::pipeline::transform`].
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum TransformConfig {
    /// Keep only these columns.
    Keep(Vec<String>),
    /// Remove these columns.
    Drop(Vec<String>),
    /// Rename columns: `{ old: new }`.
    Rename(IndexMap<String, String>),
    /// Set columns to the value of a CEL expression: `{ column: "expr" }`.
    Set(IndexMap<String, String>),
    /// Replace values with `"****"` (or `with`).
    Mask(MaskConfig),
    /// Replace values with the SHA-256 hex of their text.
    Hash(Vec<String>),
}

impl TransformConfig {
    /// The transform's name as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            TransformConfig::Keep(_) => "keep",
            TransformConfig::Drop(_) => "drop",
            TransformConfig::Rename(_) => "rename",
            TransformConfig::Set(_) => "set",
            TransformConfig::Mask(_) => "mask",
            TransformConfig::Hash(_) => "hash",
        }
    }
}

/// `mask: [cols]` or `mask: { columns: [cols], with: "x" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskConfig {
    pub columns: Vec<String>,
    pub with: String,
}

/// The default mask text.
pub const DEFAULT_MASK: &str = "****";

impl<'de> Deserialize<'de> for MaskConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Detailed {
            columns: Vec<String>,
            #[serde(default = "default_mask")]
            with: String,
        }
        fn default_mask() -> String {
            DEFAULT_MASK.into()
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaskConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of columns, or { columns: [...], with: \"text\" }")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<MaskConfig, A::Error> {
                let columns = Vec::<String>::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(MaskConfig { columns, with: DEFAULT_MASK.into() })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<MaskConfig, A::Error> {
                let d = Detailed::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(MaskConfig { columns: d.columns, with: d.with })
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_patterns() {
        assert_eq!(TablePattern::parse("users").unwrap().to_string(), "public.users");
        assert_eq!(TablePattern::parse("shop.users").unwrap().to_string(), "shop.users");
        assert_eq!(TablePattern::parse("shop.*").unwrap(), TablePattern::Schema { schema: "shop".into() });
        assert!(TablePattern::parse("shop.*").unwrap().matches("shop", "x"));
        assert!(!TablePattern::parse("shop.users").unwrap().matches("shop", "orders"));
        for bad in ["", "*", "a.b.c", ".users", "public.", "pub lic.users", "*.users", "public.us*", "\"x\".y"] {
            assert!(TablePattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mask_forms() {
        let m: MaskConfig = serde_json::from_str(r#"["email"]"#).unwrap();
        assert_eq!(m, MaskConfig { columns: vec!["email".into()], with: "****".into() });
        let m: MaskConfig = serde_json::from_str(r#"{"columns":["email"],"with":"x"}"#).unwrap();
        assert_eq!(m.with, "x");
        assert!(serde_json::from_str::<MaskConfig>(r#"{"columns":["email"],"width":"x"}"#).is_err());
        assert!(serde_json::from_str::<MaskConfig>(r#""email""#).is_err());
    }
}
