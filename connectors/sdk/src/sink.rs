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

use std::future::Future;
use std::sync::Arc;

use crate::change::Change;

/// A record routed to a sink by one pipeline.
#[derive(Debug, Clone)]
pub struct SinkRecord {
    /// The change after the pipeline's transforms.
    pub change: Arc<Change>,
    /// Which of the sink's routes (pipelines) produced it, as the index into
    /// the list of mappings the sink was built with.
    pub route: usize,
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

/// A destination store. See the module docs for the guarantees.
pub trait Sink: Send + 'static {
    /// Writes a batch; see the module docs for what `Ok` promises.
    fn write(&mut self, batch: &[SinkRecord]) -> impl Future<Output = BatchOutcome> + Send;

    /// Checks that the store is reachable and usable (for `doctor`).
    fn check(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }

    /// Flushes and releases resources at shutdown.
    fn close(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }
}
