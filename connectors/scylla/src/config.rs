//! Settings of a `type: scylla` sink and of one pipeline's `scylla:` mapping.
//!
//! Both are plain serde structs with unknown fields rejected; `validate()` is
//! pure (no I/O). Durations, TLS files and secrets are the SDK's shared
//! settings types.

use std::time::Duration;

use indexmap::IndexMap;
use pgfanout_sdk::settings::{default_connect_timeout, duration, option_duration, Problems, Secret, TlsFiles};
use pgfanout_sdk::{Op, Template};
use serde::Deserialize;

/// The sink: where the cluster is and how to write to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScyllaSettings {
    /// Contact points, `host:port` (port 9042 when omitted).
    pub nodes: Vec<String>,
    /// Keyspace of tables named without one.
    pub keyspace: String,
    /// Datacenter whose nodes are preferred (token-aware within it).
    pub local_datacenter: Option<String>,
    /// Write consistency (default `local_quorum`).
    #[serde(default = "default_consistency")]
    pub consistency: ConsistencyName,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// TLS to the nodes (OpenSSL; see the connector README).
    #[serde(default)]
    pub tls: TlsFiles,
    /// Time allowed to open a connection (default `5s`).
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Time allowed for one request (default `12s`).
    #[serde(default = "default_request_timeout", with = "duration")]
    pub request_timeout: Duration,
    /// Requests in flight at once (default 32); each statement carries its own
    /// `USING TIMESTAMP`, so the order they complete in does not matter.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Statements of one partition sent as one unlogged batch (default 32).
    #[serde(default = "default_batch_statements")]
    pub batch_statements: usize,
    /// Batches in flight at once (default 4): the next batch is planned and
    /// started while earlier ones finish; all share `concurrency`.
    #[serde(default = "default_in_flight_batches")]
    pub in_flight_batches: usize,
    /// Demo convenience: create the keyspace (SimpleStrategy,
    /// `replication_factor`) and each mapped table from its mapping.
    #[serde(default)]
    pub create: bool,
    #[serde(default = "default_rf")]
    pub replication_factor: u32,
}

fn default_consistency() -> ConsistencyName {
    ConsistencyName::LocalQuorum
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(12)
}
fn default_concurrency() -> usize {
    32
}
fn default_in_flight_batches() -> usize {
    4
}

fn default_batch_statements() -> usize {
    32
}
fn default_rf() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyName {
    One,
    Two,
    Three,
    Quorum,
    All,
    LocalQuorum,
    EachQuorum,
    LocalOne,
    Any,
}

impl ConsistencyName {
    pub fn to_driver(self) -> scylla::statement::Consistency {
        use scylla::statement::Consistency as C;
        match self {
            ConsistencyName::One => C::One,
            ConsistencyName::Two => C::Two,
            ConsistencyName::Three => C::Three,
            ConsistencyName::Quorum => C::Quorum,
            ConsistencyName::All => C::All,
            ConsistencyName::LocalQuorum => C::LocalQuorum,
            ConsistencyName::EachQuorum => C::EachQuorum,
            ConsistencyName::LocalOne => C::LocalOne,
            ConsistencyName::Any => C::Any,
        }
    }
}

/// How a pipeline's changes become rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The table mirrors the source rows (insert/update upsert, delete deletes).
    #[default]
    Upsert,
    /// Every change of the chosen `ops` adds one row (feeds, history).
    Append,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

/// One pipeline's mapping (`pipelines[i].scylla`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScyllaMapping {
    /// `table` or `keyspace.table`.
    pub table: String,
    #[serde(default)]
    pub mode: Mode,
    /// CQL column -> source: a column name (`user_id`), a template
    /// (`"{first} {last}"`, `"{op}"`), a quoted literal (`"'order'"`) or a
    /// record field (`$commit_ts`, `$op`, `$table`, `$schema`, `$position`,
    /// `$commit_lsn`, `$lsn`, `$ordinal`, `$xid`, `$row`).
    pub columns: IndexMap<String, String>,
    /// append: which operations add a row (default insert, update, delete).
    #[serde(default = "default_ops")]
    pub ops: Vec<Op>,
    /// Expiry of written cells (`USING TTL`), e.g. `30d`.
    #[serde(default, with = "option_duration")]
    pub ttl: Option<Duration>,
    /// With the sink's `create: true` only: the table's partition key columns.
    #[serde(default)]
    pub partition_key: Vec<String>,
    /// With `create: true`: clustering columns.
    #[serde(default)]
    pub clustering_key: Vec<String>,
    /// With `create: true`: clustering order (default asc).
    #[serde(default)]
    pub clustering_order: Order,
    /// With `create: true`: CQL type per column (default `text`).
    #[serde(default)]
    pub types: IndexMap<String, String>,
}

fn default_ops() -> Vec<Op> {
    vec![Op::Insert, Op::Update, Op::Delete]
}

/// Where a column's value comes from.
#[derive(Debug, Clone)]
pub enum Source {
    Column(String),
    Template(Template),
    Literal(String),
    Meta(Meta),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meta {
    CommitTs,
    Op,
    Table,
    Schema,
    Position,
    CommitLsn,
    Lsn,
    Ordinal,
    Xid,
    Row,
}

impl Source {
    pub fn parse(s: &str) -> Result<Source, String> {
        let t = s.trim();
        if t.len() >= 2 && t.starts_with('\'') && t.ends_with('\'') {
            return Ok(Source::Literal(t[1..t.len() - 1].replace("''", "'")));
        }
        if let Some(name) = t.strip_prefix('$') {
            let m = match name {
                "commit_ts" => Meta::CommitTs,
                "op" => Meta::Op,
                "table" => Meta::Table,
                "schema" => Meta::Schema,
                "position" => Meta::Position,
                "commit_lsn" => Meta::CommitLsn,
                "lsn" => Meta::Lsn,
                "ordinal" => Meta::Ordinal,
                "xid" => Meta::Xid,
                "row" => Meta::Row,
                other => {
                    return Err(format!(
                        "unknown record field ${other} (known: $commit_ts, $op, $table, $schema, $position, $commit_lsn, $lsn, $ordinal, $xid, $row)"
                    ))
                }
            };
            return Ok(Source::Meta(m));
        }
        if t.contains('{') || t.contains('}') {
            return Template::parse(t).map(Source::Template).map_err(|e| e.to_string());
        }
        if t.is_empty() || t.contains(char::is_whitespace) {
            return Err(format!("{s:?} is neither a column name, a template, a 'literal' nor a $field"));
        }
        Ok(Source::Column(t.to_string()))
    }
}

impl ScyllaSettings {
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Problems::default();
        if self.nodes.is_empty() {
            problems.add("nodes", "list at least one contact point (host:port)");
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if n.trim().is_empty() || n.contains("://") {
                problems.add(format!("nodes[{i}]"), format!("{n:?} must be host or host:port"));
            }
        }
        if !valid_ident(&self.keyspace) {
            problems.add("keyspace", format!("{:?} is not a CQL identifier (letters, digits, _)", self.keyspace));
        }
        if self.password.is_some() && self.username.is_none() {
            problems.add("username", "is required with password");
        }
        problems.nonzero(&[("connect_timeout", self.connect_timeout), ("request_timeout", self.request_timeout)]);
        problems.between("concurrency", self.concurrency, 1, 1024);
        problems.between("batch_statements", self.batch_statements, 1, 1000);
        if self.in_flight_batches == 0 || self.in_flight_batches > 64 {
            problems.add("in_flight_batches", "must be between 1 and 64 (1: one batch at a time)");
        }
        if self.replication_factor == 0 {
            problems.add("replication_factor", "must be at least 1");
        }
        problems.nested("tls", self.tls.validate());
        problems.into()
    }

    pub fn tls_enabled(&self) -> bool {
        self.tls.ca_file.is_some() || self.tls.cert_file.is_some() || self.tls.insecure
    }
}

impl ScyllaMapping {
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        let mut err = |p: &str, m: String| errors.push((p.to_string(), m));
        let parts: Vec<&str> = self.table.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|p| valid_ident(p)) {
            err("table", format!("{:?} must be table or keyspace.table (CQL identifiers)", self.table));
        }
        if self.columns.is_empty() {
            err("columns", "map at least one CQL column to a source".into());
        }
        for (col, src) in &self.columns {
            if !valid_ident(col) {
                err(&format!("columns.{col}"), "is not a CQL identifier".into());
            }
            if let Err(e) = Source::parse(src) {
                err(&format!("columns.{col}"), e);
            }
        }
        if self.mode == Mode::Upsert && self.ops != default_ops() {
            err("ops", "is an option of mode append (upsert applies every operation)".into());
        }
        if self.ops.is_empty() {
            err("ops", "list at least one operation".into());
        }
        if self.ttl.is_some_and(|d| d.as_secs() == 0 || d.as_secs() > 630_720_000) {
            err("ttl", "must be between 1s and 20 years".into());
        }
        for (what, cols) in [("partition_key", &self.partition_key), ("clustering_key", &self.clustering_key)] {
            for c in cols {
                if !self.columns.contains_key(c) {
                    err(what, format!("{c:?} is not one of the mapped columns"));
                }
            }
        }
        for c in self.types.keys() {
            if !self.columns.contains_key(c) {
                err("types", format!("{c:?} is not one of the mapped columns"));
            }
        }
        errors
    }

    /// (keyspace, table) with the sink's keyspace as default.
    pub fn qualified(&self, default_keyspace: &str) -> (String, String) {
        match self.table.split_once('.') {
            Some((k, t)) => (k.to_string(), t.to_string()),
            None => (default_keyspace.to_string(), self.table.clone()),
        }
    }
}

/// Lower-case unquoted CQL identifiers only (what the driver's metadata
/// reports for unquoted names).
pub fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 48
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert!(matches!(Source::parse("user_id").unwrap(), Source::Column(c) if c == "user_id"));
        assert!(matches!(Source::parse("'order'").unwrap(), Source::Literal(c) if c == "order"));
        assert!(matches!(Source::parse("$commit_ts").unwrap(), Source::Meta(Meta::CommitTs)));
        assert!(matches!(Source::parse("{op} of {id}").unwrap(), Source::Template(_)));
        assert!(Source::parse("$nope").is_err());
        assert!(Source::parse("two words").is_err());
    }

    #[test]
    fn mapping_and_settings_validate() {
        let m: ScyllaMapping = serde_json::from_str(
            r#"{"table":"shop.activity_feed","mode":"append","ops":["insert"],"columns":{"user_id":"user_id","event_time":"$commit_ts"},"ttl":"30d"}"#,
        )
        .unwrap();
        assert_eq!(m.validate(), vec![]);
        let m: ScyllaMapping =
            serde_json::from_str(r#"{"table":"A-b","ops":["insert"],"columns":{"x":"$bad"},"partition_key":["y"]}"#).unwrap();
        let paths: Vec<String> = m.validate().into_iter().map(|e| e.0).collect();
        assert_eq!(paths, vec!["table", "columns.x", "ops", "partition_key"]);
        let s: ScyllaSettings = serde_json::from_str(r#"{"nodes":["127.0.0.1:9042"],"keyspace":"shop"}"#).unwrap();
        assert_eq!(s.validate(), vec![]);
        assert_eq!(s.consistency, ConsistencyName::LocalQuorum);
        assert!(serde_json::from_str::<ScyllaSettings>(r#"{"nodes":[],"keyspace":"shop","bogus":1}"#).is_err());
        let s: ScyllaSettings = serde_json::from_str(r#"{"nodes":[],"keyspace":"Shop","password":"x","concurrency":0}"#).unwrap();
        let paths: Vec<String> = s.validate().into_iter().map(|e| e.0).collect();
        assert_eq!(paths, vec!["nodes", "keyspace", "username", "concurrency"]);
    }
}
