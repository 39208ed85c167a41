//! The sink registry: builds each configured sink and spawns its worker.
//!
//! Heavy client libraries live in their connector crates behind cargo
//! features; a binary built without one answers a config that names it with
//! a clear error instead of failing to compile elsewhere.

pub mod validate;

use std::sync::Arc;

use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::config::{Config, SinkConfig};
use crate::dead_letter::DeadLetters;
use crate::pipeline::Router;
use crate::runtime::ack::DurableSeq;
use crate::runtime::worker::{Chunk, Worker};

/// The running sinks, in config order.
pub struct Sinks {
    pub names: Vec<String>,
    pub senders: Vec<mpsc::Sender<Chunk>>,
    pub durable: Vec<DurableSeq>,
    pub workers: Vec<tokio::task::JoinHandle<()>>,
}

/// Builds every sink (connecting where needed) and spawns its worker.
pub async fn spawn_all(cfg: &Config, router: &Router, dead_letters: &DeadLetters) -> Result<Sinks, String> {
    let mut sinks = Sinks { names: Vec::new(), senders: Vec::new(), durable: Vec::new(), workers: Vec::new() };
    for (index, (name, sink_cfg)) in cfg.sinks.iter().enumerate() {
        let routes = router.routes_for_sink(index);
        let (tx, rx) = mpsc::channel::<Chunk>(cfg.runtime.queue_batches.max(1));
        let durable = DurableSeq::default();
        let worker = Worker {
            name: Arc::from(name.as_str()),
            rx,
            durable: durable.clone(),
            dead_letters: dead_letters.clone(),
            routes: routes.iter().map(|(n, _)| n.clone()).collect(),
            batch_size: cfg.runtime.batch_size,
        };
        let handle = spawn_sink(name, sink_cfg, routes, worker).await?;
        sinks.names.push(name.clone());
        sinks.senders.push(tx);
        sinks.durable.push(durable);
        sinks.workers.push(handle);
    }
    Ok(sinks)
}

type Routes = Vec<(Arc<str>, Option<serde_json::Value>)>;

async fn spawn_sink(name: &str, cfg: &SinkConfig, routes: Routes, worker: Worker) -> Result<tokio::task::JoinHandle<()>, String> {
    let _ = &routes;
    match cfg {
        SinkConfig::File(file) => {
            let sink = pgfanout_file::FileSink::open(&file.path).map_err(|e| format!("sinks.{name}: {e}"))?;
            Ok(tokio::spawn(worker.run(sink)))
        }
        #[cfg(feature = "redis")]
        SinkConfig::Redis(value) => Ok(tokio::spawn(worker.run(connect_redis(name, value, routes).await?))),
        #[cfg(feature = "kafka")]
        SinkConfig::Kafka(value) => Ok(tokio::spawn(worker.run(connect_kafka(name, value, routes).await?))),
        #[cfg(feature = "neo4j")]
        SinkConfig::Neo4j(value) => Ok(tokio::spawn(worker.run(connect_neo4j(name, value, routes).await?))),
        other => Err(unavailable(name, other.kind())),
    }
}

/// Sink types compiled into this binary.
pub fn available_kinds() -> Vec<&'static str> {
    let mut kinds = vec!["file"];
    if cfg!(feature = "redis") {
        kinds.push("redis");
    }
    if cfg!(feature = "kafka") {
        kinds.push("kafka");
    }
    if cfg!(feature = "neo4j") {
        kinds.push("neo4j");
    }
    kinds
}

/// The error for a sink type this binary cannot run.
fn unavailable(name: &str, kind: &str) -> String {
    if ["redis", "kafka", "neo4j"].contains(&kind) {
        format!("sinks.{name}: this pgfanout was built without the `{kind}` feature; rebuild with --features {kind}")
    } else {
        format!(
            "sinks.{name}: sink type {kind:?} is not implemented in this version of pgfanout (available: {})",
            available_kinds().join(", ")
        )
    }
}

/// Parses a sink's settings (`sinks.<name>`) and, for each of its routes,
/// the pipeline's `<kind>:` mapping.
#[allow(dead_code)]
fn parse<C: DeserializeOwned, M: DeserializeOwned>(
    kind: &str,
    name: &str,
    value: &serde_json::Value,
    routes: Routes,
) -> Result<(C, Vec<M>), String> {
    let mut settings = value.clone();
    if let Some(obj) = settings.as_object_mut() {
        obj.remove("type");
    }
    let settings = serde_json::from_value(settings).map_err(|e| format!("sinks.{name}: {e}"))?;
    let mappings = routes
        .into_iter()
        .map(|(pipeline, mapping)| {
            let mapping =
                mapping.ok_or_else(|| format!("pipeline {pipeline:?} targets {kind} sink {name:?} but has no `{kind}:` mapping"))?;
            serde_json::from_value(mapping).map_err(|e| format!("pipeline {pipeline:?}: {kind} mapping: {e}"))
        })
        .collect::<Result<_, String>>()?;
    Ok((settings, mappings))
}

#[cfg(feature = "redis")]
async fn connect_redis(name: &str, value: &serde_json::Value, routes: Routes) -> Result<pgfanout_redis::RedisSink, String> {
    let (settings, mappings) = parse("redis", name, value, routes)?;
    pgfanout_redis::RedisSink::connect(&settings, mappings).await.map_err(|e| format!("sinks.{name}: {e}"))
}

#[cfg(feature = "kafka")]
async fn connect_kafka(name: &str, value: &serde_json::Value, routes: Routes) -> Result<pgfanout_kafka::KafkaSink, String> {
    let (settings, mappings) = parse("kafka", name, value, routes)?;
    pgfanout_kafka::KafkaSink::connect(&settings, mappings).await.map_err(|e| format!("sinks.{name}: {e}"))
}

#[cfg(feature = "neo4j")]
async fn connect_neo4j(name: &str, value: &serde_json::Value, routes: Routes) -> Result<pgfanout_neo4j::Neo4jSink, String> {
    let (settings, mappings) = parse("neo4j", name, value, routes)?;
    pgfanout_neo4j::Neo4jSink::connect(&settings, mappings).await.map_err(|e| format!("sinks.{name}: {e}"))
}

/// Connects (when `sink` did) and runs the sink's own check.
#[allow(dead_code)]
async fn check<S: pgfanout_sdk::Sink>(sink: Result<S, String>) -> Option<String> {
    match sink {
        Ok(mut s) => s.check().await.err().map(|e| e.to_string()),
        Err(e) => Some(e),
    }
}

/// For `doctor`: each sink's name and `None` when reachable, or the problem.
pub async fn check_all(cfg: &Config, router: &Router) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for (index, (name, sink_cfg)) in cfg.sinks.iter().enumerate() {
        let routes = router.routes_for_sink(index);
        let _ = &routes;
        let problem = match sink_cfg {
            SinkConfig::File(file) if file.path == "-" => None,
            SinkConfig::File(file) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file.path)
                .err()
                .map(|e| format!("cannot open {} for appending: {e}", file.path)),
            #[cfg(feature = "redis")]
            SinkConfig::Redis(value) => check(connect_redis(name, value, routes).await).await,
            #[cfg(feature = "kafka")]
            SinkConfig::Kafka(value) => check(connect_kafka(name, value, routes).await).await,
            #[cfg(feature = "neo4j")]
            SinkConfig::Neo4j(value) => check(connect_neo4j(name, value, routes).await).await,
            other => Some(unavailable(name, other.kind())),
        };
        out.push((name.clone(), problem));
    }
    out
}
