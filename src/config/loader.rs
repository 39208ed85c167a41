//! Reading a configuration file: YAML, then `PGFANOUT__SECTION__KEY`
//! overrides, then `${VAR}` interpolation, then typed deserialization of
//! each section, sink and pipeline on its own (so one broken pipeline does not
//! hide the errors of the next), then [`super::validate`].
//!
//! Every error is `FILE: dotted.path: what is wrong and what is expected`,
//! with secrets scrubbed.

use std::collections::HashMap;
use std::path::Path;

use config::{Source, Value, ValueKind};
use indexmap::IndexMap;
use serde::de::DeserializeOwned;

use super::pipeline::PipelineConfig;
use super::pipeline::PIPELINE_FIELDS;
use super::sections::{Config, ConfigErrors, DeadLetterConfig, HaConfig, HttpConfig, RuntimeConfig, SinkConfig, SourceConfig};
use super::validate::{validate_parts, Parts};
use super::{interpolate, redact};

/// The top-level sections, in the order the file is expected to have them.
const SECTIONS: [&str; 7] = ["source", "sinks", "pipelines", "dead_letter", "http", "runtime", "ha"];

/// The prefix of environment overrides: `PGFANOUT__SOURCE__POSTGRES__SLOT=x`
/// sets `source.postgres.slot`.
pub const ENV_PREFIX: &str = "PGFANOUT";

/// Loads and validates `path` with the process environment (for `${VAR}`
/// and `PGFANOUT__…` overrides). Does no I/O beyond reading the file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let env: HashMap<String, String> = std::env::vars().collect();
    load_with_env(path, &env)
}

/// [`load`] with an explicit environment instead of the process's (tests).
pub fn load_with_env(path: &Path, env: &HashMap<String, String>) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let prefix = |errs: Vec<String>, secrets: &[String]| {
        ConfigErrors(errs.into_iter().map(|e| format!("{file}: {}", redact::scrub(&e, secrets))).collect())
    };
    let text = std::fs::read_to_string(path).map_err(|e| prefix(vec![format!("cannot read the file: {e}")], &[]))?;

    let overrides: config::Map<String, String> =
        env.iter().filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__"))).map(|(k, v)| (k.clone(), v.clone())).collect();
    let built = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Yaml))
        .add_source(config::Environment::with_prefix(ENV_PREFIX).prefix_separator("__").separator("__").source(Some(overrides)))
        .build()
        .and_then(|c| c.collect());
    let mut root = match built {
        Ok(root) => root,
        Err(e) => return Err(prefix(vec![format!("not valid YAML, or not a map of sections at the top: {e}")], &[])),
    };

    let mut errors = Vec::new();
    let mut secrets = Vec::new();
    let lookup = |name: &str| env.get(name).cloned();
    for (key, value) in root.iter_mut() {
        interpolate_tree(value, key.clone(), &lookup, &mut errors, &mut secrets);
    }
    for value in root.values() {
        collect_url_passwords(value, &mut secrets);
    }

    let mut take = |name: &str| root.shift_remove(name);
    let source_v = take("source");
    let sinks_v = take("sinks");
    let pipelines_v = take("pipelines");
    let dead_letter_v = take("dead_letter");
    let http_v = take("http");
    let runtime_v = take("runtime");
    let ha_v = take("ha");
    for key in root.keys() {
        errors.push(format!("{key}: unknown section; expected one of {}", SECTIONS.join(", ")));
    }

    let source: Option<SourceConfig> = match source_v {
        Some(v) => section(v, "source", &mut errors),
        None => {
            errors.push("source: missing; expected source.postgres with at least a url".into());
            None
        }
    };

    let mut sinks = IndexMap::new();
    let mut broken_sinks = Vec::new();
    match sinks_v.map(|v| v.kind) {
        None => errors.push("sinks: missing; expected a map of sink names to settings with a type".into()),
        Some(ValueKind::Table(map)) => {
            for (name, v) in map {
                match sink_section(v, &format!("sinks.{name}"), &mut errors) {
                    Some(s) => {
                        sinks.insert(name, s);
                    }
                    None => broken_sinks.push(name),
                }
            }
        }
        Some(ValueKind::Nil) => {}
        Some(other) => errors.push(format!("sinks: expected a map of sink names to settings, got {}", kind_name(&other))),
    }

    let mut pipelines: Vec<(usize, PipelineConfig)> = Vec::new();
    let mut pipeline_count = 0;
    match pipelines_v.map(|v| v.kind) {
        None => errors.push("pipelines: missing; expected a list of pipelines".into()),
        Some(ValueKind::Array(items)) => {
            pipeline_count = items.len();
            for (i, v) in items.into_iter().enumerate() {
                if let Some(p) = pipeline_section(v, &format!("pipelines[{i}]"), &mut errors) {
                    pipelines.push((i, p));
                }
            }
        }
        Some(ValueKind::Nil) => {}
        Some(other) => errors.push(format!("pipelines: expected a list of pipelines, got {}", kind_name(&other))),
    }

    let dead_letter: Option<DeadLetterConfig> = optional_section(dead_letter_v, "dead_letter", &mut errors);
    let http: Option<HttpConfig> = optional_section(http_v, "http", &mut errors);
    let runtime: Option<RuntimeConfig> = optional_section(runtime_v, "runtime", &mut errors);
    let ha: Option<HaConfig> = optional_section(ha_v, "ha", &mut errors);

    let pipeline_refs: Vec<(usize, &PipelineConfig)> = pipelines.iter().map(|(i, p)| (*i, p)).collect();
    errors.extend(validate_parts(&Parts {
        source: source.as_ref(),
        sinks: &sinks,
        broken_sinks: &broken_sinks,
        pipelines: pipeline_refs.clone(),
        pipeline_count,
        dead_letter: dead_letter.as_ref(),
        http: http.as_ref(),
        runtime: runtime.as_ref(),
        ha: ha.as_ref(),
    }));
    if let Some(slot) = source.as_ref().map(|s| s.postgres.slot.as_str()) {
        super::sinks::fill_defaults(&mut sinks, slot);
    }
    // Each sink's connector parses its settings and mappings, once.
    let (configured, sink_errors) = super::sinks::configure_sinks(&sinks, &pipeline_refs);
    errors.extend(sink_errors);
    for (name, c) in configured {
        if let Some(s) = sinks.get_mut(&name) {
            s.configured = Some(c);
        }
    }

    match (errors.is_empty(), source, dead_letter, http, runtime, ha) {
        (true, Some(source), Some(dead_letter), Some(http), Some(runtime), Some(ha)) => {
            Ok(Config { source, sinks, pipelines: pipelines.into_iter().map(|(_, p)| p).collect(), dead_letter, http, runtime, ha })
        }
        _ if errors.is_empty() => Err(prefix(vec!["internal error: configuration incomplete without an error".into()], &secrets)),
        _ => Err(prefix(errors, &secrets)),
    }
}

/// Deserializes one section, pushing `path.inner.path: message` on error.
fn section<T: DeserializeOwned>(v: Value, path: &str, errors: &mut Vec<String>) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(v) {
        Ok(t) => Some(t),
        Err(e) => {
            let inner = e.path().to_string();
            let full = if inner == "." {
                path.to_string()
            } else if inner.starts_with('[') {
                format!("{path}{inner}")
            } else {
                format!("{path}.{inner}")
            };
            let msg = e.inner().to_string();
            // "missing field `to`" reads better as `pipelines[0].to: missing`.
            // The config crate names the field relative to the section root,
            // serde relative to the innermost map.
            let missing = msg
                .strip_prefix("missing configuration field \"")
                .and_then(|r| r.split('"').next())
                .map(|f| format!("{path}.{f}"))
                .or_else(|| msg.strip_prefix("missing field `").and_then(|r| r.split('`').next()).map(|f| format!("{full}.{f}")));
            match missing {
                Some(field) => errors.push(format!("{field}: missing; this setting is required")),
                None => errors.push(format!("{full}: {}", tidy_message(&msg))),
            }
            None
        }
    }
}

/// The map at `path`; otherwise an error saying it should be `expected`.
fn table(v: Value, path: &str, expected: &str, errors: &mut Vec<String>) -> Option<config::Map<String, Value>> {
    match v.kind {
        ValueKind::Table(map) => Some(map),
        other => {
            errors.push(format!("{path}: expected {expected}, got {}", kind_name(&other)));
            None
        }
    }
}

/// Reads one sink: its `type` (which must name a connector of this build)
/// and the rest of its settings, which only that connector parses (see
/// `super::sinks::configure_sinks`).
fn sink_section(v: Value, path: &str, errors: &mut Vec<String>) -> Option<SinkConfig> {
    let mut map = table(v, path, "sink settings (a map with a type)", errors)?;
    let kinds = crate::connectors::known_kinds().join(", ");
    let kind = match map.shift_remove("type").map(|t| t.kind) {
        Some(ValueKind::String(t)) => t,
        Some(other) => {
            errors.push(format!("{path}.type: expected one of {kinds}, got {}", kind_name(&other)));
            return None;
        }
        None => {
            errors.push(format!("{path}.type: missing; expected one of {kinds}"));
            return None;
        }
    };
    if let Err(e) = crate::connectors::find(&kind) {
        errors.push(format!("{path}.type: {e}"));
        return None;
    }
    let settings: serde_json::Value = section(Value::new(None, ValueKind::Table(map)), path, errors)?;
    Some(SinkConfig { kind, settings, configured: None })
}

/// Reads one pipeline: its mapping section (the one key that is not a
/// pipeline field) is set aside for the sink's connector, the rest is
/// deserialized strictly.
fn pipeline_section(v: Value, path: &str, errors: &mut Vec<String>) -> Option<PipelineConfig> {
    let mut map = table(v, path, "a pipeline (a map with name, from and to)", errors)?;
    let extra: Vec<String> = map.keys().filter(|k| !PIPELINE_FIELDS.contains(&k.as_str())).cloned().collect();
    let mut mappings = Vec::new();
    let mut ok = true;
    for key in extra {
        let value = map.shift_remove(&key).expect("key listed above");
        if !crate::connectors::is_mapping_key(&key) {
            errors.push(format!(
                "{path}.{key}: unknown field; expected one of {} or the mapping for the pipeline's sink type ({})",
                PIPELINE_FIELDS.join(", "),
                crate::connectors::known_kinds().join(", ")
            ));
            ok = false;
            continue;
        }
        match section::<serde_json::Value>(value, &format!("{path}.{key}"), errors) {
            Some(v) => mappings.push((key, v)),
            None => ok = false,
        }
    }
    let mut p: PipelineConfig = section(Value::new(None, ValueKind::Table(map)), path, errors)?;
    p.mappings = mappings;
    ok.then_some(p)
}

/// An optional section: absent or empty means defaults.
fn optional_section<T: DeserializeOwned + Default>(v: Option<Value>, path: &str, errors: &mut Vec<String>) -> Option<T> {
    match v {
        None => Some(T::default()),
        Some(v) if matches!(v.kind, ValueKind::Nil) => Some(T::default()),
        Some(v) => section(v, path, errors),
    }
}

/// serde messages mention Rust-isms ("struct PipelineConfig", "enum"); keep
/// them readable for operators.
fn tidy_message(msg: &str) -> String {
    let msg = msg.replace("data did not match any variant of untagged enum OneOrMany", "expected a table name or a list of table names");
    // Messages from the config crate's own value conversions carry a
    // redundant " for key `…`" tail; the dotted path says it already.
    let msg = match msg.find(" for key `") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    };
    // The config crate words an unknown enum variant without the valid ones.
    match msg.split_once(" does not have variant constructor ") {
        Some((head, variant)) => {
            let valid = match head.trim_start_matches("enum ") {
                "TransformConfig" => "a transform: keep, drop, rename, set, mask or hash",
                "Op" => "an op: insert, update, delete, truncate or read",
                "SnapshotMode" => "initial or never",
                "OnDecodeError" => "dead_letter or stop",
                "DeadLetterTo" => "file, postgres or kafka",
                _ => "one of the documented values",
            };
            format!("unknown value {variant:?}; expected {valid}")
        }
        None => msg,
    }
}

fn kind_name(v: &ValueKind) -> &'static str {
    match v {
        ValueKind::Nil => "nothing",
        ValueKind::Boolean(_) => "a boolean",
        ValueKind::I64(_) | ValueKind::I128(_) | ValueKind::U64(_) | ValueKind::U128(_) => "a number",
        ValueKind::Float(_) => "a number",
        ValueKind::String(_) => "a string",
        ValueKind::Table(_) => "a map",
        ValueKind::Array(_) => "a list",
    }
}

/// Expands `${VAR}` in every string of the tree, in place.
fn interpolate_tree(
    v: &mut Value,
    path: String,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
    secrets: &mut Vec<String>,
) {
    match &mut v.kind {
        ValueKind::String(s) => match interpolate::expand(s, lookup, secrets) {
            Ok(Some(expanded)) => *s = expanded,
            Ok(None) => {}
            Err(e) => errors.push(format!("{path}: {e}")),
        },
        ValueKind::Table(map) => {
            for (k, child) in map.iter_mut() {
                interpolate_tree(child, format!("{path}.{k}"), lookup, errors, secrets);
            }
        }
        ValueKind::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                interpolate_tree(child, format!("{path}[{i}]"), lookup, errors, secrets);
            }
        }
        _ => {}
    }
}

/// Remembers every URL password and every value of a secret-looking field
/// (`password: …`) so no error can echo it.
fn collect_url_passwords(v: &Value, secrets: &mut Vec<String>) {
    match &v.kind {
        ValueKind::String(s) => {
            if let Some(p) = redact::url_password(s) {
                secrets.push(p.to_string());
            }
        }
        ValueKind::Table(map) => {
            for (k, child) in map {
                let lower = k.to_ascii_lowercase();
                if lower.contains("password") || lower.contains("secret") || lower.contains("token") {
                    if let ValueKind::String(s) = &child.kind {
                        if !s.is_empty() {
                            secrets.push(s.clone());
                        }
                    }
                }
                collect_url_passwords(child, secrets);
            }
        }
        ValueKind::Array(items) => items.iter().for_each(|c| collect_url_passwords(c, secrets)),
        _ => {}
    }
}
