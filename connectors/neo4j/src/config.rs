//! Configuration of the Neo4j sink (`sinks.<name>` with `type: neo4j`) and of
//! one pipeline's graph mapping (`pipelines[i].neo4j`).
//!
//! Both are plain serde structs with unknown fields rejected; `validate()` is
//! pure (no I/O) so `pgfanout check` reports every mistake with its dotted
//! path before anything connects. Property and column maps keep their order
//! (`IndexMap`) so generated Cypher is stable across runs.

use std::time::Duration;

use pgfanout_sdk::settings::{duration, Problems, Secret, TlsFiles};

use indexmap::IndexMap;
use serde::Deserialize;

/// Property holding the version of the last change applied to a generated
/// node or relationship: the position as fixed-width text that sorts like
/// positions (`Position::sortable_text`). (Releases before 0.2 stored a
/// packed integer in `_pgfanout_lsn`, which could wrap and collide; it is
/// ignored now and nodes written with it are simply overwritten.)
pub const VERSION_PROPERTY: &str = "_pgfanout_version";
/// Relationship property holding the identity of the row it came from (the
/// JSON of its key columns), so two rows between the same pair of nodes stay
/// two relationships and a replay finds the one it wrote.
pub const ROW_KEY_PROPERTY: &str = "_pgfanout_key";

/// The sink: where the Bolt server is and how to write to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Neo4jSinkConfig {
    /// `bolt://host:port`, `neo4j://…`, or with TLS `bolt+s://` / `neo4j+s://`
    /// (`+ssc` accepts a self-signed certificate).
    pub uri: String,
    pub user: String,
    /// Password (use `${VAR}` interpolation). Empty when absent.
    pub password: Option<Secret>,
    /// Database name (default `neo4j`).
    pub database: Option<String>,
    /// TLS files for `+s` URIs (neo4rs takes a CA file only).
    #[serde(default)]
    pub tls: TlsFiles,
    /// Rows sent in one `UNWIND $rows` statement (default 1000).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Rows fetched per PULL for statements that return rows (default 200).
    #[serde(default = "default_fetch_size")]
    pub fetch_size: usize,
    /// Connections in the pool (default 2; writes are sequential, the second
    /// serves `check`).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Create an index on every node key and relationship row key at start
    /// (default true). Without them every MERGE scans its label.
    #[serde(default = "default_true")]
    pub create_indexes: bool,
    /// Batches in flight at once (default 2; 1: one batch at a time). The
    /// next batch is encoded while the one before it is being written; their
    /// transactions still run one after the other, in order.
    #[serde(default = "default_in_flight_batches")]
    pub in_flight_batches: usize,
    /// Time allowed for one batch's transaction (default `60s`). One that
    /// takes longer (a server that stopped answering, a silent network)
    /// fails the batch, which is retried on a new connection pool (the
    /// stuck connections are dropped with the old one).
    #[serde(default = "default_request_timeout", with = "duration")]
    pub request_timeout: Duration,
}

fn default_max_batch() -> usize {
    1000
}
fn default_fetch_size() -> usize {
    200
}
fn default_max_connections() -> usize {
    2
}
fn default_in_flight_batches() -> usize {
    2
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_true() -> bool {
    true
}

/// One pipeline's mapping: exactly one of `node`, `relationship`, `cypher`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Neo4jMapping {
    pub node: Option<NodeMapping>,
    pub relationship: Option<RelMapping>,
    pub cypher: Option<CypherMapping>,
}

/// Each row is one node `(:label {key…})`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeMapping {
    pub label: String,
    /// Node property -> column identifying the node, e.g. `{id: id}`.
    pub key: IndexMap<String, String>,
    /// Node property -> column. Absent: every column of the row under its
    /// own name.
    pub properties: Option<IndexMap<String, String>>,
}

/// One end of a relationship: the node it MERGEs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointMapping {
    pub label: String,
    /// Node property -> column of the row, e.g. `{id: user_id}`.
    pub key: IndexMap<String, String>,
}

/// Each row is one relationship `(from)-[:type]->(to)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelMapping {
    #[serde(rename = "type")]
    pub rel_type: String,
    pub from: EndpointMapping,
    pub to: EndpointMapping,
    /// Relationship property -> column. Absent: every column except those
    /// used in `from.key` and `to.key`.
    pub properties: Option<IndexMap<String, String>>,
    /// Columns identifying the relationship (default: the table's replica
    /// identity, i.e. its primary key). Deletes need them in the change's key
    /// or `before` (REPLICA IDENTITY FULL).
    pub key: Option<Vec<String>>,
}

/// User-written statements. Each runs once per record with parameters
/// `$after`, `$before`, `$key` (maps or null), `$lsn` (the commit LSN, an
/// integer), `$ordinal` (the change's ordinal in its transaction),
/// `$version` (the position as text that sorts like positions: compare it to
/// guard writes), `$op` (string); or, when the statement mentions `$rows`,
/// once per batch with `$rows` a list of maps with those entries.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CypherMapping {
    /// For insert, update and snapshot rows.
    pub on_upsert: Option<String>,
    pub on_delete: Option<String>,
    /// For truncate (runs once, `$lsn` and `$op` only). Absent: ignored.
    pub on_truncate: Option<String>,
}

const SCHEMES: [&str; 6] = ["bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc"];

impl Neo4jSinkConfig {
    /// Every problem found, as (dotted sub-path, message). Empty when valid.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Problems::default();
        match self.uri.split_once("://") {
            Some((scheme, rest)) if SCHEMES.contains(&scheme) => {
                if rest.is_empty() || rest.contains('@') {
                    problems.add("uri", "must be scheme://host:port, with user and password in their own fields");
                }
            }
            _ => problems.add("uri", format!("{:?} must start with one of {}", self.uri, SCHEMES.map(|s| format!("{s}://")).join(", "))),
        }
        if self.user.trim().is_empty() {
            problems.add("user", "must not be empty");
        }
        if let Some(db) = &self.database {
            if db.trim().is_empty() {
                problems.add("database", "must not be empty when given (omit it for the server's default)");
            }
        }
        if self.tls.ca_file.is_some() && !self.uri.contains("+s") {
            problems.add("tls.ca_file", "only applies to bolt+s:// or neo4j+s:// URIs");
        }
        for (field, set) in [
            ("cert_file", self.tls.cert_file.is_some()),
            ("key_file", self.tls.key_file.is_some()),
            ("key_password", self.tls.key_password.is_some()),
            ("insecure", self.tls.insecure),
        ] {
            if set {
                problems.add(
                    format!("tls.{field}"),
                    "is not supported by the Neo4j client; use ca_file, or a +ssc URI to accept a self-signed certificate",
                );
            }
        }
        problems.between("max_batch", self.max_batch, 1, 100_000);
        if self.fetch_size == 0 {
            problems.add("fetch_size", "must be at least 1");
        }
        problems.between("in_flight_batches", self.in_flight_batches, 1, 64);
        problems.between("max_connections", self.max_connections, 1, 64);
        problems.into()
    }

    /// The `host:port` part neo4rs connects to, TLS decided by the scheme.
    pub(crate) fn is_tls(&self) -> bool {
        self.uri.contains("+s")
    }
}

impl Neo4jMapping {
    /// Every problem found, as (dotted sub-path, message). Empty when valid.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errors: Vec<(String, String)> = Vec::new();
        let kinds = [self.node.is_some(), self.relationship.is_some(), self.cypher.is_some()];
        match kinds.iter().filter(|k| **k).count() {
            1 => {}
            0 => errors.push((String::new(), "needs one of `node`, `relationship` or `cypher`".into())),
            _ => errors.push((String::new(), "`node`, `relationship` and `cypher` are exclusive: keep one".into())),
        }
        if let Some(node) = &self.node {
            name(&mut errors, "node.label", &node.label);
            key_map(&mut errors, "node.key", &node.key);
            if let Some(props) = &node.properties {
                prop_map(&mut errors, "node.properties", props);
            }
        }
        if let Some(rel) = &self.relationship {
            name(&mut errors, "relationship.type", &rel.rel_type);
            for (end, ep) in [("from", &rel.from), ("to", &rel.to)] {
                name(&mut errors, &format!("relationship.{end}.label"), &ep.label);
                key_map(&mut errors, &format!("relationship.{end}.key"), &ep.key);
            }
            if let Some(props) = &rel.properties {
                prop_map(&mut errors, "relationship.properties", props);
            }
            if let Some(key) = &rel.key {
                if key.is_empty() {
                    errors.push(("relationship.key".into(), "must list at least one column (or be omitted)".into()));
                }
                for (i, c) in key.iter().enumerate() {
                    name(&mut errors, &format!("relationship.key[{i}]"), c);
                }
            }
        }
        if let Some(c) = &self.cypher {
            if c.on_upsert.is_none() && c.on_delete.is_none() && c.on_truncate.is_none() {
                errors.push(("cypher".into(), "needs at least one of on_upsert, on_delete, on_truncate".into()));
            }
            for (path, stmt) in
                [("cypher.on_upsert", &c.on_upsert), ("cypher.on_delete", &c.on_delete), ("cypher.on_truncate", &c.on_truncate)]
            {
                if let Some(s) = stmt {
                    if s.trim().is_empty() {
                        errors.push((path.into(), "must not be empty".into()));
                    }
                }
            }
        }
        errors
    }
}

fn name(errors: &mut Vec<(String, String)>, path: &str, value: &str) {
    if value.trim().is_empty() {
        errors.push((path.into(), "must not be empty".into()));
    }
}

fn property(errors: &mut Vec<(String, String)>, path: &str, prop: &str) {
    name(errors, path, prop);
    if prop == VERSION_PROPERTY || prop == ROW_KEY_PROPERTY {
        errors.push((path.into(), format!("{prop:?} is reserved for pgfanout's own bookkeeping")));
    }
}

fn key_map(errors: &mut Vec<(String, String)>, path: &str, map: &IndexMap<String, String>) {
    if map.is_empty() {
        errors.push((path.into(), "must map at least one property to a column, like {id: id}".into()));
    }
    prop_map(errors, path, map);
}

fn prop_map(errors: &mut Vec<(String, String)>, path: &str, map: &IndexMap<String, String>) {
    for (prop, column) in map {
        property(errors, &format!("{path}.{prop}"), prop);
        name(errors, &format!("{path}.{prop}"), column);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(json: &str) -> Neo4jMapping {
        serde_json::from_str(json).expect("mapping parses")
    }

    #[test]
    fn the_design_example_is_valid() {
        let m = mapping(
            r#"{"relationship": {"type": "BOUGHT", "from": {"label": "User", "key": {"id": "user_id"}},
                "to": {"label": "Product", "key": {"id": "product_id"}}}}"#,
        );
        assert!(m.validate().is_empty(), "{:?}", m.validate());
    }

    #[test]
    fn mistakes_are_named_by_path() {
        let m = mapping(r#"{"node": {"label": "", "key": {}}, "cypher": {}}"#);
        let paths: Vec<_> = m.validate().into_iter().map(|(p, _)| p).collect();
        assert!(paths.contains(&String::new()), "{paths:?}");
        assert!(paths.contains(&"node.label".to_string()), "{paths:?}");
        assert!(paths.contains(&"node.key".to_string()), "{paths:?}");
        assert!(paths.contains(&"cypher".to_string()), "{paths:?}");
        let m = mapping(r#"{"node": {"label": "U", "key": {"id": "id"}, "properties": {"_pgfanout_version": "x"}}}"#);
        assert_eq!(m.validate()[0].0, "node.properties._pgfanout_version");
        assert!(serde_json::from_str::<Neo4jMapping>(r#"{"node": {"label": "U", "key": {"id": "id"}, "labels": []}}"#).is_err());
    }

    #[test]
    fn sink_config_checks_uri_and_limits() {
        let c: Neo4jSinkConfig = serde_json::from_str(r#"{"uri": "http://x:7687", "user": "", "max_batch": 0}"#).expect("parses");
        let paths: Vec<_> = c.validate().into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["uri", "user", "max_batch"]);
        let c: Neo4jSinkConfig =
            serde_json::from_str(r#"{"uri": "bolt://127.0.0.1:7687", "user": "neo4j", "password": "x"}"#).expect("parses");
        assert!(c.validate().is_empty());
        assert!(!c.is_tls());
    }
}
