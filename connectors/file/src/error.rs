//! File sink failures, typed where they are born.
//!
//! Opening the file fails for a reason an operator must fix (a directory
//! that cannot be created, no permission): permanent. Once open, a failed
//! write or `fsync` (a full disk, an I/O error, a closed pipe) is retried:
//! the append is rolled back to whole lines, and the records must not be
//! dead-lettered because the disk was briefly full. Each error keeps its
//! [`std::io::ErrorKind`] ([`FileSinkError::io_kind`]); it becomes a
//! [`SinkError`] only at the sink's boundary.

use std::io;

/// A failure of the file sink.
#[derive(Debug, thiserror::Error)]
pub enum FileSinkError {
    /// The file cannot be opened for appending. Permanent.
    #[error("cannot open {path} for appending: {source}")]
    Open { path: String, source: io::Error },
    /// Appending or syncing failed (the file holds whole lines still).
    /// Retriable.
    #[error("write to {target} failed: {source}")]
    Write { target: String, source: io::Error },
    /// The blocking writer task died. Retriable.
    #[error("file writer task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl FileSinkError {
    /// Whether retrying the batch can help.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, FileSinkError::Open { .. })
    }

    /// The kind of the I/O failure, when there was one.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            FileSinkError::Open { source, .. } | FileSinkError::Write { source, .. } => Some(source.kind()),
            FileSinkError::Task(_) => None,
        }
    }
}

/// The sink boundary: the only place a [`FileSinkError`] becomes the runtime's
/// `SinkError` (retriable as [`FileSinkError::is_retriable`] says, same message).
impl pgfanout_sdk::StoreError for FileSinkError {
    fn is_retriable(&self) -> bool {
        FileSinkError::is_retriable(self)
    }
}
