//! The contract shared by everything in pgfanout.
//!
//! The source (PostgreSQL) produces [`Change`]s; pipelines reshape them; every
//! sink implements [`Sink`] and reports through its return value when a batch
//! is durable. Nothing here does I/O: the crate is small so each connector can
//! depend on it without pulling in another connector's client library.

pub mod change;
pub mod connector;
pub mod exact;
pub mod health;
pub mod json;
pub mod lsn;
pub mod outbox;
pub mod settings;
pub mod sink;
pub mod template;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod text;
pub mod value;
pub mod verify;

pub use change::{message_content, message_row, Change, Op, Position, MESSAGE_SCHEMA};
pub use connector::{Check, ConfigError, ConfiguredSink, Connector, DynSink, FieldError, SinkInput, TypedSink};
pub use lsn::Lsn;
pub use outbox::OutboxColumns;
pub use sink::{causes, BatchOutcome, InFlight, PipelineStop, Rejected, Sink, SinkError, SinkRecord, StoreError};
pub use template::{Template, TemplateError};
pub use value::{Row, Text, Value};
pub use verify::{Expected, Verifier};
