//! pgfanout's PostgreSQL source.
//!
//! - [`conn`]: connection options (URL, TLS) and plain SQL connections with
//!   fixed session settings.
//! - [`replication`]: our own replication-protocol client on
//!   `postgres-protocol` (tokio-postgres cannot open `replication=database`
//!   connections): startup, auth, TLS, CopyBoth, keepalives, status updates.
//! - [`pgoutput`]: the pgoutput message decoder (protocol versions 1 to 4).
//! - [`streaming`]: in-progress transactions streamed by the server, kept
//!   (in memory, then spilled to a file) until they commit.
//! - [`types`] and [`catalog`]: column text to `to_jsonb()`-equal values.
//! - [`relation`]: the relation cache and tuple -> [`Change`](pgfanout_sdk::Change).
//! - [`slot`]: slot and publication management and start-up checks.

pub mod catalog;
pub mod conn;
pub mod error;
pub mod pgoutput;
pub mod publication;
pub mod relation;
pub mod replication;
pub mod schema;
pub mod slot;
pub mod snapshot;
pub mod streaming;
pub mod table_name;
pub mod types;

pub use error::{ErrorKind, SourceError};
