//! The replication reader: one task that reads the slot, decodes pgoutput,
//! routes each change through the pipelines into the sinks' bounded queues,
//! and confirms durable positions back to PostgreSQL.
//!
//! Why this is safe to acknowledge: positions confirmed to the server come
//! only from [`AckTracker`], which confirms a transaction's end LSN once every
//! sink has made everything up to its commit marker durable, or a keepalive's
//! `wal_end` when nothing at all is in flight. Changes stream through without
//! being collected per transaction; when a queue is full the reader waits
//! (backpressure) but keeps sending status updates so the walsender does not
//! time out.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfanout_postgres::catalog::TypeRegistry;
use pgfanout_postgres::conn::{connect_sql, PgConnectOptions};
use pgfanout_postgres::pgoutput::{self, LogicalMessage};
use pgfanout_postgres::relation::{build_change_with, build_truncates, raw_change, RelationCache, RelationInfo, TxMeta};
use pgfanout_postgres::replication::{ReceiveBuffer, ReplicationClient, ReplicationMessage, ReplicationStream};
use pgfanout_postgres::slot;
use pgfanout_postgres::SourceError;
use pgfanout_sdk::{Change, Lsn, Op};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::backfill::{Ready, ToSource, Windows, WATERMARK_PREFIX};
use crate::config::{OnDecodeError, OnTypeChange};
use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::http::{Health, Progress, SinkProgress};
use crate::metrics as m;
use crate::pipeline::{Routed, Router};
use crate::runtime::ack::AckTracker;
use crate::runtime::worker::{Chunk, Item};
use pgfanout_sdk::settings::Backoff;

/// Settings of the reader.
pub struct SourceSettings {
    pub opts: PgConnectOptions,
    pub slot: String,
    pub publication: String,
    pub status_interval: Duration,
    pub batch_size: usize,
    pub shutdown_timeout: Duration,
    /// How long read changes may wait locally for more before they are
    /// handed to the sinks when the socket has nothing more buffered.
    pub linger: Duration,
    /// When set, a non-transactional logical message is emitted this often
    /// so the stream has something to confirm even without keepalives.
    pub heartbeat_interval: Option<Duration>,
    /// See `ReplicationStream::set_read_coalesce`.
    pub read_coalesce: Duration,
    /// The streaming connection's receive buffer (see `ReceiveBuffer`).
    pub receive_buffer: ReceiveBuffer,
    /// What a row that cannot be decoded does.
    pub on_decode_error: OnDecodeError,
    pub on_type_change: OnTypeChange,
}

/// Why a streaming session ended without an error.
enum Ended {
    Shutdown,
    ServerClosed,
}

/// The reader and everything it owns.
pub struct SourceLoop {
    pub settings: SourceSettings,
    pub router: Router,
    pub senders: Vec<mpsc::Sender<Chunk>>,
    pub tracker: AckTracker,
    pub dead_letters: DeadLetters,
    pub health: Arc<Health>,
    pub shutdown: watch::Receiver<bool>,
    pub sink_names: Vec<String>,
    /// The sink workers, awaited at shutdown.
    pub workers: Vec<tokio::task::JoinHandle<()>>,
    pub(super) local: Vec<Chunk>,
    relations: RelationCache,
    types: TypeRegistry,
    tx: Option<TxMeta>,
    /// Per sink: how many items of `local` precede the open transaction
    /// (0 once part of it was handed to the sink). A reconnect cuts `local`
    /// back to these marks, since the server sends the transaction again.
    tx_marks: Vec<usize>,
    ordinal: u32,
    /// Changes (by ordinal) of the open transaction already handed to the
    /// sinks.
    tx_flushed: u32,
    /// A transaction cut off by a reconnect after part of it was handed to
    /// the sinks: (its commit LSN, how many of its changes they have).
    cut_off: Option<(Lsn, u32)>,
    /// Changes of the open transaction below this ordinal are skipped: the
    /// sinks have them from before a reconnect.
    skip_below: u32,
    routed: Vec<Routed>,
    /// Highest WAL position received (status update `write`).
    received: Lsn,
    /// Last flush position sent.
    sent_flush: Lsn,
    last_status: Instant,
    stats: Stats,
    /// When the oldest item not yet handed to a sink was queued locally.
    unflushed_since: Option<Instant>,
    /// Signalled when a sink made something durable.
    pub(super) durable_changed: Arc<tokio::sync::Notify>,
    /// Backfill chunks from the driver, their windows in the stream, rows
    /// ready to route once no transaction is open, and chunks routed but
    /// not yet durable everywhere (barrier seq, reply, rows).
    backfill_rx: Option<mpsc::Receiver<ToSource>>,
    windows: Windows,
    backfill_ready: Vec<Ready>,
    backfill_acks: Vec<(u64, oneshot::Sender<usize>, usize)>,
    /// Column types last recorded per table (loaded on first use).
    shapes: Option<crate::backfill::shapes::Shapes>,
    /// Stream bytes received since start (the offset of the next message).
    offset: u64,
    /// What queued records keep of the receive buffers.
    pins: crate::runtime::pins::Pins,
}

/// (schema name pointer, table name pointer, op): cheap to hash per change.
type ChangeKey = (usize, usize, Op);
/// (schema, table, changes since the last publish).
type ChangeCount = (Arc<str>, Arc<str>, u64);

#[derive(Default)]
struct Stats {
    bytes: u64,
    transactions: u64,
    changes: rustc_hash::FxHashMap<ChangeKey, ChangeCount>,
}

impl SourceLoop {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: SourceSettings,
        router: Router,
        senders: Vec<mpsc::Sender<Chunk>>,
        tracker: AckTracker,
        dead_letters: DeadLetters,
        health: Arc<Health>,
        shutdown: watch::Receiver<bool>,
        sink_names: Vec<String>,
        workers: Vec<tokio::task::JoinHandle<()>>,
    ) -> Self {
        let n = senders.len();
        let start = tracker.confirmed();
        let durable_changed = tracker.wake();
        SourceLoop {
            durable_changed,
            backfill_rx: None,
            windows: Windows::default(),
            backfill_ready: Vec::new(),
            backfill_acks: Vec::new(),
            shapes: None,
            settings,
            router,
            senders,
            tracker,
            dead_letters,
            health,
            shutdown,
            sink_names,
            workers,
            local: (0..n).map(|_| Vec::new()).collect(),
            offset: 0,
            pins: crate::runtime::pins::Pins::new(n),
            relations: RelationCache::new(),
            types: TypeRegistry::new(),
            tx: None,
            tx_marks: vec![0; n],
            ordinal: 0,
            tx_flushed: 0,
            cut_off: None,
            skip_below: 0,
            routed: Vec::new(),
            received: start,
            sent_flush: start,
            last_status: Instant::now(),
            stats: Stats::default(),
            unflushed_since: None,
        }
    }

    /// Takes backfill chunks from `rx` (see `crate::backfill`).
    pub fn with_backfills(&mut self, rx: mpsc::Receiver<ToSource>) {
        self.backfill_rx = Some(rx);
    }

    /// Routes the backfill rows whose windows closed, once no transaction
    /// is open (a reconnect cuts a half-received transaction's records out
    /// of the local queues; these must not be cut with them). Each chunk
    /// ends with a barrier.
    async fn emit_backfill_rows(&mut self) {
        if self.tx.is_some() || self.backfill_ready.is_empty() {
            return;
        }
        for ready in std::mem::take(&mut self.backfill_ready) {
            let n = ready.rows.len();
            if ready.dropped > 0 {
                metrics::counter!(m::BACKFILL_SUPERSEDED_ROWS_TOTAL).increment(ready.dropped as u64);
            }
            for row in ready.rows {
                self.route(row).await;
            }
            let seq = self.tracker.barrier();
            for chunk in self.local.iter_mut() {
                chunk.push(Item::Commit(seq));
            }
            self.unflushed_since.get_or_insert_with(Instant::now);
            self.backfill_acks.push((seq, ready.durable, n));
        }
    }

    /// Tells the driver which chunks are durable in every sink.
    fn answer_backfill_acks(&mut self) {
        if self.backfill_acks.is_empty() {
            return;
        }
        let tracker = &self.tracker;
        let (done, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.backfill_acks).into_iter().partition(|(seq, _, _)| tracker.durable_everywhere(*seq));
        self.backfill_acks = waiting;
        for (_, reply, n) in done {
            let _ = reply.send(n);
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
                Err(e) if e.is_retriable() => warn!(error = %e, "replication stream failed; reconnecting"),
                Err(e) => return Err(e),
            }
            // A transaction cut off mid-way is sent again in full (the stream
            // resumes after the last committed one): drop what of it is still
            // queued here, and remember how many of its changes the sinks
            // already have, so they are skipped when it comes again.
            if let Some(tx) = self.tx.take() {
                self.cut_off = (self.tx_flushed > 0).then_some((tx.commit_lsn, self.tx_flushed));
                let dropped: usize =
                    self.local.iter_mut().zip(&self.tx_marks).map(|(chunk, &mark)| chunk.drain(mark.min(chunk.len())..).count()).sum();
                if dropped > 0 {
                    debug!(records = dropped, "dropped the queued records of a transaction cut off by the reconnect");
                }
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

    async fn stream_once(&mut self) -> Result<Ended, SourceError> {
        let sql = connect_sql(&self.settings.opts).await?;
        let info = slot::slot_info(&sql, &self.settings.slot)
            .await?
            .ok_or_else(|| SourceError::permanent(format!("replication slot {:?} does not exist any more; it was dropped while pgfanout was running. Restart pgfanout to create it again (changes made since are lost to it)", self.settings.slot)))?;
        slot::check_slot(&self.settings.slot, &info, &self.settings.opts.dbname)?;
        let client = ReplicationClient::connect_with(&self.settings.opts, self.settings.receive_buffer).await?;
        // After a reconnect, resume after the last transaction already
        // received: it and everything before it are queued for the sinks or
        // written. Starting at the slot's confirmed position instead would
        // send them again, and a sink would see a transaction twice while
        // its first copy may have been applied after it was read: a partial
        // change (unchanged TOAST) of a document that the first copy then
        // moved or deleted cannot be completed the second time. PostgreSQL
        // skips transactions that commit before the start position.
        let resume = self.tracker.resume_position();
        let mut stream = client.start_logical_replication(&self.settings.slot, resume, &self.settings.publication).await?;
        stream.set_read_coalesce(self.settings.read_coalesce);
        let receive_buffer = stream.receive_buffer();
        info!(slot = %self.settings.slot, confirmed = %info.confirmed_flush_lsn.unwrap_or_default(), resume = %resume, ?receive_buffer, "streaming started");
        self.health.streaming.store(true, Ordering::Release);
        metrics::gauge!(m::SOURCE_STREAMING).set(1.0);
        let heartbeat = self.settings.heartbeat_interval.map(|every| spawn_heartbeat(self.settings.opts.clone(), every));
        let _heartbeat = HeartbeatGuard(heartbeat);
        let mut last_slot_sample = Instant::now() - SLOT_SAMPLE_EVERY;
        let mut tick = tokio::time::interval(self.settings.status_interval.min(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let msg = match stream.try_recv_buffered()? {
                Some(msg) => msg,
                None => {
                    // Nothing buffered: hand what was read to the sinks once
                    // it has waited `linger` (small transactions then travel
                    // together instead of waking a sink each).
                    let linger_at = self.unflushed_since.map(|t| t + self.settings.linger);
                    if linger_at.is_some_and(|at| at <= Instant::now()) {
                        self.flush_local(Some(&mut stream)).await?;
                    }
                    self.maybe_send_status(&mut stream, false).await?;
                    let linger_at = self.unflushed_since.map(|t| t + self.settings.linger);
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
                        msg = next_backfill(&mut self.backfill_rx) => {
                            if let Some(ready) = self.windows.on_message(msg) {
                                self.backfill_ready.push(ready);
                            }
                            self.emit_backfill_rows().await;
                            continue;
                        }
                        _ = tick.tick() => {
                            self.publish_stats();
                            if last_slot_sample.elapsed() >= SLOT_SAMPLE_EVERY {
                                last_slot_sample = Instant::now();
                                sample_retained_wal(&sql, &self.settings.slot).await;
                                sample_verify_results(&sql).await;
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
            match msg {
                ReplicationMessage::XLogData { wal_start, wal_end, data, .. } => {
                    self.stats.bytes += data.len() as u64;
                    self.offset += data.len() as u64;
                    self.received = self.received.max(wal_end).max(wal_start);
                    self.handle(data, wal_start, &sql).await?;
                    if self.local.iter().any(|c| c.len() >= self.settings.batch_size) {
                        self.flush_local(Some(&mut stream)).await?;
                    }
                }
                ReplicationMessage::Keepalive { wal_end, reply_requested, .. } => {
                    self.received = self.received.max(wal_end);
                    // Everything before this keepalive is queued; push it out
                    // before judging whether anything is in flight.
                    self.flush_local(Some(&mut stream)).await?;
                    self.tracker.idle_position(wal_end, self.tx.is_some());
                    let lag = wal_end.0.saturating_sub(self.tracker.confirmed().0);
                    self.health.lag_bytes.store(lag, Ordering::Release);
                    metrics::gauge!(m::SOURCE_LAG_BYTES).set(lag as f64);
                    self.maybe_send_status(&mut stream, reply_requested).await?;
                }
            }
        }
    }

    /// Decodes one pgoutput message and routes what it carries.
    async fn handle(&mut self, data: bytes::Bytes, lsn: Lsn, sql: &tokio_postgres::Client) -> Result<(), SourceError> {
        let msg = pgoutput::decode(data).map_err(|e| SourceError::permanent(format!("cannot decode pgoutput message at {lsn}: {e}")))?;
        match msg {
            LogicalMessage::Begin { final_lsn, commit_ts, xid } => {
                self.tx = Some(TxMeta { commit_lsn: final_lsn, xid, commit_ts });
                self.ordinal = 0;
                self.tx_flushed = 0;
                // The same transaction again after a reconnect: decoding the
                // same WAL gives the same changes in the same order.
                self.skip_below = match self.cut_off.take() {
                    Some((commit_lsn, n)) if commit_lsn == final_lsn => {
                        info!(commit_lsn = %final_lsn, changes = n, "skipping the changes of a resent transaction the sinks already have");
                        n
                    }
                    _ => 0,
                };
                for (mark, chunk) in self.tx_marks.iter_mut().zip(&self.local) {
                    *mark = chunk.len();
                }
            }
            LogicalMessage::Commit { commit_lsn, end_lsn, .. } => {
                self.tx = None;
                self.stats.transactions += 1;
                let seq = self.tracker.commit(commit_lsn, end_lsn);
                self.unflushed_since.get_or_insert_with(Instant::now);
                for chunk in self.local.iter_mut() {
                    chunk.push(Item::Commit(seq));
                }
                self.emit_backfill_rows().await;
            }
            LogicalMessage::Relation(rel) => {
                let info = self.relations.on_relation(rel, &mut self.types, sql).await?;
                self.on_relation(&info, sql).await;
                debug!(table = %format!("{}.{}", info.schema, info.table), columns = info.columns.len(), "relation");
            }
            LogicalMessage::Type { id, .. } => self.types.invalidate(id),
            LogicalMessage::Message { transactional, prefix, content, .. } if prefix == WATERMARK_PREFIX => {
                // A backfill watermark: transactional ones stand at their
                // transaction's commit position.
                let at = match (transactional, &self.tx) {
                    (true, Some(tx)) => tx.commit_lsn,
                    _ => lsn,
                };
                if let Some(ready) = self.windows.on_watermark(&content, at) {
                    self.backfill_ready.push(ready);
                }
                if !transactional && self.tx.is_none() {
                    self.tracker.idle_position(lsn, false);
                }
                self.emit_backfill_rows().await;
            }
            LogicalMessage::Message { transactional: false, .. } if self.tx.is_none() => {
                // Between transactions (a heartbeat): every transaction
                // committed before it has been received, so when none is
                // still in flight its position may be confirmed.
                self.tracker.idle_position(lsn, false);
            }
            LogicalMessage::Origin { .. } | LogicalMessage::Message { .. } => {}
            LogicalMessage::Truncate { relation_ids, .. } => {
                let tx = self.current_tx(lsn)?;
                let changes = build_truncates(&self.relations, &relation_ids, lsn, &tx, self.ordinal)
                    .map_err(|e| SourceError::permanent(format!("cannot decode a truncate at {lsn}: {e}")))?;
                let first = self.ordinal;
                self.ordinal += changes.len() as u32;
                for (i, change) in changes.into_iter().enumerate() {
                    if first + (i as u32) < self.skip_below {
                        continue;
                    }
                    if !self.windows.is_empty() {
                        self.windows.on_change(&change);
                    }
                    self.route(change).await;
                }
            }
            msg @ (LogicalMessage::Insert { .. } | LogicalMessage::Update { .. } | LogicalMessage::Delete { .. }) => {
                let tx = self.current_tx(lsn)?;
                let rel_id = match &msg {
                    LogicalMessage::Insert { relation_id, .. }
                    | LogicalMessage::Update { relation_id, .. }
                    | LogicalMessage::Delete { relation_id, .. } => *relation_id,
                    _ => unreachable!(),
                };
                let rel = self.relations.get(rel_id).cloned().ok_or_else(|| {
                    SourceError::transient(format!("change for unknown relation {rel_id} at {lsn} (no Relation message)"))
                })?;
                let ordinal = self.ordinal;
                self.ordinal = self.ordinal.saturating_add(1);
                if ordinal < self.skip_below {
                    return Ok(());
                }
                match build_change_with(&rel, &msg, lsn, &tx, ordinal, self.pins.mode()) {
                    Ok(change) => {
                        if !self.windows.is_empty() {
                            self.windows.on_change(&change);
                        }
                        self.route(change).await
                    }
                    Err(e) => self.undecodable_row(&rel, &msg, lsn, &tx, ordinal, e).await?,
                }
            }
        }
        Ok(())
    }

    /// Compares a table's description with the shape last recorded for it
    /// (`crate::backfill::shapes`): a column whose type changed (`ALTER
    /// COLUMN ... TYPE ... USING` rewrites every row without streaming them)
    /// gets the table backfilled with `on_type_change: backfill`, so the
    /// sinks get the rewritten values. Seen at the table's next change.
    async fn on_relation(&mut self, info: &RelationInfo, sql: &tokio_postgres::Client) {
        use crate::backfill::shapes;
        if self.settings.on_type_change == OnTypeChange::Ignore {
            return;
        }
        if self.shapes.is_none() {
            match shapes::load(sql, &self.settings.slot).await {
                Ok(s) => self.shapes = Some(s),
                Err(e) => {
                    warn!(error = %e, "cannot read pgfanout.relation_shapes: column type changes are not detected");
                    return;
                }
            }
        }
        let Some(known) = self.shapes.as_mut() else { return };
        let shape: shapes::Shape = info.columns.iter().map(|c| (c.name.to_string(), c.type_oid)).collect();
        let key = (info.schema.to_string(), info.table.to_string());
        if known.get(&key) == Some(&shape) {
            return;
        }
        let changed = known.get(&key).map(|old| shapes::type_changes(old, &shape)).unwrap_or_default();
        if let Err(e) = shapes::save(sql, &self.settings.slot, &key.0, &key.1, &shape).await {
            warn!(error = %e, "cannot record a table's shape in pgfanout.relation_shapes");
        }
        known.insert(key, shape);
        if changed.is_empty() {
            return;
        }
        let table = info.qualified_name();
        let data = serde_json::json!({
            "table": table, "slot": self.settings.slot,
            "reason": format!("type of {} changed", changed.join(", ")),
        });
        match crate::backfill::state::signal(sql, crate::backfill::state::SignalKind::Backfill, &data).await {
            Ok(id) => info!(table = %table, columns = %changed.join(", "), signal = id, "column type changed; the table is backfilled"),
            Err(e) => {
                warn!(table = %table, error = %e, "column type changed but a backfill could not be requested; run pgfanout backfill --table {table}")
            }
        }
    }

    /// A row that cannot be decoded: with `on_decode_error: dead_letter` it
    /// goes to the dead-letter file with its table, position, raw text values
    /// and the error, is counted, and the stream goes on (it counts as done
    /// for the ack rule: it is durable in the dead-letter file before its
    /// transaction's commit marker can be confirmed). With `stop`, pgfanout
    /// exits 1 and the slot stays before the row.
    async fn undecodable_row(
        &mut self,
        rel: &RelationInfo,
        msg: &LogicalMessage,
        lsn: Lsn,
        tx: &TxMeta,
        ordinal: u32,
        error: pgoutput::DecodeError,
    ) -> Result<(), SourceError> {
        let table = format!("{}.{}", rel.schema, rel.table);
        let message = format!("cannot decode a row of {table} at {lsn} (commit {}, ordinal {ordinal}): {error}", tx.commit_lsn);
        if self.settings.on_decode_error == OnDecodeError::Stop {
            return Err(SourceError::permanent(format!(
                "{message}; set source.postgres.on_decode_error: dead_letter to send such rows to the dead-letter file and go on"
            )));
        }
        metrics::counter!(m::DECODE_ERRORS_TOTAL, m::LABEL_TABLE => table.clone()).increment(1);
        warn!(table = %table, position = %format!("{}#{ordinal}", tx.commit_lsn), error = %error, "row cannot be decoded; dead-lettered");
        let change = Arc::new(raw_change(rel, msg, lsn, tx, ordinal));
        self.dead_letters
            .write(vec![DeadLetter { pipeline: Arc::from("(source)"), sink: Arc::from("(decode)"), error: message, change }])
            .await;
        Ok(())
    }

    fn current_tx(&self, lsn: Lsn) -> Result<TxMeta, SourceError> {
        self.tx.ok_or_else(|| SourceError::transient(format!("change outside a transaction at {lsn}")))
    }

    pub(super) async fn route(&mut self, change: Change) {
        // Keyed by the relation's shared name pointers: no string hashing per change.
        let key = (Arc::as_ptr(&change.schema) as *const u8 as usize, Arc::as_ptr(&change.table) as *const u8 as usize, change.op);
        match self.stats.changes.get_mut(&key) {
            Some(entry) => entry.2 += 1,
            None => {
                self.stats.changes.insert(key, (change.schema.clone(), change.table.clone(), 1));
            }
        }
        let change = Arc::new(change);
        self.routed.clear();
        self.router.route(&change, &mut self.routed);
        let mut letters = Vec::new();
        for r in self.routed.drain(..) {
            match r {
                Routed::Deliver { sink, record } => {
                    self.unflushed_since.get_or_insert_with(Instant::now);
                    self.pins.on_record(sink, self.offset);
                    self.local[sink].push(Item::Record(record));
                }
                Routed::DeadLetter { pipeline, sink, error, change } => {
                    metrics::counter!(m::PIPELINE_DEAD_LETTERED_TOTAL, m::LABEL_PIPELINE => pipeline.to_string()).increment(1);
                    warn!(pipeline = %pipeline, position = %change.position(), error = %error, "record dead-lettered by its pipeline");
                    let sink = self.sink_names.get(sink).map(|s| Arc::from(s.as_str())).unwrap_or_else(|| Arc::from("?"));
                    letters.push(DeadLetter { pipeline, sink, error, change });
                }
            }
        }
        if !letters.is_empty() {
            self.dead_letters.write(letters).await;
        }
    }

    /// Sends every non-empty local chunk to its sink, waiting for queue
    /// space (backpressure) while keeping the walsender alive.
    pub(super) async fn flush_local(&mut self, mut stream: Option<&mut ReplicationStream>) -> Result<(), SourceError> {
        self.unflushed_since = None;
        for i in 0..self.local.len() {
            if self.local[i].is_empty() {
                continue;
            }
            // The chunk leaves `local` only once its queue has room: if the
            // wait ends in an error (a status update failing: reconnect), the
            // records stay here to be flushed after it (the stream resumes
            // after them, so nothing else would bring them back).
            let sender = self.senders[i].clone();
            let permit = loop {
                tokio::select! {
                    permit = sender.reserve() => break permit,
                    _ = tokio::time::sleep(self.settings.status_interval.min(Duration::from_secs(5))) => {
                        if let Some(stream) = stream.as_deref_mut() {
                            self.send_status(stream, false).await?;
                        }
                        if *self.shutdown.borrow() {
                            warn!(sink = %self.sink_names[i], "shutdown while the sink's queue is full; its unqueued changes are not confirmed and will be sent again on the next start");
                            return Ok(());
                        }
                    }
                }
            };
            match permit {
                Ok(p) => {
                    self.tx_marks[i] = 0;
                    self.pins.on_flush(i, &self.local[i]);
                    p.send(std::mem::take(&mut self.local[i]));
                }
                Err(_) => return Err(SourceError::permanent(format!("sink {} stopped unexpectedly", self.sink_names[i]))),
            }
        }
        // Every sink has what was routed of the open transaction so far.
        if self.tx.is_some() {
            self.tx_flushed = self.ordinal;
        }
        self.pins.update(self.offset);
        Ok(())
    }

    async fn maybe_send_status(&mut self, stream: &mut ReplicationStream, reply: bool) -> Result<(), SourceError> {
        let confirmed = self.tracker.poll();
        self.answer_backfill_acks();
        self.publish_progress(self.sent_flush);
        let due = self.last_status.elapsed() >= self.settings.status_interval;
        let advanced = confirmed > self.sent_flush && self.last_status.elapsed() >= Duration::from_millis(200);
        if reply || due || advanced {
            self.send_status(stream, reply).await?;
        }
        Ok(())
    }

    async fn send_status(&mut self, stream: &mut ReplicationStream, _reply: bool) -> Result<(), SourceError> {
        let flush = self.tracker.poll();
        let write = self.received.max(flush);
        stream.send_status_update(write, flush, flush, false).await?;
        self.sent_flush = self.sent_flush.max(flush);
        self.last_status = Instant::now();
        metrics::gauge!(m::CONFIRMED_FLUSH_LSN).set(flush.0 as f64);
        for (name, lsn) in self.sink_names.iter().zip(self.tracker.sink_positions()) {
            metrics::gauge!(m::SINK_DURABLE_LSN, m::LABEL_SINK => name.clone()).set(lsn.0 as f64);
        }
        self.publish_progress(flush);
        Ok(())
    }

    /// Publishes the positions of the last `poll` (for `/status` and
    /// `/wait`) when they changed: every time a sink makes something
    /// durable, not only with status updates.
    fn publish_progress(&mut self, flush: Lsn) {
        let sinks: Vec<SinkProgress> = self
            .sink_names
            .iter()
            .zip(self.tracker.sink_positions())
            .zip(self.tracker.sink_oldest_pending())
            .map(|((name, lsn), pending)| SinkProgress { name: name.clone(), durable_lsn: lsn, pending_commit_lsn: pending })
            .collect();
        let next = Progress { confirmed_flush_lsn: flush, sinks };
        self.health.progress.send_if_modified(|p| {
            if *p == next {
                false
            } else {
                *p = next;
                true
            }
        });
    }

    pub(super) fn publish_stats(&mut self) {
        metrics::counter!(m::BYTES_READ_TOTAL).increment(std::mem::take(&mut self.stats.bytes));
        metrics::counter!(m::TRANSACTIONS_TOTAL).increment(std::mem::take(&mut self.stats.transactions));
        let mut totals: HashMap<(String, Op), u64> = HashMap::new();
        for ((_, _, op), (schema, table, n)) in self.stats.changes.iter_mut() {
            if *n > 0 {
                *totals.entry((format!("{schema}.{table}"), *op)).or_default() += std::mem::take(n);
            }
        }
        for ((table, op), n) in totals {
            metrics::counter!(m::CHANGES_READ_TOTAL, m::LABEL_TABLE => table, m::LABEL_OP => op.as_str()).increment(n);
        }
        // Keyed by name pointers, which every Relation message (reconnect,
        // DDL) renews: start afresh each time so the map stays as small as
        // the set of tables written since the last publish.
        self.stats.changes.clear();
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
    }

    /// Closes the sink queues and waits (up to the shutdown timeout) for the
    /// workers to write what they hold.
    pub async fn drain_workers(&mut self) {
        self.senders.clear();
        let workers = std::mem::take(&mut self.workers);
        if workers.is_empty() {
            return;
        }
        let all = futures_util::future::join_all(workers);
        if tokio::time::timeout(self.settings.shutdown_timeout, all).await.is_err() {
            warn!(timeout = ?self.settings.shutdown_timeout, "sinks did not drain in time; unconfirmed changes will be sent again on the next start");
        }
    }
}

/// How often the slot's retained WAL is sampled.
const SLOT_SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// Sets the retained-WAL gauge from `pg_replication_slots` (best effort).
async fn sample_retained_wal(sql: &tokio_postgres::Client, slot: &str) {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&slot];
    let query = sql.query_opt(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8 FROM pg_replication_slots WHERE slot_name = $1",
        &params,
    );
    if let Ok(Ok(Some(row))) = tokio::time::timeout(Duration::from_secs(2), query).await {
        if let Ok(Some(bytes)) = row.try_get::<_, Option<f64>>(0) {
            metrics::gauge!(m::SLOT_RETAINED_WAL_BYTES).set(bytes);
        }
    }
}

/// The next message of the backfill driver; never, without one.
async fn next_backfill(rx: &mut Option<mpsc::Receiver<ToSource>>) -> ToSource {
    match rx {
        Some(r) => match r.recv().await {
            Some(m) => m,
            None => {
                *rx = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// Exports what the last `pgfanout verify` of each pipeline found (it
/// records that in `pgfanout.verify_results`, see `crate::verify`).
async fn sample_verify_results(sql: &tokio_postgres::Client) {
    let exists = sql.query_one("SELECT to_regclass('pgfanout.verify_results') IS NOT NULL", &[]);
    if !matches!(tokio::time::timeout(Duration::from_secs(2), exists).await, Ok(Ok(row)) if row.try_get::<_, bool>(0).unwrap_or(false)) {
        return;
    }
    let query = sql.query("SELECT pipeline, divergent::float8, extract(epoch FROM finished_at)::float8 FROM pgfanout.verify_results", &[]);
    if let Ok(Ok(rows)) = tokio::time::timeout(Duration::from_secs(2), query).await {
        for row in rows {
            let (Ok(pipeline), Ok(divergent), Ok(at)) = (row.try_get::<_, String>(0), row.try_get::<_, f64>(1), row.try_get::<_, f64>(2))
            else {
                continue;
            };
            metrics::gauge!(m::VERIFY_DIVERGENT_KEYS, m::LABEL_PIPELINE => pipeline.clone()).set(divergent);
            metrics::gauge!(m::VERIFY_LAST_RUN_TIMESTAMP_SECONDS, m::LABEL_PIPELINE => pipeline).set(at);
        }
    }
}

/// Aborts the heartbeat task when the streaming session ends.
struct HeartbeatGuard(Option<tokio::task::JoinHandle<()>>);

impl Drop for HeartbeatGuard {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// Emits `pg_logical_emit_message(false, 'pgfanout_heartbeat', '')` every
/// `every`, reconnecting as needed. The message reaches this slot between
/// transactions, so its position can be confirmed when nothing is in flight.
fn spawn_heartbeat(opts: PgConnectOptions, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = None;
        loop {
            tokio::time::sleep(every).await;
            if client.is_none() {
                client = connect_sql(&opts).await.ok();
            }
            if let Some(c) = &client {
                if let Err(e) = c.batch_execute("SELECT pg_logical_emit_message(false, 'pgfanout_heartbeat', '')").await {
                    debug!(error = %e, "heartbeat failed");
                    client = None;
                }
            }
        }
    })
}
