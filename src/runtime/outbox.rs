//! The outbox: records routed to each sink and not yet handed to its queue.
//!
//! Routing one change at a time into each sink's bounded channel would wake
//! a sink per change. Records gather here per sink instead, with commit
//! markers between transactions, and leave as one chunk when a sink's chunk
//! reaches `batch_size`, when the socket has nothing more buffered and the
//! oldest record has waited `linger`, at a keepalive, or at shutdown. The
//! outbox also tracks how much of the stream its records keep alive
//! ([`Pins`]) and so how the next changes are decoded.

use std::time::{Duration, Instant};

use pgfanout_postgres::relation::Values;
use pgfanout_sdk::SinkRecord;

use crate::runtime::pins::Pins;
use crate::runtime::worker::{Chunk, Item};

pub struct Outbox {
    /// Per sink, in config order.
    local: Vec<Chunk>,
    /// Per sink: the approximate size of the records in `local`.
    bytes: Vec<usize>,
    chunk_bytes: usize,
    pins: Pins,
    /// Stream bytes received since start (the offset of the next message).
    offset: u64,
    /// When the oldest item not yet handed to a sink was queued here.
    unflushed_since: Option<Instant>,
    /// Per sink: records queued since start (which sinks a run of changes
    /// went to).
    pushed: Vec<u64>,
}

impl Outbox {
    /// `chunk_bytes`: a sink's chunk is full at this size even below the
    /// batch size (a part of the queue memory, so big rows flow in
    /// several chunks instead of waiting for the whole budget at once).
    pub fn new(sinks: usize, chunk_bytes: usize) -> Self {
        Outbox {
            chunk_bytes,
            local: (0..sinks).map(|_| Vec::new()).collect(),
            bytes: vec![0; sinks],
            pins: Pins::new(sinks),
            offset: 0,
            unflushed_since: None,
            pushed: vec![0; sinks],
        }
    }

    /// A message of `bytes` bytes was received.
    #[inline]
    pub fn received(&mut self, bytes: usize) {
        self.offset += bytes as u64;
    }

    /// How the next changes' values are decoded (shared with the receive
    /// buffer, or copied once the records here keep too much of it alive).
    pub fn mode(&self) -> Values {
        self.pins.mode()
    }

    /// Queues a record of about `size` bytes for `sink`.
    #[inline]
    pub fn push(&mut self, sink: usize, record: SinkRecord, size: usize) {
        self.unflushed_since.get_or_insert_with(Instant::now);
        self.pushed[sink] += 1;
        self.bytes[sink] += size;
        self.pins.on_record(sink, self.offset);
        self.local[sink].push(Item::Record(record));
    }

    /// Queues commit marker `seq` for every sink.
    pub fn commit(&mut self, seq: u64) {
        self.unflushed_since.get_or_insert_with(Instant::now);
        for chunk in self.local.iter_mut() {
            chunk.push(Item::Commit(seq));
        }
    }

    /// Whether some sink's chunk reached `batch` items or its byte size.
    #[inline]
    pub fn any_full(&self, batch: usize) -> bool {
        self.local.iter().zip(&self.bytes).any(|(c, &b)| c.len() >= batch || b >= self.chunk_bytes)
    }

    /// When what is queued has waited `linger` (none: nothing queued).
    pub fn due_at(&self, linger: Duration) -> Option<Instant> {
        self.unflushed_since.map(|t| t + linger)
    }

    /// The queued chunks, per sink.
    pub fn chunks(&self) -> &[Chunk] {
        &self.local
    }

    /// The queued chunks, to cut records out of them; their sizes are
    /// counted again.
    pub fn cut_with<R>(&mut self, cut: impl FnOnce(&mut [Chunk]) -> R) -> R {
        let out = cut(&mut self.local);
        for (bytes, chunk) in self.bytes.iter_mut().zip(&self.local) {
            *bytes = chunk.iter().map(|i| if let Item::Record(r) = i { super::memory::record_size(r, None) } else { 0 }).sum();
        }
        out
    }

    /// The approximate size of the records queued for `sink`.
    pub fn bytes(&self, sink: usize) -> usize {
        self.bytes[sink]
    }

    /// Per sink, how many records were queued since start.
    pub fn pushed(&self) -> &[u64] {
        &self.pushed
    }

    /// Whether `sink`'s chunk holds commit markers only.
    pub fn commits_only(&self, sink: usize) -> bool {
        commits_only(&self.local[sink])
    }

    /// Keeps only the last of `sink`'s commit markers (its chunk holds
    /// nothing else): the sink is durable up to the last one once it is up
    /// to the first, so a sink that receives nothing while its queue is
    /// full keeps one marker here instead of a growing list. Returns the
    /// chunk's new length.
    pub fn compact_commits(&mut self, sink: usize) -> usize {
        keep_last(&mut self.local[sink])
    }

    /// A flush starts: whatever stays queued after it is re-dated by the
    /// next record.
    pub fn flushing(&mut self) {
        self.unflushed_since = None;
    }

    /// Takes `sink`'s chunk to hand it to the sink's queue.
    pub fn take(&mut self, sink: usize) -> Chunk {
        self.pins.on_flush(sink, &self.local[sink]);
        self.bytes[sink] = 0;
        std::mem::take(&mut self.local[sink])
    }

    /// A flush ended: re-measures what the records keep alive.
    pub fn flushed(&mut self) {
        self.pins.update(self.offset);
    }
}

/// Whether `chunk` holds commit markers only.
pub fn commits_only(chunk: &Chunk) -> bool {
    chunk.iter().all(|i| matches!(i, Item::Commit(_)))
}

/// Keeps the last item of a chunk of commit markers (see
/// [`Outbox::compact_commits`]; the applier's bursts do the same); returns
/// its new length.
pub fn keep_last(chunk: &mut Chunk) -> usize {
    if chunk.len() > 1 {
        chunk.drain(..chunk.len() - 1);
    }
    chunk.len()
}
