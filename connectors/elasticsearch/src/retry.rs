//! Getting a lane job through: `_bulk` requests within the limits, retries
//! of failed items, retries of the whole job, and the wait for a request
//! that got no answer.
//!
//! Three levels, inner to outer:
//! - **Items** ([`BulkWriter::write_job`]): an item refused with 429 or 5xx
//!   is sent again in the next round (up to [`ITEM_ATTEMPTS`] rounds, with
//!   backoff), only the failed items. Per-document order survives: once an
//!   item of a document fails, its later items wait for the next round, and
//!   later items of it that the same request already applied are sent again
//!   after it. Versions alone would not do: the changes of one transaction
//!   share a version, and equal versions apply (an insert retried after its
//!   own transaction's delete would bring the row back). A request over the
//!   node's size limit (413) is sent again as smaller requests. Any other
//!   refusal rejects the record (dead letter) and the sink goes on.
//! - **The job** ([`BulkWriter::write_until_through`]): a job that fails
//!   (node down, 429/5xx for the whole request, items still failing after
//!   every round) is sent again from its start after a backoff, until it
//!   goes through: replaying a job's prefix in order is harmless, and
//!   nothing queued behind it on the lane may pass it.
//! - **No answer** ([`BulkWriter::wait_until_gone`]): a request that timed
//!   out or lost its connection may still be queued on a slow node. Before
//!   anything is sent again, the sink waits until its `X-Opaque-Id` is gone
//!   from `GET _tasks`: replayed later, it would apply after newer writes of
//!   the same transaction (equal versions apply).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfanout_sdk::settings::{BatchLimits, RetrySettings};
use pgfanout_sdk::Rejected;
use reqwest::Method;
use tracing::{debug, warn};

use crate::client::Client;
use crate::encode::{Encoded, Item};
use crate::error::{is_retriable_item_status, EsError};
use crate::reply::{self, BulkReply, BULK_PATH};
use crate::route::DocRef;

/// How many times one `_bulk` item is retried (429, 5xx) before its lane
/// job fails and the lane sends the job again from its start.
pub(crate) const ITEM_ATTEMPTS: usize = 8;

/// Numbers the `_bulk` requests' `X-Opaque-Id`s.
static BULK_IDS: AtomicU64 = AtomicU64::new(0);

/// Writes lane jobs with `_bulk` (what every lane task shares).
pub(crate) struct BulkWriter {
    pub(crate) client: Arc<Client>,
    pub(crate) limits: BatchLimits,
    pub(crate) retry: RetrySettings,
}

impl BulkWriter {
    /// Sends `job` until it goes through (see the module docs); its
    /// rejections (documents the index refused).
    pub(crate) async fn write_until_through(&self, job: &Encoded) -> Vec<Rejected> {
        let mut backoff = self.retry.backoff();
        loop {
            if job.items.is_empty() {
                return Vec::new();
            }
            match self.write_job(job).await {
                Ok(rejected) => return rejected,
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, actions = job.items.len(), retry_in = ?delay, "bulk request failed; sending it again");
                    pgfanout_sdk::health::retrying(&e);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One job: `_bulk` requests within the limits, in rounds of the items
    /// still to retry (see the module docs).
    async fn write_job(&self, job: &Encoded) -> Result<Vec<Rejected>, EsError> {
        let items = &job.items;
        let mut rejected = Vec::new();
        let mut backoff = self.retry.backoff();
        let mut max_records = self.limits.max_records.max(1);
        let max_bytes = usize::try_from(self.limits.max_bytes.0).unwrap_or(usize::MAX);
        // Positions into `items`, in lane order.
        let mut pending: Vec<usize> = (0..items.len()).collect();
        for attempt in 1..=ITEM_ATTEMPTS {
            let mut retry: Vec<usize> = Vec::new();
            let mut blocked: HashSet<&DocRef> = HashSet::new();
            let mut last_error = String::new();
            let mut next = 0;
            while next < pending.len() {
                // Items of a blocked document wait for the next round; the
                // others go out in one request within the limits.
                let (start, held_before) = (next, retry.len());
                let chunk = next_chunk(items, &pending, &mut next, &blocked, &mut retry, max_records, max_bytes);
                if chunk.is_empty() {
                    continue;
                }
                let resp = self.send(job.request_body(&chunk)).await?;
                if resp.status.as_u16() == 413 && chunk.len() > 1 {
                    // Over the node's http.max_content_length: smaller
                    // requests from the same place.
                    max_records = (chunk.len() / 2).max(1);
                    last_error = "request too large".into();
                    next = start;
                    retry.truncate(held_before);
                    continue;
                }
                let results = match reply::read(&resp.success("_bulk")?, chunk.len(), "_bulk", "actions")? {
                    BulkReply::AllApplied => continue,
                    BulkReply::Items(results) => results,
                };
                for (&i, result) in chunk.iter().zip(&results) {
                    let item = &items[i];
                    // A later item of a document whose earlier item failed
                    // was applied out of order: apply it again after it.
                    if blocked.contains(&item.doc) && result.applied() {
                        retry.push(i);
                        continue;
                    }
                    match result.status {
                        200..=299 => {}
                        // A newer version is stored: this write is already applied.
                        409 => debug!(id = %item.doc.id, "stale write skipped (version conflict)"),
                        // Deleting a document that is not there.
                        404 if item.delete => {}
                        status if is_retriable_item_status(status) => {
                            last_error = result.error().to_string();
                            blocked.insert(&item.doc);
                            retry.push(i);
                        }
                        _ => rejected.push(Rejected { index: item.record, error: EsError::Refused(Box::new(result.error())).to_string() }),
                    }
                }
            }
            if retry.is_empty() {
                return Ok(rejected);
            }
            retry.sort_unstable();
            retry.dedup();
            let delay = backoff.next_delay();
            warn!(items = retry.len(), attempt, error = %last_error, retry_in = ?delay, "bulk items failed; retrying them");
            pgfanout_sdk::health::retrying(&last_error);
            tokio::time::sleep(delay).await;
            pending = retry;
        }
        Err(EsError::ItemsStillFailing { attempts: ITEM_ATTEMPTS })
    }

    /// One `_bulk` request, tagged with a fresh `X-Opaque-Id`. Statuses of
    /// the whole cluster (429, 5xx, credentials) are errors; any other
    /// answer is the caller's to read. A request without an answer is
    /// waited for ([`wait_until_gone`](Self::wait_until_gone)) before the
    /// error returns.
    async fn send(&self, body: bytes::Bytes) -> Result<crate::client::Response, EsError> {
        let id = format!("pgfanout-bulk-{}-{}", std::process::id(), BULK_IDS.fetch_add(1, Ordering::Relaxed));
        match self.client.send_tagged(Method::POST, BULK_PATH, Some((body, "application/x-ndjson")), Some(&id)).await {
            Ok(r) => Client::cluster_status(r),
            Err(e) => {
                // No answer (timeout, connection lost): the node may still
                // be applying the request. Sent again while it runs, it
                // could apply after what follows it here.
                self.wait_until_gone(&id).await;
                Err(e)
            }
        }
    }

    /// After a `_bulk` request got no answer: waits until the cluster no
    /// longer runs it (its `X-Opaque-Id` is gone from `GET _tasks`), so a
    /// request still queued on a slow node cannot apply after the retry and
    /// what follows it. Equal versions apply (one transaction's changes
    /// share one), so such a late request could bring a deleted document
    /// back or delete one inserted again in the same transaction. Gives up
    /// after ten minutes, or at once when the cluster does not let the sink
    /// list tasks (then says so).
    async fn wait_until_gone(&self, id: &str) {
        let started = Instant::now();
        let quoted = format!("\"{id}\"");
        let mut warned = false;
        loop {
            match self.client.send(Method::GET, "/_tasks?actions=indices:data/write/bulk*&detailed=true", None).await {
                Ok(r) if r.status.is_success() => {
                    if !r.body.windows(quoted.len()).any(|w| w == quoted.as_bytes()) {
                        return;
                    }
                    if !warned && started.elapsed() > Duration::from_secs(5) {
                        warn!(
                            request = id,
                            "a _bulk request without an answer is still running on the cluster; waiting for it before sending again"
                        );
                        warned = true;
                    }
                }
                Ok(r) if matches!(r.status.as_u16(), 400 | 401 | 403 | 404) => {
                    warn!(
                        request = id,
                        status = %r.status,
                        "cannot list the cluster's tasks to see whether a _bulk request without an answer still runs (grant the \
                         monitor privilege); sending it again at once"
                    );
                    return;
                }
                // Unreachable: a request on a node that is down died with it;
                // one on a node cut off will be looked for again.
                other => {
                    let why = match other {
                        Ok(r) => format!("answered {}", r.status),
                        Err(e) => e.to_string(),
                    };
                    pgfanout_sdk::health::retrying(&format_args!("a _bulk request got no answer; the cluster cannot be reached: {why}"));
                    if !warned && started.elapsed() > Duration::from_secs(2) {
                        warn!(request = id, error = %why, "a _bulk request got no answer and the cluster cannot be reached to see whether it still runs; asking again");
                        warned = true;
                    }
                }
            }
            if started.elapsed() > Duration::from_secs(600) {
                warn!(request = id, "gave up waiting for a _bulk request without an answer after 10 minutes; sending it again");
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The next `_bulk` request of a round: from `pending[*next..]` (indexes
/// into `items`), the items of documents not `blocked`, at most
/// `max_records` and `max_bytes` (at least one item). Items of blocked
/// documents passed over go to `retry`.
fn next_chunk(
    items: &[Item],
    pending: &[usize],
    next: &mut usize,
    blocked: &HashSet<&DocRef>,
    retry: &mut Vec<usize>,
    max_records: usize,
    max_bytes: usize,
) -> Vec<usize> {
    let mut chunk = Vec::new();
    let mut bytes = 0;
    while *next < pending.len() && chunk.len() < max_records {
        let i = pending[*next];
        if blocked.contains(&items[i].doc) {
            retry.push(i);
        } else {
            if !chunk.is_empty() && bytes + items[i].len() > max_bytes {
                break;
            }
            bytes += items[i].len();
            chunk.push(i);
        }
        *next += 1;
    }
    chunk
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::tests::ten_documents;

    #[test]
    fn bulk_requests_respect_the_limits_and_hold_back_blocked_documents() {
        let job = ten_documents();
        let pending: Vec<usize> = (0..10).collect();
        let (mut next, mut retry) = (0, Vec::new());
        let none = HashSet::new();
        assert_eq!(next_chunk(&job.items, &pending, &mut next, &none, &mut retry, 4, 1 << 20), vec![0, 1, 2, 3]);
        assert_eq!(next_chunk(&job.items, &pending, &mut next, &none, &mut retry, 100, 2000), vec![4, 5]);
        // One item larger than the limit still goes, alone.
        assert_eq!(next_chunk(&job.items, &pending, &mut next, &none, &mut retry, 100, 10), vec![6]);
        // A blocked document's items wait for the next round.
        let blocked: HashSet<&DocRef> = [&job.items[8].doc].into_iter().collect();
        assert_eq!(next_chunk(&job.items, &pending, &mut next, &blocked, &mut retry, 100, 1 << 20), vec![7, 9]);
        assert_eq!(retry, vec![8]);
    }
}
