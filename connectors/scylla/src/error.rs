//! The sink's errors, classified once where they are born.
//!
//! Why it matters: the runtime retries a batch that fails
//! [`SinkError::Retriable`] forever, and a record the store refuses for good
//! goes to the dead letters. So what the cluster cannot do *now* (a CQL
//! `Unavailable`, `WriteTimeout`, `Overloaded`, `IsBootstrapping`, a lost
//! connection, a client timeout) is retried with the same statements and
//! timestamps; what fails again the same way for these values (`Invalid`,
//! `SyntaxError`, a value the driver cannot serialize) rejects the records
//! of that statement alone; settings and schema the operator must fix stop
//! the sink, with the fix in the message.
//!
//! [`ScyllaError`] keeps the store's own code (the CQL error code as the
//! driver's [`DbError`]) and answers [`ScyllaError::is_retriable`]; callers
//! never read message text. It becomes a [`SinkError`] only at the sink
//! boundary (`From<ScyllaError> for SinkError`). [`RecordError`] and
//! [`ValueError`] say why one change cannot be mapped to CQL: always that
//! record's dead letter, never a batch failure.

use std::borrow::Cow;
use std::fmt;

use pgfanout_sdk::TemplateError;
use scylla::errors::{
    ConnectionError, ConnectionPoolError, ConnectionSetupRequestErrorKind, DbError, ExecutionError, MetadataError, NewSessionError,
    PrepareError, RequestAttemptError,
};

/// An error of the ScyllaDB / Cassandra sink, its verifier or its doctor.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScyllaError {
    /// The cluster answered with an error: its CQL error code
    /// (`Overloaded`, `Unavailable`, `WriteTimeout`, `Invalid`,
    /// `SyntaxError`, `Unauthorized`, ...) and the server's message.
    #[error("{code:?}: {message}")]
    Server { code: DbError, message: String },
    /// The driver could not make a request of the statement and its values
    /// (a value its column's type cannot take): sending it again fails the
    /// same way.
    #[error("{0}")]
    Unsendable(String),
    /// No usable answer: connection lost or refused, no connection in the
    /// pool, a client-side timeout, schema agreement not reached, a reply
    /// the driver could not read.
    #[error("{0}")]
    NoAnswer(String),
    /// The `tls` files cannot be used (unreadable, not PEM, a key that does
    /// not match its certificate).
    #[error("scylla sink: tls: {0}")]
    Tls(String),
    /// A setting fails validation (`path` is the dotted setting).
    #[error("scylla sink: {path}: {rule}")]
    Settings { path: String, rule: String },
    /// The cluster refused the credentials.
    #[error(
        "scylla {nodes:?}: authentication failed ({message}); check `username` and `password` (and that the \
         cluster uses PasswordAuthenticator)"
    )]
    Authentication { nodes: Vec<String>, message: String },
    /// No session could be opened (no node reachable, metadata not read).
    #[error("scylla {nodes:?}: cannot connect: {message}")]
    Connect { nodes: Vec<String>, message: String },
    /// Mapped keyspaces, tables or columns missing from the cluster's
    /// schema, each with its fix.
    #[error("{}", Problems(.0))]
    Schema(Vec<SchemaProblem>),
    /// `verify` asked for a row it never listed or expected.
    #[error("unknown row {0}")]
    UnknownRow(String),
    /// A step failed (`prepare`, `create: <cql>`, `verify: read`, ...); its
    /// kind is its cause's.
    #[error("scylla {step}: {source}")]
    Step { step: Cow<'static, str>, source: Box<ScyllaError> },
}

impl ScyllaError {
    /// Whether the same request can succeed later: retry it (same
    /// statements, same timestamps) rather than reject its records or stop.
    pub fn is_retriable(&self) -> bool {
        match self {
            ScyllaError::Server { code, .. } => server_error_is_retriable(code),
            ScyllaError::NoAnswer(_) | ScyllaError::Connect { .. } => true,
            ScyllaError::Unsendable(_)
            | ScyllaError::Tls(_)
            | ScyllaError::Settings { .. }
            | ScyllaError::Authentication { .. }
            | ScyllaError::Schema(_)
            | ScyllaError::UnknownRow(_) => false,
            ScyllaError::Step { source, .. } => source.is_retriable(),
        }
    }

    /// The CQL error code the cluster answered with, if it answered.
    pub fn db_error(&self) -> Option<&DbError> {
        match self {
            ScyllaError::Server { code, .. } => Some(code),
            ScyllaError::Step { source, .. } => source.db_error(),
            _ => None,
        }
    }

    /// The same error, saying which step failed (`scylla <step>: ...`).
    pub fn during(self, step: impl Into<Cow<'static, str>>) -> Self {
        ScyllaError::Step { step: step.into(), source: Box::new(self) }
    }

    /// A session error for contact points `nodes`: bad credentials are
    /// permanent (with the fix), anything else retriable.
    pub(crate) fn session(nodes: &[String], e: &NewSessionError) -> Self {
        let nodes = nodes.to_vec();
        if is_authentication_failure(e) {
            ScyllaError::Authentication { nodes, message: e.to_string() }
        } else {
            ScyllaError::Connect { nodes, message: e.to_string() }
        }
    }
}

/// CQL error codes that fail again the same way for the same statement and
/// values. Everything else the cluster answers (`Unavailable`, timeouts,
/// `Overloaded`, `IsBootstrapping`, `ServerError`, even `Unauthorized` and
/// `ConfigError`, which an operator fixes without touching pgfanout) is
/// retried: rejecting records because of the cluster's state would lose them.
fn server_error_is_retriable(code: &DbError) -> bool {
    !matches!(code, DbError::Invalid | DbError::SyntaxError | DbError::FunctionFailure { .. } | DbError::AlreadyExists { .. })
}

/// Whether opening the session failed on the credentials: the server's
/// `AuthenticationError`, or the driver's side of the handshake.
fn is_authentication_failure(e: &NewSessionError) -> bool {
    let NewSessionError::MetadataError(MetadataError::ConnectionPoolError(ConnectionPoolError::Broken {
        last_connection_error: ConnectionError::ConnectionSetupRequestError(setup),
    })) = e
    else {
        return false;
    };
    matches!(
        setup.get_error(),
        ConnectionSetupRequestErrorKind::DbError(DbError::AuthenticationError, _)
            | ConnectionSetupRequestErrorKind::MissingAuthentication
            | ConnectionSetupRequestErrorKind::StartAuthSessionError(_)
            | ConnectionSetupRequestErrorKind::AuthChallengeEvaluationError(_)
            | ConnectionSetupRequestErrorKind::AuthFinishError(_)
    )
}

impl From<RequestAttemptError> for ScyllaError {
    fn from(e: RequestAttemptError) -> Self {
        match e {
            RequestAttemptError::DbError(code, message) => ScyllaError::Server { code, message },
            RequestAttemptError::SerializationError(_) | RequestAttemptError::CqlRequestSerialization(_) => {
                ScyllaError::Unsendable(e.to_string())
            }
            other => ScyllaError::NoAnswer(other.to_string()),
        }
    }
}

impl From<ExecutionError> for ScyllaError {
    fn from(e: ExecutionError) -> Self {
        match e {
            ExecutionError::BadQuery(b) => ScyllaError::Unsendable(b.to_string()),
            ExecutionError::LastAttemptError(a) => a.into(),
            ExecutionError::PrepareError(p) => p.into(),
            other => ScyllaError::NoAnswer(other.to_string()),
        }
    }
}

impl From<PrepareError> for ScyllaError {
    fn from(e: PrepareError) -> Self {
        match e {
            PrepareError::AllAttemptsFailed { first_attempt } => first_attempt.into(),
            other => ScyllaError::NoAnswer(other.to_string()),
        }
    }
}

impl From<MetadataError> for ScyllaError {
    fn from(e: MetadataError) -> Self {
        ScyllaError::NoAnswer(e.to_string())
    }
}

/// The sink boundary: the only place a [`ScyllaError`] becomes the runtime's
/// `SinkError` (retriable as [`ScyllaError::is_retriable`] says, same message).
impl pgfanout_sdk::StoreError for ScyllaError {
    fn is_retriable(&self) -> bool {
        ScyllaError::is_retriable(self)
    }
}

/// One thing a mapping needs that the cluster's schema lacks, with the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaProblem {
    /// Which mapping: `route <i>: table <keyspace>.<table>`.
    pub what: String,
    /// What is missing and how to fix it.
    pub problem: String,
}

impl fmt::Display for SchemaProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.problem)
    }
}

/// `a; b; c`.
struct Problems<'a>(&'a [SchemaProblem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Why one change cannot be written to its route's table: the record alone
/// is rejected (a dead letter), the batch goes on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordError {
    /// A mapped column's value does not fit the column's CQL type (`key`:
    /// the column is part of the primary key).
    #[error("{}column {column}: {source}", if *key { "key " } else { "" })]
    Value { column: String, key: bool, source: ValueError },
    /// A template column could not be rendered.
    #[error("column {column}: {source}")]
    Template { column: String, source: TemplateError },
    /// A primary-key column maps to NULL.
    #[error("primary key column {0} is null")]
    NullKey(String),
    /// A delete whose old row or key lacks a primary-key column.
    #[error("the delete lacks a primary key column")]
    DeleteWithoutKey,
    /// An insert or update whose row lacks a primary-key column.
    #[error("the row lacks a primary key column")]
    RowWithoutKey,
    /// `mode: append`: a primary-key column of the new row is NULL or absent.
    #[error("a primary key column is null or missing")]
    AppendWithoutKey,
}

/// A PostgreSQL value that a CQL column cannot hold (README.md, "Type
/// mapping"): the value (shortened), the column's type and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value} does not fit CQL {cql_type}: {reason}")]
pub struct ValueError {
    pub value: String,
    pub cql_type: String,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfanout_sdk::SinkError;

    fn server(code: DbError) -> ScyllaError {
        ScyllaError::from(RequestAttemptError::DbError(code, "from the server".into()))
    }

    #[test]
    fn the_cql_error_code_decides_and_is_kept() {
        for code in [DbError::Overloaded, DbError::IsBootstrapping, DbError::ServerError, DbError::Unauthorized, DbError::TruncateError] {
            let e = server(code.clone());
            assert!(e.is_retriable(), "{code:?} must be retried");
            assert_eq!(e.db_error(), Some(&code));
        }
        for code in [DbError::Invalid, DbError::SyntaxError] {
            let e = server(code.clone()).during("prepare");
            assert!(!e.is_retriable(), "{code:?} must not be retried");
            assert_eq!(e.db_error(), Some(&code), "a step keeps its cause's code");
        }
    }

    #[test]
    fn messages_keep_the_code_and_the_step() {
        let e = server(DbError::Invalid).during("create: CREATE TABLE t (a int)");
        assert_eq!(e.to_string(), "scylla create: CREATE TABLE t (a int): Invalid: from the server");
        assert!(matches!(SinkError::from(e), SinkError::Permanent(_)));
        let e = ScyllaError::NoAnswer("connection lost".into()).during("prepare");
        assert_eq!(SinkError::from(e), SinkError::Retriable("scylla prepare: connection lost".into()));
    }

    #[test]
    fn a_record_error_names_the_column_and_keeps_the_reason() {
        let source = ValueError { value: "\"infinity\"".into(), cql_type: "date".into(), reason: "infinity has no CQL value".into() };
        let e = RecordError::Value { column: "d".into(), key: true, source: source.clone() };
        assert_eq!(e.to_string(), "key column d: \"infinity\" does not fit CQL date: infinity has no CQL value");
        let e = RecordError::Value { column: "d".into(), key: false, source };
        assert!(e.to_string().starts_with("column d: "));
    }

    #[test]
    fn schema_problems_are_permanent_and_listed() {
        let p = |what: &str, problem: &str| SchemaProblem { what: what.into(), problem: problem.into() };
        let e = ScyllaError::Schema(vec![p("route 0: table k.t", "column b does not exist"), p("route 1: table k.u", "x")]).during("sink");
        assert!(!e.is_retriable());
        assert_eq!(e.to_string(), "scylla sink: route 0: table k.t: column b does not exist; route 1: table k.u: x");
    }
}
