//! Configuration of the Kafka sink (`sinks.<name>` with `type: kafka`) and of
//! one pipeline's Kafka mapping (`pipelines[i].kafka`).
//!
//! Both are plain serde structs with unknown fields rejected; `validate()` is
//! pure (no I/O) so `pgfanout check` can report every mistake with its dotted
//! path before anything connects. The delivery guarantees (idempotent
//! producer, `acks=all`) are not negotiable: `properties` may tune librdkafka
//! but may not switch them off.

use std::collections::BTreeMap;
use std::time::Duration;

use pgfanout_sdk::settings::{duration, Problems, Secret, TlsFiles};
use pgfanout_sdk::Template;
use serde::Deserialize;

/// The sink: where the brokers are, how to authenticate, how topics appear.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// librdkafka `client.id` (default `pgfanout`).
    pub client_id: Option<String>,
    /// SASL authentication; without it the connection is unauthenticated.
    pub sasl: Option<SaslConfig>,
    /// TLS; present (even empty, `tls: {}`) means the connection uses TLS.
    /// Without `ca_file` the system trust store is used.
    pub tls: Option<TlsFiles>,
    /// Whether topics are created when first needed or must already exist.
    #[serde(default)]
    pub topics: TopicCreation,
    /// How long librdkafka keeps trying to deliver one message before the
    /// batch fails as retriable (`message.timeout.ms`; default `30s`).
    #[serde(default = "default_delivery_timeout", with = "duration")]
    pub delivery_timeout: Duration,
    /// Names written into the `debezium` envelope's `source` block.
    #[serde(default)]
    pub debezium: DebeziumConfig,
    /// Extra librdkafka properties, passed through as is (e.g.
    /// `compression.type: zstd`, `linger.ms: "20"`). pgfanout's own
    /// defaults, which these override: `batch.size: "262144"` and
    /// `message.copy.max.bytes: "0"` (sized for the sink's window; see
    /// `client_config`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Batches enqueued in the producer before the oldest one's delivery
    /// reports are in (default 2; 1: one batch at a time). The next batch
    /// is encoded while earlier ones are on their way; they complete in
    /// order, and a failed one makes every later one be sent again after it.
    /// librdkafka's idempotent producer sends one produce request per
    /// partition at a time whatever this is, so more batches in flight help
    /// topics with several partitions only. Measured on a local broker:
    /// 2 in flight 29.0 MB peak RSS, 4.8 µs CPU per row; 4 in flight 32.0 MB,
    /// 6.0 µs, at the same throughput (the source is the bound there).
    #[serde(default = "default_in_flight_batches")]
    pub in_flight_batches: usize,
    /// Which `pgfanout.*` headers every record carries (default `all`).
    #[serde(default)]
    pub headers: HeaderSet,
    /// `at_least_once` (default: the idempotent producer; a crash may
    /// append copies of changes a topic already has) or `exactly_once`
    /// (a transactional producer: each batch is one Kafka transaction that
    /// also records the PostgreSQL position it covers in `progress_topic`;
    /// after a crash the sink reads that position back and skips what Kafka
    /// already holds, so `isolation.level=read_committed` consumers see every
    /// change once, and each PostgreSQL transaction whole unless it is larger
    /// than `runtime.batch_size` records).
    #[serde(default)]
    pub delivery: Delivery,
    /// `transactional.id` of the exactly-once producer: stable across
    /// restarts and unique to one slot and sink (a second producer with it
    /// fences the first). Default, filled by the daemon:
    /// `pgfanout-<slot>-<sink name>`.
    pub transactional_id: Option<String>,
    /// The compacted topic (one partition) where exactly-once delivery
    /// keeps, per `transactional_id`, the last position committed (default
    /// `pgfanout_progress`; created when missing).
    #[serde(default = "default_progress_topic")]
    pub progress_topic: String,
}

/// The delivery guarantee into Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    #[default]
    AtLeastOnce,
    ExactlyOnce,
}

fn default_progress_topic() -> String {
    "pgfanout_progress".into()
}

/// The `pgfanout.*` headers a record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeaderSet {
    /// `pgfanout.lsn`, `.commit_lsn`, `.ordinal`, `.xid`, `.op`, `.schema`
    /// and `.table`: consumers can route and de-duplicate without parsing
    /// the value.
    #[default]
    All,
    /// `pgfanout.lsn`, `.commit_lsn` and `.ordinal`: what a consumer needs to
    /// drop repeats. Smaller records cost less: pgfanout's CPU per row in
    /// the bench was 5.2 µs with all headers, 4.8 with these, 3.9 with none
    /// (README, Performance, eighth pass).
    Position,
    /// No headers: consumers read the position from the value (`lsn`,
    /// `commit_lsn` in `native`, `source.lsn` in `debezium`).
    None,
}

fn default_delivery_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_in_flight_batches() -> usize {
    2
}

/// SASL mechanism, as librdkafka spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// SASL credentials (use `${VAR}` interpolation for the password).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: Secret,
}

/// Topic handling. With `create: true` (the default) a topic is created with
/// `partitions` and `replication_factor` the first time a record needs it
/// (and at connect time for topic templates without placeholders); an
/// existing topic is used as is. With `create: false` every topic must exist:
/// connecting fails naming a missing constant topic, and a record whose
/// rendered topic is missing is rejected (dead-lettered) with its name.
/// A field left out takes its value from [`TopicCreation::default`].
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicCreation {
    pub create: bool,
    /// Partitions of created topics (default 1). Records are partitioned by
    /// key, so per-key order holds whatever the count.
    pub partitions: i32,
    /// Replication factor of created topics (default 1; use 3 in production).
    pub replication_factor: i32,
    /// Extra topic configs for created topics (e.g. `cleanup.policy: compact`).
    pub config: BTreeMap<String, String>,
}

impl Default for TopicCreation {
    fn default() -> Self {
        TopicCreation { create: true, partitions: 1, replication_factor: 1, config: BTreeMap::new() }
    }
}

/// The names Debezium takes from its connector config. A field left out
/// takes its value from [`DebeziumConfig::default`].
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DebeziumConfig {
    /// `source.name`: Debezium's logical server name / `topic.prefix`
    /// (default `pgfanout`).
    pub server_name: String,
    /// `source.db`: the captured database's name (default `postgres`).
    pub database: String,
    /// `source.version` (default `pgfanout-<version>`).
    pub version: String,
}

impl Default for DebeziumConfig {
    fn default() -> Self {
        DebeziumConfig {
            server_name: "pgfanout".into(),
            database: "postgres".into(),
            version: concat!("pgfanout-", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}

/// The value written for each change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// The change record of docs/design.md section 3.
    #[default]
    Native,
    /// The Debezium PostgreSQL connector's JSON envelope (schemas disabled).
    Debezium,
    /// The outbox event router: inserts into an outbox table become events
    /// whose value is the `payload` column as it is (Debezium's router with
    /// `table.expand.json.payload`), with the event id and type as headers
    /// (`id`, `eventType`); updates, deletes and snapshot rows publish
    /// nothing. Route with the topic and key templates, as Debezium's
    /// defaults do: `topic: "outbox.event.{aggregatetype}"`,
    /// `key: "{aggregateid}"`.
    Outbox,
}

pub use pgfanout_sdk::OutboxColumns;

/// One pipeline's mapping from a change to a Kafka record.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaMapping {
    /// Topic template, e.g. `shop.{schema}.{table}`.
    pub topic: String,
    /// Key template, e.g. `{id}`. Default: the record's key columns as a
    /// JSON object (`{"id":42}`, what Debezium writes as its key).
    pub key: Option<String>,
    #[serde(default)]
    pub format: Format,
    /// Write a null-value record with the same key after each delete, so a
    /// compacted topic forgets the row.
    #[serde(default)]
    pub tombstones: bool,
    /// `format: outbox`: the outbox table's columns.
    #[serde(default)]
    pub outbox: OutboxColumns,
}

/// librdkafka properties that would weaken delivery or conflict with a
/// dedicated option; `properties` may not set them.
const RESERVED_PROPERTIES: [(&str, &str); 8] = [
    ("bootstrap.servers", "use `brokers`"),
    ("metadata.broker.list", "use `brokers`"),
    ("enable.idempotence", "the sink always uses the idempotent producer"),
    ("acks", "the sink always uses acks=all"),
    ("request.required.acks", "the sink always uses acks=all"),
    ("transactional.id", "transactions are not used"),
    ("message.timeout.ms", "use `delivery_timeout`"),
    ("delivery.timeout.ms", "use `delivery_timeout`"),
];

impl KafkaSinkConfig {
    /// Every problem found, as (dotted sub-path, message). Empty when valid.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Problems::default();
        let brokers: Vec<&str> = self.brokers.split(',').map(str::trim).collect();
        if self.brokers.trim().is_empty() {
            problems.add("brokers", "must list at least one broker as host:port");
        } else {
            for b in &brokers {
                let b = b.split_once("://").map_or(*b, |(_, rest)| rest);
                match b.rsplit_once(':') {
                    Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
                    _ => problems.add("brokers", format!("{b:?} is not host:port")),
                }
            }
        }
        if self.in_flight_batches == 0 || self.in_flight_batches > 64 {
            problems.add("in_flight_batches", "must be between 1 and 64 (1: one batch at a time)");
        }
        if let Some(id) = &self.client_id {
            if id.trim().is_empty() {
                problems.add("client_id", "must not be empty when given");
            }
        }
        if self.delivery == Delivery::ExactlyOnce {
            match &self.transactional_id {
                Some(id) if !id.trim().is_empty() => {}
                _ => problems.add("transactional_id", "must be set for delivery: exactly_once, unique to one slot and sink"),
            }
            if let Err(e) = check_topic_name(&self.progress_topic) {
                problems.add("progress_topic", e);
            }
        }
        check_connection(&mut problems, self.sasl.as_ref(), self.tls.as_ref(), &self.properties, &RESERVED_PROPERTIES);
        if self.topics.create {
            if self.topics.partitions < 1 {
                problems.add("topics.partitions", "must be at least 1");
            }
            if self.topics.replication_factor < 1 {
                problems.add("topics.replication_factor", "must be at least 1");
            }
        }
        if self.delivery_timeout < Duration::from_millis(100) {
            problems.add("delivery_timeout", "must be at least 100ms");
        } else if self.delivery_timeout > Duration::from_secs(3600) {
            problems.add("delivery_timeout", "must be at most 1h");
        }
        if self.debezium.server_name.trim().is_empty() {
            problems.add("debezium.server_name", "must not be empty");
        }
        if self.debezium.database.trim().is_empty() {
            problems.add("debezium.database", "must not be empty");
        }
        problems.into()
    }
}

/// The checks every Kafka client's settings share (the sink's producer, the
/// source's consumer): SASL credentials, TLS files, and `properties` that
/// would override what the client sets itself (`reserved`: name, why).
pub(crate) fn check_connection(
    problems: &mut Problems,
    sasl: Option<&SaslConfig>,
    tls: Option<&TlsFiles>,
    properties: &BTreeMap<String, String>,
    reserved: &[(&str, &str)],
) {
    if let Some(sasl) = sasl {
        if sasl.username.is_empty() {
            problems.add("sasl.username", "must not be empty");
        }
        if sasl.password.is_empty() {
            problems.add("sasl.password", "must not be empty");
        }
    }
    if let Some(tls) = tls {
        problems.nested("tls", tls.validate());
    }
    for key in properties.keys() {
        if let Some((_, why)) = reserved.iter().find(|(k, _)| k == key) {
            problems.add(format!("properties.{key}"), format!("cannot be set here: {why}"));
        }
    }
}

impl KafkaMapping {
    /// Every problem found, as (dotted sub-path, message). Empty when valid.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        match Template::parse(&self.topic) {
            Ok(t) if t.is_constant() => {
                if let Err(e) = check_topic_name(&self.topic) {
                    errors.push(("topic".into(), e));
                }
            }
            Ok(_) => {}
            Err(e) => errors.push(("topic".into(), e.to_string())),
        }
        if let Some(key) = &self.key {
            if let Err(e) = Template::parse(key) {
                errors.push(("key".into(), e.to_string()));
            }
        }
        if self.format != Format::Outbox && self.outbox != OutboxColumns::default() {
            errors.push(("outbox".into(), "only applies with format: outbox".into()));
        }
        if self.format == Format::Outbox && self.tombstones {
            errors.push(("tombstones".into(), "an outbox publishes inserts only; there is nothing to tombstone".into()));
        }
        errors
    }
}

/// Checks Kafka's rules for a topic name: 1 to 249 characters from
/// `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name.len() > 249 {
        return Err(format!("topic name {name:?} is longer than 249 characters"));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid topic name"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("topic name {name:?} contains {c:?}; Kafka allows only letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(yaml: serde_json::Value) -> Result<KafkaSinkConfig, serde_json::Error> {
        serde_json::from_value(yaml)
    }

    #[test]
    fn minimal_config_is_valid_with_defaults() {
        let cfg = sink(serde_json::json!({"brokers": "127.0.0.1:9092"})).unwrap();
        assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
        assert!(cfg.topics.create);
        assert_eq!(cfg.topics.partitions, 1);
        assert_eq!(cfg.debezium.server_name, "pgfanout");
        assert_eq!(cfg.delivery_timeout, Duration::from_secs(30));
        assert_eq!(cfg.headers, HeaderSet::All);
    }

    #[test]
    fn unknown_fields_and_mechanisms_are_rejected() {
        assert!(sink(serde_json::json!({"brokers": "a:1", "borkers": "x"})).is_err());
        assert!(sink(serde_json::json!({"brokers": "a:1", "sasl": {"mechanism": "GSSAPI", "username": "u", "password": "p"}})).is_err());
        let ok = sink(serde_json::json!({"brokers": "a:1", "sasl": {"mechanism": "SCRAM-SHA-512", "username": "u", "password": "p"}}));
        assert_eq!(ok.unwrap().sasl.unwrap().mechanism, SaslMechanism::ScramSha512);
        assert!(serde_json::from_value::<KafkaMapping>(serde_json::json!({"topic": "t", "fromat": "native"})).is_err());
        assert!(serde_json::from_value::<KafkaMapping>(serde_json::json!({"topic": "t", "format": "avro"})).is_err());
        assert_eq!(sink(serde_json::json!({"brokers": "a:1", "headers": "position"})).unwrap().headers, HeaderSet::Position);
        assert_eq!(sink(serde_json::json!({"brokers": "a:1", "headers": "none"})).unwrap().headers, HeaderSet::None);
        let bad = sink(serde_json::json!({"brokers": "a:1", "headers": "some"})).unwrap_err().to_string();
        assert!(bad.contains("all") && bad.contains("position") && bad.contains("none"), "{bad}");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let cfg = sink(serde_json::json!({
            "brokers": "localhost,b:0",
            "sasl": {"mechanism": "PLAIN", "username": "", "password": ""},
            "tls": {"cert_file": "/c.pem"},
            "topics": {"partitions": 0, "replication_factor": 0},
            "delivery_timeout": "10ms",
            "properties": {"enable.idempotence": "false", "acks": "1", "linger.ms": "10"},
        }))
        .unwrap();
        let paths: Vec<String> = cfg.validate().into_iter().map(|(p, _)| p).collect();
        for expected in [
            "brokers",
            "sasl.username",
            "sasl.password",
            "tls.cert_file",
            "topics.partitions",
            "topics.replication_factor",
            "delivery_timeout",
            "properties.enable.idempotence",
            "properties.acks",
        ] {
            assert!(paths.iter().any(|p| p == expected), "missing {expected} in {paths:?}");
        }
        assert_eq!(paths.iter().filter(|p| *p == "brokers").count(), 2, "{paths:?}");
        assert!(!paths.iter().any(|p| p == "properties.linger.ms"));
        let bad = sink(serde_json::json!({"brokers": "b:1", "delivery_timeout": "soon"})).unwrap_err().to_string();
        assert!(bad.contains("invalid duration"), "{bad}");
    }

    #[test]
    fn mappings_check_templates_and_constant_topic_names() {
        let m = |v: serde_json::Value| serde_json::from_value::<KafkaMapping>(v).unwrap().validate();
        assert!(m(serde_json::json!({"topic": "shop.{schema}.{table}", "key": "{id}"})).is_empty());
        assert_eq!(m(serde_json::json!({"topic": "shop.{schema"}))[0].0, "topic");
        assert_eq!(m(serde_json::json!({"topic": "bad topic"}))[0].0, "topic");
        assert_eq!(m(serde_json::json!({"topic": "t", "key": "{}"}))[0].0, "key");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let cfg = sink(serde_json::json!({
            "brokers": "a:1",
            "sasl": {"mechanism": "PLAIN", "username": "u", "password": "hunter2"},
            "tls": {"key_file": "/k", "cert_file": "/c", "key_password": "s3cret"},
        }))
        .unwrap();
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("\"u\""), "{shown}");
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(check_topic_name("shop.public.orders_v-2").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(250)] {
            assert!(check_topic_name(bad).is_err(), "{bad:?}");
        }
    }
}
