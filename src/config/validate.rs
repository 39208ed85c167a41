//! The checks made on a deserialized configuration before any I/O.
//!
//! Pure functions of the configuration: no network, no file access. Each
//! error is `dotted.path: what is wrong; what is expected`. The loader also
//! runs them on the parts that did deserialize when others did not, so a
//! single `pgfanout check` lists everything.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::pipeline::{OneOrMany, PipelineConfig, TablePattern, TransformConfig};
use super::sections::{
    Config, DeadLetterConfig, DeadLetterTo, HaConfig, HttpConfig, PostgresSourceConfig, RuntimeConfig, SinkConfig, SourceConfig,
};
use crate::expr::{self, Expr};
use indexmap::IndexMap;

/// The longest identifier PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_IDENT: usize = 63;

/// Validates a whole configuration, sinks configured by their connectors;
/// empty when it is good.
pub fn validate(cfg: &Config) -> Vec<String> {
    let pipelines: Vec<(usize, &PipelineConfig)> = cfg.pipelines.iter().enumerate().collect();
    let mut errors = validate_parts(&Parts {
        source: Some(&cfg.source),
        sinks: &cfg.sinks,
        broken_sinks: &[],
        pipelines: pipelines.clone(),
        pipeline_count: cfg.pipelines.len(),
        dead_letter: Some(&cfg.dead_letter),
        http: Some(&cfg.http),
        runtime: Some(&cfg.runtime),
        ha: Some(&cfg.ha),
    });
    errors.extend(super::sinks::configure_sinks(&cfg.sinks, &pipelines).1);
    errors
}

/// The parts of a configuration that deserialized (see the module docs).
pub(crate) struct Parts<'a> {
    pub source: Option<&'a SourceConfig>,
    pub sinks: &'a IndexMap<String, SinkConfig>,
    /// Sinks that exist but did not deserialize: pipelines may name them.
    pub broken_sinks: &'a [String],
    /// (index in the file, pipeline)
    pub pipelines: Vec<(usize, &'a PipelineConfig)>,
    /// How many pipelines the file has, including broken ones.
    pub pipeline_count: usize,
    pub dead_letter: Option<&'a DeadLetterConfig>,
    pub http: Option<&'a HttpConfig>,
    pub runtime: Option<&'a RuntimeConfig>,
    pub ha: Option<&'a HaConfig>,
}

pub(crate) fn validate_parts(p: &Parts<'_>) -> Vec<String> {
    let mut errors = Vec::new();
    if let Some(source) = p.source {
        check_source(&source.postgres, &mut errors);
        if let Some(kafka) = &source.kafka {
            check_kafka_source(kafka, p.ha, &mut errors);
        }
    }
    if p.sinks.is_empty() && p.broken_sinks.is_empty() {
        errors.push("sinks: expected at least one sink".into());
    }
    for (name, sink) in p.sinks {
        check_sink(name, sink, &mut errors);
    }
    if p.pipeline_count == 0 {
        errors.push("pipelines: expected at least one pipeline".into());
    }
    let env = expr::new_env();
    let mut names: HashMap<&str, usize> = HashMap::new();
    for &(i, pipeline) in &p.pipelines {
        let path = format!("pipelines[{i}]");
        if let Some(first) = names.insert(pipeline.name.as_str(), i) {
            errors
                .push(format!("{path}.name: duplicate pipeline name {:?} (also pipelines[{first}]); names must be unique", pipeline.name));
            names.insert(pipeline.name.as_str(), first);
        }
        check_pipeline(&path, pipeline, p.sinks, p.broken_sinks, &env, &mut errors);
    }
    if let Some(d) = p.dead_letter {
        if d.path.trim().is_empty() {
            errors.push("dead_letter.path: expected a file path (or - for stdout)".into());
        }
        check_dead_letter_kafka(d, p.sinks, p.broken_sinks, &mut errors);
    }
    if let Some(h) = p.http {
        if h.listen.parse::<SocketAddr>().is_err() {
            errors.push(format!("http.listen: {:?} is not a socket address; expected host:port like 127.0.0.1:9187", h.listen));
        }
        if let Some(token) = &h.admin_token {
            let t = token.expose();
            if t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                errors.push(
                    "http.admin_token: expected at least 16 characters without spaces (e.g. from `openssl rand -hex 24`, \
                     given as ${PGFANOUT_ADMIN_TOKEN})"
                        .into(),
                );
            }
        }
    }
    if let Some(r) = p.runtime {
        if r.batch_size == 0 || r.batch_size > 1_000_000 {
            errors.push(format!("runtime.batch_size: {} is out of range; expected 1 to 1000000", r.batch_size));
        }
        if r.queue_batches == 0 || r.queue_batches > 10_000 {
            errors.push(format!("runtime.queue_batches: {} is out of range; expected 1 to 10000", r.queue_batches));
        }
        if r.queue_memory.0 < (1 << 20) {
            errors.push(format!("runtime.queue_memory: {} is too small; expected at least 1MiB (default 128MiB)", r.queue_memory.0));
        }
        if r.linger > std::time::Duration::from_secs(1) {
            errors.push(format!(
                "runtime.linger: {:?} is too long; expected at most 1s (it adds to every change's latency), like 5ms",
                r.linger
            ));
        }
    }
    if let Some(ha) = p.ha {
        if ha.lease < std::time::Duration::from_secs(1) || ha.lease > std::time::Duration::from_secs(300) {
            errors.push(format!(
                "ha.lease: {:?} is out of range; expected 1s to 5m (default 10s), under the server's wal_sender_timeout",
                ha.lease
            ));
        }
        if let Some(name) = &ha.instance {
            if name.trim().is_empty() || name.len() > 200 {
                errors.push("ha.instance: expected a non-empty name of at most 200 characters (default: host name and process id)".into());
            }
        }
    }
    errors
}

/// `source.kafka` (an applier).
fn check_kafka_source(kafka: &super::sections::KafkaSource, ha: Option<&HaConfig>, errors: &mut Vec<String>) {
    #[cfg(feature = "kafka")]
    errors.extend(kafka.validate().into_iter().map(|(field, msg)| format!("source.kafka.{field}: {msg}")));
    #[cfg(not(feature = "kafka"))]
    {
        let _ = kafka;
        errors.push("source.kafka: this pgfanout was built without the kafka feature; remove source.kafka to read the slot".into());
    }
    if ha.is_some_and(|h| h.enabled) {
        errors.push(
            "ha.enabled: not used with source.kafka; the consumer group already shares the partitions between appliers (run several, remove ha)"
                .into(),
        );
    }
}

fn check_source(s: &PostgresSourceConfig, errors: &mut Vec<String>) {
    // The same parser the connections use (host lists included); its
    // errors never contain the password.
    if let Err(e) = pgfanout_postgres::conn::PgConnectOptions::from_url(&s.url, Default::default()) {
        errors.push(format!("source.postgres.url: {e}; expected postgres://user:password@host:port/database"));
    }
    if let Some(primary) = &s.primary_url {
        match pgfanout_postgres::conn::PgConnectOptions::from_url(primary, Default::default()) {
            Err(e) => errors.push(format!("source.postgres.primary_url: {e}; expected postgres://user:password@host:port/database")),
            Ok(p) => {
                let url = pgfanout_postgres::conn::PgConnectOptions::from_url(&s.url, Default::default());
                if url.is_ok_and(|u| u.dbname != p.dbname) {
                    errors.push(format!(
                        "source.postgres.primary_url: names database {:?}, but url names another; the standby decodes the primary's database, so name the same one",
                        p.dbname
                    ));
                }
            }
        }
    }
    let ident =
        |v: &str| !v.is_empty() && v.len() <= MAX_IDENT && v.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ident(&s.slot) {
        errors
            .push(format!("source.postgres.slot: {:?} is not a valid slot name; expected 1 to 63 lowercase letters, digits and _", s.slot));
    }
    if !ident(&s.publication) {
        errors.push(format!(
            "source.postgres.publication: {:?} is not a valid publication name; expected 1 to 63 lowercase letters, digits and _",
            s.publication
        ));
    }
    if s.snapshot_parallelism == 0 || s.snapshot_parallelism > 64 {
        errors.push("source.postgres.snapshot_parallelism: expected a number of connections from 1 to 64 (default 4)".into());
    }
    if s.status_interval.is_zero() {
        errors.push("source.postgres.status_interval: must be more than zero, like 10s".into());
    }
    if s.heartbeat_interval.is_some_and(|d| d.is_zero()) {
        errors.push("source.postgres.heartbeat_interval: must be more than zero, like 1m (or leave it out)".into());
    }
    errors.extend(s.tls.validate().into_iter().map(|(field, msg)| format!("source.postgres.tls.{field}: {msg}")));
    if s.tls.key_password.is_some() {
        errors.push("source.postgres.tls.key_password: not supported for PostgreSQL; give an unencrypted key_file".into());
    }
    if s.tls.insecure {
        errors.push(
            "source.postgres.tls.insecure: not used for PostgreSQL; put sslmode=require in the url to encrypt without verifying".into(),
        );
    }
}

fn check_sink(name: &str, _sink: &SinkConfig, errors: &mut Vec<String>) {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        errors.push(format!("sinks.{name}: {name:?} is not a valid sink name; expected letters, digits, _ and -"));
    }
}

fn check_pipeline(
    path: &str,
    p: &PipelineConfig,
    sinks: &IndexMap<String, SinkConfig>,
    broken_sinks: &[String],
    env: &Arc<cel::Env>,
    errors: &mut Vec<String>,
) {
    if p.name.is_empty() || !p.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.') {
        errors.push(format!("{path}.name: {:?} is not a valid pipeline name; expected letters, digits, _, - and .", p.name));
    }

    // from
    let items = p.from.items();
    if items.is_empty() {
        errors.push(format!("{path}.from: expected at least one table (schema.table, table or schema.*)"));
    }
    let many = matches!(p.from, OneOrMany::Many(_));
    let mut first_pattern = None;
    for (j, item) in items.iter().enumerate() {
        let at = if many { format!("{path}.from[{j}]") } else { format!("{path}.from") };
        match TablePattern::parse(item) {
            Ok(pat) => {
                first_pattern.get_or_insert(pat);
            }
            Err(e) => errors.push(format!("{at}: {e}")),
        }
    }
    let (schema, table) = match &first_pattern {
        Some(TablePattern::Table { schema, table }) => (schema.as_str(), table.as_str()),
        Some(TablePattern::Schema { schema }) => (schema.as_str(), "t"),
        Some(TablePattern::Message { prefix }) => (pgfanout_sdk::MESSAGE_SCHEMA, prefix.as_deref().unwrap_or("events")),
        None => ("public", "t"),
    };

    // to + mapping sections
    let sink_kind = match sinks.get(&p.to) {
        Some(s) => Some(s.kind()),
        None if broken_sinks.contains(&p.to) => None,
        None => {
            let defined: Vec<&str> = sinks.keys().map(String::as_str).chain(broken_sinks.iter().map(String::as_str)).collect();
            errors.push(format!(
                "{path}.to: unknown sink {:?}; defined sinks: {}",
                p.to,
                if defined.is_empty() { "(none)".into() } else { defined.join(", ") }
            ));
            None
        }
    };
    if let Some(kind) = sink_kind {
        let connector = crate::connectors::find(kind).ok();
        for (key, _) in &p.mappings {
            match connector {
                Some(c) if !c.takes_mapping() => errors.push(format!(
                    "{path}.{key}: this pipeline's sink {:?} is a {kind} sink, which takes no mapping; remove `{key}:`",
                    p.to
                )),
                Some(c) if !crate::connectors::key_matches(c, key) => errors.push(format!(
                    "{path}.{key}: this pipeline's sink {:?} is a {kind} sink; a {key} mapping applies only to {key} sinks (write the mapping under `{kind}:`)",
                    p.to
                )),
                _ => {}
            }
        }
    }

    // ops
    if p.ops.as_ref().is_some_and(Vec::is_empty) {
        errors.push(format!(
            "{path}.ops: expected at least one of insert, update, delete, truncate, read, message (or leave ops out for all)"
        ));
    }

    // filter
    if let Some(f) = &p.filter {
        match Expr::compile(f) {
            Ok(e) => {
                if let Err(msg) = e.check_offline(env, schema, table, true) {
                    errors.push(format!("{path}.filter: {msg}"));
                }
            }
            Err(msg) => errors.push(format!("{path}.filter: {msg}")),
        }
    }

    // transforms
    for (k, t) in p.transforms.iter().enumerate() {
        let at = format!("{path}.transforms[{k}].{}", t.kind());
        match t {
            TransformConfig::Keep(cols) | TransformConfig::Drop(cols) | TransformConfig::Hash(cols) => {
                check_columns(&at, cols.iter(), errors)
            }
            TransformConfig::Mask(m) => check_columns(&format!("{at}.columns"), m.columns.iter(), errors),
            TransformConfig::Rename(map) => {
                if map.is_empty() {
                    errors.push(format!("{at}: expected at least one `old: new` pair"));
                }
                check_columns(&at, map.keys(), errors);
                for (old, new) in map {
                    check_column(&format!("{at}.{old}"), new, errors);
                }
                let mut seen: HashMap<&str, &str> = HashMap::new();
                for (old, new) in map {
                    if let Some(prev) = seen.insert(new.as_str(), old.as_str()) {
                        errors.push(format!("{at}.{old}: {prev:?} and {old:?} are both renamed to {new:?}"));
                    }
                }
            }
            TransformConfig::Set(map) => {
                if map.is_empty() {
                    errors.push(format!("{at}: expected at least one `column: expression` pair"));
                }
                for (col, src) in map {
                    check_column(&format!("{at}.{col}"), col, errors);
                    match Expr::compile(src) {
                        Ok(e) => {
                            if let Err(msg) = e.check_offline(env, schema, table, false) {
                                errors.push(format!("{at}.{col}: {msg}"));
                            }
                        }
                        Err(msg) => errors.push(format!("{at}.{col}: {msg}")),
                    }
                }
            }
        }
    }
}

fn check_columns<'a>(at: &str, cols: impl ExactSizeIterator<Item = &'a String>, errors: &mut Vec<String>) {
    if cols.len() == 0 {
        errors.push(format!("{at}: expected at least one column"));
    }
    for (i, c) in cols.enumerate() {
        check_column(&format!("{at}[{i}]"), c, errors);
    }
}

fn check_column(at: &str, c: &str, errors: &mut Vec<String>) {
    if c.trim().is_empty() {
        errors.push(format!("{at}: expected a column name, got an empty string"));
    } else if c.len() > MAX_IDENT {
        errors.push(format!("{at}: {c:?} is longer than 63 bytes, so it cannot be a PostgreSQL column"));
    } else if c != c.trim() || c.chars().any(char::is_control) {
        errors.push(format!("{at}: {c:?} has leading/trailing spaces or control characters; expected a column name"));
    }
}

/// `dead_letter: { to: kafka, sink, topic }`: `sink` names a Kafka sink.
fn check_dead_letter_kafka(d: &DeadLetterConfig, sinks: &IndexMap<String, SinkConfig>, broken: &[String], errors: &mut Vec<String>) {
    if d.to != DeadLetterTo::Kafka {
        for (field, set) in [("sink", d.sink.is_some()), ("topic", d.topic.is_some())] {
            if set {
                errors.push(format!("dead_letter.{field}: only used with `to: kafka`; remove it or set `to: kafka`"));
            }
        }
        return;
    }
    if !cfg!(feature = "kafka") {
        errors.push("dead_letter.to: kafka, but this pgfanout was built without the kafka feature; use file or postgres".into());
        return;
    }
    let kafka_sinks: Vec<&str> = sinks.iter().filter(|(_, s)| s.kind() == "kafka").map(|(n, _)| n.as_str()).collect();
    let choices = if kafka_sinks.is_empty() {
        "add one under `sinks:` (type: kafka; it may have no pipelines)".to_string()
    } else {
        format!("one of {kafka_sinks:?}")
    };
    match d.sink.as_deref() {
        None => errors
            .push(format!("dead_letter.sink: missing; with `to: kafka` name the Kafka sink whose cluster takes the letters: {choices}")),
        Some(name) if broken.iter().any(|b| b == name) => {}
        Some(name) => match sinks.get(name) {
            None => errors.push(format!("dead_letter.sink: no sink named {name:?}; expected a Kafka sink: {choices}")),
            Some(s) if s.kind() != "kafka" => {
                errors.push(format!("dead_letter.sink: {name:?} is a {} sink; `to: kafka` needs a Kafka sink: {choices}", s.kind()))
            }
            Some(_) => {}
        },
    }
    #[cfg(feature = "kafka")]
    if let Some(topic) = &d.topic {
        if let Err(e) = pgfanout_kafka::check_topic_name(topic) {
            errors.push(format!("dead_letter.topic: {e}"));
        }
    }
}
