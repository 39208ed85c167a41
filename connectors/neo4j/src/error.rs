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
        Error::Neo4j(n) => match n.kind() {
            Neo4jErrorKind::Transient | Neo4jErrorKind::Database | Neo4jErrorKind::Unknown => SinkError::Retriable(msg),
            Neo4jErrorKind::Client(Neo4jClientErrorKind::SessionExpired | Neo4jClientErrorKind::TransactionTerminated) => {
                SinkError::Retriable(msg)
            }
            Neo4jErrorKind::Client(Neo4jClientErrorKind::Security(_)) => SinkError::Retriable(msg),
            Neo4jErrorKind::Client(_) => SinkError::Permanent(msg),
        },
        Error::AuthenticationError(_) => SinkError::Retriable(msg),
        _ => SinkError::Permanent(msg),
    }
}
