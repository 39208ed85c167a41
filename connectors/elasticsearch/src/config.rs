//! Configuration of the search sink (`sinks.<name>` with `type:
//! elasticsearch` or `opensearch`) and of one pipeline's mapping
//! (`pipelines[i].elasticsearch`).

use std::path::PathBuf;
use std::time::Duration;

use pgfanout_sdk::settings::{duration, BatchLimits, Problems, RetrySettings, Secret, TlsFiles};
use pgfanout_sdk::Template;
use serde::Deserialize;

/// The sink: where the cluster is and how to write to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchSinkConfig {
    /// Node URLs (`http://host:9200`, `https://...`); requests go to the
    /// first that answers, the others are tried when it fails.
    pub urls: Vec<String>,
    /// Basic auth user (with `password`).
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// API key (the base64 `id:key` form), instead of basic auth.
    pub api_key: Option<Secret>,
    /// TLS for `https://` URLs: `ca_file`, a client certificate
    /// (`cert_file` + `key_file`, unencrypted PEM), `insecure`.
    #[serde(default)]
    pub tls: TlsFiles,
    /// Time allowed for one request (default 30s).
    #[serde(default = "default_request_timeout", with = "duration")]
    pub request_timeout: Duration,
    /// `_bulk` request limits (default 1000 actions, 10MiB); larger batches
    /// are split.
    #[serde(default)]
    pub bulk: BatchLimits,
    /// Parallel `_bulk` requests, by document-id hash lanes: two changes of
    /// one document are never in flight at once (default 2).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Batches the sink works on at once (default 4): the next batch is
    /// planned and queued on the lanes while earlier ones are still being
    /// sent, so no lane waits for the slowest. Each lane still has one
    /// `_bulk` request in flight, in order.
    #[serde(default = "default_in_flight_batches")]
    pub in_flight_batches: usize,
    /// Backoff of the per-item retries (429, 5xx, timeouts).
    #[serde(default)]
    pub retry: RetrySettings,
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_concurrency() -> usize {
    2
}

fn default_in_flight_batches() -> usize {
    4
}

/// What a delete does to the document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteMode {
    /// Remove the document (default).
    #[default]
    Delete,
    /// Keep it and set `soft_delete_field` to true.
    Soft,
}

/// What a TRUNCATE does to the index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruncateMode {
    /// Nothing (default).
    #[default]
    Ignore,
    /// `_delete_by_query` of every document of the table's index.
    DeleteByQuery,
}

/// One pipeline's mapping.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchMapping {
    /// Index name template, e.g. `products` or `{schema}.{table}`.
    pub index: String,
    /// Document id template (default: the key columns, joined with `:`).
    pub id: Option<String>,
    /// Routing template (optional).
    pub routing: Option<String>,
    /// Index settings applied when the sink creates the index (inline).
    pub settings: Option<serde_json::Value>,
    /// Index mappings applied when the sink creates the index (inline).
    pub mappings: Option<serde_json::Value>,
    /// A JSON file with `{"settings": ..., "mappings": ...}` instead of the
    /// inline forms.
    pub index_file: Option<PathBuf>,
    /// Ingest pipeline for every indexed document.
    pub pipeline: Option<String>,
    #[serde(default)]
    pub delete: DeleteMode,
    /// The field set to true by soft deletes (default `_deleted`).
    #[serde(default = "default_soft_field")]
    pub soft_delete_field: String,
    #[serde(default)]
    pub truncate: TruncateMode,
}

fn default_soft_field() -> String {
    "_deleted".into()
}

impl SearchSinkConfig {
    /// Every problem found, as (dotted sub-path, message).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Problems::default();
        if self.urls.is_empty() {
            problems.add("urls", "must list at least one node URL like http://127.0.0.1:9200");
        }
        for (i, u) in self.urls.iter().enumerate() {
            match reqwest::Url::parse(u) {
                Ok(url) if url.scheme() == "http" || url.scheme() == "https" => {
                    if !url.username().is_empty() || url.password().is_some() {
                        problems.add(format!("urls[{i}]"), "must not carry credentials; use username/password or api_key");
                    }
                }
                _ => problems.add(format!("urls[{i}]"), format!("{u:?} is not an http:// or https:// URL")),
            }
        }
        if self.password.is_some() && self.username.is_none() {
            problems.add("password", "needs username");
        }
        if self.api_key.is_some() && self.username.is_some() {
            problems.add("api_key", "use either api_key or username/password, not both");
        }
        problems.nested("tls", self.tls.validate());
        if self.tls.key_password.is_some() {
            problems.add(
                "tls.key_password",
                "the search sink reads unencrypted keys only; decrypt it (`openssl pkey -in key.pem -out plain.pem`) and drop key_password",
            );
        }
        if self.request_timeout < Duration::from_millis(100) {
            problems.add("request_timeout", "must be at least 100ms");
        }
        problems.nested("bulk", self.bulk.validate());
        problems.nested("retry", self.retry.validate());
        problems.between("concurrency", self.concurrency, 1, 64);
        if self.in_flight_batches == 0 || self.in_flight_batches > 64 {
            problems.add("in_flight_batches", "must be between 1 and 64 (1: one batch at a time)");
        }
        problems.into()
    }
}

impl SearchMapping {
    /// Every problem found, as (dotted sub-path, message).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        for (path, t) in [("index", Some(&self.index)), ("id", self.id.as_ref()), ("routing", self.routing.as_ref())] {
            if let Some(t) = t {
                if let Err(e) = Template::parse(t) {
                    errors.push((path.to_string(), e.to_string()));
                }
            }
        }
        if let Ok(t) = Template::parse(&self.index) {
            if t.is_constant() {
                if let Err(e) = check_index_name(&self.index) {
                    errors.push(("index".into(), e));
                }
            }
            if self.truncate == TruncateMode::DeleteByQuery && t.columns().next().is_some() {
                errors.push((
                    "truncate".into(),
                    "delete_by_query needs an index template without columns (the table's index must be known without a row)".into(),
                ));
            }
        }
        if self.index_file.is_some() && (self.settings.is_some() || self.mappings.is_some()) {
            errors.push(("index_file".into(), "use either index_file or inline settings/mappings, not both".into()));
        }
        for (path, v) in [("settings", &self.settings), ("mappings", &self.mappings)] {
            if v.as_ref().is_some_and(|v| !v.is_object()) {
                errors.push((path.into(), "must be a map (the index's settings/mappings body)".into()));
            }
        }
        if let Some(p) = &self.pipeline {
            if p.trim().is_empty() {
                errors.push(("pipeline".into(), "must not be empty when given".into()));
            }
        }
        if self.soft_delete_field.trim().is_empty() {
            errors.push(("soft_delete_field".into(), "must not be empty".into()));
        }
        errors
    }
}

/// Elasticsearch's index name rules (lowercase, no `\ / * ? " < > | , #`,
/// space or `:`, not starting with `-`, `_` or `+`, not `.` or `..`).
pub fn check_index_name(name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{name:?} is not a valid index name ({why})"));
    if name.is_empty() || name.len() > 255 {
        return bad("1 to 255 bytes");
    }
    if name != name.to_lowercase() {
        return bad("must be lowercase");
    }
    if name.starts_with(['-', '_', '+']) || name == "." || name == ".." {
        return bad("must not start with -, _ or +");
    }
    if name.chars().any(|c| matches!(c, '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ',' | '#' | ' ' | ':')) {
        return bad("no \\ / * ? \" < > | , # : or spaces");
    }
    Ok(())
}
