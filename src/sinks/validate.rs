//! Offline validation of sink settings and pipeline mappings with each
//! connector's own typed configuration, so `pgfanout check` reports the
//! same errors `run` would hit, with dotted paths.

use serde::de::DeserializeOwned;

use crate::config::SinkConfig;

/// Errors for `sinks.<name>` (each prefixed with its dotted path).
pub fn sink_errors(name: &str, sink: &SinkConfig) -> Vec<String> {
    let path = format!("sinks.{name}");
    match sink {
        #[cfg(feature = "redis")]
        SinkConfig::Redis(v) => typed::<pgfanout_redis::RedisSinkConfig>(&path, v, true, |c| c.validate()),
        #[cfg(feature = "kafka")]
        SinkConfig::Kafka(v) => typed::<pgfanout_kafka::KafkaSinkConfig>(&path, v, true, |c| c.validate()),
        #[cfg(feature = "neo4j")]
        SinkConfig::Neo4j(v) => typed::<pgfanout_neo4j::Neo4jSinkConfig>(&path, v, true, |c| c.validate()),
        _ => Vec::new(),
    }
}

/// Errors for `pipelines[i].<kind>` mappings (`path` is that dotted path).
pub fn mapping_errors(kind: &str, path: &str, mapping: &serde_json::Value) -> Vec<String> {
    match kind {
        #[cfg(feature = "redis")]
        "redis" => typed::<pgfanout_redis::RedisMapping>(path, mapping, false, |m| m.validate()),
        #[cfg(feature = "kafka")]
        "kafka" => typed::<pgfanout_kafka::KafkaMapping>(path, mapping, false, |m| m.validate()),
        #[cfg(feature = "neo4j")]
        "neo4j" => typed::<pgfanout_neo4j::Neo4jMapping>(path, mapping, false, |m| m.validate()),
        _ => Vec::new(),
    }
}

/// Deserializes `value` as `T` (reporting the failing field's path), then
/// runs the connector's own checks. Sink settings carry the `type` tag,
/// which is removed first; mappings keep theirs (e.g. the redis mapping kind).
#[allow(dead_code)]
fn typed<T: DeserializeOwned>(
    path: &str,
    value: &serde_json::Value,
    strip_type: bool,
    check: impl Fn(&T) -> Vec<(String, String)>,
) -> Vec<String> {
    let mut v = value.clone();
    if let (true, Some(obj)) = (strip_type, v.as_object_mut()) {
        obj.remove("type");
    }
    match serde_path_to_error::deserialize::<_, T>(v) {
        Ok(cfg) => check(&cfg)
            .into_iter()
            .map(|(sub, msg)| if sub.is_empty() { format!("{path}: {msg}") } else { format!("{path}.{sub}: {msg}") })
            .collect(),
        Err(e) => {
            let at = e.path().to_string();
            let at = if at == "." || at.is_empty() { path.to_string() } else { format!("{path}.{at}") };
            vec![format!("{at}: {}", e.inner())]
        }
    }
}
