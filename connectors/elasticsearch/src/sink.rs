//! The search sink: the path of a batch.
//!
//! [`plan`](crate::plan) each record into `_bulk` actions → make sure their
//! indexes exist ([`index`](crate::index)) → per segment between truncates,
//! complete partial changes from the stored documents
//! ([`merge`](crate::merge)) → encode and hand the actions to their
//! document lanes ([`lane`](crate::lane), [`encode`](crate::encode)), which
//! send them with retries ([`retry`](crate::retry)) and read each item's
//! result ([`reply`](crate::reply)) → the batch is acknowledged once every
//! lane answered, with the records the index refused.
//!
//! Errors are [`EsError`]s inside the crate; they become the runtime's
//! [`SinkError`] here, at the boundary.

use std::sync::Arc;

use pgfanout_sdk::{BatchOutcome, InFlight, Rejected, Sink, SinkError, SinkRecord};
use tracing::info;

use crate::client::Client;
use crate::config::{SearchMapping, SearchSinkConfig, TruncateMode};
use crate::error::EsError;
use crate::index::{self, Indexes};
use crate::lane::{self, LaneAnswer, Lanes};
use crate::merge;
use crate::plan::{plan_batch, Planned};
use crate::retry::BulkWriter;
use crate::route::{compile, Route};

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
    lanes: Lanes,
    in_flight: usize,
    indexes: Indexes,
}

impl SearchSink {
    /// Compiles the mappings and checks that the cluster answers.
    pub async fn connect(cfg: &SearchSinkConfig, mappings: Vec<SearchMapping>) -> Result<SearchSink, SinkError> {
        let routes = mappings
            .iter()
            .enumerate()
            .map(|(route, m)| compile(m).map_err(|e| EsError::Mapping { route, source: Box::new(e) }))
            .collect::<Result<Vec<_>, _>>()?;
        let client = Arc::new(Client::new(cfg)?);
        let writer = BulkWriter { client: client.clone(), limits: cfg.bulk, retry: cfg.retry };
        let lanes = Lanes::spawn(writer, cfg.concurrency);
        let sink = SearchSink { client, routes, lanes, in_flight: cfg.in_flight_batches.max(1), indexes: Indexes::default() };
        let info = sink.ping().await?;
        info!(urls = ?cfg.urls, cluster = %info, routes = sink.routes.len(), "search sink connected");
        Ok(sink)
    }

    /// `GET /`: the engine and version, or why it does not answer.
    pub async fn ping(&self) -> Result<String, SinkError> {
        Ok(self.client.info().await?)
    }

    /// Whether `index` exists (for doctor).
    pub async fn index_exists(&self, index: &str) -> Result<bool, SinkError> {
        Ok(index::exists(&self.client, index).await?)
    }

    /// Creates the indexes the planned actions write to, when missing. A
    /// retriable failure fails the batch; an index that cannot be created
    /// rejects its records with the reason.
    async fn ensure_indexes(&self, planned: &mut [(Planned, usize)], rejected: &mut Vec<Rejected>) -> Result<(), EsError> {
        let mut indexes: Vec<(String, usize)> = Vec::new();
        for (p, route) in planned.iter() {
            if let Planned::Actions(_, actions) = p {
                for a in actions {
                    if !indexes.iter().any(|(i, _)| **i == *a.doc().index) {
                        indexes.push((a.doc().index.to_string(), *route));
                    }
                }
            }
        }
        for (index, route) in &indexes {
            if let Err(e) = self.indexes.ensure(&self.client, index, &self.routes[*route].create_body).await {
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
        Ok(())
    }

    /// Plans a batch and dispatches it to the lanes; the lanes' answers to
    /// come. Segments between truncates keep their order around them: a
    /// truncate waits until the lanes have sent everything before it.
    async fn dispatch_batch(&self, batch: &[SinkRecord], rejected: &mut Vec<Rejected>) -> Result<Vec<LaneAnswer>, EsError> {
        let mut planned = plan_batch(&self.routes, batch, rejected);
        // Indexes first (created with the mapping's settings when missing).
        self.ensure_indexes(&mut planned, rejected).await?;
        let mut done = Vec::new();
        let mut segment: Vec<(Planned, usize)> = Vec::new();
        for (p, route) in planned {
            match p {
                Planned::Truncate(record, index) => {
                    self.dispatch_segment(std::mem::take(&mut segment), rejected, &mut done).await?;
                    if self.routes[route].truncate == TruncateMode::DeleteByQuery {
                        self.lanes.drain().await?;
                        match index::truncate(&self.client, &index).await {
                            Ok(()) => {}
                            Err(e) if !e.is_retriable() => rejected.push(Rejected { index: record, error: e.to_string() }),
                            Err(e) => return Err(e),
                        }
                    }
                }
                other => segment.push((other, route)),
            }
        }
        self.dispatch_segment(segment, rejected, &mut done).await?;
        Ok(done)
    }

    /// Resolves a segment's partial actions (after the lanes sent all that
    /// came before: they read the stored documents) and dispatches it.
    async fn dispatch_segment(
        &self,
        mut segment: Vec<(Planned, usize)>,
        rejected: &mut Vec<Rejected>,
        done: &mut Vec<LaneAnswer>,
    ) -> Result<(), EsError> {
        if segment.is_empty() {
            return Ok(());
        }
        // Nothing to resolve (the common case) costs one scan: parsing every
        // indexed document back was a third of the sink's CPU.
        if segment.iter().any(|(p, _)| p.has_partial()) {
            self.lanes.drain().await?;
            merge::resolve(&self.client, &mut segment, rejected).await?;
        }
        let mut actions = Vec::new();
        for (p, _) in segment {
            if let Planned::Actions(record, a) = p {
                actions.extend(a.into_iter().map(|a| (record, a)));
            }
        }
        self.lanes.dispatch(actions, done);
        Ok(())
    }
}

/// The sink boundary: [`EsError`]s become [`SinkError`]s here (`?`).
impl Sink for SearchSink {
    /// Plans and dispatches the batch now; the [`InFlight`] resolves once
    /// every lane has applied its part, with the refused records.
    async fn submit(&mut self, batch: Arc<[SinkRecord]>) -> Result<InFlight, SinkError> {
        let mut rejected = Vec::new();
        let done = self.dispatch_batch(&batch, &mut rejected).await?;
        Ok(Box::pin(async move {
            for rx in done {
                rejected.extend(lane::answer(rx).await?);
            }
            rejected.sort_by_key(|r| r.index);
            rejected.dedup_by_key(|r| r.index);
            Ok(rejected)
        }))
    }

    /// One batch alone: [`submit`](Sink::submit) it and wait.
    async fn write(&mut self, batch: &[SinkRecord]) -> BatchOutcome {
        self.submit(batch.into()).await?.await
    }

    fn max_in_flight(&self) -> usize {
        self.in_flight
    }

    async fn check(&mut self) -> Result<(), SinkError> {
        self.ping().await.map(|_| ())
    }
}
