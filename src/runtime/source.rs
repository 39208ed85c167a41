//! The replication reader: one task that reads the slot, decodes pgoutput,
//! routes each change through the pipelines into the sinks' bounded queues,
//! and confirms durable positions back to PostgreSQL.
//!
//! Why this is safe to acknowledge: positions confirmed to the server come
//! only from [`AckTracker`], which confirms a transaction's end LSN once every
//! sink has made everything up to its commit marker durable, or a keepalive's
//! `wal_end` when nothing at all is in flight. Changes of a committed
//! transaction stream through without being collected per transaction; when
//! a queue is full the reader waits (backpressure) but keeps sending status
//! updates so the walsender does not time out. A transaction the server
//! streams while it runs (pgoutput 2+, `streaming`) is kept aside
//! ([`InProgress`], `in_progress.rs`) until its Stream Commit, then read
//! like one that came whole; confirming positions past its start meanwhile
//! is safe, because a transaction that commits after the confirmed
//! position is sent again in full to the next connection.
//!
//! The reader's state, by role:
//! - [`TxCursor`] (`txn.rs`): where it stands in the open transaction, and
//!   what a reconnect must not deliver twice;
//! - [`Outbox`] (`outbox.rs`): records routed and not yet handed to a
//!   sink's queue, and the stream they keep alive;
//! - [`InProgress`] (`in_progress.rs`): transactions the server streamed;
//! - [`BackfillBridge`] (`bridge.rs`): backfill chunks and their windows;
//! - [`Feedback`] (`feedback.rs`): what was received and confirmed, for
//!   status updates, and the progress `/status` and `/wait` read;
//! - [`ReadStats`] (`stats.rs`) and [`TypeChangeWatch`] (`type_changes.rs`).
//!
//! The gauges sampled from the database (retained WAL, verify results) run
//! in their own task (`samplers.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfanout_postgres::catalog::TypeRegistry;
use pgfanout_postgres::conn::connect_sql;
use pgfanout_postgres::pgoutput::{self, LogicalMessage};
use pgfanout_postgres::relation::{build_change_with, build_truncates, RelationCache, TxMeta};
use pgfanout_postgres::replication::{Pgoutput, ReplicationClient, ReplicationMessage, ReplicationStream};
use pgfanout_postgres::slot;
use pgfanout_postgres::SourceError;
use pgfanout_sdk::settings::Backoff;
use pgfanout_sdk::{Change, Lsn};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::backfill::{ToSource, WATERMARK_PREFIX};
use crate::dead_letter::DeadLetters;
use crate::http::Health;
use crate::metrics as m;
use crate::pipeline::{Routed, Router};
use crate::runtime::ack::AckTracker;
use crate::runtime::bridge::BackfillBridge;
use crate::runtime::feedback::{self, Feedback, Silence};
use crate::runtime::heartbeat;
use crate::runtime::in_progress::{Control, InProgress, StreamCommit};
use crate::runtime::outbox::Outbox;
pub use crate::runtime::settings::SourceSettings;
use crate::runtime::sinks::Sinks;
use crate::runtime::stats::ReadStats;
use crate::runtime::txn::TxCursor;
use crate::runtime::type_changes::TypeChangeWatch;
use crate::runtime::undecodable;
use crate::runtime::worker::Queued;

/// Why a streaming session ended without an error.
enum Ended {
    Shutdown,
    ServerClosed,
    /// Asked to connect again (see `runtime::partitions`).
    Reconnect,
}

/// The reader and everything it owns.
pub struct SourceLoop {
    /// What the reader was configured with (slot, intervals, policies).
    settings: SourceSettings,
    /// Set when the daemon is asked to stop.
    shutdown: watch::Receiver<bool>,
    /// What `/health` and `/wait` read.
    health: Arc<Health>,
    /// Which pipelines, and so which sinks, each change goes to.
    router: Router,
    /// The sinks' queues, names and worker tasks.
    sinks: Sinks,
    /// Which commits every sink has made durable: what may be confirmed.
    tracker: AckTracker,
    /// Where undecodable rows and failed pipeline records go.
    dead_letters: DeadLetters,
    /// The tables' columns, as the stream last described them.
    relations: RelationCache,
    /// The types' names and decoders, by OID.
    types: TypeRegistry,
    tx: TxCursor,
    /// In-progress transactions the server streamed, until they end.
    streamed: InProgress,
    outbox: Outbox,
    backfills: BackfillBridge,
    feedback: Feedback,
    stats: ReadStats,
    type_changes: TypeChangeWatch,
    /// Reused per change: where the router sends it.
    routed: Vec<Routed>,
    /// Signalled when a sink made something durable.
    durable_changed: Arc<tokio::sync::Notify>,
    /// Signalled when the replication connection must be made again.
    reconnect: Arc<tokio::sync::Notify>,
    /// The server's timeline at the last connection (a change is a
    /// failover: see [`SourceLoop::check_timeline`]).
    timeline: Option<u32>,
    /// The timeline and the bound on what was handed to the sinks, kept
    /// across restarts (a failover while pgfanout was stopped).
    handed: super::handed::Handed,
    /// The bound read back at start, when the timeline changed meanwhile.
    recorded_bound: Lsn,
    /// The highest commit position of a transaction whose records may be
    /// handed to the sinks (the open one's included).
    receiving: Lsn,
    /// Signalled once a failover's recovery backfills are requested: the
    /// reconciler waits for them, then repairs the stores.
    reconcile: Option<Arc<tokio::sync::Notify>>,
}

impl SourceLoop {
    pub fn new(
        settings: SourceSettings,
        router: Router,
        sinks: Sinks,
        tracker: AckTracker,
        dead_letters: DeadLetters,
        health: Arc<Health>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let n = sinks.senders.len();
        let start = tracker.confirmed();
        let durable_changed = tracker.wake();
        let type_changes = TypeChangeWatch::new(settings.slot.clone(), settings.on_type_change);
        let streamed = InProgress::new(settings.streaming_memory, settings.streaming_spill_dir.clone());
        let outbox = Outbox::new(n, settings.chunk_bytes);
        let handed = super::handed::Handed::new(settings.state_dir.as_deref(), &settings.slot);
        SourceLoop {
            handed,
            recorded_bound: Lsn::ZERO,
            receiving: Lsn::ZERO,
            durable_changed,
            settings,
            router,
            sinks,
            tracker,
            dead_letters,
            health,
            shutdown,
            relations: RelationCache::new(),
            types: TypeRegistry::new(),
            tx: TxCursor::new(n),
            streamed,
            outbox,
            backfills: BackfillBridge::default(),
            feedback: Feedback::new(start),
            stats: ReadStats::default(),
            type_changes,
            routed: Vec::new(),
            reconnect: Arc::new(tokio::sync::Notify::new()),
            timeline: None,
            reconcile: None,
        }
    }

    /// Where a failover that lost delivered changes asks for the stores to
    /// be repaired once its backfills are done (see `super::failover`).
    pub fn with_reconciler(&mut self, reconcile: Arc<tokio::sync::Notify>) {
        self.reconcile = Some(reconcile);
    }

    /// Takes backfill chunks from `rx` (see `crate::backfill`).
    pub fn with_backfills(&mut self, rx: mpsc::Receiver<ToSource>) {
        self.backfills.connect(rx);
    }

    /// Signalling it makes the reader connect again.
    pub fn reconnect_handle(&self) -> Arc<tokio::sync::Notify> {
        self.reconnect.clone()
    }

    pub fn settings(&self) -> &SourceSettings {
        &self.settings
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Routes the backfill rows whose windows closed, once no transaction
    /// is open (a reconnect cuts a half-received transaction's records out
    /// of the local queues; these must not be cut with them). Each chunk
    /// ends with a barrier.
    async fn emit_backfill_rows(&mut self) {
        if self.tx.is_open() || !self.backfills.has_ready() {
            return;
        }
        for ready in self.backfills.take_ready() {
            let n = ready.rows.len();
            let before = self.outbox.pushed().to_vec();
            if ready.dropped > 0 {
                metrics::counter!(m::BACKFILL_SUPERSEDED_ROWS_TOTAL).increment(ready.dropped as u64);
            }
            for row in ready.rows {
                self.route(row).await;
            }
            let seq = self.tracker.barrier();
            self.outbox.commit(seq);
            // The chunk is done once durable in the sinks its rows went to:
            // a sink that is down and receives none of them does not hold
            // the backfill back (it holds the confirmed position back).
            let sinks: Vec<usize> =
                self.outbox.pushed().iter().zip(&before).enumerate().filter(|(_, (a, b))| a > b).map(|(i, _)| i).collect();
            self.backfills.routed(seq, ready.durable, n, sinks);
        }
    }

    /// Streams until shutdown (Ok) or a permanent error (Err). Transient
    /// errors reconnect with capped exponential backoff and resume from the
    /// slot's confirmed position.
    pub async fn run(&mut self) -> Result<(), SourceError> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        loop {
            let started = Instant::now();
            let result = self.stream_once().await;
            self.health.streaming.store(false, Ordering::Release);
            metrics::gauge!(m::SOURCE_STREAMING).set(0.0);
            match result {
                Ok(Ended::Shutdown) => return Ok(()),
                Err(e) if !e.is_retriable() => {
                    self.drain_workers().await;
                    return Err(e);
                }
                Ok(Ended::ServerClosed) => warn!("replication stream ended by the server; reconnecting"),
                Ok(Ended::Reconnect) => info!("reconnecting as asked"),
                Err(e) if e.is_retriable() => warn!(error = %e, "replication stream failed; reconnecting"),
                Err(e) => return Err(e),
            }
            // A transaction cut off mid-way is sent again in full (the stream
            // resumes after the last committed one): drop what of it is still
            // queued here, and remember how many of its changes the sinks
            // already have, so they are skipped when it comes again.
            let dropped = self.outbox.cut_with(|local| self.tx.cut(local));
            if dropped > 0 {
                debug!(records = dropped, "dropped the queued records of a transaction cut off by the reconnect");
            }
            if started.elapsed() > Duration::from_secs(60) {
                backoff.reset(Duration::from_millis(200));
            }
            let delay = backoff.next_delay();
            metrics::counter!(m::SOURCE_RECONNECTS_TOTAL).increment(1);
            info!(retry_in = ?delay, "reconnecting to PostgreSQL");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.changed() => {}
            }
            if *self.shutdown.borrow() {
                self.drain_workers().await;
                return Ok(());
            }
        }
    }

    /// A new timeline means the server was promoted (a failover). What
    /// pgfanout already received must be on it, before the point where it
    /// forked from the old one. When it is not (the standby lagged: the old
    /// primary did not wait for it, no `synchronized_standby_slots`), the new
    /// primary lacks transactions the sinks may hold, and its own next
    /// transactions may come at positions pgfanout has passed: streaming on
    /// would skip them without a word. With `on_slot_lost: recreate` that is
    /// recovered (`super::failover`: WAL padded, every table backfilled,
    /// then the reconciler repairs the stores); otherwise it stops
    /// pgfanout, saying how to recover. (Only a failover seen by this
    /// process, or recorded by the last one in the state file: see
    /// `super::handed`.)
    async fn check_timeline(&mut self, client: &mut ReplicationClient, timeline: u32) -> Result<(), SourceError> {
        let Some(old) = self.timeline.replace(timeline) else { return Ok(()) };
        if old == timeline {
            return Ok(());
        }
        // What the sinks may hold: what this process received, or after a
        // restart what the state file recorded.
        let resume = self.tracker.resume_position().max(self.recorded_bound);
        let fork = timeline_fork(client, timeline, old).await?;
        match fork {
            Some(at) if at < resume && self.settings.recover_lost_changes => {
                error!(
                    old, new = timeline, fork = %at, resume = %resume,
                    "failover lost changes: the new primary forked before what pgfanout had already received and delivered from the old \
                     one (the standby lagged; set synchronized_standby_slots on the primary to prevent it). on_slot_lost: recreate: \
                     padding the new primary's WAL past that position, backfilling every table, then removing what the new primary \
                     does not have (verify --repair)"
                );
                let recovered = async {
                    let sql = connect_sql(self.settings.opts.writer()).await?;
                    super::failover::pad_wal_past(&sql, resume).await?;
                    super::failover::backfill_every_table(&sql, &self.settings.slot, &self.router.table_patterns()).await
                }
                .await;
                // Until it is done, every connection checks again.
                let tables = recovered.inspect_err(|_| self.timeline = Some(old))?;
                metrics::counter!(m::SLOT_RECREATED_TOTAL).increment(1);
                info!(tables = tables.len(), "failover recovery: every table is backfilled while streaming");
                if let Some(reconcile) = &self.reconcile {
                    reconcile.notify_one();
                }
                Ok(())
            }
            Some(at) if at < resume => {
                self.timeline = Some(old);
                Err(SourceError::permanent(format!(
                    "failover lost changes: the new primary (timeline {timeline}) forked from timeline {old} at {at}, but pgfanout had \
                     already received and delivered transactions up to {resume} from the old primary. Those are not on the new primary \
                     (the standby lagged), and its own transactions after {at} would be skipped. Nothing more is streamed. To recover: \
                     restart pgfanout (it streams from the slot), then once the new primary's WAL is past {resume} run \
                     `pgfanout backfill --table` for every table and `pgfanout verify --repair`; or set \
                     source.postgres.on_slot_lost: recreate and pgfanout does that itself. To prevent it: set \
                     synchronized_standby_slots on the primary (docs/operating.md#failover)"
                )))
            }
            Some(at) => {
                info!(old, new = timeline, fork = %at, resume = %resume, "failover: the server was promoted; everything pgfanout received is on its timeline");
                Ok(())
            }
            None => {
                warn!(old, new = timeline, "failover: the server was promoted, but its timeline history does not name the old timeline");
                Ok(())
            }
        }
    }

    async fn stream_once(&mut self) -> Result<Ended, SourceError> {
        // Under `ha`, a leader whose lease ran out does not take the slot
        // back from the one that took over.
        if !self.settings.fence.allows() {
            info!("waiting for the lease before connecting");
            let fence = self.settings.fence.clone();
            tokio::select! {
                _ = fence.wait() => {}
                _ = self.shutdown.wait_for(|v| *v) => return Ok(Ended::Shutdown),
            }
        }
        let sql = connect_sql(&self.settings.opts).await?;
        let info = slot::slot_info(&sql, &self.settings.slot)
            .await?
            .ok_or_else(|| SourceError::permanent(format!("replication slot {:?} does not exist any more; it was dropped while pgfanout was running. Restart pgfanout to create it again (changes made since are lost to it)", self.settings.slot)))?;
        slot::check_slot(&self.settings.slot, &info, &self.settings.opts.dbname)?;
        let mut client = ReplicationClient::connect_with(&self.settings.opts, self.settings.receive_buffer).await?;
        let system = client.identify_system().await?;
        let recorded = self.handed.read(&system.system_id);
        if self.timeline.is_none() {
            if let Some((timeline, bound)) = recorded.filter(|(t, _)| *t != system.timeline) {
                // A failover while pgfanout was stopped: checked as if seen.
                info!(recorded = timeline, now = system.timeline, handed_below = %bound, "the server's timeline changed while pgfanout was stopped");
                self.timeline = Some(timeline);
                self.recorded_bound = bound;
            }
        }
        self.check_timeline(&mut client, system.timeline).await?;
        let handed = self.handed_upto().max(recorded.map(|(_, b)| b).unwrap_or_default());
        self.handed.connected(&system.system_id, system.timeline, handed);
        let confirmed = info.confirmed_flush_lsn.unwrap_or_default();
        if confirmed < self.feedback.sent_flush() {
            warn!(
                slot = %self.settings.slot,
                slot_confirmed = %confirmed,
                pgfanout_confirmed = %self.feedback.sent_flush(),
                resume = %self.tracker.resume_position(),
                "the slot is behind what pgfanout confirmed (after a failover, its synchronized copy lagged): streaming resumes after the last transaction received; the server skips what comes before"
            );
        }
        // After a reconnect, resume after the last transaction already
        // received: it and everything before it are queued for the sinks or
        // written. Starting at the slot's confirmed position instead would
        // send them again, and a sink would see a transaction twice while
        // its first copy may have been applied after it was read: a partial
        // change (unchanged TOAST) of a document that the first copy then
        // moved or deleted cannot be completed the second time. PostgreSQL
        // skips transactions that commit before the start position.
        let resume = self.tracker.resume_position();
        // A transaction streamed to the last connection is streamed again,
        // from its start, to this one.
        self.streamed.clear();
        let protocol = Pgoutput::for_server(client.server_major().unwrap_or(0), self.settings.streaming);
        let mut stream = client.start_logical_replication_with(&self.settings.slot, resume, &self.settings.publication, protocol).await?;
        stream.set_read_coalesce(self.settings.read_coalesce);
        let receive_buffer = stream.receive_buffer();
        info!(
            slot = %self.settings.slot,
            confirmed = %info.confirmed_flush_lsn.unwrap_or_default(),
            resume = %resume,
            ?receive_buffer,
            proto_version = protocol.proto_version,
            in_progress_transactions = protocol.streaming,
            "streaming started"
        );
        self.health.streaming.store(true, Ordering::Release);
        metrics::gauge!(m::SOURCE_STREAMING).set(1.0);
        let heartbeat = self.settings.heartbeat_interval.map(|every| heartbeat::spawn(self.settings.opts.clone(), every));
        let _heartbeat = heartbeat::HeartbeatGuard(heartbeat);
        let mut tick = tokio::time::interval(self.settings.status_interval.min(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let msg = match stream.try_recv_buffered()? {
                Some(msg) => msg,
                None => {
                    // Nothing buffered: hand what was read to the sinks once
                    // it has waited `linger` (small transactions then travel
                    // together instead of waking a sink each).
                    let linger_at = self.outbox.due_at(self.settings.linger);
                    if linger_at.is_some_and(|at| at <= Instant::now()) {
                        self.flush_local(Some(&mut stream)).await?;
                    }
                    self.maybe_send_status(&mut stream, false).await?;
                    let linger_at = self.outbox.due_at(self.settings.linger);
                    tokio::select! {
                        msg = stream.recv() => match msg? {
                            Some(msg) => msg,
                            None => return Ok(Ended::ServerClosed),
                        },
                        _ = tokio::time::sleep_until(linger_at.unwrap_or_else(Instant::now).into()), if linger_at.is_some() => {
                            self.flush_local(Some(&mut stream)).await?;
                            continue;
                        }
                        // A sink made something durable: publish it.
                        _ = self.durable_changed.notified() => continue,
                        _ = self.reconnect.notified() => {
                            // What was read is handed over first: the stream
                            // resumes after it.
                            self.flush_local(Some(&mut stream)).await?;
                            return Ok(Ended::Reconnect);
                        }
                        msg = self.backfills.next() => {
                            self.backfills.on_message(msg);
                            self.emit_backfill_rows().await;
                            continue;
                        }
                        _ = tick.tick() => {
                            self.publish_stats();
                            self.check_silence(&mut stream).await?;
                            // Commit markers held for a full queue leave
                            // once it has room, even when nothing else comes.
                            if self.outbox.chunks().iter().any(|c| !c.is_empty()) {
                                self.flush_local(Some(&mut stream)).await?;
                            }
                            continue;
                        }
                        _ = self.shutdown.changed() => {
                            self.graceful_stop(stream).await;
                            return Ok(Ended::Shutdown);
                        }
                    }
                }
            };
            self.feedback.heard();
            match msg {
                ReplicationMessage::XLogData { wal_start, wal_end, data, .. } => {
                    self.stats.bytes(data.len());
                    self.outbox.received(data.len());
                    self.feedback.received(wal_end.max(wal_start));
                    if let Some(commit) = self.handle(data, wal_start, &sql).await? {
                        self.replay(commit, &sql, &mut stream).await?;
                    }
                    if self.outbox.any_full(self.settings.batch_size) {
                        self.flush_local(Some(&mut stream)).await?;
                    }
                }
                ReplicationMessage::Keepalive { wal_end, reply_requested, .. } => {
                    self.feedback.received(wal_end);
                    // Everything before this keepalive is queued; push it out
                    // before judging whether anything is in flight.
                    self.flush_local(Some(&mut stream)).await?;
                    self.tracker.idle_position(wal_end, self.tx.is_open());
                    let lag = wal_end.0.saturating_sub(self.tracker.confirmed().0);
                    self.health.lag_bytes.store(lag, Ordering::Release);
                    metrics::gauge!(m::SOURCE_LAG_BYTES).set(lag as f64);
                    self.maybe_send_status(&mut stream, reply_requested).await?;
                }
            }
        }
    }

    /// Decodes one pgoutput message and routes what it carries; keeps a
    /// streamed change aside. A Stream Commit is returned, for
    /// [`replay`](Self::replay).
    async fn handle(&mut self, data: bytes::Bytes, lsn: Lsn, sql: &tokio_postgres::Client) -> Result<Option<StreamCommit>, SourceError> {
        if self.streamed.keep(lsn, &data)? {
            return Ok(None);
        }
        let msg = pgoutput::decode(data).map_err(|e| SourceError::permanent(format!("cannot decode pgoutput message at {lsn}: {e}")))?;
        match self.streamed.control(msg)? {
            Control::Done => Ok(None),
            Control::Commit(commit) => Ok(Some(commit)),
            Control::Other(msg) => self.dispatch(msg, lsn, sql).await.map(|()| None),
        }
    }

    /// A streamed transaction committed: its kept changes are read in the
    /// order they were streamed, as one transaction, handed to the sinks as
    /// the queues fill (keeping the walsender alive meanwhile).
    async fn replay(&mut self, c: StreamCommit, sql: &tokio_postgres::Client, stream: &mut ReplicationStream) -> Result<(), SourceError> {
        let mut messages = self.streamed.take(c.xid)?;
        self.begin(TxMeta { commit_lsn: c.commit_lsn, xid: c.xid, commit_ts: c.commit_ts });
        while let Some((lsn, data)) = messages.next_message()? {
            let msg = pgoutput::decode_streamed(data)
                .map_err(|e| SourceError::permanent(format!("cannot decode a streamed pgoutput message at {lsn}: {e}")))?;
            self.dispatch(msg, lsn, sql).await?;
            if self.outbox.any_full(self.settings.batch_size) {
                self.flush_local(Some(&mut *stream)).await?;
            }
        }
        self.commit(c.commit_lsn, c.end_lsn).await;
        Ok(())
    }

    /// No stream position past this has been received (so none handed to a
    /// sink): the last transaction registered, or the open one's commit.
    fn handed_upto(&self) -> Lsn {
        self.tracker.resume_position().max(self.receiving)
    }

    /// A transaction begins.
    fn begin(&mut self, meta: TxMeta) {
        self.receiving = self.receiving.max(Lsn(meta.commit_lsn.0.saturating_add(1)));
        let skip = self.tx.begin(meta, self.outbox.chunks());
        if skip > 0 {
            info!(commit_lsn = %meta.commit_lsn, changes = skip, "skipping the changes of a resent transaction the sinks already have");
        }
    }

    /// The open transaction committed: its marker follows its records.
    async fn commit(&mut self, commit_lsn: Lsn, end_lsn: Lsn) {
        self.tx.commit();
        self.stats.transaction();
        let seq = self.tracker.commit(commit_lsn, end_lsn);
        self.outbox.commit(seq);
        self.emit_backfill_rows().await;
    }

    /// Routes what one decoded message (of a transaction received whole or
    /// of a committed streamed one) carries.
    async fn dispatch(&mut self, msg: LogicalMessage, lsn: Lsn, sql: &tokio_postgres::Client) -> Result<(), SourceError> {
        match msg {
            LogicalMessage::Begin { final_lsn, commit_ts, xid } => self.begin(TxMeta { commit_lsn: final_lsn, xid, commit_ts }),
            LogicalMessage::Commit { commit_lsn, end_lsn, .. } => self.commit(commit_lsn, end_lsn).await,
            LogicalMessage::StreamStart { .. }
            | LogicalMessage::StreamStop
            | LogicalMessage::StreamCommit { .. }
            | LogicalMessage::StreamAbort { .. } => {
                return Err(SourceError::permanent(format!("a {} message inside a transaction at {lsn}", msg.kind())))
            }
            LogicalMessage::Relation(rel) => {
                let info = self.relations.on_relation(rel, &mut self.types, sql).await?;
                self.type_changes.on_relation(&info, sql).await;
                debug!(table = %format!("{}.{}", info.schema, info.table), columns = info.columns.len(), "relation");
            }
            LogicalMessage::Type { id, .. } => self.types.invalidate(id),
            LogicalMessage::Message { transactional, prefix, content, .. } if prefix == WATERMARK_PREFIX => {
                // A backfill watermark: transactional ones stand at their
                // transaction's commit position.
                let at = match (transactional, self.tx.commit_lsn()) {
                    (true, Some(commit_lsn)) => commit_lsn,
                    _ => lsn,
                };
                self.backfills.on_watermark(&content, at);
                if !transactional && !self.tx.is_open() {
                    self.tracker.idle_position(lsn, false);
                }
                self.emit_backfill_rows().await;
            }
            LogicalMessage::Message { transactional: false, .. } if !self.tx.is_open() => {
                // Between transactions (a heartbeat): every transaction
                // committed before it has been received, so when none is
                // still in flight its position may be confirmed.
                self.tracker.idle_position(lsn, false);
            }
            LogicalMessage::Message { transactional: true, prefix, content, .. }
                if self.tx.is_open() && !prefix.starts_with("pgfanout_") =>
            {
                // An event (`message:` pipelines). It takes an ordinal
                // whether or not a pipeline reads it, so positions do not
                // depend on the configuration.
                let tx = self.tx.current(lsn)?;
                let Some(ordinal) = self.tx.next() else { return Ok(()) };
                let change = Change::message(&prefix, &content, lsn, tx.commit_lsn, ordinal, tx.xid, tx.commit_ts);
                self.route(change).await;
            }
            LogicalMessage::Origin { .. } | LogicalMessage::Message { .. } => {}
            LogicalMessage::Truncate { relation_ids, .. } => {
                let tx = self.tx.current(lsn)?;
                let changes = build_truncates(&self.relations, &relation_ids, lsn, &tx, self.tx.ordinal())
                    .map_err(|e| SourceError::permanent(format!("cannot decode a truncate at {lsn}: {e}")))?;
                let first = self.tx.take(changes.len() as u32);
                for (i, change) in changes.into_iter().enumerate() {
                    if self.tx.skips(first + i as u32) {
                        continue;
                    }
                    self.backfills.on_change(&change);
                    self.route(change).await;
                }
            }
            msg @ (LogicalMessage::Insert { .. } | LogicalMessage::Update { .. } | LogicalMessage::Delete { .. }) => {
                let tx = self.tx.current(lsn)?;
                let rel_id = match &msg {
                    LogicalMessage::Insert { relation_id, .. }
                    | LogicalMessage::Update { relation_id, .. }
                    | LogicalMessage::Delete { relation_id, .. } => *relation_id,
                    _ => unreachable!(),
                };
                let rel = self.relations.get(rel_id).cloned().ok_or_else(|| {
                    SourceError::transient(format!("change for unknown relation {rel_id} at {lsn} (no Relation message)"))
                })?;
                let Some(ordinal) = self.tx.next() else { return Ok(()) };
                match build_change_with(&rel, &msg, lsn, &tx, ordinal, self.outbox.mode()) {
                    Ok(change) => {
                        self.backfills.on_change(&change);
                        self.route(change).await
                    }
                    Err(e) => {
                        undecodable::dead_letter(self.settings.on_decode_error, &self.dead_letters, &rel, &msg, lsn, &tx, ordinal, e)
                            .await?
                    }
                }
            }
        }
        Ok(())
    }

    async fn route(&mut self, change: Change) {
        self.stats.change(&change);
        let change = Arc::new(change);
        self.routed.clear();
        self.router.route(&change, &mut self.routed);
        let mut letters = Vec::new();
        // Most records carry the change itself: its size is measured once.
        let size = change.approx_size();
        for r in self.routed.drain(..) {
            match r {
                Routed::Deliver { sink, record } => {
                    let size = super::memory::record_size(&record, Some((&change, size)));
                    self.outbox.push(sink, record, size);
                }
                Routed::DeadLetter { pipeline, sink, error, change } => {
                    letters.push(self.sinks.pipeline_letter(pipeline, sink, error, change))
                }
            }
        }
        if !letters.is_empty() {
            self.dead_letters.write(letters).await;
        }
    }

    /// Sends every non-empty local chunk to its sink, waiting for room in
    /// the queue memory and the queue (backpressure) while keeping the
    /// walsender alive.
    async fn flush_local(&mut self, mut stream: Option<&mut ReplicationStream>) -> Result<(), SourceError> {
        self.handed.before_handing(self.handed_upto());
        self.outbox.flushing();
        for i in 0..self.outbox.chunks().len() {
            if self.outbox.chunks()[i].is_empty() {
                continue;
            }
            // Commit markers alone for a sink whose queue is full (a sink
            // that is down, or slow, and receives none of these changes):
            // kept here, compacted to the last, so that the other sinks go
            // on instead of every one waiting for its queue. It stays
            // behind in the ack rule all the same.
            if self.sinks.senders[i].capacity() == 0 && self.outbox.commits_only(i) {
                let len = self.outbox.compact_commits(i);
                self.tx.compacted(i, len);
                continue;
            }
            // The chunk leaves `local` only once its queue has room: if the
            // wait ends in an error (a status update failing: reconnect), the
            // records stay here to be flushed after it (the stream resumes
            // after them, so nothing else would bring them back).
            let memory = self.sinks.memory.clone();
            let Some(charge) = self.keep_alive_until(memory.charge(self.outbox.bytes(i)), &mut stream).await? else {
                warn!(sink = %self.sinks.names[i], "shutdown while the queue memory is used up; unqueued changes are not confirmed and will be sent again on the next start");
                return Ok(());
            };
            let sender = self.sinks.senders[i].clone();
            let Some(permit) = self.keep_alive_until(sender.reserve(), &mut stream).await? else {
                warn!(sink = %self.sinks.names[i], "shutdown while the sink's queue is full; its unqueued changes are not confirmed and will be sent again on the next start");
                return Ok(());
            };
            match permit {
                Ok(p) => {
                    self.tx.handed_over(i);
                    p.send(Queued { items: self.outbox.take(i), charge });
                }
                Err(_) => return Err(SourceError::permanent(format!("sink {} stopped unexpectedly", self.sinks.names[i]))),
            }
        }
        self.tx.all_handed_over();
        self.outbox.flushed();
        Ok(())
    }

    /// Waits for `wait`, sending status updates meanwhile so the walsender
    /// does not time out; `None` when shutdown was requested during it.
    async fn keep_alive_until<T>(
        &mut self,
        wait: impl std::future::Future<Output = T>,
        stream: &mut Option<&mut ReplicationStream>,
    ) -> Result<Option<T>, SourceError> {
        tokio::pin!(wait);
        loop {
            tokio::select! {
                done = &mut wait => {
                    // The reader's own pause is not the server's silence.
                    self.feedback.heard();
                    return Ok(Some(done));
                }
                _ = tokio::time::sleep(self.settings.status_interval.min(Duration::from_secs(5))) => {
                    if let Some(stream) = stream.as_deref_mut() {
                        self.send_status(stream, false).await?;
                    }
                    if *self.shutdown.borrow() {
                        return Ok(None);
                    }
                }
            }
        }
    }

    async fn maybe_send_status(&mut self, stream: &mut ReplicationStream, reply: bool) -> Result<(), SourceError> {
        let confirmed = self.tracker.poll();
        self.backfills.answer(&self.tracker);
        self.publish_progress(self.feedback.sent_flush());
        if self.feedback.due(confirmed, self.settings.status_interval, reply) {
            // An answer to the server never asks for one back.
            self.send_status(stream, false).await?;
        }
        Ok(())
    }

    /// Sends a status update; `ping` asks the server to answer it at once.
    async fn send_status(&mut self, stream: &mut ReplicationStream, ping: bool) -> Result<(), SourceError> {
        let flush = self.tracker.poll();
        self.feedback.send(stream, flush, &self.sinks.names, &self.tracker, ping).await?;
        self.publish_progress(flush);
        Ok(())
    }

    /// A silent link (`source.postgres.receive_timeout`): after half of it
    /// without a message the server is pinged; after all of it the
    /// connection is given up (a transient error: the reader reconnects,
    /// and the stream resumes after what was received).
    async fn check_silence(&mut self, stream: &mut ReplicationStream) -> Result<(), SourceError> {
        match self.feedback.silence(self.settings.receive_timeout) {
            Silence::Fine => Ok(()),
            Silence::Ping => {
                debug!("replication connection quiet; pinging the server");
                self.send_status(stream, true).await
            }
            Silence::Dead => {
                Err(SourceError::transient(format!(
                    "nothing from the server for {} (source.postgres.receive_timeout), not even an answer to a ping: the connection is taken as dead",
                    humantime::format_duration(self.settings.receive_timeout.unwrap_or_default())
                )))
            }
        }
    }

    fn publish_progress(&self, flush: Lsn) {
        feedback::publish_progress(&self.health, &self.sinks.names, &self.tracker, flush);
    }

    /// Routes `change` and hands the chunks over when one is full (the
    /// snapshot's path: no stream to keep alive meanwhile).
    pub(super) async fn route_copied(&mut self, change: Change) -> Result<(), SourceError> {
        self.route(change).await;
        if self.outbox.any_full(self.settings.batch_size) {
            self.flush_local(None).await?;
        }
        Ok(())
    }

    /// Ends what was routed so far with a barrier and hands it over.
    pub(super) async fn barrier(&mut self) -> Result<(), SourceError> {
        let seq = self.tracker.barrier();
        self.outbox.commit(seq);
        self.flush_local(None).await?;
        self.publish_stats();
        Ok(())
    }

    /// Waits until every sink made everything durable; `false` when
    /// shutdown came first.
    pub(super) async fn all_durable(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        loop {
            self.tracker.poll();
            if self.tracker.in_flight() == 0 {
                return true;
            }
            // Woken as soon as a sink's durable position moves (the poll
            // interval is only a fallback).
            tokio::select! {
                _ = self.durable_changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = shutdown.changed() => return false,
            }
        }
    }

    /// Waits until every sink's queue is at most half full.
    pub(super) async fn queues_half_free(&self) {
        for sender in &self.sinks.senders {
            let half = (sender.max_capacity() / 2).max(1);
            if sender.capacity() < half {
                // Closed: the worker is gone; flushing reports it.
                let _ = sender.reserve_many(half).await;
            }
        }
    }

    pub(super) fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    fn publish_stats(&mut self) {
        self.stats.publish();
    }

    /// Shutdown: hand what was read to the sinks, close the queues, wait for
    /// the workers to drain, then confirm what is durable.
    async fn graceful_stop(&mut self, mut stream: ReplicationStream) {
        info!("shutting down: draining sinks");
        if let Err(e) = self.flush_local(Some(&mut stream)).await {
            warn!(error = %e, "could not hand the last changes to the sinks");
        }
        self.publish_stats();
        self.drain_workers().await;
        let flush = self.tracker.poll();
        match self.send_status(&mut stream, false).await {
            Ok(()) => info!(flush = %flush, "final status update sent"),
            Err(e) => warn!(error = %e, "final status update failed"),
        }
        let _ = stream.finish().await;
        self.handed.stopped(self.handed_upto());
    }

    /// Closes the sink queues and waits (up to the shutdown timeout) for the
    /// workers to write what they hold.
    pub async fn drain_workers(&mut self) {
        self.sinks.senders.clear();
        let workers = std::mem::take(&mut self.sinks.workers);
        if workers.is_empty() {
            return;
        }
        let all = futures_util::future::join_all(workers);
        if tokio::time::timeout(self.settings.shutdown_timeout, all).await.is_err() {
            warn!(timeout = ?self.settings.shutdown_timeout, "sinks did not drain in time; unconfirmed changes will be sent again on the next start");
        }
    }
}

/// Where timeline `old` ended in the history of timeline `new`
/// (`TIMELINE_HISTORY`: lines of `parent-timeline switchpoint reason`).
async fn timeline_fork(client: &mut ReplicationClient, new: u32, old: u32) -> Result<Option<Lsn>, SourceError> {
    let rows = client.simple_query(&format!("TIMELINE_HISTORY {new}")).await?;
    let Some(content) = rows.first().and_then(|r| r.get("content")) else { return Ok(None) };
    // bytea in its text form on some servers, text on others.
    let text = match content.strip_prefix("\\x") {
        Some(h) => {
            String::from_utf8_lossy(&hex::decode(h).map_err(|e| SourceError::transient(format!("TIMELINE_HISTORY: {e}")))?).into_owned()
        }
        None => content.to_string(),
    };
    Ok(parse_fork(&text, old))
}

/// The switch point of timeline `old` in a timeline history file.
fn parse_fork(history: &str, old: u32) -> Option<Lsn> {
    history.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let tli: u32 = fields.next()?.parse().ok()?;
        (tli == old).then(|| fields.next()?.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod timeline_tests {
    use super::*;

    #[test]
    fn the_fork_of_a_timeline_is_read_from_the_history() {
        let history = "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tbefore 2000-01-01\n";
        assert_eq!(parse_fork(history, 1), Some(Lsn(0x300_0158)));
        assert_eq!(parse_fork(history, 2), Some(Lsn(0x500_0000)));
        assert_eq!(parse_fork(history, 3), None);
    }
}
