//! Redis failures, typed where they are born, and which are worth retrying.
//!
//! The runtime retries a batch that fails with [`SinkError::Retriable`]
//! forever, and isolates records one by one after a
//! [`SinkError::Permanent`] batch error, dead-lettering those that fail alone.
//! So a failure of the connection or of the server as a whole (I/O, timeout,
//! LOADING, BUSY, OOM, READONLY replica, cluster redirections, even a wrong
//! password fixed by an operator) is retriable: dead-lettering every record
//! because Redis was briefly away would lose data. Only an error tied to one
//! record (WRONGTYPE, a value Redis refuses) rejects that record.
//!
//! Each [`RedisSinkError`] keeps what Redis said (the client's
//! [`redis::ErrorKind`], or the error code of a reply: the first word, such
//! as `BUSY` or `NOSCRIPT`) and decides [`RedisSinkError::is_retriable`]
//! from it, once; it becomes a [`SinkError`] only at the sink's boundary.

use redis::RedisError;

/// Error codes (first word of a Redis error reply) that mean "the server
/// cannot take writes right now", not "this record is wrong". MISCONF is
/// Redis refusing writes because persistence (an RDB save) is failing;
/// NOAUTH/WRONGPASS a password an operator is about to fix.
const TRANSIENT_CODES: &[&str] = &[
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "MOVED",
    "ASK",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "READONLY",
    "OOM",
    "NOREPLICAS",
    "NOSCRIPT",
    "MISCONF",
    "NOAUTH",
    "WRONGPASS",
];

/// The error code of a reply's text: its first word (`-` of RESP dropped).
pub(crate) fn reply_code(text: &str) -> &str {
    text.split_whitespace().next().unwrap_or_default().trim_start_matches('-')
}

/// True when a server error text (e.g. one returned by the script for one
/// operation) is a transient condition of the server.
pub(crate) fn is_transient_reply(text: &str) -> bool {
    TRANSIENT_CODES.contains(&reply_code(text))
}

/// A failure of the Redis sink or of its verifier.
#[derive(Debug, thiserror::Error)]
pub enum RedisSinkError {
    /// The sink's settings or a mapping are invalid (the message names the
    /// option and the rule). Permanent.
    #[error("{0}")]
    Invalid(String),
    /// The server URL or its TLS files cannot be used. Permanent.
    #[error("redis sink url {url:?}: {source}")]
    Url { url: String, source: RedisError },
    /// A TLS file cannot be read. Permanent.
    #[error("redis sink tls: {0}")]
    TlsFile(String),
    /// The server cannot be reached. Retriable.
    #[error("redis {url}: cannot connect: {source}")]
    Connect { url: String, source: RedisError },
    /// A whole request failed (connection, timeout, server state). Retriable.
    #[error("redis {}: {source}", request_failure(source))]
    Request { source: RedisError },
    /// A script call was answered with an error reply: retriable when its
    /// code is a transient server condition, permanent otherwise (the
    /// script itself is broken).
    #[error("{}", script_failure(code, detail))]
    ScriptFailed { code: String, detail: Option<String> },
    /// An operation's result is an error text of a transient server
    /// condition (one tied to the record rejects the record instead).
    /// Retriable.
    #[error("redis: {text}")]
    Operation { text: String },
    /// The server lost the apply script again right after it was loaded.
    /// Retriable.
    #[error("redis: the apply script keeps disappearing (NOSCRIPT)")]
    ScriptLost,
    /// A reply of an unexpected shape (count or type). Retriable: the
    /// connection is suspect, not the records.
    #[error("redis: {0}")]
    Unexpected(String),
    /// A mapping uses `type: json` on a server without RedisJSON. Permanent.
    #[error(
        "redis: a pipeline maps rows with `type: json`, but this server has no RedisJSON module (JSON.SET is an unknown \
         command). Load it (loadmodule /path/to/librejson.so, or use Redis Stack / Redis 8), or use `type: string` to store \
         rows as JSON text"
    )]
    NoJsonModule,
}

fn request_failure(e: &RedisError) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connection_refusal() {
        "connection refused"
    } else if e.is_connection_dropped() || e.is_io_error() {
        "connection lost"
    } else {
        "request failed"
    }
}

fn script_failure(code: &str, detail: &Option<String>) -> String {
    if is_transient_reply(code) {
        format!("redis: {}", detail.as_deref().unwrap_or(code))
    } else {
        format!("redis apply script failed: {code} {}", detail.as_deref().unwrap_or(""))
    }
}

impl RedisSinkError {
    /// A whole request failed (see [`RedisSinkError::Request`]).
    pub(crate) fn request(source: RedisError) -> Self {
        RedisSinkError::Request { source }
    }

    /// Whether the connection that gave this error may be out of step with
    /// its replies for good (timed out, I/O error, a reply of the wrong
    /// shape): it is then replaced rather than reused.
    pub(crate) fn leaves_connection_suspect(&self) -> bool {
        match self {
            RedisSinkError::Request { source } => source.is_timeout() || source.is_io_error() || source.is_connection_dropped(),
            RedisSinkError::Unexpected(_) => true,
            _ => false,
        }
    }

    /// Whether retrying the batch can help.
    pub fn is_retriable(&self) -> bool {
        match self {
            RedisSinkError::Invalid(_) | RedisSinkError::Url { .. } | RedisSinkError::TlsFile(_) | RedisSinkError::NoJsonModule => false,
            RedisSinkError::ScriptFailed { code, .. } => is_transient_reply(code),
            RedisSinkError::Operation { text } => is_transient_reply(text),
            RedisSinkError::Connect { .. }
            | RedisSinkError::Request { .. }
            | RedisSinkError::ScriptLost
            | RedisSinkError::Unexpected(_) => true,
        }
    }

    /// The error code Redis answered with (`BUSY`, `NOSCRIPT`...), when it
    /// answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            RedisSinkError::ScriptFailed { code, .. } => Some(code),
            RedisSinkError::Operation { text } => Some(reply_code(text)),
            RedisSinkError::ScriptLost => Some("NOSCRIPT"),
            RedisSinkError::Url { source, .. } | RedisSinkError::Connect { source, .. } | RedisSinkError::Request { source } => {
                source.code()
            }
            _ => None,
        }
    }
}

/// The sink boundary: the only place a [`RedisSinkError`] becomes the runtime's
/// `SinkError` (retriable as [`RedisSinkError::is_retriable`] says, same message).
impl pgfanout_sdk::StoreError for RedisSinkError {
    fn is_retriable(&self) -> bool {
        RedisSinkError::is_retriable(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfanout_sdk::SinkError;

    #[test]
    fn classifies_reply_codes() {
        assert!(is_transient_reply("LOADING Redis is loading the dataset in memory"));
        assert!(is_transient_reply(
            "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk. \
             Commands that may modify the data set are disabled"
        ));
        assert!(is_transient_reply("OOM command not allowed when used memory > 'maxmemory'."));
        assert!(is_transient_reply("MOVED 3999 127.0.0.1:6381"));
        assert!(!is_transient_reply("WRONGTYPE Operation against a key holding the wrong kind of value"));
        assert!(!is_transient_reply("ERR value is not a valid float"));
        assert!(!is_transient_reply(""));
    }

    #[test]
    fn a_script_failure_keeps_its_code_and_its_message() {
        let busy = RedisSinkError::ScriptFailed { code: "BUSY".into(), detail: Some("Redis is busy running a script".into()) };
        assert!(busy.is_retriable());
        assert_eq!(busy.code(), Some("BUSY"));
        assert_eq!(SinkError::from(busy), SinkError::Retriable("redis: Redis is busy running a script".into()));
        let broken = RedisSinkError::ScriptFailed { code: "ERR".into(), detail: Some("user_script:1: oops".into()) };
        assert!(!broken.is_retriable());
        assert_eq!(SinkError::from(broken), SinkError::Permanent("redis apply script failed: ERR user_script:1: oops".into()));
        let op = RedisSinkError::Operation { text: "OOM command not allowed".into() };
        assert_eq!((op.is_retriable(), op.code()), (true, Some("OOM")));
    }
}
