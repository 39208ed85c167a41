//! Search sink: Elasticsearch and OpenSearch indexes kept in step with
//! PostgreSQL tables (`type: elasticsearch`, alias `opensearch`).
//!
//! Each pipeline's [`SearchMapping`] names the index (a template such as
//! `products` or `{schema}.{table}`), the document id (default: the key
//! columns) and optional routing, ingest pipeline, index settings and
//! mappings (applied when the sink creates the index), delete behaviour
//! (`delete`, or `soft`: set a field) and truncate behaviour (`ignore`, or
//! `delete_by_query`).
//!
//! # Versions: replays never bring back an older document
//!
//! Every `_bulk` action carries `version_type=external_gte` and
//! `version` = the transaction's commit LSN
//! (`pgfanout_sdk::Position::commit_version`). The engine refuses a write
//! whose version is below the stored one (a 409, counted as "already
//! applied") and applies equal ones, so the changes of one transaction apply
//! in order and a replay after a crash converges. Deletes are versioned the
//! same way; the engine remembers a deleted document's version for
//! `index.gc_deletes` (60 s by default), which bounds how late a replayed
//! older insert can still be refused (set it higher, or use `delete: soft`,
//! if pgfanout may be down longer than that while a document is deleted and
//! re-created).
//!
//! # Unchanged TOAST columns
//!
//! A change that lacks unchanged TOAST columns is completed from `before`
//! when the table has REPLICA IDENTITY FULL; otherwise the stored document
//! is read (`_mget`, or the batch's own earlier write of it), the present
//! columns are merged in and the whole document is indexed with the
//! change's version (read-merge-write; safe because one document's changes
//! are written by one lane, in order). A partial change whose document is
//! missing is never written half: it goes to the dead-letter file.
//!
//! Known limit: after a crash, PostgreSQL sends again what the slot had not
//! confirmed. A replayed partial change whose document a *later* change had
//! already moved or deleted before the crash finds it missing and is
//! dead-lettered, although the index already holds its effect (the replayed
//! later changes bring the document to its final state). Such a dead letter
//! right after a restart needs no action when the row's current document is
//! in the index (`pgfanout verify` says so). Reconnects do not replay (the
//! stream resumes after the last transaction received, and skips what the
//! sinks have of a transaction it cut off).
//!
//! # Pipelined lanes
//!
//! Batches are pipelined (`in_flight_batches`, default 4): a batch is
//! planned and its actions queued on `concurrency` document-id lanes while
//! earlier batches are still being sent. Each lane is a task that sends its
//! queue one `_bulk` request at a time, in order, so one document's changes
//! apply in order across every batch in flight, and no lane waits for the
//! slowest one of a batch. Reads of stored documents (read-merge-write) and
//! truncates first wait until the lanes have sent everything before them.
//! The runtime still confirms positions batch by batch, in order.
//!
//! # Errors
//!
//! Per `_bulk` item: 409 = already applied; 429 / 5xx = retried (only the
//! failed items, with backoff; versions keep them from undoing newer
//! writes, and a document's later items wait for its failed one); any other
//! refusal (mapping or parse errors) rejects that record with the engine's
//! error (dead-lettered). A whole request that fails (connection, timeout,
//! 429/5xx, bad credentials) or items still refused after 8 tries: the lane
//! sends its job again from the start after a backoff, until it goes
//! through, before anything queued behind it. A request over the node's
//! size limit (413) is sent again as smaller requests.
//!
//! A `_bulk` request that got no answer (client timeout, connection lost)
//! may still be queued on a slow node. Before the lane sends anything
//! again it waits until the request's `X-Opaque-Id` is gone from
//! `GET _tasks` (up to ten minutes; at once if the credentials may not
//! list tasks, with a warning): replayed later, such a request would apply
//! after newer writes of the same transaction (equal versions apply) and
//! could bring a deleted document back or delete a re-inserted one.
//!
//! Why plain HTTP and not the `elasticsearch` crate: see [`client`].

mod client;
mod config;
mod encode;
mod error;
mod index;
mod lane;
mod merge;
mod plan;
mod reply;
mod retry;
mod route;
mod sink;
mod verify;

use pgfanout_sdk::connector::{boxed_sink, TypedConnector};
use pgfanout_sdk::Check;

pub use config::{check_index_name, DeleteMode, SearchMapping, SearchSinkConfig, TruncateMode};
pub use error::{ErrorReply, EsError, ItemError};
pub use sink::SearchSink;

/// The connector: `type: elasticsearch` (alias `opensearch`), settings
/// [`SearchSinkConfig`], an `elasticsearch:` (or `opensearch:`) mapping
/// ([`SearchMapping`]) per pipeline; `verify` reads back every index not fed
/// through an ingest pipeline.
pub static CONNECTOR: TypedConnector<SearchSinkConfig, SearchMapping> =
    TypedConnector::new("elasticsearch", SearchSinkConfig::validate, SearchMapping::validate, |settings, mappings| {
        boxed_sink(SearchSink::connect(settings, mappings.to_vec()))
    })
    .with_aliases(&["opensearch"])
    .with_doctor(|settings, mappings| Box::pin(doctor(settings, mappings)))
    .with_verifier(verify::verifiable, |settings, mappings, route| Box::pin(async move { verify::connect(settings, &mappings[route]) }));

/// `doctor`: the cluster answers with these credentials; each constant index
/// exists (or will be created at the first write).
async fn doctor(settings: &SearchSinkConfig, mappings: &[SearchMapping]) -> Vec<Check> {
    let sink = match SearchSink::connect(settings, mappings.to_vec()).await {
        Ok(s) => s,
        Err(e) => return vec![Check::failed("cluster reachable with these credentials", e.to_string())],
    };
    let mut checks = vec![Check::ok(format!("cluster {} reachable", sink.ping().await.unwrap_or_default()))];
    for m in mappings {
        if !m.index.contains('{') {
            let what = format!("index {}", m.index);
            checks.push(match sink.index_exists(&m.index).await {
                Ok(true) => Check::ok(format!("{what} exists")),
                Ok(false) => Check::ok(format!("{what} does not exist yet; the sink creates it at the first write")),
                Err(e) => Check::failed(what, e.to_string()),
            });
        }
    }
    checks
}
