//! The applier (`source.kafka`): reads change records from Kafka topics as
//! one member of a consumer group and writes them to its sinks, through the
//! same pipelines and sink workers as the replication reader.
//!
//! # The ack rule, per partition
//!
//! Records are read in bursts (up to `runtime.batch_size` records, or what
//! arrived within `runtime.linger`). Each burst gets a sequence number and
//! ends with a commit marker in every sink's queue, exactly like a
//! transaction of the replication stream; [`Offsets`] remembers the highest
//! offset of each partition the burst held. Once every sink's worker has
//! published that sequence number as durable, those offsets (plus one) may
//! be committed to the group, and only then. So an offset committed is
//! always one every sink has made durable everything before, whatever
//! happens to this process afterwards.
//!
//! # Rebalances
//!
//! Partitions are shared with cooperative-sticky assignment: a member that
//! joins or leaves moves only the partitions that must move. When a
//! partition is about to be taken away, the offsets durable by then are
//! committed (synchronously, inside the rebalance); records of it still on
//! their way to the stores are written all the same. Its next owner starts
//! from the committed offset and so writes some of them again: the stores'
//! writes are versioned by the change's position, so a copy never takes a
//! key back to an older state, and per-key order holds because a key always
//! lands on one partition. Log-like sinks (file, Kafka) receive those copies
//! (at-least-once).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgfanout_kafka::source::{GroupWatch, KafkaSourceConfig, Partition, Rebalances, Received, SourceConsumer};
use pgfanout_sdk::{Change, Lsn, Op, Row, Value};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::ack::DurableSeq;
use super::error::RunError;
use super::sinks::Sinks;
use super::worker::{Item, Queued};
use crate::config::Config;
use crate::dead_letter::{DeadLetter, DeadLetters, Stage};
use crate::http::Health;
use crate::metrics as m;
use crate::pipeline::{Routed, Router};

/// Which offsets every sink has made durable, per partition.
struct Offsets {
    sinks: Vec<DurableSeq>,
    next_seq: u64,
    /// Bursts not yet durable everywhere: (sequence, highest offset per
    /// partition in it).
    pending: VecDeque<(u64, Vec<(Partition, i64)>)>,
    /// Per partition: the next offset to read once everything before is
    /// durable (what may be committed).
    durable: HashMap<Partition, i64>,
    /// Per partition: the offset last committed by this member.
    committed: HashMap<Partition, i64>,
    /// The partitions this member holds.
    assigned: HashSet<Partition>,
}

impl Offsets {
    fn new(sinks: Vec<DurableSeq>) -> Self {
        Offsets {
            sinks,
            next_seq: 1,
            pending: VecDeque::new(),
            durable: HashMap::new(),
            committed: HashMap::new(),
            assigned: HashSet::new(),
        }
    }

    /// A burst with these highest offsets goes to the sinks: its sequence.
    fn register(&mut self, burst: Vec<(Partition, i64)>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back((seq, burst));
        seq
    }

    /// Moves bursts durable in every sink to `durable`.
    fn advance(&mut self) {
        let everywhere = self.sinks.iter().map(DurableSeq::get).min().unwrap_or(u64::MAX);
        while self.pending.front().is_some_and(|(seq, _)| *seq <= everywhere) {
            let Some((_, burst)) = self.pending.pop_front() else { break };
            for (p, offset) in burst {
                if self.assigned.contains(&p) {
                    let next = self.durable.entry(p).or_insert(0);
                    *next = (*next).max(offset + 1);
                }
            }
        }
    }

    /// The consumer's positions of held partitions with nothing read and not
    /// yet durable (none in a pending burst, none in `reading`): everything
    /// before such a position is durable, or a transaction marker of an
    /// exactly-once topic (which no record carries, so without this the
    /// committed offset would stop short of the end). Marked committed.
    fn idle(&mut self, positions: Vec<(Partition, i64)>, reading: &HashMap<Partition, i64>) -> Vec<(Partition, i64)> {
        let mut out = Vec::new();
        for (p, position) in positions {
            let busy = reading.contains_key(&p) || self.pending.iter().any(|(_, burst)| burst.iter().any(|(q, _)| *q == p));
            if busy || !self.assigned.contains(&p) || self.committed.get(&p).is_some_and(|&c| c >= position) {
                continue;
            }
            let next = self.durable.entry(p.clone()).or_insert(position);
            *next = (*next).max(position);
            self.committed.insert(p.clone(), position);
            out.push((p, position));
        }
        out
    }

    /// The durable offsets not committed yet, of `only` (or every held
    /// partition), marked committed.
    fn due(&mut self, only: Option<&[Partition]>) -> Vec<(Partition, i64)> {
        self.advance();
        let mut out = Vec::new();
        for (p, &next) in &self.durable {
            if only.is_some_and(|o| !o.contains(p)) || self.committed.get(p).is_some_and(|&c| c >= next) {
                continue;
            }
            out.push((p.clone(), next));
        }
        for (p, next) in &out {
            self.committed.insert(p.clone(), *next);
        }
        out
    }
}

/// How often the durable offsets of held partitions are committed again,
/// changed or not (see the main loop).
const RECOMMIT: Duration = Duration::from_secs(1);

/// [`Offsets`] shared with the consumer's rebalance callbacks.
struct Shared(Mutex<Offsets>);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Offsets> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Rebalances for Shared {
    fn revoking(&self, partitions: &[Partition]) -> Vec<(Partition, i64)> {
        let mut o = self.lock();
        let due = o.due(Some(partitions));
        for p in partitions {
            o.assigned.remove(p);
            o.durable.remove(p);
            o.committed.remove(p);
            metrics::gauge!(m::KAFKA_SOURCE_LAG_RECORDS, m::LABEL_TOPIC => p.0.to_string(), m::LABEL_PARTITION => p.1.to_string()).set(0.0);
        }
        // Bursts in flight forget the revoked partitions: their records
        // are still written, but their offsets are the next owner's.
        for (_, burst) in o.pending.iter_mut() {
            burst.retain(|(p, _)| !partitions.contains(p));
        }
        due
    }

    fn assigned(&self, partitions: &[Partition]) {
        self.lock().assigned.extend(partitions.iter().cloned());
    }

    fn commit_failed(&self, offsets: &[(Partition, i64)]) {
        let mut o = self.lock();
        for (p, offset) in offsets {
            if o.committed.get(p) == Some(offset) {
                o.committed.remove(p);
            }
        }
    }

    fn lag(&self, partition: &Partition, lag: i64) {
        if self.lock().assigned.contains(partition) {
            metrics::gauge!(m::KAFKA_SOURCE_LAG_RECORDS, m::LABEL_TOPIC => partition.0.to_string(), m::LABEL_PARTITION => partition.1.to_string())
                .set(lag as f64);
        }
    }
}

/// One shared (schema, table) name pair per table read.
type Names = HashMap<(String, String), (Arc<str>, Arc<str>)>;

/// The records read and not yet handed to the sinks' queues.
struct Burst {
    chunks: Vec<Vec<Item>>,
    bytes: Vec<usize>,
    /// Highest offset per partition.
    offsets: HashMap<Partition, i64>,
    records: usize,
    since: Option<Instant>,
}

impl Burst {
    fn new(sinks: usize) -> Self {
        Burst { chunks: (0..sinks).map(|_| Vec::new()).collect(), bytes: vec![0; sinks], offsets: HashMap::new(), records: 0, since: None }
    }

    fn read(&mut self, partition: Partition, offset: i64) {
        self.since.get_or_insert_with(Instant::now);
        self.records += 1;
        let at = self.offsets.entry(partition).or_insert(offset);
        *at = (*at).max(offset);
    }
}

/// Runs the applier until shutdown (Ok) or a permanent error.
pub async fn run(
    cfg: &Config,
    kafka: &KafkaSourceConfig,
    mut router: Router,
    mut sinks: Sinks,
    dead_letters: DeadLetters,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let group = cfg.source.kafka_group().unwrap_or_default();
    let shared = Arc::new(Shared(Mutex::new(Offsets::new(std::mem::take(&mut sinks.durable)))));
    let consumer = SourceConsumer::subscribe(kafka, &group, shared.clone()).map_err(|e| RunError::Config(format!("source.kafka: {e}")))?;
    info!(group = %group, topics = ?kafka.topics, "kafka source: joined the consumer group");
    match (GroupWatch::new(kafka, &group), cfg.source.postgres.connect_options()) {
        (Ok(watch), Ok(opts)) => {
            let names = sinks.names.clone();
            tokio::spawn(publish_group_progress(watch, opts, cfg.source.postgres.slot.clone(), names, health.clone(), shutdown.clone()));
        }
        (Err(e), _) => warn!(error = %e, "kafka source: /wait will not answer (cannot read the group's offsets)"),
        (_, Err(e)) => warn!(error = %e, "kafka source: /wait will not answer (source.postgres.url)"),
    }
    health.streaming.store(true, std::sync::atomic::Ordering::Release);
    metrics::gauge!(m::SOURCE_STREAMING).set(1.0);

    let batch = cfg.runtime.batch_size.max(1);
    let chunk_bytes = (usize::try_from(cfg.runtime.queue_memory.0).unwrap_or(usize::MAX)
        / (cfg.runtime.queue_batches * cfg.sinks.len()).max(1))
    .max(64 << 10);
    let linger = cfg.runtime.linger.max(Duration::from_millis(1));
    let mut burst = Burst::new(sinks.senders.len());
    let mut routed = Vec::new();
    let mut commits = tokio::time::interval(kafka.commit_interval);
    commits.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut names = Names::new();
    let mut errors_in_a_row = 0u32;
    let mut recommitted = Instant::now();
    loop {
        let flush_at = burst.since.map(|t| tokio::time::Instant::from_std(t + linger));
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            _ = commits.tick() => {
                // Every RECOMMIT, what is durable is committed again: an
                // asynchronous commit refused by a rebalance under way is
                // not always reported, and a partition that receives
                // nothing more would keep its committed offset short.
                if recommitted.elapsed() >= RECOMMIT {
                    shared.lock().committed.clear();
                    recommitted = Instant::now();
                }
                commit(&consumer, &shared, &burst.offsets, false)
            }
            _ = async { tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)).await }, if flush_at.is_some() => {
                if !flush(&mut burst, &mut sinks, &shared, &mut shutdown).await? {
                    break;
                }
            }
            got = consumer.recv() => match got {
                Ok(r) => {
                    errors_in_a_row = 0;
                    read(r, &mut burst, &mut router, &mut routed, &mut names, &dead_letters, &sinks).await;
                    let full = burst.records >= batch || burst.chunks.iter().any(|c| c.len() >= batch) || burst.bytes.iter().any(|&b| b >= chunk_bytes);
                    if full && !flush(&mut burst, &mut sinks, &shared, &mut shutdown).await? {
                        break;
                    }
                }
                Err(e) => {
                    // librdkafka retries brokers itself; this is news, not a
                    // reason to stop.
                    errors_in_a_row += 1;
                    warn!(error = %e, "kafka source: consumer error");
                    if errors_in_a_row > 3 {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
    }

    info!("shutting down: draining sinks");
    // A sink that is down keeps its queue full: the burst is not waited for
    // past the shutdown timeout (its offsets are not committed, so the group
    // reads it again).
    let _ = tokio::time::timeout(cfg.runtime.shutdown_timeout, flush(&mut burst, &mut sinks, &shared, &mut shutdown)).await;
    sinks.senders.clear();
    let workers = std::mem::take(&mut sinks.workers);
    if tokio::time::timeout(cfg.runtime.shutdown_timeout, futures_util::future::join_all(workers)).await.is_err() {
        warn!(timeout = ?cfg.runtime.shutdown_timeout, "sinks did not drain in time; records not committed are read again by the group");
    }
    commit(&consumer, &shared, &burst.offsets, true);
    health.streaming.store(false, std::sync::atomic::Ordering::Release);
    drop(consumer);
    info!("stopped");
    Ok(())
}

/// Commits the offsets durable in every sink (`reading`: the partitions of
/// the burst not yet handed to the sinks).
fn commit(consumer: &SourceConsumer, shared: &Shared, reading: &HashMap<Partition, i64>, sync: bool) {
    let positions = consumer.positions();
    let mut due = {
        let mut o = shared.lock();
        let mut due = o.due(None);
        due.extend(o.idle(positions, reading));
        due
    };
    due.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    due.dedup_by(|a, b| a.0 == b.0);
    if let Err(e) = consumer.commit(&due, sync) {
        warn!(error = %e, "kafka source: committing offsets failed; the records after the last committed offsets are read again after a restart or rebalance");
    }
}

/// Routes one record read into the burst.
#[allow(clippy::too_many_arguments)]
async fn read(
    r: Received,
    burst: &mut Burst,
    router: &mut Router,
    routed: &mut Vec<Routed>,
    names: &mut Names,
    dead_letters: &DeadLetters,
    sinks: &Sinks,
) {
    burst.read(r.partition.clone(), r.offset);
    metrics::counter!(m::KAFKA_SOURCE_RECORDS_TOTAL, m::LABEL_TOPIC => r.partition.0.to_string()).increment(1);
    let mut change = match r.change {
        None => return,
        Some(Ok(c)) => c,
        Some(Err(error)) => {
            let topic = &r.partition.0;
            warn!(topic = %topic, partition = r.partition.1, offset = r.offset, error = %error, "kafka source: record cannot be read; dead-lettered");
            metrics::counter!(m::DECODE_ERRORS_TOTAL, m::LABEL_TABLE => topic.to_string()).increment(1);
            let change = unreadable(&r.partition, r.offset, r.raw.unwrap_or_default());
            dead_letters
                .write(vec![DeadLetter {
                    stage: Stage::Decode,
                    pipeline: Arc::from("(source)"),
                    sink: Arc::from("(decode)"),
                    error: format!("record {topic}/{}@{}: {error}", r.partition.1, r.offset),
                    change: Arc::new(change),
                    source: None,
                }])
                .await;
            return;
        }
    };
    // One Arc per table, so the router's per-table cache holds.
    let (schema, table) = names
        .entry((change.schema.to_string(), change.table.to_string()))
        .or_insert_with(|| (change.schema.clone(), change.table.clone()))
        .clone();
    change.schema = schema;
    change.table = table;
    let change = Arc::new(change);
    let size = change.approx_size();
    router.route(&change, routed);
    let mut letters = Vec::new();
    for r in routed.drain(..) {
        match r {
            Routed::Deliver { sink, record } => {
                burst.bytes[sink] += super::memory::record_size(&record, Some((&change, size)));
                burst.chunks[sink].push(Item::Record(record));
            }
            Routed::DeadLetter { pipeline, sink, error, change } => letters.push(sinks.pipeline_letter(pipeline, sink, error, change)),
        }
    }
    if !letters.is_empty() {
        dead_letters.write(letters).await;
    }
}

/// A record that could not be read, as the change its dead letter holds:
/// its topic as the table, partition and offset as the key (so each has
/// its own letter), and the value's text.
fn unreadable(partition: &Partition, offset: i64, raw: String) -> Change {
    let key = Row(vec![
        ("partition".into(), Value::Number(partition.1.to_string().as_str().into())),
        ("offset".into(), Value::Number(offset.to_string().as_str().into())),
    ]);
    let mut after = key.clone();
    after.0.push(("value".into(), Value::String(raw.as_str().into())));
    Change {
        op: Op::Insert,
        schema: Arc::from("kafka"),
        table: partition.0.clone(),
        key: Some(key),
        before: None,
        after: Some(after),
        unchanged_toast: Vec::new(),
        lsn: Lsn::ZERO,
        commit_lsn: Lsn::ZERO,
        ordinal: 0,
        xid: None,
        commit_ts: None,
    }
}

/// Hands the burst to the sinks' queues (waiting for room: backpressure),
/// with a commit marker whose sequence [`Offsets`] maps to the burst's
/// offsets. `Ok(false)`: shutdown came while waiting.
async fn flush(burst: &mut Burst, sinks: &mut Sinks, shared: &Shared, shutdown: &mut watch::Receiver<bool>) -> Result<bool, RunError> {
    burst.since = None;
    if burst.records == 0 {
        return Ok(true);
    }
    let seq = shared.lock().register(burst.offsets.drain().collect());
    burst.records = 0;
    for i in 0..burst.chunks.len() {
        burst.chunks[i].push(Item::Commit(seq));
        // Commit markers alone for a sink whose queue is full wait here,
        // compacted to the last, so the other sinks go on; that sink stays
        // behind in the ack rule all the same.
        if sinks.senders[i].capacity() == 0 && super::outbox::commits_only(&burst.chunks[i]) {
            super::outbox::keep_last(&mut burst.chunks[i]);
            continue;
        }
        let memory = sinks.memory.clone();
        let charge = tokio::select! {
            c = memory.charge(burst.bytes[i]) => c,
            _ = shutdown.changed() => return Ok(false),
        };
        let permit = tokio::select! {
            p = sinks.senders[i].reserve() => p,
            _ = shutdown.changed() => return Ok(false),
        };
        match permit {
            Ok(p) => {
                burst.bytes[i] = 0;
                p.send(Queued { items: std::mem::take(&mut burst.chunks[i]), charge });
            }
            Err(_) => return Err(RunError::Fatal(format!("sink {} stopped unexpectedly", sinks.names[i]))),
        }
    }
    Ok(true)
}

/// What `/wait` answers on an applier: the group's progress, not this
/// member's. A position `L` the reader's slot has confirmed is in Kafka
/// (the reader's Kafka sink made it durable first), below the topics' end
/// offsets read after it; once the group has committed every partition up
/// to those ends, every change at or before `L` is durable in the stores
/// (offsets are committed only after that, by whichever member held the
/// partition). Appliers of one group must share one config (the same
/// sinks). Repeats every 300 ms, each round with the slot's newest position.
async fn publish_group_progress(
    watch: GroupWatch,
    opts: pgfanout_postgres::conn::PgConnectOptions,
    slot: String,
    sinks: Vec<String>,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) {
    const CALL: Duration = Duration::from_secs(5);
    let watch = Arc::new(watch);
    let mut sql: Option<tokio_postgres::Client> = None;
    let mut published = Lsn::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = shutdown.changed() => return,
        }
        if sql.as_ref().is_none_or(|c| c.is_closed()) {
            match pgfanout_postgres::conn::connect_sql(&opts).await {
                Ok(c) => sql = Some(c),
                Err(e) => {
                    debug!(error = %e, "kafka source: cannot read the slot's position for /wait");
                    continue;
                }
            }
        }
        let Some(c) = sql.as_ref() else { continue };
        let confirmed = match c.query_opt("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await
        {
            Ok(Some(row)) => row.get::<_, Option<String>>(0).and_then(|t| t.parse::<Lsn>().ok()),
            Ok(None) => None,
            Err(e) => {
                debug!(error = %e, "kafka source: cannot read the slot's position for /wait");
                sql = None;
                None
            }
        };
        let Some(lsn) = confirmed.filter(|&l| l > published) else { continue };
        let w = watch.clone();
        let Ok(Ok(ends)) = tokio::task::spawn_blocking(move || w.ends(CALL)).await else { continue };
        loop {
            let (w, e) = (watch.clone(), ends.clone());
            if let Ok(Ok(true)) = tokio::task::spawn_blocking(move || w.reached(&e, CALL)).await {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.changed() => return,
            }
        }
        published = lsn;
        health.progress.send_replace(crate::http::Progress {
            confirmed_flush_lsn: lsn,
            sinks: sinks
                .iter()
                .map(|name| crate::http::SinkProgress { name: name.clone(), durable_lsn: lsn, pending_commit_lsn: None })
                .collect(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> Partition {
        (Arc::from("t"), n)
    }

    #[test]
    fn an_offset_is_committed_only_once_every_sink_has_its_burst_durable() {
        let (a, b) = (DurableSeq::default(), DurableSeq::default());
        let mut o = Offsets::new(vec![a.clone(), b.clone()]);
        o.assigned.extend([p(0), p(1)]);
        let s1 = o.register(vec![(p(0), 10), (p(1), 3)]);
        let s2 = o.register(vec![(p(0), 12)]);
        assert!(o.due(None).is_empty());
        a.advance(s2);
        assert!(o.due(None).is_empty(), "sink b has nothing durable");
        b.advance(s1);
        let mut due = o.due(None);
        due.sort();
        assert_eq!(due, vec![(p(0), 11), (p(1), 4)]);
        assert!(o.due(None).is_empty(), "committed once");
        b.advance(s2);
        assert_eq!(o.due(None), vec![(p(0), 13)]);
    }

    #[test]
    fn an_idle_partition_commits_its_position_past_transaction_markers_and_a_busy_one_does_not() {
        let a = DurableSeq::default();
        let mut o = Offsets::new(vec![a.clone()]);
        o.assigned.extend([p(0), p(1), p(2)]);
        let s1 = o.register(vec![(p(0), 4)]);
        a.advance(s1);
        o.register(vec![(p(1), 7)]);
        let reading = HashMap::from([(p(2), 3)]);
        // Partition 0's last record (4) is durable and a commit marker
        // follows it at 5: the consumer stands at 6.
        let mut due = o.due(None);
        due.extend(o.idle(vec![(p(0), 6), (p(1), 8), (p(2), 4)], &reading));
        assert_eq!(due, vec![(p(0), 5), (p(0), 6)], "partition 1 has a burst in flight, partition 2 one being read");
        assert!(o.idle(vec![(p(0), 6)], &HashMap::new()).is_empty(), "committed once");
    }

    #[test]
    fn a_revoked_partition_commits_what_is_durable_and_forgets_the_rest() {
        let a = DurableSeq::default();
        let shared = Shared(Mutex::new(Offsets::new(vec![a.clone()])));
        shared.assigned(&[p(0), p(1)]);
        let s1 = shared.lock().register(vec![(p(0), 5), (p(1), 7)]);
        let s2 = shared.lock().register(vec![(p(0), 9), (p(1), 8)]);
        a.advance(s1);
        let mut due = shared.revoking(&[p(0)]);
        due.sort();
        assert_eq!(due, vec![(p(0), 6)]);
        a.advance(s2);
        assert_eq!(shared.lock().due(None), vec![(p(1), 9)], "partition 0 is another member's now");
    }

    #[test]
    fn a_failed_commit_is_made_again_even_when_nothing_more_arrives() {
        let a = DurableSeq::default();
        let shared = Shared(Mutex::new(Offsets::new(vec![a.clone()])));
        shared.assigned(&[p(0), p(1)]);
        a.advance(shared.lock().register(vec![(p(0), 5), (p(1), 7)]));
        let mut due = shared.lock().due(None);
        due.sort();
        assert_eq!(due, vec![(p(0), 6), (p(1), 8)]);
        // The asynchronous commit of partition 0 is refused (a rebalance
        // began): the next tick commits it again.
        shared.commit_failed(&[(p(0), 6)]);
        assert_eq!(shared.lock().due(None), vec![(p(0), 6)]);
        // A failure of an older commit does not undo a newer one.
        shared.commit_failed(&[(p(1), 3)]);
        assert!(shared.lock().due(None).is_empty());
    }
}
