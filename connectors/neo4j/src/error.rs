//! Which Bolt failures are worth retrying.
//!
//! Why it matters: a retriable error makes the runtime retry the whole batch
//! forever, a permanent one makes the sink isolate and dead-letter the
//! failing records. Connection problems and the server's `TransientError`
//! class (deadlocks, lock timeouts, leader switches) are retriable; a
//! `ClientError` (syntax, type, constraint violation) fails again the same
//! way, so it is permanent. `DatabaseError` means the server itself failed:
//! retried, because replaying later is safe and dead-lettering would drop
//! data the server could accept once healthy.

use neo4rs::{Error, Neo4jClientErrorKind, Neo4jErrorKind};
use pgfanout_sdk::SinkError;

/// Classifies a neo4rs error; `what` says which step failed.
pub fn classify(what: &str, e: &Error) -> SinkError {
    let msg = format!("neo4j {what}: {e}");
    match e {
        Error::IOError { .. } | Error::ConnectionError | Error::UnexpectedMessage(_) => SinkError::Retriable(msg),
        Error::Neo4j(n) if server_error_is_retriable(n.code(), n.kind()) => SinkError::Retriable(msg),
        Error::Neo4j(_) => SinkError::Permanent(msg),
        Error::AuthenticationError(_) => SinkError::Retriable(msg),
        _ => SinkError::Permanent(msg),
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
