//! Bolt failures, typed where they are born, and which are worth retrying.
//!
//! Why it matters: a retriable error makes the runtime retry the whole batch
//! forever, a permanent one makes the sink isolate and dead-letter the
//! failing records. Connection problems and the server's `TransientError`
//! class (deadlocks, lock timeouts, leader switches) are retriable; a
//! `ClientError` (syntax, type, constraint violation) fails again the same
//! way, so it is permanent. `DatabaseError` means the server itself failed:
//! retried, because replaying later is safe and dead-lettering would drop
//! data the server could accept once healthy.
//!
//! A [`Neo4jSinkError`] keeps the neo4rs error, and with it the server's
//! status code (`Neo.TransientError.Transaction.DeadlockDetected`...,
//! [`Neo4jSinkError::code`]); it becomes a [`SinkError`] only at the sink's
//! boundary.

use neo4rs::{Error, Neo4jClientErrorKind, Neo4jErrorKind};

/// A failure of the Neo4j sink or of its verifier.
#[derive(Debug, thiserror::Error)]
pub enum Neo4jSinkError {
    /// The sink's settings or a mapping are invalid (the message names the
    /// option and the rule). Permanent.
    #[error("{0}")]
    Invalid(String),
    /// The driver refused its configuration. Permanent.
    #[error("neo4j config: {0}")]
    Config(Error),
    /// A step against the server (`what`: connect, begin, a statement,
    /// commit...) failed; retriable or not by the server's status code or
    /// the kind of connection failure ([`Neo4jSinkError::is_retriable`]).
    #[error("neo4j {what}: {source}")]
    Bolt { what: String, source: Error },
    /// A batch submitted before this one failed, so this one did not run.
    /// Retriable.
    #[error("neo4j: a batch before this one failed; writing this one again after it")]
    EarlierBatchFailed,
    /// A batch's transaction took longer than `request_timeout`: the
    /// server or the network went silent. Retriable (on a new pool).
    #[error("neo4j: no answer within {0:?} (request_timeout); reconnecting")]
    TimedOut(std::time::Duration),
    /// The task running a batch's transaction died. Retriable.
    #[error("neo4j: write task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A value read back by `verify` has an unexpected type. Permanent.
    #[error("neo4j verify: {column}: {detail}")]
    Column { column: String, detail: String },
}

impl Neo4jSinkError {
    /// A failed step against the server (see [`Neo4jSinkError::Bolt`]).
    pub(crate) fn bolt(what: impl Into<String>, source: Error) -> Self {
        Neo4jSinkError::Bolt { what: what.into(), source }
    }

    /// Whether retrying the batch can help.
    pub fn is_retriable(&self) -> bool {
        match self {
            Neo4jSinkError::Invalid(_) | Neo4jSinkError::Config(_) | Neo4jSinkError::Column { .. } => false,
            Neo4jSinkError::Bolt { source, .. } => is_retriable(source),
            Neo4jSinkError::EarlierBatchFailed | Neo4jSinkError::TimedOut(_) | Neo4jSinkError::Task(_) => true,
        }
    }

    /// The server's status code, when the server reported the failure.
    pub fn code(&self) -> Option<&str> {
        match self {
            Neo4jSinkError::Bolt { source: Error::Neo4j(n), .. } => Some(n.code()),
            _ => None,
        }
    }
}

/// The sink boundary: the only place a [`Neo4jSinkError`] becomes the runtime's
/// `SinkError` (retriable as [`Neo4jSinkError::is_retriable`] says, same message).
impl pgfanout_sdk::StoreError for Neo4jSinkError {
    fn is_retriable(&self) -> bool {
        Neo4jSinkError::is_retriable(self)
    }
}

/// Whether a neo4rs error is worth retrying.
fn is_retriable(e: &Error) -> bool {
    match e {
        Error::IOError { .. } | Error::ConnectionError | Error::UnexpectedMessage(_) => true,
        Error::Neo4j(n) => server_error_is_retriable(n.code(), n.kind()),
        Error::AuthenticationError(_) => true,
        _ => false,
    }
}

/// Whether a server failure (its status code and neo4rs' kind for it) is
/// worth retrying. neo4rs reports two `Neo.TransientError.Transaction.*`
/// codes as client errors (`Terminated`, `LockClientStopped`: the
/// transaction was terminated, e.g. by a timeout or an administrator, while
/// running or waiting for a lock); the server sent them as transient and a
/// new transaction succeeds, so both are retried. `NotALeader` and
/// `ForbiddenOnReadOnlyDatabase` (a leader switch in a cluster) come as
/// `SessionExpired`.
fn server_error_is_retriable(code: &str, kind: Neo4jErrorKind) -> bool {
    match kind {
        Neo4jErrorKind::Transient | Neo4jErrorKind::Database | Neo4jErrorKind::Unknown => true,
        Neo4jErrorKind::Client(Neo4jClientErrorKind::SessionExpired | Neo4jClientErrorKind::TransactionTerminated) => true,
        Neo4jErrorKind::Client(Neo4jClientErrorKind::Security(_)) => true,
        Neo4jErrorKind::Client(_) => code.starts_with("Neo.TransientError.") || code == "Neo.ClientError.Transaction.LockClientStopped",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kind neo4rs gives a FAILURE with `code` (it rewrites two codes).
    fn retriable(code: &str) -> bool {
        let kind = Neo4jErrorKind::from(code);
        let code = match code {
            "Neo.TransientError.Transaction.LockClientStopped" => "Neo.ClientError.Transaction.LockClientStopped",
            "Neo.TransientError.Transaction.Terminated" => "Neo.ClientError.Transaction.Terminated",
            c => c,
        };
        server_error_is_retriable(code, kind)
    }

    #[test]
    fn transient_errors_and_leader_switches_are_retried() {
        for code in [
            "Neo.TransientError.Transaction.DeadlockDetected",
            "Neo.TransientError.Transaction.LockAcquisitionTimeout",
            "Neo.TransientError.Transaction.LockClientStopped",
            "Neo.TransientError.Transaction.Terminated",
            "Neo.TransientError.Transaction.Outdated",
            "Neo.TransientError.Transaction.ConstraintsChanged",
            "Neo.TransientError.General.DatabaseUnavailable",
            "Neo.TransientError.General.OutOfMemoryError",
            "Neo.TransientError.Cluster.ReplicationFailure",
            "Neo.ClientError.Cluster.NotALeader",
            "Neo.ClientError.General.ForbiddenOnReadOnlyDatabase",
            "Neo.ClientError.Transaction.Terminated",
            "Neo.ClientError.Security.AuthorizationExpired",
            "Neo.DatabaseError.General.UnknownError",
            "Neo.DatabaseError.Transaction.TransactionCommitFailed",
        ] {
            assert!(retriable(code), "{code} must be retried");
        }
    }

    #[test]
    fn client_errors_are_permanent() {
        for code in [
            "Neo.ClientError.Statement.SyntaxError",
            "Neo.ClientError.Statement.TypeError",
            "Neo.ClientError.Statement.ArithmeticError",
            "Neo.ClientError.Statement.ParameterMissing",
            "Neo.ClientError.Schema.ConstraintValidationFailed",
            "Neo.ClientError.Request.Invalid",
        ] {
            assert!(!retriable(code), "{code} must not be retried");
        }
    }
}
