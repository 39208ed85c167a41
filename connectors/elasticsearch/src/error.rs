//! The search sink's errors, typed where they are born.
//!
//! Why it matters: the runtime retries a batch that fails with
//! [`SinkError::Retriable`] forever, and dead-letters records refused with
//! [`SinkError::Permanent`] (or a [`Rejected`](pgfanout_sdk::Rejected)). So
//! everything that concerns the cluster as a whole (no node answers, a
//! timeout, 429, 5xx, credentials an operator is about to fix, a reply the
//! sink cannot read) is retriable: dead-lettering every record because the
//! cluster was briefly away would lose data. Only what is tied to one record
//! or one mapping (a document the index refuses, an index that cannot be
//! created with the mapping's settings, a template the row cannot fill) is
//! permanent.
//!
//! Each error keeps the store's own words: the HTTP status, the engine's
//! error `type` and `reason` (e.g. `mapper_parsing_exception`), or the
//! transport error. [`EsError::is_retriable`] decides once; the conversion
//! into [`SinkError`] happens only at the sink boundary (`?` in the
//! [`Sink`](pgfanout_sdk::Sink) impl and the connector glue), and the
//! messages are those operators see in logs and dead letters.

use std::path::PathBuf;

use pgfanout_sdk::TemplateError;
use reqwest::StatusCode;
use serde_json::Value as Json;

/// An error of the search sink. See the module docs for the split between
/// retriable and permanent.
#[derive(Debug, thiserror::Error)]
pub enum EsError {
    // --- The cluster: retriable. ---
    /// No node answered (connection refused or lost, timeout, TLS): the
    /// last node tried and its transport error.
    #[error("search node {node}: {}", pgfanout_sdk::causes(source))]
    Unreachable { node: String, source: reqwest::Error },
    /// The node answered, but the body was cut off.
    #[error("search node {node}: reading the response: {}", pgfanout_sdk::causes(source))]
    BodyLost { node: String, source: reqwest::Error },
    /// No node is configured to send to.
    #[error("search sink: no node url to send to")]
    NoNode,
    /// 401 / 403: the credentials (or their privileges) are refused.
    #[error("search cluster refused the credentials ({}): check username/password or api_key: {}", .0.status, .0.text)]
    Credentials(ErrorReply),
    /// 429 / 5xx, or `GET /` not answered with success: the cluster's state.
    #[error("search cluster answered {}: {}", .0.status, .0.text)]
    Cluster(ErrorReply),
    /// A request the sink makes again later (`_mget`, `_bulk`, verify's
    /// reads) answered with an error status.
    #[error("{request} answered {}: {}", .reply.status, .reply.text)]
    Request { request: String, reply: ErrorReply },
    /// A body that is not JSON (a proxy's error page, a cut-off answer).
    #[error("search node sent a non-JSON body ({source}): {text}")]
    NotJson { source: serde_json::Error, text: String },
    /// A reply with another number of results than the request asked for.
    #[error("{request} returned {got} results for {asked} {what}")]
    Mismatch { request: &'static str, got: usize, asked: usize, what: &'static str },
    /// `_mget` could not read a document (not the same as a missing one).
    #[error("_mget could not read document {id:?} of {index:?}: {error}")]
    Unreadable { id: String, index: String, error: Json },
    /// The delete-tombstone check of a missing document failed.
    #[error("tombstone check answered {status}: {0}", status = .0.status_text())]
    TombstoneCheck(Box<ItemError>),
    /// `_bulk` items still refused with 429 / 5xx after every item retry.
    #[error("bulk items still failing after {attempts} attempts")]
    ItemsStillFailing { attempts: usize },
    /// A lane task is gone (the sink is shutting down).
    #[error("a search sink lane stopped")]
    LaneStopped,

    // --- One record or one mapping: permanent. ---
    /// The index refused a document (mapping conflict, a value the field
    /// cannot hold, a document too large).
    #[error("search engine refused the document: {0}")]
    Refused(Box<ItemError>),
    /// A partial change (unchanged TOAST columns) whose stored document is
    /// missing: completing it is impossible, writing it half is wrong.
    #[error(
        "document {id:?} of index {index:?} is missing, and this change does not carry its unchanged TOAST columns (REPLICA \
         IDENTITY FULL would); it is not written half: re-copy the row (e.g. touch it in PostgreSQL, or `pgfanout backfill`)"
    )]
    PartialOfMissing { id: String, index: String },
    /// The index does not exist and cannot be created with the mapping's
    /// settings and mappings.
    #[error("cannot create index {index:?}: {} {}", .reply.status, .reply.text)]
    CreateIndex { index: String, reply: ErrorReply },
    /// `_delete_by_query` (a TRUNCATE) refused.
    #[error("_delete_by_query on {index:?} answered {}: {}", .reply.status, .reply.text)]
    Truncate { index: String, reply: ErrorReply },
    /// A record of a route the sink has no mapping for.
    #[error("no search mapping for route {0}")]
    NoRoute(usize),
    /// A template (`index`, `id`, `routing`) the record cannot fill.
    #[error("{field}: {source}")]
    Template { field: &'static str, source: TemplateError },
    /// No `id:` template and a change without key columns.
    #[error("id: the change has no key columns; set `id:` in the mapping")]
    NoKey,
    /// A column value that is not JSON (never made by the source).
    #[error("column {column}: not JSON ({source})")]
    ColumnNotJson { column: String, source: serde_json::Error },
    /// A row that is not a JSON object (never made by the source).
    #[error("the row is not a JSON object ({0})")]
    RowNotObject(serde_json::Error),
    /// A mapping that does not compile.
    #[error("search mapping of route {route}: {source}")]
    Mapping { route: usize, source: Box<EsError> },
    /// A template that does not parse.
    #[error("{0}")]
    BadTemplate(TemplateError),
    #[error("index_file {}: {source}", .path.display())]
    IndexFile { path: PathBuf, source: std::io::Error },
    #[error("index_file {}: not JSON: {source}", .path.display())]
    IndexFileNotJson { path: PathBuf, source: serde_json::Error },
    /// The CA file cannot be read or parsed.
    #[error("search sink tls: {0}")]
    Tls(String),
    #[error("search sink: cannot build the HTTP client: {0}")]
    HttpClient(reqwest::Error),
    /// A route whose documents cannot be verified.
    #[error("documents go through ingest pipeline {0:?}, which rewrites them: what the index must hold cannot be told from the row")]
    Unverifiable(String),
    /// `verify` asked for a document it never named.
    #[error("unknown document {0}")]
    UnknownDocument(String),
}

impl EsError {
    /// Whether sending again later can succeed (see the module docs).
    pub fn is_retriable(&self) -> bool {
        use EsError::*;
        match self {
            Unreachable { .. }
            | BodyLost { .. }
            | NoNode
            | Credentials(_)
            | Cluster(_)
            | Request { .. }
            | NotJson { .. }
            | Mismatch { .. }
            | Unreadable { .. }
            | TombstoneCheck(_)
            | ItemsStillFailing { .. }
            | LaneStopped => true,
            Refused(_)
            | PartialOfMissing { .. }
            | CreateIndex { .. }
            | Truncate { .. }
            | NoRoute(_)
            | Template { .. }
            | NoKey
            | ColumnNotJson { .. }
            | RowNotObject(_)
            | Mapping { .. }
            | BadTemplate(_)
            | IndexFile { .. }
            | IndexFileNotJson { .. }
            | Tls(_)
            | HttpClient(_)
            | Unverifiable(_)
            | UnknownDocument(_) => false,
        }
    }

    /// The HTTP status the cluster answered, when it answered with one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            EsError::Credentials(r)
            | EsError::Cluster(r)
            | EsError::Request { reply: r, .. }
            | EsError::CreateIndex { reply: r, .. }
            | EsError::Truncate { reply: r, .. } => Some(r.status),
            EsError::Refused(e) | EsError::TombstoneCheck(e) => e.status.and_then(|s| StatusCode::from_u16(s).ok()),
            _ => None,
        }
    }

    /// The engine's error `type` (e.g. `resource_already_exists_exception`,
    /// `mapper_parsing_exception`), when it sent one.
    pub fn error_type(&self) -> Option<&str> {
        match self {
            EsError::Credentials(r)
            | EsError::Cluster(r)
            | EsError::Request { reply: r, .. }
            | EsError::CreateIndex { reply: r, .. }
            | EsError::Truncate { reply: r, .. } => r.error_type.as_deref(),
            EsError::Refused(e) | EsError::TombstoneCheck(e) => e.error_type.as_deref(),
            _ => None,
        }
    }
}

/// The sink boundary: the only place a [`EsError`] becomes the runtime's
/// `SinkError` (retriable as [`EsError::is_retriable`] says, same message).
impl pgfanout_sdk::StoreError for EsError {
    fn is_retriable(&self) -> bool {
        EsError::is_retriable(self)
    }
}

/// A response with an error status, as the engine sent it: the status, the
/// error's `type` when the body is an engine error object
/// (`{"error":{"type":…}}`), and the body's first characters.
#[derive(Debug, Clone)]
pub struct ErrorReply {
    pub status: StatusCode,
    pub error_type: Option<String>,
    /// The body's first characters (for the message).
    pub text: String,
}

impl ErrorReply {
    /// Reads `body` (answered with `status`), keeping `max` characters of
    /// its text.
    pub(crate) fn new(status: StatusCode, body: &[u8], max: usize) -> ErrorReply {
        let error_type = serde_json::from_slice::<Json>(body).ok().and_then(|j| j["error"]["type"].as_str().map(str::to_string));
        ErrorReply { status, error_type, text: String::from_utf8_lossy(body).chars().take(max).collect() }
    }
}

/// The error of one `_bulk` item: its status, and the engine's error `type`,
/// `reason` and cause.
#[derive(Debug, Clone)]
pub struct ItemError {
    /// The item's status (`None`: the reply had none).
    pub status: Option<u16>,
    pub error_type: Option<String>,
    pub reason: Option<String>,
    pub caused_by: Option<String>,
    /// The item's `error` as sent, for the message when it has no `type`
    /// and `reason`.
    error: Json,
}

impl ItemError {
    /// From one item's result (`{"status":…,"error":{…}}`).
    pub(crate) fn new(result: &Json) -> ItemError {
        let e = &result["error"];
        let text = |j: &Json| j.as_str().map(str::to_string);
        ItemError {
            status: result["status"].as_u64().and_then(|s| u16::try_from(s).ok()),
            error_type: text(&e["type"]),
            reason: text(&e["reason"]),
            caused_by: text(&e["caused_by"]["reason"]),
            error: e.clone(),
        }
    }

    /// 429 and 5xx (and an item without a status) concern the node, not
    /// the document: sent again, they can go through.
    pub fn is_retriable(&self) -> bool {
        is_retriable_item_status(self.status.unwrap_or(0))
    }

    fn status_text(&self) -> String {
        self.status.map_or_else(|| "null".into(), |s| s.to_string())
    }
}

/// Whether a `_bulk` item's status is the node's trouble (429, 5xx, none),
/// so the item is retried, not refused.
pub(crate) fn is_retriable_item_status(status: u16) -> bool {
    matches!(status, 429 | 500..=599 | 0)
}

impl std::fmt::Display for ItemError {
    /// `409 version_conflict_engine_exception: [7]: version conflict (cause)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.status_text();
        match (&self.error_type, &self.reason) {
            (Some(t), Some(r)) => {
                write!(f, "{status} {t}: {r}")?;
                match &self.caused_by {
                    Some(c) => write!(f, " ({c})"),
                    None => Ok(()),
                }
            }
            _ => write!(f, "{status} {}", self.error),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use pgfanout_sdk::SinkError;

    #[test]
    fn item_errors_keep_the_engines_words_and_say_whether_to_retry() {
        let e = ItemError::new(&json!({"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "failed to parse",
            "caused_by": {"reason": "not a number"}}}));
        assert_eq!(e.to_string(), "400 mapper_parsing_exception: failed to parse (not a number)");
        assert!(!e.is_retriable());
        let refused = EsError::Refused(Box::new(e));
        assert!(!refused.is_retriable());
        assert_eq!(refused.error_type(), Some("mapper_parsing_exception"));
        assert_eq!(refused.status(), Some(StatusCode::BAD_REQUEST));
        let busy = ItemError::new(&json!({"status": 429, "error": "queue full"}));
        assert!(busy.is_retriable());
        assert_eq!(busy.to_string(), r#"429 "queue full""#);
        assert_eq!(ItemError::new(&Json::Null).to_string(), "null null");
    }

    #[test]
    fn the_sink_boundary_keeps_the_message_and_the_kind() {
        let reply = ErrorReply::new(
            StatusCode::BAD_REQUEST,
            br#"{"error":{"type":"illegal_argument_exception","reason":"bad"},"status":400}"#,
            500,
        );
        assert_eq!(reply.error_type.as_deref(), Some("illegal_argument_exception"));
        let e = EsError::CreateIndex { index: "p".into(), reply };
        let text = e.to_string();
        assert!(text.starts_with(r#"cannot create index "p": 400 Bad Request {"error""#), "{text}");
        assert!(matches!(SinkError::from(e), SinkError::Permanent(m) if m == text));
        let e = EsError::Cluster(ErrorReply::new(StatusCode::SERVICE_UNAVAILABLE, b"down", 300));
        assert_eq!(e.to_string(), "search cluster answered 503 Service Unavailable: down");
        assert!(matches!(SinkError::from(e), SinkError::Retriable(_)));
    }
}
