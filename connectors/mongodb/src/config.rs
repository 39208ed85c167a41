//! Configuration of the document sink (`sinks.<name>` with `type: mongodb`)
//! and of one pipeline's mapping (`pipelines[i].mongodb`).
//!
//! Plain serde structs with unknown fields rejected; `validate()` is pure,
//! so `pgfanout check` reports every mistake with its dotted path before
//! anything connects.

use std::time::Duration;

use indexmap::IndexMap;
use pgfanout_sdk::settings::{duration, Problems, Secret};
use pgfanout_sdk::Template;
use serde::Deserialize;

/// The sink: where the server is and how to write to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoSinkConfig {
    /// A `mongodb://` connection string (credentials, `replicaSet`, `tls`,
    /// `authSource`... as the driver takes them). `mongodb+srv://` is not
    /// supported (the DNS resolver is not built in). Use `${VAR}` for the
    /// password.
    pub uri: Secret,
    /// The database every collection of the sink lives in.
    pub database: String,
    /// Numbers no double holds exactly (a 25-digit numeric, `0.1` is held
    /// exactly): `decimal128` (exact up to 34 significant digits; longer
    /// ones become strings), `string` (their exact text), or `auto`
    /// (default): `decimal128`, unless the server is FerretDB, which has
    /// no decimal128. Integers always become int32/int64 (or the same as
    /// this beyond 64 bits), other numbers doubles.
    #[serde(default)]
    pub decimals: Decimals,
    /// How long a delete's version is remembered (default `1d`) in
    /// `tombstone_collection`: an older write of the same document arriving
    /// later (a replay after a crash, a backfill row) is skipped. It must
    /// outlast the longest time pgfanout may be down.
    #[serde(default = "default_tombstone_ttl", with = "duration")]
    pub tombstone_ttl: Duration,
    /// Where delete versions are kept (default `pgfanout_tombstones`), in
    /// `database`; expired ones are removed by the sink.
    #[serde(default = "default_tombstone_collection")]
    pub tombstone_collection: String,
    /// The field holding each document's version (default
    /// `_pgfanout_version`): the position of the change that wrote it, as
    /// text that sorts like positions.
    #[serde(default = "default_version_field")]
    pub version_field: String,
    /// Statements per `update` / `delete` command (default 1000).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Server selection and connect timeout (default `10s`); a server that
    /// does not answer in time fails the batch, which is retried.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// Time allowed for one command or query (default `60s`); one that
    /// takes longer (a server that stopped answering, a half-open
    /// connection) fails the batch, which is retried.
    #[serde(default = "default_request_timeout", with = "duration")]
    pub request_timeout: Duration,
    /// Write concern `w` (default `majority`; a number such as `1` is taken
    /// too).
    #[serde(default = "default_write_concern")]
    pub write_concern: String,
}

fn default_tombstone_ttl() -> Duration {
    Duration::from_secs(86_400)
}
fn default_tombstone_collection() -> String {
    "pgfanout_tombstones".into()
}
fn default_version_field() -> String {
    "_pgfanout_version".into()
}
fn default_max_batch() -> usize {
    1000
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_write_concern() -> String {
    "majority".into()
}

/// How numbers that no double holds exactly are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decimals {
    /// `decimal128`, or `string` on a server without it (FerretDB).
    #[default]
    Auto,
    Decimal128,
    String,
}

/// How json and jsonb columns are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JsonMode {
    /// As embedded documents and arrays (default).
    #[default]
    Document,
    /// As their JSON text.
    String,
}

/// What a TRUNCATE does to the collection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruncateMode {
    /// Nothing (default).
    #[default]
    Ignore,
    /// Remove every document of the (constant) collection.
    DeleteAll,
}

/// One pipeline's mapping: one document per row.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoMapping {
    /// Collection name template, e.g. `profiles` or `{table}`.
    pub collection: String,
    /// `_id` template, e.g. `user-{id}` (a string). Default: the key
    /// column's own value (a number stays a number) for a one-column key,
    /// the key columns' values joined with `:` otherwise.
    pub id: Option<String>,
    /// Column -> field path (dotted for nesting): `{full_name: name,
    /// city: address.city}`. Columns not listed keep their own name.
    #[serde(default)]
    pub fields: IndexMap<String, String>,
    /// Columns left out of the document.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// json/jsonb columns as embedded documents (`document`, default) or
    /// as text (`string`).
    #[serde(default)]
    pub json: JsonMode,
    #[serde(default)]
    pub truncate: TruncateMode,
    /// Rows kept as elements of an array inside a parent's document
    /// instead of documents of their own (a user's addresses inside the
    /// profile): see [`EmbedMapping`].
    pub embed: Option<EmbedMapping>,
}

/// `embed:` the table's rows are elements of the array `field` in the
/// document `parent_id` of `collection` (the parent's own pipeline writes
/// the rest of that document).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedMapping {
    /// The array field, a top-level name (`addresses`).
    pub field: String,
    /// The parent document's `_id`: a template. `{user_id}` alone keeps
    /// the column's own value (a number stays a number, as the parent's
    /// default `_id` does); anything else is a string (`user-{user_id}`).
    pub parent_id: String,
}

/// The field of an embedded element holding its row's key (`_id` of a
/// document of its own): how the sink finds the element again.
pub const ELEMENT_KEY_FIELD: &str = "_pgfanout_key";

impl MongoSinkConfig {
    /// Every problem found, as (dotted sub-path, message).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Problems::default();
        let uri = self.uri.expose();
        if uri.starts_with("mongodb+srv://") {
            problems.add("uri", "mongodb+srv:// is not supported (no DNS resolver built in); list the hosts: mongodb://h1:27017,h2:27017/");
        } else if !uri.starts_with("mongodb://") {
            problems.add("uri", "must be a connection string starting with mongodb://");
        }
        if let Err(e) = check_name("database", &self.database, "/\\. \"$") {
            problems.add("database", e);
        }
        if let Err(e) = check_name("collection", &self.tombstone_collection, "$") {
            problems.add("tombstone_collection", e);
        }
        if let Err(e) = check_field(&self.version_field) {
            problems.add("version_field", e);
        } else if self.version_field.contains('.') {
            problems.add("version_field", "must be a top-level field (no dots)");
        }
        problems.nonzero(&[("tombstone_ttl", self.tombstone_ttl), ("timeout", self.timeout), ("request_timeout", self.request_timeout)]);
        problems.between("max_batch", self.max_batch, 1, 100_000);
        if self.write_concern != "majority" && self.write_concern.parse::<u32>().is_err() {
            problems.add("write_concern", "must be majority or a number of nodes such as 1");
        }
        problems.into()
    }
}

impl MongoMapping {
    /// Every problem found, as (dotted sub-path, message).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Problems::default();
        match Template::parse(&self.collection) {
            Err(e) => problems.add("collection", e.to_string()),
            Ok(t) => {
                if t.is_constant() {
                    if let Err(e) = check_name("collection", &self.collection, "$") {
                        problems.add("collection", e);
                    }
                } else if self.truncate == TruncateMode::DeleteAll && t.columns().next().is_some() {
                    problems.add(
                        "truncate",
                        "delete_all needs a collection template without columns (the table's collection must be known without a row)",
                    );
                }
            }
        }
        if let Some(id) = &self.id {
            if let Err(e) = Template::parse(id) {
                problems.add("id", e.to_string());
            }
        }
        if let Some(embed) = &self.embed {
            if let Err(e) = check_field(&embed.field) {
                problems.add("embed.field", e);
            } else if embed.field.contains('.') || embed.field == "_id" {
                problems.add("embed.field", "must be a top-level field other than _id (no dots)");
            }
            if let Err(e) = Template::parse(&embed.parent_id) {
                problems.add("embed.parent_id", e.to_string());
            }
            if self.collection.contains('{') {
                problems.add("collection", "with embed, the parents' collection must be a constant name");
            }
            if self.id.is_some() {
                problems.add("id", "with embed, elements are found by the row's key; remove id (parent_id names the parent)");
            }
            if self.truncate == TruncateMode::DeleteAll {
                problems.add("truncate", "delete_all would remove the parents' documents; with embed only ignore is allowed");
            }
        }
        let mut paths: Vec<&str> = Vec::new();
        for (column, path) in &self.fields {
            if let Err(e) = check_field(path) {
                problems.add(format!("fields.{column}"), e);
            } else if path == "_id" || path.starts_with("_id.") {
                problems.add(format!("fields.{column}"), "_id comes from the mapping's id; pick another field");
            } else {
                paths.push(path);
            }
            if self.exclude.contains(column) {
                problems.add(format!("fields.{column}"), "the column is also in exclude");
            }
        }
        for (i, a) in paths.iter().enumerate() {
            for b in &paths[i + 1..] {
                if a == b || b.starts_with(&format!("{a}.")) || a.starts_with(&format!("{b}.")) {
                    problems.add("fields", format!("paths {a:?} and {b:?} overlap; each column needs a field of its own"));
                }
            }
        }
        problems.into()
    }
}

/// A field path: dot-separated names, none empty or starting with `$`.
fn check_field(path: &str) -> Result<(), String> {
    if path.is_empty() || path.split('.').any(|p| p.is_empty() || p.starts_with('$')) {
        return Err(format!("{path:?} is not a field path (names separated by dots, none empty or starting with $)"));
    }
    Ok(())
}

/// A database or collection name: 1 to 120 bytes, none of `bad`, no NUL.
fn check_name(what: &str, name: &str, bad: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 120 || name.contains('\0') || name.chars().any(|c| bad.contains(c)) {
        return Err(format!("{name:?} is not a valid {what} name (1 to 120 bytes, none of {bad:?})"));
    }
    if what == "collection" && name.starts_with("system.") {
        return Err(format!("{name:?}: system.* collections are the server's"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(errors: Vec<(String, String)>) -> Vec<String> {
        errors.into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn settings_problems_name_their_fields() {
        let c: MongoSinkConfig = serde_json::from_str(
            r#"{"uri":"mongodb+srv://x","database":"a.b","tombstone_ttl":"0s","version_field":"$v","max_batch":0,"write_concern":"most"}"#,
        )
        .unwrap();
        assert_eq!(paths(c.validate()), vec!["uri", "database", "version_field", "tombstone_ttl", "max_batch", "write_concern"]);
        let ok: MongoSinkConfig = serde_json::from_str(r#"{"uri":"mongodb://h/","database":"shop"}"#).unwrap();
        assert!(ok.validate().is_empty());
        assert_eq!(ok.decimals, Decimals::Auto);
    }

    #[test]
    fn mapping_problems_name_their_fields() {
        let m: MongoMapping =
            serde_json::from_str(r#"{"collection":"{x","fields":{"a":"addr","b":"addr.city","c":"_id","d":"x..y"},"exclude":["a"]}"#)
                .unwrap();
        assert_eq!(paths(m.validate()), vec!["collection", "fields.a", "fields.c", "fields.d", "fields"]);
        let m: MongoMapping = serde_json::from_str(r#"{"collection":"{table}_{id}","truncate":"delete_all"}"#).unwrap();
        assert_eq!(paths(m.validate()), vec!["truncate"]);
    }
}
