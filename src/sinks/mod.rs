//! The connector list, and the one place the daemon meets a connector.
//!
//! Every store is a connector crate exporting a value that implements
//! [`pgfanout_sdk::Connector`] (see `connectors/README.md`). The daemon
//! knows the list below and nothing else about any store: the `type:` of a
//! sink picks its connector, which parses the sink's settings and its
//! pipelines' mappings once ([`configure_sinks`], at load time), builds the
//! running sink ([`spawn_all`]) and runs the online checks ([`check_all`]).
//!
//! Heavy client libraries live in their connector crates behind cargo
//! features; a binary built without one answers a config that names it with
//! the feature to rebuild with.

use std::sync::Arc;

use pgfanout_sdk::{ConfigError, ConfiguredSink, Connector, SinkInput};
use tokio::sync::mpsc;

use crate::config::{Config, PipelineConfig, SinkConfig};
use crate::dead_letter::DeadLetters;
use crate::pipeline::Router;
use crate::runtime::ack::DurableSeq;
use crate::runtime::worker::{Chunk, Worker};

/// One entry of the connector list.
#[derive(Clone, Copy)]
pub enum Entry {
    /// Compiled into this binary.
    Built(&'static dyn Connector),
    /// Known, but its cargo feature is off in this build.
    Missing(&'static str),
}

/// Every connector, in the order `check` lists them. Adding a store adds
/// one line here (and its `cfg(not)` twin naming the feature).
pub fn connectors() -> Vec<Entry> {
    vec![
        Entry::Built(&pgfanout_file::CONNECTOR),
        #[cfg(feature = "redis")]
        Entry::Built(&pgfanout_redis::CONNECTOR),
        #[cfg(not(feature = "redis"))]
        Entry::Missing("redis"),
        #[cfg(feature = "kafka")]
        Entry::Built(&pgfanout_kafka::CONNECTOR),
        #[cfg(not(feature = "kafka"))]
        Entry::Missing("kafka"),
        #[cfg(feature = "neo4j")]
        Entry::Built(&pgfanout_neo4j::CONNECTOR),
        #[cfg(not(feature = "neo4j"))]
        Entry::Missing("neo4j"),
        #[cfg(feature = "elasticsearch")]
        Entry::Built(&pgfanout_elasticsearch::CONNECTOR),
        #[cfg(not(feature = "elasticsearch"))]
        Entry::Missing("elasticsearch"),
        #[cfg(feature = "scylla")]
        Entry::Built(&pgfanout_scylla::CONNECTOR),
        #[cfg(not(feature = "scylla"))]
        Entry::Missing("scylla"),
    ]
}

/// The `type:` values (and aliases) compiled into this binary.
pub fn available_kinds() -> Vec<&'static str> {
    let mut kinds = Vec::new();
    for e in connectors() {
        if let Entry::Built(c) = e {
            kinds.push(c.kind());
            kinds.extend(c.aliases());
        }
    }
    kinds
}

/// Every `type:` value this binary knows (built or not), for messages.
pub fn known_kinds() -> Vec<&'static str> {
    let mut kinds = Vec::new();
    for e in connectors() {
        match e {
            Entry::Built(c) => {
                kinds.push(c.kind());
                kinds.extend(c.aliases());
            }
            Entry::Missing(k) => kinds.push(k),
        }
    }
    kinds
}

/// The connector for a `type:` value, or the error to report at
/// `sinks.<name>.type`.
pub fn find(kind: &str) -> Result<&'static dyn Connector, String> {
    for e in connectors() {
        match e {
            Entry::Built(c) if c.kind() == kind || c.aliases().contains(&kind) => return Ok(c),
            Entry::Missing(k) if k == kind => {
                return Err(format!("this pgfanout was built without the `{k}` feature; rebuild with --features {k}"))
            }
            _ => {}
        }
    }
    Err(format!("unknown sink type {kind:?}; expected one of {}", known_kinds().join(", ")))
}

/// Whether `key` in a pipeline is a mapping section (some connector's type).
pub fn is_mapping_key(key: &str) -> bool {
    known_kinds().contains(&key)
}

/// Whether a pipeline's mapping key belongs to the sink's connector.
pub fn key_matches(connector: &dyn Connector, key: &str) -> bool {
    connector.kind() == key || connector.aliases().contains(&key)
}

/// A sink's name and its configured form.
pub type Configured = (String, Arc<dyn ConfiguredSink>);

/// Configures every sink with its connector (settings and the mappings of
/// the pipelines writing to it), once. Returns the configured sinks by sink
/// name and every error with its dotted path. Pipelines are (index in the
/// file, pipeline); mapping sections under the wrong key are left to the
/// pipeline checks.
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

/// The running sinks, in config order.
pub struct Sinks {
    pub names: Vec<String>,
    pub senders: Vec<mpsc::Sender<Chunk>>,
    pub durable: Vec<DurableSeq>,
    pub workers: Vec<tokio::task::JoinHandle<()>>,
}

/// Builds every sink (connecting) and spawns its worker. A store that is
/// unreachable at start (a retriable error) is retried with capped backoff
/// until it answers or shutdown is requested (then `Ok(None)`); settings the
/// store refuses for good stop with the error.
pub async fn spawn_all(
    cfg: &Config,
    router: &Router,
    dead_letters: &DeadLetters,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<Sinks>, String> {
    let mut sinks = Sinks { names: Vec::new(), senders: Vec::new(), durable: Vec::new(), workers: Vec::new() };
    let wake = Arc::new(tokio::sync::Notify::new());
    for (index, (name, sink_cfg)) in cfg.sinks.iter().enumerate() {
        let routes = router.routes_for_sink(index);
        let configured = sink_cfg.configured.as_ref().ok_or_else(|| format!("sinks.{name}: not configured (internal error)"))?;
        let mut backoff = pgfanout_sdk::settings::Backoff::new(std::time::Duration::from_millis(500), std::time::Duration::from_secs(30));
        let sink = loop {
            match configured.build().await {
                Ok(sink) => break sink,
                Err(e) if e.is_retriable() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(sink = %name, error = %e, retry_in = ?delay, "sink not reachable at start; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => {}
                    }
                    if *shutdown.borrow() {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(format!("sinks.{name}: {e}")),
            }
        };
        // `queue_batches` bounds the batches a sink holds, queued or in
        // flight: a pipelining sink's in-flight batches come out of it.
        let queue = cfg.runtime.queue_batches.saturating_sub(sink.pipeline_depth().saturating_sub(1)).max(1);
        let (tx, rx) = mpsc::channel::<Chunk>(queue);
        let durable = DurableSeq::waking(wake.clone());
        let worker = Worker {
            name: Arc::from(name.as_str()),
            rx,
            durable: durable.clone(),
            dead_letters: dead_letters.clone(),
            routes: routes.iter().map(|(n, _)| n.clone()).collect(),
            batch_size: cfg.runtime.batch_size,
        };
        sinks.names.push(name.clone());
        sinks.senders.push(tx);
        sinks.durable.push(durable);
        sinks.workers.push(tokio::spawn(worker.run(sink)));
    }
    Ok(Some(sinks))
}

/// For `doctor`: per sink, its checks as (what, problem or None).
pub async fn check_all(cfg: &Config) -> Vec<(String, Vec<pgfanout_sdk::Check>)> {
    let mut out = Vec::new();
    for (name, sink_cfg) in &cfg.sinks {
        let checks = match &sink_cfg.configured {
            Some(c) => c.doctor().await,
            None => vec![pgfanout_sdk::Check::failed("configure", "not configured (internal error)")],
        };
        out.push((name.clone(), checks));
    }
    out
}
