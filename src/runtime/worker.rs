//! A sink worker: drains one sink's bounded queue in order, writes batches,
//! retries, dead-letters rejected records, and publishes durable progress.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfanout_sdk::{BatchOutcome, DynSink, InFlight, Rejected, SinkError, SinkRecord};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::dead_letter::{DeadLetter, DeadLetters, Stage};
use crate::metrics as m;
use crate::runtime::ack::DurableSeq;
use crate::runtime::lease::Fence;
use crate::runtime::memory::Charge;
use pgfanout_sdk::settings::Backoff;

/// What flows through a sink's queue, in commit order.
#[derive(Debug)]
pub enum Item {
    /// A record for this sink.
    Record(SinkRecord),
    /// The transaction with this sequence number has committed: once every
    /// record before this marker is durable, so is the transaction.
    Commit(u64),
}

/// A chunk of items; queues carry chunks to keep per-item overhead low.
pub type Chunk = Vec<Item>;

/// A chunk in a sink's queue, with the queue memory it holds until the sink
/// has written its records.
#[derive(Debug)]
pub struct Queued {
    pub items: Chunk,
    pub charge: Charge,
}

/// Everything a worker needs besides its sink.
pub struct Worker {
    pub name: Arc<str>,
    pub rx: mpsc::Receiver<Queued>,
    pub durable: DurableSeq,
    pub dead_letters: DeadLetters,
    /// Pipeline names of the sink's routes (for dead letters).
    pub routes: Vec<Arc<str>>,
    pub batch_size: usize,
    /// Writes wait while it is closed (`ha`: the lease is not held).
    pub fence: Arc<Fence>,
}

impl Worker {
    /// Runs until the queue is closed and drained, then closes the sink.
    pub async fn run(mut self, mut sink: Box<dyn DynSink>) {
        match sink.pipeline_depth() {
            depth @ 2.. => self.run_pipelined(sink.as_mut(), depth).await,
            _ => self.run_serial(sink.as_mut()).await,
        }
        if let Err(e) = sink.close_boxed().await {
            warn!(sink = %self.name, error = %e, "closing sink failed");
        }
        debug!(sink = %self.name, "sink worker stopped");
    }

    /// One batch at a time: `write`, await, next. For a sink that applies
    /// each batch atomically ([`DynSink::whole_transactions`]) batches end
    /// only where a transaction ends (a transaction larger than a batch is
    /// split), and records of a transaction whose end has not arrived yet
    /// wait for it.
    async fn run_serial(&mut self, sink: &mut dyn DynSink) {
        let whole = sink.whole_transactions();
        let size = self.batch_size.max(1);
        let mut records: Vec<SinkRecord> = Vec::with_capacity(self.batch_size);
        // (records before it, sequence number) of each commit marker.
        let mut ends: Vec<(usize, u64)> = Vec::new();
        // (records up to the end of its chunk, the chunk's queue memory).
        let mut charges: Vec<(usize, Charge)> = Vec::new();
        while let Some(chunk) = self.rx.recv().await {
            absorb_marked(chunk, &mut records, &mut ends, &mut charges);
            while records.len() < self.batch_size {
                match self.rx.try_recv() {
                    Ok(chunk) => absorb_marked(chunk, &mut records, &mut ends, &mut charges),
                    Err(_) => break,
                }
            }
            if !whole {
                for batch in records.chunks(size) {
                    self.write(sink, batch).await;
                }
                records.clear();
                charges.clear();
                if let Some(&(_, seq)) = ends.last() {
                    self.durable.advance(seq);
                }
                ends.clear();
                continue;
            }
            let written = self.write_whole_transactions(sink, &records, &ends).await;
            records.drain(..written);
            let done = ends.iter().take_while(|(at, _)| *at <= written).count();
            if let Some(&(_, seq)) = ends[..done].last() {
                self.durable.advance(seq);
            }
            ends.drain(..done);
            for end in &mut ends {
                end.0 -= written;
            }
            // The memory of chunks written in full goes back.
            charges.retain_mut(|(end, _)| {
                let kept = *end > written;
                *end = end.saturating_sub(written);
                kept
            });
        }
        // A transaction whose end never came is not written: the stream
        // sends it again, whole, to the next run.
    }

    /// Writes `records` in batches that end where a transaction ends
    /// (`ends`), each at most a batch; a transaction larger than a batch is
    /// split. Returns how many records were written: the rest belong to a
    /// transaction whose end has not arrived.
    async fn write_whole_transactions(&self, sink: &mut dyn DynSink, records: &[SinkRecord], ends: &[(usize, u64)]) -> usize {
        let size = self.batch_size.max(1);
        let mut start = 0;
        loop {
            let limit = start + size;
            let end = match ends.iter().map(|(at, _)| *at).rfind(|at| *at > start && *at <= limit) {
                Some(at) => at,
                None if records.len() - start >= size => limit,
                None => return start,
            };
            self.write(sink, &records[start..end]).await;
            start = end;
        }
    }

    /// Adds what is already queued (without waiting) until a batch is full.
    fn top_up(&mut self, records: &mut Vec<SinkRecord>, commit: &mut Option<u64>, charges: &mut Vec<Charge>) {
        while records.len() < self.batch_size {
            match self.rx.try_recv() {
                Ok(chunk) => absorb(chunk, records, commit, charges),
                Err(_) => break,
            }
        }
    }

    /// Up to `depth` batches in flight (`submit`), completed in order: a
    /// commit marker is applied once the last batch before it is durable.
    async fn run_pipelined(&mut self, sink: &mut dyn DynSink, depth: usize) {
        let mut records: Vec<SinkRecord> = Vec::with_capacity(self.batch_size);
        let mut flight: VecDeque<Pending> = VecDeque::with_capacity(depth + 1);
        let mut open = true;
        while open || !flight.is_empty() {
            tokio::select! {
                biased;
                outcome = async { (&mut flight.front_mut().expect("guarded").done).await }, if !flight.is_empty() => {
                    let done = flight.pop_front().expect("guarded");
                    self.finish(sink, done, outcome).await;
                }
                chunk = self.rx.recv(), if open && flight.len() < depth => {
                    let Some(chunk) = chunk else {
                        open = false;
                        continue;
                    };
                    let mut commit = None;
                    let mut charges = Vec::new();
                    absorb(chunk, &mut records, &mut commit, &mut charges);
                    self.top_up(&mut records, &mut commit, &mut charges);
                    let submitted = !records.is_empty();
                    while !records.is_empty() {
                        let n = records.len().min(self.batch_size.max(1));
                        let batch: Arc<[SinkRecord]> = records.drain(..n).collect();
                        self.submit(sink, batch, &mut flight).await;
                    }
                    // The memory is returned when the last batch of these
                    // chunks is done (batches complete in order).
                    if submitted {
                        if let Some(last) = flight.back_mut() {
                            last.charges.append(&mut charges);
                        }
                    }
                    if let Some(seq) = commit {
                        match flight.back_mut() {
                            Some(last) => last.commit = Some(seq),
                            None => self.durable.advance(seq),
                        }
                    }
                }
            }
        }
    }

    /// Submits a batch, retrying a retriable refusal; a permanent one lets
    /// the batches in flight complete, then writes the batch alone (records
    /// one by one if need be) before anything after it is submitted.
    async fn submit(&self, sink: &mut dyn DynSink, batch: Arc<[SinkRecord]>, flight: &mut VecDeque<Pending>) {
        let mut backoff = Backoff::default();
        loop {
            self.fence.wait().await;
            let started = Instant::now();
            match sink.submit_boxed(batch.clone()).await {
                Ok(done) => {
                    flight.push_back(Pending { batch, done, commit: None, started, charges: Vec::new() });
                    return;
                }
                Err(SinkError::Retriable(e)) => self.back_off(&mut backoff, &batch, &e, "sink refused a batch; retrying").await,
                Err(SinkError::Permanent(e)) => {
                    warn!(sink = %self.name, error = %e, records = batch.len(), "batch refused; writing it alone");
                    while let Some(mut earlier) = flight.pop_front() {
                        let outcome = (&mut earlier.done).await;
                        self.finish(sink, earlier, outcome).await;
                    }
                    self.write(sink, &batch).await;
                    return;
                }
            }
        }
    }

    /// A retriable failure of `records` records: counted, logged with
    /// `what`, then the backoff's next delay slept.
    async fn back_off(&self, backoff: &mut Backoff, batch: &[SinkRecord], error: &str, what: &str) {
        let records = batch.len();
        metrics::counter!(m::SINK_FAILED_TOTAL, m::LABEL_SINK => self.name.to_string()).increment(records as u64);
        crate::activity::sink_failed(&self.name, error, batch.iter().filter_map(|r| r.change.commit_ts).min());
        let delay = backoff.next_delay();
        warn!(sink = %self.name, error = %error, records, retry_in = ?delay, "{what}");
        tokio::time::sleep(delay).await;
    }

    /// A batch in flight is done: metrics, dead letters, then its commit.
    async fn finish(&self, sink: &mut dyn DynSink, done: Pending, outcome: BatchOutcome) {
        match outcome {
            Ok(rejected) => self.settle(&done.batch, rejected, done.started.elapsed()).await,
            Err(e) => {
                crate::activity::sink_failed(&self.name, &e.to_string(), done.batch.iter().filter_map(|r| r.change.commit_ts).min());
                warn!(sink = %self.name, error = %e, records = done.batch.len(), "batch in flight failed; writing it again alone");
                self.write(sink, &done.batch).await;
            }
        }
        if let Some(seq) = done.commit {
            self.durable.advance(seq);
        }
    }

    /// Writes one batch until it is durable, retrying retriable errors
    /// forever with capped backoff and isolating permanently failing records.
    async fn write(&self, sink: &mut dyn DynSink, batch: &[SinkRecord]) {
        let mut backoff = Backoff::default();
        loop {
            self.fence.wait().await;
            let started = Instant::now();
            match sink.write_boxed(batch).await {
                Ok(rejected) => {
                    self.settle(batch, rejected, started.elapsed()).await;
                    return;
                }
                Err(SinkError::Retriable(e)) => self.back_off(&mut backoff, batch, &e, "sink write failed; retrying").await,
                Err(SinkError::Permanent(e)) if batch.len() > 1 => {
                    warn!(sink = %self.name, error = %e, records = batch.len(), "batch rejected; retrying records one by one");
                    for one in batch.chunks(1) {
                        Box::pin(self.write(sink, one)).await;
                    }
                    return;
                }
                Err(SinkError::Permanent(e)) => {
                    let letters = batch.iter().map(|r| self.letter(r, e.clone())).collect();
                    self.dead_letter(letters).await;
                    return;
                }
            }
        }
    }

    /// A write returned: success metrics, then the records the store
    /// refused go to the dead letters.
    async fn settle(&self, batch: &[SinkRecord], rejected: Vec<Rejected>, elapsed: Duration) {
        self.record_success(batch, rejected.len(), elapsed);
        if !rejected.is_empty() {
            let letters = rejected.into_iter().filter_map(|r| batch.get(r.index).map(|rec| self.letter(rec, r.error))).collect::<Vec<_>>();
            self.dead_letter(letters).await;
        }
    }

    fn letter(&self, record: &SinkRecord, error: String) -> DeadLetter {
        DeadLetter {
            stage: Stage::Sink,
            pipeline: self.routes.get(record.route).cloned().unwrap_or_else(|| Arc::from("?")),
            sink: self.name.clone(),
            source: record.source.clone(),
            error,
            change: record.change.clone(),
        }
    }

    async fn dead_letter(&self, letters: Vec<DeadLetter>) {
        metrics::counter!(m::SINK_DEAD_LETTERED_TOTAL, m::LABEL_SINK => self.name.to_string()).increment(letters.len() as u64);
        for l in &letters {
            warn!(sink = %self.name, pipeline = %l.pipeline, position = %l.change.position(), error = %l.error, "record dead-lettered");
        }
        self.dead_letters.write(letters).await;
    }

    fn record_success(&self, batch: &[SinkRecord], rejected: usize, elapsed: Duration) {
        let sink = self.name.to_string();
        metrics::counter!(m::SINK_WRITTEN_TOTAL, m::LABEL_SINK => sink.clone()).increment((batch.len() - rejected) as u64);
        metrics::histogram!(m::SINK_BATCH_DURATION_SECONDS, m::LABEL_SINK => sink.clone()).record(elapsed.as_secs_f64());
        let mut latency = None;
        if let Some(ts) = batch.last().and_then(|r| r.change.commit_ts) {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
            let seconds = (now - ts).max(0) as f64 / 1e6;
            metrics::histogram!(m::END_TO_END_LATENCY_SECONDS, m::LABEL_SINK => sink).record(seconds);
            latency = Some(seconds);
        }
        crate::activity::sink_wrote(&self.name, latency);
    }
}

/// A submitted batch, its completion, and the commit it ends (if any).
struct Pending {
    batch: Arc<[SinkRecord]>,
    done: InFlight,
    commit: Option<u64>,
    started: Instant,
    /// Queue memory returned when this batch is done.
    charges: Vec<Charge>,
}

fn absorb(chunk: Queued, records: &mut Vec<SinkRecord>, commit: &mut Option<u64>, charges: &mut Vec<Charge>) {
    charges.push(chunk.charge);
    for item in chunk.items {
        match item {
            Item::Record(r) => records.push(r),
            Item::Commit(seq) => *commit = Some(seq),
        }
    }
}

/// [`absorb`], keeping where each commit marker falls among the records,
/// and where the chunk ends.
fn absorb_marked(chunk: Queued, records: &mut Vec<SinkRecord>, ends: &mut Vec<(usize, u64)>, charges: &mut Vec<(usize, Charge)>) {
    for item in chunk.items {
        match item {
            Item::Record(r) => records.push(r),
            Item::Commit(seq) => ends.push((records.len(), seq)),
        }
    }
    charges.push((records.len(), chunk.charge));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::memory::QueueMemory;
    use pgfanout_sdk::testing::{At, Table};
    use pgfanout_sdk::{BatchOutcome, Sink};

    /// The positions of each batch written.
    type Batches = Arc<std::sync::Mutex<Vec<Vec<(u64, u32)>>>>;

    /// Keeps every batch it is given.
    struct Atomic(Batches);

    impl Sink for Atomic {
        async fn write(&mut self, batch: &[SinkRecord]) -> BatchOutcome {
            self.0.lock().unwrap().push(batch.iter().map(|r| (r.change.commit_lsn.0, r.change.ordinal)).collect());
            Ok(Vec::new())
        }

        fn whole_transactions(&self) -> bool {
            true
        }
    }

    /// Transactions of 3, 5, 1 and 11 records, handed over in chunks that
    /// end in the middle of them, to a sink that applies batches atomically
    /// with batches of 4: every batch ends where a transaction ends unless
    /// it is a full part of the 11-record one, nothing is lost or repeated,
    /// and the last transaction is durable at the end.
    #[tokio::test]
    async fn batches_of_an_atomic_sink_end_where_transactions_end() {
        let sizes = [3u32, 5, 1, 11];
        let mut items = Vec::new();
        for (t, &n) in sizes.iter().enumerate() {
            for i in 0..n {
                let change = Table("t").insert(At(100 + t as u64, i), &[("id", "1")]);
                items.push(Item::Record(SinkRecord { change: Arc::new(change), route: 0, source: None }));
            }
            items.push(Item::Commit(t as u64 + 1));
        }
        let memory = QueueMemory::new(1 << 20);
        let (tx, rx) = mpsc::channel(64);
        for chunk in items.chunks(4) {
            let charge = memory.charge(1).await;
            tx.send(Queued { items: chunk.iter().map(clone_item).collect(), charge }).await.unwrap();
        }
        drop(tx);
        let written = Arc::new(std::sync::Mutex::new(Vec::new()));
        let durable = DurableSeq::waking(Arc::new(tokio::sync::Notify::new()));
        let dir = tempfile::tempdir().unwrap();
        let worker = Worker {
            name: Arc::from("atomic"),
            rx,
            durable: durable.clone(),
            dead_letters: DeadLetters::file(dir.path().join("dead.jsonl"), "slot"),
            routes: vec![Arc::from("p")],
            batch_size: 4,
            fence: crate::runtime::lease::Fence::open(),
        };
        worker.run(Box::new(Atomic(written.clone()))).await;
        let batches = written.lock().unwrap().clone();
        let all: Vec<(u64, u32)> = batches.iter().flatten().copied().collect();
        let want: Vec<(u64, u32)> = sizes.iter().enumerate().flat_map(|(t, &n)| (0..n).map(move |i| (100 + t as u64, i))).collect();
        assert_eq!(all, want, "every record once, in order");
        for b in &batches {
            let (lsn, last) = *b.last().unwrap();
            let ends_a_transaction = last + 1 == sizes[(lsn - 100) as usize];
            assert!(ends_a_transaction || b.len() == 4, "batch {b:?} ends inside a transaction without being full");
            assert!(b.len() <= 4);
        }
        assert_eq!(durable.get(), 4);
        assert_eq!(memory.free(), 1 << 20, "every chunk's memory went back");
    }

    fn clone_item(item: &Item) -> Item {
        match item {
            Item::Record(r) => Item::Record(r.clone()),
            Item::Commit(seq) => Item::Commit(*seq),
        }
    }
}
