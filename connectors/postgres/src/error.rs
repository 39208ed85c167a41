//! Source errors: transient (reconnect and resume) or permanent (stop and
//! tell the operator what to fix).

/// An error from the PostgreSQL source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Connection lost, server restarting, timeout: reconnect with backoff
    /// and resume from the slot.
    #[error("{0}")]
    Transient(String),
    /// Will not go away by retrying (bad credentials, wal_level, slot
    /// invalidated, missing replica identity...). The message says what to fix.
    #[error("{0}")]
    Permanent(String),
}

impl SourceError {
    pub fn is_retriable(&self) -> bool {
        matches!(self, SourceError::Transient(_))
    }

    pub fn transient(msg: impl Into<String>) -> Self {
        SourceError::Transient(msg.into())
    }

    pub fn permanent(msg: impl Into<String>) -> Self {
        SourceError::Permanent(msg.into())
    }
}

impl From<std::io::Error> for SourceError {
    fn from(e: std::io::Error) -> Self {
        SourceError::Transient(format!("I/O error: {e}"))
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
    )
}

impl From<tokio_postgres::Error> for SourceError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) if is_permanent_sqlstate(db.code().code()) => SourceError::Permanent(format!(
                "{}: {}{}",
                db.severity(),
                db.message(),
                db.hint().map(|h| format!(" (hint: {h})")).unwrap_or_default()
            )),
            Some(db) => SourceError::Transient(format!("{}: {}", db.severity(), db.message())),
            None => SourceError::Transient(e.to_string()),
        }
    }
}
