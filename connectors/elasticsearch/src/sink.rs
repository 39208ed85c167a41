//! The search sink: plans each batch into `_bulk` actions, completes
//! partial changes, writes by document-id lanes and sorts out the per-item
//! results.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgfanout_sdk::settings::{BatchLimits, RetrySettings};
use pgfanout_sdk::{BatchOutcome, Change, InFlight, Op, Rejected, Sink, SinkError, SinkRecord, Template};
use reqwest::Method;
use serde_json::{Map, Value as Json};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::client::Client;
use crate::config::{DeleteMode, SearchMapping, SearchSinkConfig, TruncateMode};

/// How many times one `_bulk` item is retried (429, 5xx) before its lane
/// job fails and the lane sends the job again from its start.
const ITEM_ATTEMPTS: usize = 8;

/// Numbers the `_bulk` requests' `X-Opaque-Id`s.
static BULK_IDS: AtomicU64 = AtomicU64::new(0);

/// A compiled mapping.
pub(crate) struct Route {
    pub(crate) index: Template,
    /// The index name when the template has no placeholder (shared by
    /// every document instead of rendered per row).
    constant_index: Option<Arc<str>>,
    id: Option<Template>,
    routing: Option<Template>,
    /// `{"settings":..,"mappings":..}` for indexes the sink creates.
    create_body: Json,
    pipeline: Option<String>,
    pub(crate) delete: DeleteMode,
    pub(crate) soft_field: String,
    truncate: TruncateMode,
}

/// Where a document lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct DocRef {
    pub(crate) index: Arc<str>,
    pub(crate) id: String,
    pub(crate) routing: Option<String>,
}

/// One `_bulk` action of a record.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    /// Index the whole document (JSON object bytes).
    Index {
        doc: DocRef,
        version: i64,
        source: Vec<u8>,
        pipeline: Option<String>,
    },
    Delete {
        doc: DocRef,
        version: i64,
    },
    /// Merge `fields` into the stored document (unchanged TOAST columns, a
    /// soft delete); resolved into an `Index` before sending.
    /// `moved_from`: the document's old place when the key changed (its
    /// stored content is the base when the new place is empty).
    Partial {
        doc: DocRef,
        version: i64,
        fields: Map<String, Json>,
        pipeline: Option<String>,
        missing_ok: bool,
        moved_from: Option<DocRef>,
    },
}

impl Action {
    fn doc(&self) -> &DocRef {
        match self {
            Action::Index { doc, .. } | Action::Delete { doc, .. } | Action::Partial { doc, .. } => doc,
        }
    }
}

/// A planned record: its actions, or a truncate of an index.
pub(crate) enum Planned {
    Actions(usize, Vec<Action>),
    Truncate(usize, String),
}

impl Planned {
    /// Whether an action needs the stored document (read-merge-write).
    fn has_partial(&self) -> bool {
        matches!(self, Planned::Actions(_, a) if a.iter().any(|a| matches!(a, Action::Partial { .. })))
    }
}

/// The search sink. See the crate docs.
///
/// Batches are pipelined: [`Sink::submit`] plans a batch and hands each
/// document-id lane its actions; the lanes are tasks that send their jobs
/// one `_bulk` request at a time, in order, retrying failures until they
/// clear, so one document's changes are applied in order across every batch
/// in flight and no lane waits for another.
pub struct SearchSink {
    client: Arc<Client>,
    routes: Vec<Route>,
    lanes: Vec<mpsc::UnboundedSender<LaneJob>>,
    in_flight: usize,
    /// Indexes known to exist.
    ready: Mutex<HashSet<String>>,
}

impl SearchSink {
    /// Compiles the mappings and checks that the cluster answers.
    pub async fn connect(cfg: &SearchSinkConfig, mappings: Vec<SearchMapping>) -> Result<SearchSink, SinkError> {
        let routes = mappings
            .iter()
            .enumerate()
            .map(|(i, m)| compile(m).map_err(|e| SinkError::Permanent(format!("search mapping of route {i}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let client = Arc::new(Client::new(cfg)?);
        let lane = Arc::new(Lane { client: client.clone(), limits: cfg.bulk, retry: cfg.retry });
        let lanes = (0..cfg.concurrency.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(lane.clone().run(rx));
                tx
            })
            .collect();
        let sink = SearchSink { client, routes, lanes, in_flight: cfg.in_flight_batches.max(1), ready: Mutex::new(HashSet::new()) };
        let info = sink.ping().await?;
        info!(urls = ?cfg.urls, cluster = %info, routes = sink.routes.len(), "search sink connected");
        Ok(sink)
    }

    /// `GET /`: the engine and version, or why it does not answer.
    pub async fn ping(&self) -> Result<String, SinkError> {
        let resp = self.client.call(Method::GET, "/", None).await?;
        if !resp.status.is_success() {
            return Err(SinkError::Retriable(format!("search cluster answered {}: {}", resp.status, resp.text(300))));
        }
        let j = resp.json()?;
        let dist = j["version"]["distribution"].as_str().unwrap_or("elasticsearch");
        Ok(format!("{dist} {}", j["version"]["number"].as_str().unwrap_or("?")))
    }

    /// Whether `index` exists (for doctor).
    pub async fn index_exists(&self, index: &str) -> Result<bool, SinkError> {
        let resp = self.client.call(Method::HEAD, &format!("/{index}"), None).await?;
        Ok(resp.status.is_success())
    }

    /// Creates `index` with the route's settings and mappings unless it
    /// exists. A refusal (bad settings) is permanent for the records.
    async fn ensure_index(&self, index: &str, route: usize) -> Result<(), SinkError> {
        if self.ready.lock().unwrap_or_else(|e| e.into_inner()).contains(index) {
            return Ok(());
        }
        if !self.index_exists(index).await? {
            let body = serde_json::to_vec(&self.routes[route].create_body).unwrap_or_default();
            let resp = self.client.call(Method::PUT, &format!("/{index}"), Some((body, "application/json"))).await?;
            let exists = resp.text(2000).contains("resource_already_exists_exception");
            if !resp.status.is_success() && !exists {
                return Err(SinkError::Permanent(format!("cannot create index {index:?}: {} {}", resp.status, resp.text(500))));
            }
            if resp.status.is_success() {
                info!(index, "search index created");
            }
        }
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).insert(index.to_string());
        Ok(())
    }

    /// Turns each record into actions (or a rejection).
    fn plan(&self, batch: &[SinkRecord], rejected: &mut Vec<Rejected>) -> Vec<(Planned, usize)> {
        let mut out = Vec::with_capacity(batch.len());
        for (i, record) in batch.iter().enumerate() {
            let Some(route) = self.routes.get(record.route) else {
                rejected.push(Rejected { index: i, error: format!("no search mapping for route {}", record.route) });
                continue;
            };
            match plan_change(route, &record.change) {
                Ok(Some(Planned::Actions(_, a))) if a.is_empty() => {}
                Ok(Some(Planned::Actions(_, a))) => out.push((Planned::Actions(i, a), record.route)),
                Ok(Some(Planned::Truncate(_, index))) => out.push((Planned::Truncate(i, index), record.route)),
                Ok(None) => {}
                Err(e) => rejected.push(Rejected { index: i, error: e }),
            }
        }
        out
    }

    /// Reads the stored documents that partial actions merge into.
    async fn fetch(&self, docs: &[DocRef]) -> Result<HashMap<DocRef, Map<String, Json>>, SinkError> {
        let mut found = HashMap::new();
        for chunk in docs.chunks(500) {
            let body = serde_json::json!({
                "docs": chunk.iter().map(|d| {
                    let mut m = serde_json::json!({"_index": &*d.index, "_id": d.id});
                    if let Some(r) = &d.routing { m["routing"] = Json::from(r.clone()); }
                    m
                }).collect::<Vec<_>>()
            });
            let resp =
                self.client.call(Method::POST, "/_mget", Some((serde_json::to_vec(&body).unwrap_or_default(), "application/json"))).await?;
            if !resp.status.is_success() {
                return Err(SinkError::Retriable(format!("_mget answered {}: {}", resp.status, resp.text(300))));
            }
            let j = resp.json()?;
            let docs = j["docs"].as_array().map(Vec::as_slice).unwrap_or_default();
            if docs.len() != chunk.len() {
                return Err(SinkError::Retriable(format!("_mget returned {} documents for {} asked", docs.len(), chunk.len())));
            }
            for (d, got) in chunk.iter().zip(docs) {
                // A document the node could not read is not a missing one:
                // taking it for missing would dead-letter its partial change
                // (or write it half).
                if let Some(error) = got.get("error") {
                    return Err(SinkError::Retriable(format!("_mget could not read document {:?} of {:?}: {error}", d.id, d.index)));
                }
                if got["found"] == true {
                    if let Some(src) = got["_source"].as_object() {
                        found.insert(d.clone(), src.clone());
                    }
                }
            }
        }
        Ok(found)
    }

    /// Resolves partial actions into whole documents: the state left by the
    /// batch's earlier actions on the document, else the stored document.
    /// Called only for segments with a partial action.
    async fn resolve(&self, planned: &mut [(Planned, usize)], rejected: &mut Vec<Rejected>) -> Result<(), SinkError> {
        let mut seen_full: HashSet<DocRef> = HashSet::new();
        let mut need: Vec<DocRef> = Vec::new();
        // The documents partial actions read: only their content is tracked
        // through the batch.
        let mut relevant: HashSet<DocRef> = HashSet::new();
        for (p, _) in planned.iter() {
            if let Planned::Actions(_, actions) = p {
                for a in actions {
                    match a {
                        // Content written earlier in the batch needs no read.
                        Action::Index { doc, .. } => {
                            seen_full.insert(doc.clone());
                        }
                        Action::Delete { .. } => {}
                        Action::Partial { doc, moved_from, .. } => {
                            for d in std::iter::once(doc).chain(moved_from.as_ref()) {
                                relevant.insert(d.clone());
                                if !seen_full.contains(d) && !need.contains(d) {
                                    need.push(d.clone());
                                }
                            }
                        }
                    }
                }
            }
        }
        let stored = if need.is_empty() { HashMap::new() } else { self.fetch(&need).await? };
        // Per document: its state after the batch's actions so far (None:
        // deleted), and the last content it had (kept across a delete, for
        // a document that moves).
        let mut last_live: HashMap<DocRef, Map<String, Json>> = stored.clone();
        let mut state: HashMap<DocRef, Option<Map<String, Json>>> = stored.into_iter().map(|(k, v)| (k, Some(v))).collect();
        // Partials whose document is gone: (record, document, version, why).
        let mut unresolved: Vec<(usize, DocRef, i64, String)> = Vec::new();
        for (p, _) in planned.iter_mut() {
            let Planned::Actions(record, actions) = p else { continue };
            let mut failed = None;
            for a in actions.iter_mut() {
                match a {
                    Action::Index { doc, source, .. } => {
                        if relevant.contains(doc) {
                            let m = serde_json::from_slice::<Map<String, Json>>(source).unwrap_or_default();
                            last_live.insert(doc.clone(), m.clone());
                            state.insert(doc.clone(), Some(m));
                        }
                    }
                    Action::Delete { doc, .. } => {
                        state.insert(doc.clone(), None);
                    }
                    Action::Partial { doc, version, fields, pipeline, missing_ok, moved_from } => {
                        let base =
                            state.get(doc).cloned().flatten().or_else(|| moved_from.as_ref().and_then(|old| last_live.get(old).cloned()));
                        let merged = match base {
                            Some(mut m) => {
                                for (k, v) in std::mem::take(fields) {
                                    m.insert(k, v);
                                }
                                m
                            }
                            None if *missing_ok => std::mem::take(fields),
                            None => {
                                failed = Some((
                                    doc.clone(),
                                    *version,
                                    format!(
                                        "document {:?} of index {:?} is missing, and this change does not carry its unchanged TOAST \
                                         columns (REPLICA IDENTITY FULL would); it is not written half: re-copy the row (e.g. touch it \
                                         in PostgreSQL, or `pgfanout backfill`)",
                                        doc.id, doc.index
                                    ),
                                ));
                                break;
                            }
                        };
                        state.insert(doc.clone(), Some(merged.clone()));
                        last_live.insert(doc.clone(), merged.clone());
                        *a = Action::Index {
                            doc: doc.clone(),
                            version: *version,
                            source: serde_json::to_vec(&merged).unwrap_or_default(),
                            pipeline: pipeline.clone(),
                        };
                    }
                }
            }
            if let Some((doc, version, error)) = failed {
                // Nothing of the record is written until the store says
                // whether a newer change removed the document.
                actions.clear();
                unresolved.push((*record, doc, version, error));
            }
        }
        if !unresolved.is_empty() {
            let newer = self.removed_by_newer(&unresolved).await?;
            for ((record, doc, _, error), newer) in unresolved.into_iter().zip(newer) {
                if newer {
                    // Replayed after a crash: a later change already moved or
                    // deleted the document, so this one is superseded.
                    debug!(id = %doc.id, index = %doc.index, "partial change skipped: a newer change removed its document");
                } else {
                    rejected.push(Rejected { index: record, error });
                }
            }
        }
        Ok(())
    }

    /// For each (document, version): whether the index remembers a newer
    /// version of it than `version`, although it is gone (a delete or move
    /// by a later change). Asked with a versioned delete of the missing
    /// document (`version_type=external_gte`): a conflict means a newer
    /// delete tombstone; "not found" means none (the delete then leaves a
    /// tombstone at `version`, which changes nothing: the document is not
    /// there and newer writes pass it). Tombstones live for the index's
    /// `index.gc_deletes` (60 s by default); an older delete is not seen
    /// and the change is dead-lettered as before. The lanes are drained, so
    /// nothing of this sink is in flight meanwhile.
    async fn removed_by_newer(&self, docs: &[(usize, DocRef, i64, String)]) -> Result<Vec<bool>, SinkError> {
        let mut body = Vec::new();
        for (_, doc, version, _) in docs {
            encode_action(&mut body, &Action::Delete { doc: doc.clone(), version: *version });
        }
        let resp = Client::cluster_status(self.client.send(Method::POST, BULK_PATH, Some((body, "application/x-ndjson"))).await?)?;
        if !resp.status.is_success() {
            return Err(SinkError::Retriable(format!("_bulk (tombstone check) answered {}: {}", resp.status, resp.text(300))));
        }
        let j = resp.json()?;
        let answers = j["items"].as_array().map(Vec::as_slice).unwrap_or_default();
        if answers.len() != docs.len() {
            return Err(SinkError::Retriable(format!("_bulk returned {} results for {} tombstone checks", answers.len(), docs.len())));
        }
        answers
            .iter()
            .map(|a| {
                let status = a["delete"]["status"].as_u64().unwrap_or(0);
                match status {
                    409 => Ok(true),
                    200..=299 | 404 => Ok(false),
                    _ => Err(SinkError::Retriable(format!("tombstone check answered {status}: {}", item_error(&a["delete"])))),
                }
            })
            .collect()
    }

    /// Hands actions (each tagged with its record) to their document
    /// lanes, encoded; the receivers answer with the lanes' rejections.
    fn dispatch(&self, actions: Vec<(usize, Action)>, done: &mut Vec<oneshot::Receiver<Vec<Rejected>>>) {
        let n = self.lanes.len();
        let lanes: Vec<usize> = actions
            .iter()
            .map(|(_, a)| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                a.doc().hash(&mut h);
                (h.finish() % n as u64) as usize
            })
            .collect();
        // Each lane's body allocated once, at its size.
        let mut sizes = vec![0usize; n];
        for ((_, a), &lane) in actions.iter().zip(&lanes) {
            sizes[lane] += encoded_len(a);
        }
        let mut jobs: Vec<(Vec<u8>, Vec<Item>)> = sizes.into_iter().map(|size| (Vec::with_capacity(size), Vec::new())).collect();
        for ((record, a), lane) in actions.into_iter().zip(lanes) {
            let (body, items) = &mut jobs[lane];
            let start = body.len();
            encode_action(body, &a);
            let delete = matches!(a, Action::Delete { .. });
            let doc = match a {
                Action::Index { doc, .. } | Action::Delete { doc, .. } | Action::Partial { doc, .. } => doc,
            };
            items.push(Item { record, doc, delete, start, end: body.len() });
        }
        for (lane, (body, items)) in self.lanes.iter().zip(jobs) {
            if !items.is_empty() {
                let (tx, rx) = oneshot::channel();
                // A closed lane leaves the receiver without an answer: the
                // batch fails as retriable.
                let _ = lane.send(LaneJob { job: Encoded { body: body.into(), items }, done: tx });
                done.push(rx);
            }
        }
    }

    /// Waits until every lane has sent everything dispatched so far.
    async fn drain(&self) -> Result<(), SinkError> {
        let mut done = Vec::new();
        for lane in &self.lanes {
            let (tx, rx) = oneshot::channel();
            let _ = lane.send(LaneJob { job: Encoded::default(), done: tx });
            done.push(rx);
        }
        for rx in done {
            lane_answer(rx).await?;
        }
        Ok(())
    }

    async fn truncate(&self, index: &str) -> Result<(), SinkError> {
        let body = br#"{"query":{"match_all":{}}}"#.to_vec();
        let resp = self
            .client
            .call(Method::POST, &format!("/{index}/_delete_by_query?conflicts=proceed&refresh=true"), Some((body, "application/json")))
            .await?;
        if resp.status.as_u16() == 404 || resp.status.is_success() {
            info!(index, "index emptied for a TRUNCATE");
            Ok(())
        } else {
            Err(SinkError::Permanent(format!("_delete_by_query on {index:?} answered {}: {}", resp.status, resp.text(300))))
        }
    }
}

impl Sink for SearchSink {
    async fn write(&mut self, batch: &[SinkRecord]) -> BatchOutcome {
        self.submit(batch.into()).await?.await
    }

    fn max_in_flight(&self) -> usize {
        self.in_flight
    }

    async fn submit(&mut self, batch: Arc<[SinkRecord]>) -> Result<InFlight, SinkError> {
        let mut rejected = Vec::new();
        let mut planned = self.plan(&batch, &mut rejected);
        // Indexes first (created with the mapping's settings when missing).
        let mut indexes: Vec<(String, usize)> = Vec::new();
        for (p, route) in &planned {
            if let Planned::Actions(_, actions) = p {
                for a in actions {
                    if !indexes.iter().any(|(i, _)| **i == *a.doc().index) {
                        indexes.push((a.doc().index.to_string(), *route));
                    }
                }
            }
        }
        for (index, route) in &indexes {
            if let Err(e) = self.ensure_index(index, *route).await {
                if e.is_retriable() {
                    return Err(e);
                }
                // Records of that index are refused with the reason.
                for (p, _) in planned.iter_mut() {
                    if let Planned::Actions(record, actions) = p {
                        if actions.iter().any(|a| *a.doc().index == **index) {
                            rejected.push(Rejected { index: *record, error: e.to_string() });
                            actions.clear();
                        }
                    }
                }
            }
        }
        // Segments between truncates keep their order around them: a
        // truncate waits until the lanes have sent everything before it.
        let mut done = Vec::new();
        let mut segment: Vec<(Planned, usize)> = Vec::new();
        for (p, route) in planned {
            match p {
                Planned::Truncate(record, index) => {
                    self.dispatch_segment(std::mem::take(&mut segment), &mut rejected, &mut done).await?;
                    if self.routes[route].truncate == TruncateMode::DeleteByQuery {
                        self.drain().await?;
                        match self.truncate(&index).await {
                            Ok(()) => {}
                            Err(SinkError::Permanent(error)) => rejected.push(Rejected { index: record, error }),
                            Err(e) => return Err(e),
                        }
                    }
                }
                other => segment.push((other, route)),
            }
        }
        self.dispatch_segment(segment, &mut rejected, &mut done).await?;
        Ok(Box::pin(async move {
            for rx in done {
                rejected.extend(lane_answer(rx).await?);
            }
            rejected.sort_by_key(|r| r.index);
            rejected.dedup_by_key(|r| r.index);
            Ok(rejected)
        }))
    }

    async fn check(&mut self) -> Result<(), SinkError> {
        self.ping().await.map(|_| ())
    }
}

impl SearchSink {
    /// Resolves a segment's partial actions (after the lanes sent all that
    /// came before: they read the stored documents) and dispatches it.
    async fn dispatch_segment(
        &self,
        mut segment: Vec<(Planned, usize)>,
        rejected: &mut Vec<Rejected>,
        done: &mut Vec<oneshot::Receiver<Vec<Rejected>>>,
    ) -> Result<(), SinkError> {
        if segment.is_empty() {
            return Ok(());
        }
        // Nothing to resolve (the common case) costs one scan: parsing every
        // indexed document back was a third of the sink's CPU.
        if segment.iter().any(|(p, _)| p.has_partial()) {
            self.drain().await?;
            self.resolve(&mut segment, rejected).await?;
        }
        let mut actions = Vec::new();
        for (p, _) in segment {
            if let Planned::Actions(record, a) = p {
                actions.extend(a.into_iter().map(|a| (record, a)));
            }
        }
        self.dispatch(actions, done);
        Ok(())
    }
}

/// A lane's work: actions in order, and where to answer with rejections
/// once all are applied (an empty job is a barrier).
struct LaneJob {
    job: Encoded,
    done: oneshot::Sender<Vec<Rejected>>,
}

/// A lane job's actions, encoded once as `_bulk` NDJSON in order (each
/// action's metadata line and, for an index, its document line). The
/// documents' JSON lives only here while the job is queued or in flight,
/// not in a buffer per action and again in each request's body: a request
/// is a slice of `body` (a copy only for the items a retry picks out).
#[derive(Default)]
struct Encoded {
    body: bytes::Bytes,
    items: Vec<Item>,
}

/// One action of an [`Encoded`] job.
struct Item {
    /// The batch record it came from (for its rejection).
    record: usize,
    doc: DocRef,
    delete: bool,
    /// Its lines: `body[start..end]`.
    start: usize,
    end: usize,
}

impl Item {
    fn len(&self) -> usize {
        self.end - self.start
    }
}

impl Encoded {
    /// The `_bulk` body of these items (indexes into `items`, in order): a
    /// slice of the job's body when they lie side by side in it.
    fn request_body(&self, chunk: &[usize]) -> bytes::Bytes {
        let (Some(&first), Some(&last)) = (chunk.first(), chunk.last()) else { return bytes::Bytes::new() };
        if chunk.windows(2).all(|w| self.items[w[1]].start == self.items[w[0]].end) {
            return self.body.slice(self.items[first].start..self.items[last].end);
        }
        let mut body = Vec::with_capacity(chunk.iter().map(|&i| self.items[i].len()).sum());
        for &i in chunk {
            body.extend_from_slice(&self.body[self.items[i].start..self.items[i].end]);
        }
        body.into()
    }
}

/// A lane's answer to a job: its rejections (a lane that stopped never
/// answers: retriable).
async fn lane_answer(rx: oneshot::Receiver<Vec<Rejected>>) -> Result<Vec<Rejected>, SinkError> {
    rx.await.map_err(|_| SinkError::Retriable("a search sink lane stopped".into()))
}

/// What every lane task shares.
struct Lane {
    client: Arc<Client>,
    limits: BatchLimits,
    retry: RetrySettings,
}

impl Lane {
    /// Sends jobs in arrival order. A job that fails (node down, items
    /// still refused with 429/5xx after the item retries) is sent again from
    /// its start after a backoff, until it goes through: replaying a job's
    /// prefix in order is harmless, and nothing queued after it may pass it.
    async fn run(self: Arc<Self>, mut jobs: mpsc::UnboundedReceiver<LaneJob>) {
        while let Some(job) = jobs.recv().await {
            let mut backoff = self.retry.backoff();
            let rejected = loop {
                if job.job.items.is_empty() {
                    break Vec::new();
                }
                match self.send(&job.job).await {
                    Ok(rejected) => break rejected,
                    Err(e) => {
                        let delay = backoff.next_delay();
                        warn!(error = %e, actions = job.job.items.len(), retry_in = ?delay, "bulk request failed; sending it again");
                        tokio::time::sleep(delay).await;
                    }
                }
            };
            let _ = job.done.send(rejected);
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
                _ => {}
            }
            if started.elapsed() > Duration::from_secs(600) {
                warn!(request = id, "gave up waiting for a _bulk request without an answer after 10 minutes; sending it again");
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// One job: `_bulk` requests within the limits; per-item results.
    ///
    /// Per-document order survives retries: once an item of a document
    /// fails (429, 5xx), its later items are not sent in this round, and
    /// later items of it that the same request already applied are sent
    /// again after it. Versions alone would not do: the changes of one
    /// transaction share a version, and equal versions apply (an insert
    /// retried after its own transaction's delete would bring the row back).
    async fn send(&self, job: &Encoded) -> Result<Vec<Rejected>, SinkError> {
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
                let body = job.request_body(&chunk);
                let id = format!("pgfanout-bulk-{}-{}", std::process::id(), BULK_IDS.fetch_add(1, Ordering::Relaxed));
                let sent = match self.client.send_tagged(Method::POST, BULK_PATH, Some((body, "application/x-ndjson")), Some(&id)).await {
                    Ok(r) => Client::cluster_status(r),
                    Err(e) => {
                        // No answer (timeout, connection lost): the node may
                        // still be applying the request. Sent again while it
                        // runs, it could apply after what follows it here.
                        self.wait_until_gone(&id).await;
                        return Err(e);
                    }
                };
                let resp = match sent {
                    Ok(r) if r.status.as_u16() == 413 && chunk.len() > 1 => {
                        // Over the node's http.max_content_length: smaller
                        // requests from the same place.
                        max_records = (chunk.len() / 2).max(1);
                        last_error = "request too large".into();
                        next = start;
                        retry.truncate(held_before);
                        continue;
                    }
                    Ok(r) if !r.status.is_success() => {
                        return Err(SinkError::Retriable(format!("_bulk answered {}: {}", r.status, r.text(300))));
                    }
                    Ok(r) => r,
                    Err(e) => return Err(e),
                };
                // The common answer, every item applied: read without
                // building the items (a third of the sink's CPU when they
                // were parsed and cloned).
                if let Ok(summary) = serde_json::from_slice::<BulkSummary>(&resp.body) {
                    if !summary.errors && summary.items.len() == chunk.len() {
                        continue;
                    }
                }
                let j = resp.json()?;
                let no_items = Vec::new();
                let answers = j["items"].as_array().unwrap_or(&no_items);
                if answers.len() != chunk.len() {
                    return Err(SinkError::Retriable(format!("_bulk returned {} results for {} actions", answers.len(), chunk.len())));
                }
                for (&i, answer) in chunk.iter().zip(answers) {
                    let item = &items[i];
                    let result = answer.as_object().and_then(|o| o.values().next()).unwrap_or(&Json::Null);
                    let status = result["status"].as_u64().unwrap_or(0);
                    // A later item of a document whose earlier item failed
                    // was applied out of order: apply it again after it.
                    if blocked.contains(&item.doc) && (200..300).contains(&status) {
                        retry.push(i);
                        continue;
                    }
                    match status {
                        200..=299 => {}
                        // A newer version is stored: this write is already applied.
                        409 => debug!(id = %item.doc.id, "stale write skipped (version conflict)"),
                        // Deleting a document that is not there.
                        404 if item.delete => {}
                        429 | 500..=599 | 0 => {
                            last_error = item_error(result);
                            blocked.insert(&item.doc);
                            retry.push(i);
                        }
                        _ => rejected.push(Rejected {
                            index: item.record,
                            error: format!("search engine refused the document: {}", item_error(result)),
                        }),
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
            tokio::time::sleep(delay).await;
            pending = retry;
        }
        Err(SinkError::Retriable(format!("bulk items still failing after {ITEM_ATTEMPTS} attempts")))
    }
}

pub(crate) fn compile(m: &SearchMapping) -> Result<Route, String> {
    let t = |s: &str| Template::parse(s).map_err(|e| e.to_string());
    let mut create_body = serde_json::json!({});
    if let Some(file) = &m.index_file {
        let text = std::fs::read_to_string(file).map_err(|e| format!("index_file {}: {e}", file.display()))?;
        create_body = serde_json::from_str(&text).map_err(|e| format!("index_file {}: not JSON: {e}", file.display()))?;
    }
    if let Some(s) = &m.settings {
        create_body["settings"] = s.clone();
    }
    if let Some(s) = &m.mappings {
        create_body["mappings"] = s.clone();
    }
    let index = t(&m.index)?;
    Ok(Route {
        constant_index: (index.is_constant() && !index.source().contains(['{', '}'])).then(|| Arc::from(index.source().to_lowercase())),
        index,
        id: m.id.as_deref().map(t).transpose()?,
        routing: m.routing.as_deref().map(t).transpose()?,
        create_body,
        pipeline: m.pipeline.clone(),
        delete: m.delete,
        soft_field: m.soft_delete_field.clone(),
        truncate: m.truncate,
    })
}

/// The document a change addresses, rendered from `change` (its `after`
/// first) or from its old row only (`old = true`).
fn doc_ref(route: &Route, change: &Change, old: bool) -> Result<DocRef, String> {
    let view;
    let c = if old {
        view = Change { after: None, ..change.clone() };
        &view
    } else {
        change
    };
    let index = match &route.constant_index {
        Some(name) => name.clone(),
        None => route.index.render(c).map_err(|e| format!("index: {e}"))?.to_lowercase().into(),
    };
    let id = match &route.id {
        Some(t) => t.render(c).map_err(|e| format!("id: {e}"))?,
        None => {
            // The key columns' values: the new ones from `key`, the old ones
            // from `before` (which under REPLICA IDENTITY FULL holds more
            // than the key: only the key columns count).
            let key = c.key.as_ref().ok_or("id: the change has no key columns; set `id:` in the mapping")?;
            key.iter()
                .map(|(name, v)| match (old, c.before.as_ref().and_then(|b| b.get(name))) {
                    (true, Some(o)) => o.to_template_text(),
                    _ => v.to_template_text(),
                })
                .collect::<Vec<_>>()
                .join(":")
        }
    };
    let routing = route.routing.as_ref().map(|t| t.render(c)).transpose().map_err(|e| format!("routing: {e}"))?;
    Ok(DocRef { index, id, routing })
}

/// Appends `"name": value` (value: JSON text) to the JSON object in `doc`.
fn add_field(doc: &mut Vec<u8>, name: &str, value: &str) {
    if doc.last() == Some(&b'}') {
        doc.pop();
        if doc.len() > 1 {
            doc.push(b',');
        }
        pgfanout_sdk::json::write_str(doc, name);
        doc.push(b':');
        doc.extend_from_slice(value.as_bytes());
        doc.push(b'}');
    }
}

/// The JSON object of a row. Numbers keep their digits (serde_json's
/// `arbitrary_precision`: no `f64` on the merge path). Err only for a
/// value that is not JSON (never made by the source): the record is
/// refused with the reason, never written as an empty document.
fn row_object(row: &pgfanout_sdk::Row) -> Result<Map<String, Json>, String> {
    let mut out = Vec::new();
    row.write_json(&mut out);
    serde_json::from_slice(&out).map_err(|e| format!("the row is not a JSON object ({e})"))
}

pub(crate) fn plan_change(route: &Route, change: &Change) -> Result<Option<Planned>, String> {
    let version = change.position().commit_version();
    match change.op {
        Op::Truncate => Ok((route.truncate == TruncateMode::DeleteByQuery)
            .then(|| route.index.render(change).map(|i| Planned::Truncate(0, i.to_lowercase())))
            .transpose()
            .map_err(|e| format!("index: {e}"))?),
        Op::Delete => {
            let doc = doc_ref(route, change, false)?;
            let action = match route.delete {
                DeleteMode::Delete => Action::Delete { doc, version },
                DeleteMode::Soft => {
                    let mut fields = change.row().map(row_object).transpose()?.unwrap_or_default();
                    fields.insert(route.soft_field.clone(), Json::Bool(true));
                    Action::Partial { doc, version, fields, pipeline: route.pipeline.clone(), missing_ok: true, moved_from: None }
                }
            };
            Ok(Some(Planned::Actions(0, vec![action])))
        }
        Op::Insert | Op::Update | Op::Read => {
            let Some(after) = &change.after else { return Ok(None) };
            let doc = doc_ref(route, change, false)?;
            let mut actions = Vec::with_capacity(2);
            // A key change moves the document: the old one goes.
            let mut moved_from = None;
            if change.op == Op::Update && change.before.is_some() {
                let old = doc_ref(route, change, true)?;
                if old != doc {
                    actions.push(Action::Delete { doc: old.clone(), version });
                    moved_from = Some(old);
                }
            }
            // The common case, a whole row: its JSON is the document, written
            // once (no map in between).
            if change.unchanged_toast.is_empty() {
                let mut source = Vec::with_capacity(256);
                after.write_json(&mut source);
                if route.delete == DeleteMode::Soft {
                    add_field(&mut source, &route.soft_field, "false");
                }
                actions.push(Action::Index { doc, version, source, pipeline: route.pipeline.clone() });
                return Ok(Some(Planned::Actions(0, actions)));
            }
            let mut fields = row_object(after)?;
            let mut missing: Vec<&str> = Vec::new();
            for col in &change.unchanged_toast {
                match change.before.as_ref().and_then(|b| b.get(col)) {
                    // REPLICA IDENTITY FULL: the old row has the value.
                    Some(v) => {
                        let value = serde_json::from_str(&v.to_json_string()).map_err(|e| format!("column {col}: not JSON ({e})"))?;
                        fields.insert(col.to_string(), value);
                    }
                    None => missing.push(col),
                }
            }
            if route.delete == DeleteMode::Soft {
                fields.insert(route.soft_field.clone(), Json::Bool(false));
            }
            if missing.is_empty() {
                let source = serde_json::to_vec(&fields).unwrap_or_default();
                actions.push(Action::Index { doc, version, source, pipeline: route.pipeline.clone() });
            } else {
                actions.push(Action::Partial { doc, version, fields, pipeline: route.pipeline.clone(), missing_ok: false, moved_from });
            }
            Ok(Some(Planned::Actions(0, actions)))
        }
    }
}

/// An action's `_bulk` lines: its metadata line and, for an index, its
/// document line.
fn encode_action(body: &mut Vec<u8>, a: &Action) {
    let (meta_kind, doc, version, source, pipeline) = match a {
        Action::Index { doc, version, source, pipeline } => ("index", doc, version, Some(source), pipeline.as_ref()),
        Action::Delete { doc, version } => ("delete", doc, version, None, None),
        Action::Partial { .. } => unreachable!("partial actions are resolved before sending"),
    };
    // {"index":{"_index":…,"_id":…,"version":N,"version_type":"external_gte"[,"routing":…][,"pipeline":…]}}
    body.extend_from_slice(b"{\"");
    body.extend_from_slice(meta_kind.as_bytes());
    body.extend_from_slice(b"\":{\"_index\":");
    pgfanout_sdk::json::write_str(body, &doc.index);
    body.extend_from_slice(b",\"_id\":");
    pgfanout_sdk::json::write_str(body, &doc.id);
    body.extend_from_slice(b",\"version\":");
    // Into the body directly (a Vec never fails a write).
    let _ = std::io::Write::write_fmt(body, format_args!("{version}"));
    body.extend_from_slice(b",\"version_type\":\"external_gte\"");
    if let Some(r) = &doc.routing {
        body.extend_from_slice(b",\"routing\":");
        pgfanout_sdk::json::write_str(body, r);
    }
    if let Some(p) = pipeline {
        body.extend_from_slice(b",\"pipeline\":");
        pgfanout_sdk::json::write_str(body, p);
    }
    body.extend_from_slice(b"}}\n");
    if let Some(s) = source {
        body.extend_from_slice(s);
        body.push(b'\n');
    }
}

/// About the length of [`encode_action`]'s lines (exact unless a name
/// needs escaping), to size a body once.
fn encoded_len(a: &Action) -> usize {
    let (doc, source, pipeline) = match a {
        Action::Index { doc, source, pipeline, .. } => (doc, source.len() + 1, pipeline.as_ref().map_or(0, |p| p.len() + 14)),
        Action::Delete { doc, .. } | Action::Partial { doc, .. } => (doc, 0, 0),
    };
    // `{"delete":{"_index":"","_id":"","version":,"version_type":"external_gte"}}\n` and a 20-digit version.
    let meta = 76 + 20 + doc.index.len() + doc.id.len() + doc.routing.as_ref().map_or(0, |r| r.len() + 13);
    meta + source + pipeline
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

/// `_bulk`, answering only what is read of each item: its status and, when
/// it failed, its error. The full answer (index, id, version, shards, seq_no
/// per item) is ~8 times larger: memory held per request in flight, and
/// work for the search node, which shares the machine.
const BULK_PATH: &str = "/_bulk?filter_path=errors,items.*.status,items.*.error";

/// A `_bulk` answer read for its verdict only: `errors` and the number of
/// items.
#[derive(serde::Deserialize)]
struct BulkSummary {
    #[serde(default = "yes")]
    errors: bool,
    #[serde(default)]
    items: Vec<serde::de::IgnoredAny>,
}

fn yes() -> bool {
    true
}

fn item_error(result: &Json) -> String {
    let e = &result["error"];
    match (e["type"].as_str(), e["reason"].as_str()) {
        (Some(t), Some(r)) => {
            let cause = e["caused_by"]["reason"].as_str().map(|c| format!(" ({c})")).unwrap_or_default();
            format!("{} {t}: {r}{cause}", result["status"])
        }
        _ => format!("{} {}", result["status"], e),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pgfanout_sdk::{Lsn, Row, Value};

    use super::*;

    fn route(m: serde_json::Value) -> Route {
        compile(&serde_json::from_value(m).unwrap()).unwrap()
    }

    fn change(op: Op, after: Option<Row>, before: Option<Row>, toast: &[&str]) -> Change {
        Change {
            op,
            schema: "public".into(),
            table: "products".into(),
            key: Some(Row(vec![("id".into(), Value::Number("7".into()))])),
            before,
            after,
            unchanged_toast: toast.iter().map(|s| Arc::from(*s)).collect(),
            lsn: Lsn(10),
            commit_lsn: Lsn(1 << 48),
            ordinal: 3,
            xid: Some(1),
            commit_ts: Some(0),
        }
    }

    fn row(cols: &[(&str, &str)]) -> Row {
        Row(cols.iter().map(|(k, v)| (Arc::from(*k), Value::String((*v).into()))).collect())
    }

    #[test]
    fn full_rows_index_with_the_commit_lsn_as_external_version() {
        let r = route(serde_json::json!({"index": "{table}", "pipeline": "p"}));
        let c = change(Op::Update, Some(row(&[("id", "7"), ("name", "x")])), None, &[]);
        let Some(Planned::Actions(_, a)) = plan_change(&r, &c).unwrap() else { panic!() };
        let mut body = Vec::new();
        encode_action(&mut body, &a[0]);
        assert!(body.len() <= encoded_len(&a[0]), "{} > {}", body.len(), encoded_len(&a[0]));
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains(r#""_id":"7""#) && text.contains(r#""version":281474976710656"#) && text.contains("external_gte"), "{text}");
        assert!(text.contains(r#""pipeline":"p""#) && text.contains(r#""_index":"products""#), "{text}");
    }

    #[test]
    fn whole_rows_are_written_as_their_json_and_soft_deletes_add_the_flag() {
        let mut doc = br#"{"id":7}"#.to_vec();
        add_field(&mut doc, "_deleted", "false");
        assert_eq!(doc, br#"{"id":7,"_deleted":false}"#);
        let mut empty = b"{}".to_vec();
        add_field(&mut empty, "d", "true");
        assert_eq!(empty, br#"{"d":true}"#);
        let r = route(serde_json::json!({"index": "p", "delete": "soft"}));
        let c = change(Op::Insert, Some(row(&[("id", "7"), ("name", "x")])), None, &[]);
        let Some(Planned::Actions(_, a)) = plan_change(&r, &c).unwrap() else { panic!() };
        let Action::Index { source, .. } = &a[0] else { panic!() };
        let doc: Json = serde_json::from_slice(source).unwrap();
        assert_eq!(doc["_deleted"], false);
        assert_eq!(doc["name"], "x");
    }

    #[test]
    fn unchanged_toast_is_completed_from_before_or_merged() {
        let r = route(serde_json::json!({"index": "products"}));
        let full_before = change(Op::Update, Some(row(&[("id", "7")])), Some(row(&[("id", "7"), ("bio", "long")])), &["bio"]);
        let Some(Planned::Actions(_, a)) = plan_change(&r, &full_before).unwrap() else { panic!() };
        assert!(matches!(&a[0], Action::Index { source, .. } if String::from_utf8_lossy(source).contains("long")));
        let partial = change(Op::Update, Some(row(&[("id", "7")])), None, &["bio"]);
        let Some(Planned::Actions(_, a)) = plan_change(&r, &partial).unwrap() else { panic!() };
        assert!(matches!(&a[0], Action::Partial { missing_ok: false, .. }));
    }

    #[test]
    fn a_key_change_deletes_the_old_document() {
        let r = route(serde_json::json!({"index": "products", "id": "{id}"}));
        let c = change(Op::Update, Some(row(&[("id", "8")])), Some(row(&[("id", "7")])), &[]);
        let Some(Planned::Actions(_, a)) = plan_change(&r, &c).unwrap() else { panic!() };
        assert!(matches!(&a[0], Action::Delete { doc, .. } if doc.id == "7"));
        assert!(matches!(&a[1], Action::Index { doc, .. } if doc.id == "8"));
    }

    #[test]
    fn bulk_requests_respect_the_limits_and_slice_the_jobs_body() {
        let r = route(serde_json::json!({"index": "products", "id": "{id}"}));
        let mut body = Vec::new();
        let mut items = Vec::new();
        for id in 0..10 {
            let c = change(Op::Insert, Some(row(&[("id", &id.to_string()), ("pad", &"x".repeat(600))])), None, &[]);
            let Some(Planned::Actions(_, a)) = plan_change(&r, &c).unwrap() else { panic!() };
            let start = body.len();
            encode_action(&mut body, &a[0]);
            let Action::Index { doc, .. } = a.into_iter().next().unwrap() else { panic!() };
            items.push(Item { record: id, doc, delete: false, start, end: body.len() });
        }
        let job = Encoded { body: body.into(), items };
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
        // Side by side: a slice of the job's body; apart: a copy of the two.
        let both = job.request_body(&[4, 5]);
        assert_eq!(both.as_ptr(), job.body[job.items[4].start..].as_ptr());
        let apart = job.request_body(&[7, 9]);
        let text = String::from_utf8(apart.to_vec()).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(text.contains(r#""_id":"7""#) && text.contains(r#""_id":"9""#) && !text.contains(r#""_id":"8""#), "{text}");
        assert!(text.lines().all(|l| serde_json::from_str::<Json>(l).is_ok()), "{text}");
    }
}
