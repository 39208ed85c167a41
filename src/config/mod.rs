//! Configuration: YAML file + `PGFANOUT__…` environment overrides + `${VAR}`
//! interpolation, deserialized into typed structs that reject unknown fields,
//! then validated before any I/O.

use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    pub sinks: IndexMap<String, SinkConfig>,
    pub pipelines: Vec<PipelineConfig>,
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub postgres: PostgresSourceConfig,
}

/// `source.postgres`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// `postgres://user:password@host:port/db?sslmode=...`
    pub url: String,
    #[serde(default = "default_slot")]
    pub slot: String,
    #[serde(default = "default_slot")]
    pub publication: String,
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// TLS files (sslmode itself is in the URL).
    #[serde(default)]
    pub tls: TlsConfig,
    /// How often a standby status update is sent at least.
    #[serde(default = "default_status_interval", with = "humantime_serde_compat")]
    pub status_interval: Duration,
}

fn default_slot() -> String {
    "pgfanout".into()
}

fn default_status_interval() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    #[default]
    Initial,
    Never,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the CA certificate(s) to trust (verify-ca / verify-full).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for certificate authentication.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// A named sink. The `type` field picks the kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    File(FileSinkConfig),
    Redis(serde_json::Value),
    Kafka(serde_json::Value),
    Elasticsearch(serde_json::Value),
    Neo4j(serde_json::Value),
    Scylla(serde_json::Value),
}

impl SinkConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::File(_) => "file",
            SinkConfig::Redis(_) => "redis",
            SinkConfig::Kafka(_) => "kafka",
            SinkConfig::Elasticsearch(_) => "elasticsearch",
            SinkConfig::Neo4j(_) => "neo4j",
            SinkConfig::Scylla(_) => "scylla",
        }
    }
}

/// `type: file`: JSON lines to `path` (`-` for stdout).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    pub path: String,
}

/// One pipeline: tables -> (filter, transforms) -> one sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub name: String,
    pub from: OneOrMany,
    pub to: String,
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

/// Where records that cannot be delivered go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    #[serde(default = "default_dead_letter_path")]
    pub path: String,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig { path: default_dead_letter_path() }
    }
}

fn default_dead_letter_path() -> String {
    "pgfanout-dead-letters.jsonl".into()
}

/// The metrics and health listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: default_listen(), enabled: true }
    }
}

fn default_listen() -> String {
    "127.0.0.1:9187".into()
}

fn default_true() -> bool {
    true
}

/// Internal queue sizes and timings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Most records in one sink batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Batches queued per sink before the reader waits (backpressure).
    #[serde(default = "default_queue_batches")]
    pub queue_batches: usize,
    /// How long shutdown waits for in-flight writes.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde_compat")]
    pub shutdown_timeout: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            batch_size: default_batch_size(),
            queue_batches: default_queue_batches(),
            shutdown_timeout: default_shutdown_timeout(),
        }
    }
}

fn default_batch_size() -> usize {
    1024
}

fn default_queue_batches() -> usize {
    8
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `humantime` durations ("10s", "7d", "500ms") in serde.
pub mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?} ({e}); expected a number with a unit, like 10s, 500ms or 7d")))
    }
}

/// Errors from loading a configuration.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

/// Loads and validates `path`.
pub fn load(path: &std::path::Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", path.display())]))?;
    let cfg = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Yaml))
        .add_source(config::Environment::with_prefix("PGFANOUT").separator("__"))
        .build()
        .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
    cfg.try_deserialize::<Config>().map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))
}
