//! The sink contract.
//!
//! # Guarantees
//!
//! The runtime hands each sink batches of [`SinkRecord`]s in commit order and
//! awaits [`Sink::write`]. When `write` returns `Ok`, every record of the batch
//! is **durable** in the target store (acknowledged by the server under the
//! sink's durability setting) or was rejected permanently and is listed in
//! the returned [`Rejected`] entries (those go to the dead-letter sink). Only
//! then may the flush position sent to PostgreSQL move past those records.
//!
//! - Delivery is at-least-once: after a crash the same records arrive again,
//!   so writes must be idempotent. Each record carries its
//!   [`Position`](crate::Position); stores that can compare versions must skip
//!   a write whose stored version is strictly newer and apply equal ones.
//! - Order: the runtime never reorders records, and never calls `write` again
//!   before the previous call returned. A sink that parallelises internally
//!   must keep two records of one key in order (hash by key).
//! - Errors: [`SinkError::Retriable`] means "nothing is known to be durable,
//!   try the whole batch again later"; the runtime retries with capped
//!   exponential backoff, forever, keeping order. [`SinkError::Permanent`]
//!   for the whole batch makes the runtime retry the records one by one, so a
//!   single bad record is isolated and dead-lettered.
//! - Pipelining (optional): a sink whose [`Sink::max_in_flight`] is above 1
//!   gets batches through [`Sink::submit`] instead, several in flight at
//!   once; it then owns ordering and retries across them (see `submit`).
//!   The runtime still completes batches, and confirms positions, in order.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::change::Change;

/// An error and the errors under it, `a: b: c`, each said once. HTTP and
/// driver errors often say only "error sending request" at the top and why
/// (refused, a certificate, a timeout) in their sources; an operator needs
/// the why, and `settings::certificate_fix` reads it.
pub fn causes(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut said = out.clone();
    let mut next = error.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !said.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
            said = text;
        }
        next = e.source();
    }
    out
}

/// A record routed to a sink by one pipeline.
#[derive(Debug, Clone)]
pub struct SinkRecord {
    /// The change after the pipeline's transforms.
    pub change: Arc<Change>,
    /// Which of the sink's routes (pipelines) produced it, as the index into
    /// the list of mappings the sink was built with.
    pub route: usize,
    /// The change as read from the source, when the pipeline's transforms
    /// made `change` a new one (`None` when `change` is it). Kept until the
    /// record is written so that a dead letter can be replayed through the
    /// pipeline as it is configured then. Sinks ignore it.
    pub source: Option<Arc<Change>>,
}

/// One record of a batch that the store rejected for good.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Index into the batch passed to `write`.
    pub index: usize,
    pub error: String,
}

/// The outcome of one `write`.
pub type BatchOutcome = Result<Vec<Rejected>, SinkError>;

/// Why a write failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum SinkError {
    /// Transient (connection lost, timeout, overload, 429/5xx): retry later.
    #[error("{0} (will retry)")]
    Retriable(String),
    /// Will fail again the same way (bad mapping, wrong type, constraint).
    #[error("{0}")]
    Permanent(String),
}

impl SinkError {
    pub fn is_retriable(&self) -> bool {
        matches!(self, SinkError::Retriable(_))
    }
}

/// A connector's own error type (`src/error.rs` of each sink crate): it keeps
/// the store's code and decides where it is born whether trying again can
/// help. At the sink boundary it becomes a [`SinkError`] with the same
/// message (`?` converts it).
pub trait StoreError: std::fmt::Display {
    fn is_retriable(&self) -> bool;
}

impl<E: StoreError> From<E> for SinkError {
    fn from(e: E) -> SinkError {
        if e.is_retriable() {
            SinkError::Retriable(e.to_string())
        } else {
            SinkError::Permanent(e.to_string())
        }
    }
}

/// A batch a pipelining sink has started (see [`Sink::submit`]): resolves
/// like [`Sink::write`] once the batch is durable.
pub type InFlight = Pin<Box<dyn Future<Output = BatchOutcome> + Send + 'static>>;

/// The stop of a pipelining sink (see [`Sink::submit`]): a batch in flight
/// that fails [`set`](Self::set)s it, and the next `submit` is refused
/// [`Permanent`](SinkError::Permanent) once ([`refusal`](Self::refusal)), so
/// the runtime finishes everything in flight, writing each failed batch
/// again in order, and writes the refused batch alone before it submits
/// anything newer; the sink then starts its pipelining afresh. Clones share
/// the flag (the in-flight futures hold one).
#[derive(Debug, Clone, Default)]
pub struct PipelineStop(Arc<AtomicBool>);

impl PipelineStop {
    /// A batch in flight failed.
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// If a batch in flight failed since the last refusal: the error that
    /// refuses this submit (`store` names the sink), and the flag is
    /// cleared. The caller resets its pipelining state before returning it.
    pub fn refusal(&self, store: &str) -> Option<SinkError> {
        self.0.swap(false, Ordering::AcqRel).then(|| {
            SinkError::Permanent(format!(
                "{store}: a batch in flight failed; the batches after it are written again one at a time, in order"
            ))
        })
    }
}

/// A destination store. See the module docs for the guarantees.
pub trait Sink: Send + 'static {
    /// Writes a batch; see the module docs for what `Ok` promises.
    fn write(&mut self, batch: &[SinkRecord]) -> impl Future<Output = BatchOutcome> + Send;

    /// How many batches the runtime may have in flight through
    /// [`submit`](Self::submit) at once. 1 (the default): the sink does not
    /// pipeline and only [`write`](Self::write) is called.
    fn max_in_flight(&self) -> usize {
        1
    }

    /// True when each batch is applied atomically (a transaction in the
    /// store): the runtime then cuts batches only between source
    /// transactions, so that none is split over two of the store's
    /// transactions, unless one alone has more records than the batch size.
    /// Only for sinks that do not pipeline. Default false.
    fn whole_transactions(&self) -> bool {
        false
    }

    /// Pipelined writing, for sinks whose [`max_in_flight`](Self::max_in_flight)
    /// is above 1. The returned future finishes dispatching the batch (after
    /// everything submitted before it, in order); the [`InFlight`] it gives
    /// resolves once the batch is durable. The runtime submits the next batch
    /// without waiting for that, and completes batches strictly in order.
    ///
    /// The sink keeps the order guarantees across batches in flight: two
    /// records of one key are applied in submission order (e.g. per-key FIFO
    /// lanes), and a failure inside the store is retried *by the sink*, in
    /// order, until it clears; an [`InFlight`] resolving to `Err` makes the
    /// runtime write the batch again alone, which is only safe if no later
    /// batch can have been applied (e.g. the sink's lanes have stopped).
    /// `Err` from `submit` itself: `Retriable`, the runtime submits the same
    /// batch again later (parts of it may already be dispatched: replaying a
    /// batch in order must be harmless); `Permanent`, the runtime lets the
    /// batches before it complete and then writes this one alone with
    /// [`write`](Self::write) (record by record only if that fails
    /// permanently) before it submits anything newer ([`PipelineStop`]
    /// refuses the submit after a failure this way).
    fn submit(&mut self, batch: Arc<[SinkRecord]>) -> impl Future<Output = Result<InFlight, SinkError>> + Send {
        let _ = batch;
        async { Err(SinkError::Permanent("this sink does not pipeline batches".into())) }
    }

    /// Checks that the store is reachable and usable (for `doctor`).
    fn check(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }

    /// Flushes and releases resources at shutdown.
    fn close(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::causes;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn causes_says_each_layer_once() {
        let inner = Layer("invalid peer certificate: UnknownIssuer", None);
        let io = Layer("invalid peer certificate: UnknownIssuer", Some(Box::new(inner)));
        let top = Layer("error sending request", Some(Box::new(Layer("client error (Connect)", Some(Box::new(io))))));
        assert_eq!(causes(&top), "error sending request: client error (Connect): invalid peer certificate: UnknownIssuer");
        assert_eq!(causes(&Layer("alone", None)), "alone");
    }
}
