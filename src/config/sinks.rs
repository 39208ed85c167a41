//! Each sink configured by its connector, once, at load time: the sink's
//! settings and the mappings of the pipelines writing to it, every error
//! with its dotted path in the file.

use std::sync::Arc;

use pgfanout_sdk::{ConfigError, ConfiguredSink, SinkInput};

use super::pipeline::PipelineConfig;
use super::sections::SinkConfig;
use crate::connectors::{find, key_matches};

/// A sink's name and its configured form.
pub type Configured = (String, Arc<dyn ConfiguredSink>);

/// Configures every sink with its connector (settings and the mappings of
/// the pipelines writing to it), once. Returns the configured sinks by sink
/// name and every error with its dotted path. Pipelines are (index in the
/// file, pipeline); mapping sections under the wrong key are left to the
/// pipeline checks.
/// Settings whose defaults depend on the rest of the configuration: a
/// Kafka sink with `delivery: exactly_once` gets `transactional_id:
/// pgfanout-<slot>-<sink name>` (stable across restarts, unique to the slot
/// and the sink).
pub fn fill_defaults(sinks: &mut indexmap::IndexMap<String, SinkConfig>, slot: &str) {
    for (name, sink) in sinks.iter_mut() {
        let serde_json::Value::Object(settings) = &mut sink.settings else { continue };
        if sink.kind == "kafka" && settings.get("delivery").and_then(|d| d.as_str()) == Some("exactly_once") {
            settings.entry("transactional_id").or_insert_with(|| serde_json::Value::String(format!("pgfanout-{slot}-{name}")));
        }
    }
}

pub fn configure_sinks(
    sinks: &indexmap::IndexMap<String, SinkConfig>,
    pipelines: &[(usize, &PipelineConfig)],
) -> (Vec<Configured>, Vec<String>) {
    let mut configured = Vec::new();
    let mut errors = Vec::new();
    for (name, sink) in sinks {
        let Ok(connector) = find(&sink.kind) else { continue };
        let routes: Vec<&(usize, &PipelineConfig)> = pipelines.iter().filter(|(_, p)| p.to == *name).collect();
        // A route whose only sections are under another type's key is
        // reported by the pipeline checks, not again as "no mapping".
        let skip: Vec<bool> =
            routes.iter().map(|(_, p)| !p.mappings.is_empty() && !p.mappings.iter().any(|(k, _)| key_matches(connector, k))).collect();
        let mappings: Vec<Option<&serde_json::Value>> =
            routes.iter().map(|(_, p)| p.mappings.iter().find(|(k, _)| key_matches(connector, k)).map(|(_, v)| v)).collect();
        let skip: Vec<bool> = if connector.takes_mapping() { skip } else { vec![true; routes.len()] };
        let input = SinkInput { name, settings: &sink.settings, mappings: &mappings };
        match connector.configure(&input) {
            Ok(c) => configured.push((name.clone(), Arc::from(c))),
            Err(errs) => {
                for e in errs {
                    match e {
                        ConfigError::Settings(f) => errors.push(join(&format!("sinks.{name}"), &f.path, &f.message)),
                        ConfigError::Mapping { route, error } => {
                            if skip.get(route).copied().unwrap_or(true) {
                                continue;
                            }
                            let (i, p) = routes[route];
                            let at = match p.mappings.iter().find(|(k, _)| key_matches(connector, k)) {
                                Some((key, _)) => format!("pipelines[{i}].{key}"),
                                None => format!("pipelines[{i}]"),
                            };
                            errors.push(join(&at, &error.path, &error.message));
                        }
                    }
                }
            }
        }
    }
    (configured, errors)
}

fn join(prefix: &str, path: &str, message: &str) -> String {
    if path.is_empty() {
        format!("{prefix}: {message}")
    } else {
        format!("{prefix}.{path}: {message}")
    }
}
