//! Which Redis failures are worth retrying.
//!
//! The runtime retries a batch that fails with [`SinkError::Retriable`]
//! forever, and isolates records one by one after a
//! [`SinkError::Permanent`] batch error, dead-lettering those that fail alone.
//! So a failure of the connection or of the server as a whole (I/O, timeout,
//! LOADING, BUSY, OOM, READONLY replica, cluster redirections, even a wrong
//! password fixed by an operator) is retriable: dead-lettering every record
//! because Redis was briefly away would lose data. Only an error tied to one
//! record (WRONGTYPE, a value Redis refuses) rejects that record.

use pgfanout_sdk::SinkError;
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

/// True when a server error text (e.g. one returned by the script for one
/// operation) is a transient condition of the server.
pub(crate) fn is_transient_reply(text: &str) -> bool {
    let code = text.split_whitespace().next().unwrap_or_default().trim_start_matches('-');
    TRANSIENT_CODES.contains(&code)
}

/// A failure of a whole request (connection, timeout, server state): always
/// retriable, with the reason for the log.
pub(crate) fn request_failed(e: &RedisError) -> SinkError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connection_refusal() {
        "connection refused"
    } else if e.is_connection_dropped() || e.is_io_error() {
        "connection lost"
    } else {
        "request failed"
    };
    SinkError::Retriable(format!("redis {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
