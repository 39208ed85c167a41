//! Source errors, typed: transient (reconnect and resume) or definite (stop
//! and tell the operator what to fix), with the server's SQLSTATE kept when
//! the error came from PostgreSQL.
//!
//! Classification happens once, where the error is born: from the SQLSTATE
//! of a server error ([`is_permanent_sqlstate`]), from the kind of an I/O or
//! TLS failure, or by the code that knows (a decode failure, a missing
//! slot). Callers that add advice match on [`SourceError::sqlstate`], never
//! on the message text.

use std::fmt;

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Connection lost, server restarting, timeout, too many connections:
    /// reconnect with backoff and resume from the slot.
    Transient,
    /// Will not go away by retrying (bad credentials, wal_level, slot
    /// invalidated, missing replica identity...). The message says what to fix.
    Definite,
}

/// An error from the PostgreSQL source.
#[derive(Debug, Clone)]
pub struct SourceError {
    kind: ErrorKind,
    /// The server's SQLSTATE, when PostgreSQL reported the error.
    sqlstate: Option<String>,
    message: String,
    /// The server closed the connection (end of stream), nothing more.
    closed: bool,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SourceError {}

impl SourceError {
    pub fn transient(msg: impl Into<String>) -> Self {
        SourceError { kind: ErrorKind::Transient, sqlstate: None, message: msg.into(), closed: false }
    }

    pub fn permanent(msg: impl Into<String>) -> Self {
        SourceError { kind: ErrorKind::Definite, sqlstate: None, message: msg.into(), closed: false }
    }

    /// A server error: its kind follows from the SQLSTATE.
    pub fn from_sqlstate(code: &str, msg: impl Into<String>) -> Self {
        let kind = if is_permanent_sqlstate(code) { ErrorKind::Definite } else { ErrorKind::Transient };
        SourceError { kind, sqlstate: Some(code.to_string()), message: msg.into(), closed: false }
    }

    /// The server closed the connection (transient).
    pub fn connection_closed() -> Self {
        SourceError { closed: true, ..SourceError::transient("PostgreSQL closed the connection") }
    }

    pub fn is_connection_closed(&self) -> bool {
        self.closed
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn is_retriable(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    pub fn is_permanent(&self) -> bool {
        self.kind == ErrorKind::Definite
    }

    /// The server's SQLSTATE (e.g. `55000`), when PostgreSQL reported it.
    pub fn sqlstate(&self) -> Option<&str> {
        self.sqlstate.as_deref()
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error, definite, with `fix` appended (`message: fix`).
    pub fn definite_with_fix(self, fix: impl fmt::Display) -> Self {
        SourceError { kind: ErrorKind::Definite, message: format!("{}: {fix}", self.message), ..self }
    }

    /// The same error and kind with `context` before the message.
    pub fn context(self, context: impl fmt::Display) -> Self {
        SourceError { message: format!("{context}: {}", self.message), ..self }
    }
}

impl From<std::io::Error> for SourceError {
    fn from(e: std::io::Error) -> Self {
        SourceError::transient(format!("I/O error: {e}"))
    }
}

/// SQLSTATE classes/codes that retrying cannot fix.
pub fn is_permanent_sqlstate(code: &str) -> bool {
    matches!(
        code,
        "28000" | "28P01" // invalid authorization / password
            | "3D000" // database does not exist
            | "42704" // undefined object (slot / publication missing)
            | "42501" // insufficient privilege
            | "55000" // object not in prerequisite state (wal_level, slot invalidated)
            | "0A000" // feature not supported
            | "42P01" // undefined table
            | "42601" // syntax error
            | "42710" // duplicate object
    )
}

impl From<tokio_postgres::Error> for SourceError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) if is_permanent_sqlstate(db.code().code()) => SourceError::from_sqlstate(
                db.code().code(),
                format!("{}: {}{}", db.severity(), db.message(), db.hint().map(|h| format!(" (hint: {h})")).unwrap_or_default()),
            ),
            Some(db) => SourceError::from_sqlstate(db.code().code(), format!("{}: {}", db.severity(), db.message())),
            None => SourceError::transient(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_follows_the_sqlstate_and_the_code_is_kept() {
        let e = SourceError::from_sqlstate("55000", "ERROR 55000: cannot read from logical replication slot");
        assert!(e.is_permanent());
        assert_eq!(e.sqlstate(), Some("55000"));
        let e = SourceError::from_sqlstate("57P01", "FATAL 57P01: terminating connection due to administrator command");
        assert!(e.is_retriable());
        assert_eq!(e.sqlstate(), Some("57P01"));
        let e = e.definite_with_fix("do this");
        assert!(e.is_permanent());
        assert_eq!(e.sqlstate(), Some("57P01"));
        assert!(e.to_string().ends_with(": do this"));
    }
}
