//! The sink registry: builds each configured sink and spawns its worker.
//!
//! Heavy client libraries live in their connector crates behind cargo
//! features; a binary built without one answers a config that names it with
//! a clear error instead of failing to compile elsewhere.

pub mod validate;

use std::sync::Arc;

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
    match cfg {
        SinkConfig::File(file) => {
            let sink = pgfanout_file::FileSink::open(&file.path).map_err(|e| format!("sinks.{name}: {e}"))?;
            Ok(tokio::spawn(worker.run(sink)))
        }
        SinkConfig::Redis(value) => spawn_redis(name, value, routes, worker).await,
        SinkConfig::Kafka(value) => spawn_kafka(name, value, routes, worker).await,
        SinkConfig::Neo4j(value) => spawn_neo4j(name, value, routes, worker).await,
        other => Err(format!(
            "sinks.{name}: sink type {:?} is not available in this build of pgfanout (supported here: {})",
            other.kind(),
            available_kinds().join(", ")
        )),
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

#[cfg(feature = "redis")]
async fn spawn_redis(name: &str, value: &serde_json::Value, routes: Routes, worker: Worker) -> Result<tokio::task::JoinHandle<()>, String> {
    let sink_cfg: pgfanout_redis::RedisSinkConfig = serde_json::from_value(strip_type(value)).map_err(|e| format!("sinks.{name}: {e}"))?;
    let mut mappings = Vec::new();
    for (pipeline, mapping) in routes {
        let mapping = mapping.ok_or_else(|| format!("pipeline {pipeline:?} targets redis sink {name:?} but has no `redis:` mapping"))?;
        let mapping: pgfanout_redis::RedisMapping =
            serde_json::from_value(mapping).map_err(|e| format!("pipeline {pipeline:?}: redis mapping: {e}"))?;
        mappings.push(mapping);
    }
    let sink = pgfanout_redis::RedisSink::connect(&sink_cfg, mappings).await.map_err(|e| format!("sinks.{name}: {e}"))?;
    Ok(tokio::spawn(worker.run(sink)))
}

#[cfg(not(feature = "redis"))]
async fn spawn_redis(name: &str, _: &serde_json::Value, _: Routes, _: Worker) -> Result<tokio::task::JoinHandle<()>, String> {
    Err(format!("sinks.{name}: this pgfanout was built without the `redis` feature; rebuild with --features redis"))
}

#[cfg(feature = "kafka")]
async fn spawn_kafka(name: &str, value: &serde_json::Value, routes: Routes, worker: Worker) -> Result<tokio::task::JoinHandle<()>, String> {
    let sink = connect_kafka(name, value, routes).await?;
    Ok(tokio::spawn(worker.run(sink)))
}

#[cfg(feature = "kafka")]
async fn connect_kafka(name: &str, value: &serde_json::Value, routes: Routes) -> Result<pgfanout_kafka::KafkaSink, String> {
    let sink_cfg: pgfanout_kafka::KafkaSinkConfig =
        serde_json::from_value(strip_type(value)).map_err(|e| format!("sinks.{name}: {e}"))?;
    let mut mappings = Vec::new();
    for (pipeline, mapping) in routes {
        let mapping = mapping.ok_or_else(|| format!("pipeline {pipeline:?} targets kafka sink {name:?} but has no `kafka:` mapping"))?;
        mappings.push(
            serde_json::from_value::<pgfanout_kafka::KafkaMapping>(mapping).map_err(|e| format!("pipeline {pipeline:?}: kafka mapping: {e}"))?,
        );
    }
    pgfanout_kafka::KafkaSink::connect(&sink_cfg, mappings).await.map_err(|e| format!("sinks.{name}: {e}"))
}

#[cfg(not(feature = "kafka"))]
async fn spawn_kafka(name: &str, _: &serde_json::Value, _: Routes, _: Worker) -> Result<tokio::task::JoinHandle<()>, String> {
    Err(format!("sinks.{name}: this pgfanout was built without the `kafka` feature; rebuild with --features kafka"))
}

#[cfg(feature = "neo4j")]
async fn spawn_neo4j(name: &str, value: &serde_json::Value, routes: Routes, worker: Worker) -> Result<tokio::task::JoinHandle<()>, String> {
    let sink = connect_neo4j(name, value, routes).await?;
    Ok(tokio::spawn(worker.run(sink)))
}

#[cfg(feature = "neo4j")]
async fn connect_neo4j(name: &str, value: &serde_json::Value, routes: Routes) -> Result<pgfanout_neo4j::Neo4jSink, String> {
    let sink_cfg: pgfanout_neo4j::Neo4jSinkConfig =
        serde_json::from_value(strip_type(value)).map_err(|e| format!("sinks.{name}: {e}"))?;
    let mut mappings = Vec::new();
    for (pipeline, mapping) in routes {
        let mapping = mapping.ok_or_else(|| format!("pipeline {pipeline:?} targets neo4j sink {name:?} but has no `neo4j:` mapping"))?;
        mappings.push(
            serde_json::from_value::<pgfanout_neo4j::Neo4jMapping>(mapping).map_err(|e| format!("pipeline {pipeline:?}: neo4j mapping: {e}"))?,
        );
    }
    pgfanout_neo4j::Neo4jSink::connect(&sink_cfg, mappings).await.map_err(|e| format!("sinks.{name}: {e}"))
}

#[cfg(not(feature = "neo4j"))]
async fn spawn_neo4j(name: &str, _: &serde_json::Value, _: Routes, _: Worker) -> Result<tokio::task::JoinHandle<()>, String> {
    Err(format!("sinks.{name}: this pgfanout was built without the `neo4j` feature; rebuild with --features neo4j"))
}

/// Removes the `type` tag if the payload still carries it.
#[allow(dead_code)]
fn strip_type(value: &serde_json::Value) -> serde_json::Value {
    let mut v = value.clone();
    if let Some(obj) = v.as_object_mut() {
        obj.remove("type");
    }
    v
}

/// For `doctor`: each sink's name and `None` when reachable, or the problem.
pub async fn check_all(cfg: &Config, router: &Router) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for (index, (name, sink_cfg)) in cfg.sinks.iter().enumerate() {
        let problem = match sink_cfg {
            SinkConfig::File(file) if file.path == "-" => None,
            SinkConfig::File(file) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file.path)
                .err()
                .map(|e| format!("cannot open {} for appending: {e}", file.path)),
            #[cfg(feature = "redis")]
            SinkConfig::Redis(value) => check_redis(name, value, router.routes_for_sink(index)).await.err(),
            #[cfg(feature = "kafka")]
            SinkConfig::Kafka(value) => match connect_kafka(name, value, router.routes_for_sink(index)).await {
                Ok(mut sink) => {
                    use pgfanout_sdk::Sink;
                    sink.check().await.err().map(|e| e.to_string())
                }
                Err(e) => Some(e),
            },
            #[cfg(feature = "neo4j")]
            SinkConfig::Neo4j(value) => match connect_neo4j(name, value, router.routes_for_sink(index)).await {
                Ok(mut sink) => {
                    use pgfanout_sdk::Sink;
                    sink.check().await.err().map(|e| e.to_string())
                }
                Err(e) => Some(e),
            },
            other => Some(format!("sink type {:?} is not available in this build", other.kind())),
        };
        let _ = (index, router);
        out.push((name.clone(), problem));
    }
    out
}

#[cfg(feature = "redis")]
async fn check_redis(name: &str, value: &serde_json::Value, routes: Routes) -> Result<(), String> {
    use pgfanout_sdk::Sink;
    let sink_cfg: pgfanout_redis::RedisSinkConfig = serde_json::from_value(strip_type(value)).map_err(|e| format!("sinks.{name}: {e}"))?;
    let mut mappings = Vec::new();
    for (_, mapping) in routes {
        if let Some(m) = mapping {
            mappings.push(serde_json::from_value(m).map_err(|e| e.to_string())?);
        }
    }
    let mut sink = pgfanout_redis::RedisSink::connect(&sink_cfg, mappings).await.map_err(|e| e.to_string())?;
    sink.check().await.map_err(|e| e.to_string())
}
