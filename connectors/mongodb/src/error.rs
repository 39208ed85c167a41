//! The document sink's errors: each knows whether trying again can help.

use pgfanout_sdk::{StoreError, TemplateError};

/// Server error codes that clear by themselves: elections, shutdowns,
/// timeouts, write conflicts, network trouble seen by the server.
const TRANSIENT_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    50,    // MaxTimeMSExpired
    64,    // WriteConcernFailed
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    112,   // WriteConflict
    117,   // ConflictingOperationInProgress
    134,   // ReadConcernMajorityNotAvailableYet
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

#[derive(Debug, thiserror::Error)]
pub enum MongoError {
    #[error("mongodb: {0}")]
    Driver(#[from] mongodb::error::Error),
    /// A statement of a write command the server refused.
    #[error("mongodb refused the write (code {code}): {message}")]
    Refused { code: i32, message: String },
    #[error("mongodb: {0} got no answer in {1:?} (request_timeout)")]
    Timeout(String, std::time::Duration),
    #[error("mongodb write concern not satisfied: {0}")]
    WriteConcern(String),
    #[error("mongodb mapping: {field}: {source}")]
    Template { field: &'static str, source: TemplateError },
    #[error("mongodb mapping of route {route}: {message}")]
    Mapping { route: usize, message: String },
    #[error("mongodb: the change has no key (the table needs a primary key or REPLICA IDENTITY)")]
    NoKey,
    #[error("mongodb: embed.parent_id: the row's {0} is missing or NULL, so its parent document is unknown")]
    NoParent(String),
    #[error("mongodb: {0:?} is not a valid collection name (1 to 120 bytes, no $ or NUL, not system.*)")]
    BadCollection(String),
    #[error(
        "mongodb: a partial change (unchanged TOAST columns {missing}) of {document}, which is not stored: \
         its other columns are unknown (REPLICA IDENTITY FULL sends them); `pgfanout verify --repair` writes the row"
    )]
    PartialOfMissing { document: String, missing: String },
    #[error("mongodb: unknown document {0} (not produced by this verifier)")]
    UnknownDocument(String),
}

impl MongoError {
    /// A refusal of one statement: transient codes are retried.
    pub(crate) fn refused(code: i32, message: String) -> MongoError {
        MongoError::Refused { code, message }
    }
}

impl StoreError for MongoError {
    fn is_retriable(&self) -> bool {
        match self {
            MongoError::Driver(e) => driver_retriable(e),
            // 11000, duplicate key: a document pgfanout saw absent was
            // written beside it; the retry reads it and updates it.
            MongoError::Refused { code, .. } => TRANSIENT_CODES.contains(code) || *code == 11000,
            MongoError::WriteConcern(_) | MongoError::Timeout(..) => true,
            _ => false,
        }
    }
}

fn driver_retriable(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    if e.contains_label("RetryableWriteError") || e.contains_label("TransientTransactionError") {
        return true;
    }
    match &*e.kind {
        ErrorKind::Io(_) | ErrorKind::ServerSelection { .. } | ErrorKind::ConnectionPoolCleared { .. } => true,
        ErrorKind::Command(c) => TRANSIENT_CODES.contains(&c.code),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteConcernError(_)) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_refusals_are_retried_others_dead_lettered() {
        assert!(MongoError::refused(189, "stepped down".into()).is_retriable());
        assert!(!MongoError::refused(121, "Document failed validation".into()).is_retriable());
        assert!(MongoError::WriteConcern("timeout".into()).is_retriable());
        assert!(!MongoError::NoKey.is_retriable());
    }
}
