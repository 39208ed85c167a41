//! Starting the sinks: each configured sink is built (connecting, retried
//! while the store is unreachable) and handed to its own [`Worker`] task.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::ack::DurableSeq;
use super::lease::Fence;
use super::memory::QueueMemory;
use super::worker::{Queued, Worker};
use crate::config::Config;
use crate::dead_letter::{DeadLetter, DeadLetters, Stage};
use crate::pipeline::Router;

/// The running sinks, in config order.
pub struct Sinks {
    pub names: Vec<String>,
    pub senders: Vec<mpsc::Sender<Queued>>,
    /// The byte budget every sink's queued chunks are charged to.
    pub memory: QueueMemory,
    pub durable: Vec<DurableSeq>,
    pub workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Sinks {
    /// The dead letter of a change its pipeline could not map
    /// ([`Routed::DeadLetter`](crate::pipeline::Routed)), counted and
    /// logged: the reader's and the applier's one arm for it.
    pub fn pipeline_letter(&self, pipeline: Arc<str>, sink: usize, error: String, change: Arc<pgfanout_sdk::Change>) -> DeadLetter {
        metrics::counter!(crate::metrics::PIPELINE_DEAD_LETTERED_TOTAL, crate::metrics::LABEL_PIPELINE => pipeline.to_string())
            .increment(1);
        tracing::warn!(pipeline = %pipeline, position = %change.position(), error = %error, "record dead-lettered by its pipeline");
        let sink = self.names.get(sink).map(|s| Arc::from(s.as_str())).unwrap_or_else(|| Arc::from("?"));
        DeadLetter { stage: Stage::Pipeline, pipeline, sink, error, change, source: None }
    }
}

/// Builds every sink (connecting) and spawns its worker. A store that is
/// unreachable at start (a retriable error) is retried with capped backoff
/// until it answers or shutdown is requested (then `Ok(None)`); settings the
/// store refuses for good stop with the error. Workers write only while
/// `fence` allows.
pub async fn spawn_all(
    cfg: &Config,
    router: &Router,
    dead_letters: &DeadLetters,
    fence: &Arc<Fence>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<Sinks>, String> {
    // Retries a sink makes inside itself count as failures, as the
    // runtime's own do.
    pgfanout_sdk::health::report_to(|sink, error| crate::activity::sink_failed(sink, error, None));
    let memory = QueueMemory::new(cfg.runtime.queue_memory.bytes());
    let mut sinks = Sinks { names: Vec::new(), senders: Vec::new(), memory, durable: Vec::new(), workers: Vec::new() };
    let wake = Arc::new(tokio::sync::Notify::new());
    for (index, (name, sink_cfg)) in cfg.sinks.iter().enumerate() {
        let routes = router.routes_for_sink(index);
        let configured = sink_cfg.configured.as_ref().ok_or_else(|| format!("sinks.{name}: not configured (internal error)"))?;
        let mut backoff = pgfanout_sdk::settings::Backoff::new(std::time::Duration::from_millis(500), std::time::Duration::from_secs(30));
        let sink = loop {
            match pgfanout_sdk::health::scope(Arc::from(name.as_str()), configured.build()).await {
                Ok(sink) => break sink,
                Err(e) if e.is_retriable() => {
                    let delay = backoff.next_delay();
                    let error = pgfanout_sdk::connector::with_fix(e.to_string());
                    tracing::warn!(sink = %name, %error, retry_in = ?delay, "sink not reachable at start; retrying");
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
        let (tx, rx) = mpsc::channel::<Queued>(queue);
        let durable = DurableSeq::waking(wake.clone());
        let worker = Worker {
            name: Arc::from(name.as_str()),
            rx,
            durable: durable.clone(),
            dead_letters: dead_letters.clone(),
            routes: routes.iter().map(|(n, _)| n.clone()).collect(),
            batch_size: cfg.runtime.batch_size,
            fence: fence.clone(),
        };
        sinks.names.push(name.clone());
        sinks.senders.push(tx);
        sinks.durable.push(durable);
        sinks.workers.push(tokio::spawn(pgfanout_sdk::health::scope(worker.name.clone(), worker.run(sink))));
    }
    Ok(Some(sinks))
}
