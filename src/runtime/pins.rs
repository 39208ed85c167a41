//! How much of the replication stream queued records keep alive.
//!
//! Decoded values are slices of the message they came in
//! ([`Values::Shared`]), so a record keeps its whole receive buffer alive
//! (256 kB or more) until every sink is done with it. Records leave the
//! queues in the order they entered, so the memory they keep is at most the
//! stream read since the oldest record still queued anywhere. That span is
//! usually a few batches, but a slow sink with a filter that keeps one row in
//! a thousand would let each queued record hold a buffer of rows that were
//! dropped. Past [`BUDGET`] bytes of span, new records own their values
//! ([`Values::Owned`], one copy per value) until the span is back under it,
//! so the buffers kept alive never exceed the budget by more than one read.

use std::collections::VecDeque;
use std::sync::Arc;

use pgfanout_postgres::relation::Values;
use pgfanout_sdk::Change;

use crate::runtime::worker::{Chunk, Item};

/// Stream bytes queued records may keep alive before new ones copy.
pub const BUDGET: u64 = 8 << 20;

pub struct Pins {
    /// Per sink: the stream offset at which its local chunk got its first
    /// record since the last flush.
    local_start: Vec<Option<u64>>,
    /// Chunks handed to sinks: the stream offset of their first record, and
    /// their last record's change (held by the sinks until they are done
    /// with it: when only this reference is left, the sink has released the
    /// whole chunk).
    flushed: VecDeque<(u64, Arc<Change>)>,
    mode: Values,
}

impl Pins {
    pub fn new(sinks: usize) -> Self {
        Pins { local_start: vec![None; sinks], flushed: VecDeque::new(), mode: Values::Shared }
    }

    /// How the next changes are decoded.
    pub fn mode(&self) -> Values {
        self.mode
    }

    /// A record read at stream offset `offset` was queued locally for `sink`.
    pub fn on_record(&mut self, sink: usize, offset: u64) {
        if let Some(start) = self.local_start.get_mut(sink) {
            start.get_or_insert(offset);
        }
    }

    /// `sink`'s local chunk is being handed over.
    pub fn on_flush(&mut self, sink: usize, chunk: &Chunk) {
        let Some(start) = self.local_start.get_mut(sink).and_then(Option::take) else { return };
        let last = chunk.iter().rev().find_map(|item| match item {
            Item::Record(r) => Some(r.change.clone()),
            Item::Commit(_) => None,
        });
        if let Some(change) = last {
            self.flushed.push_back((start, change));
        }
    }

    /// Stream bytes between the oldest record still queued and `now` (the
    /// stream offset read so far); updates the mode.
    pub fn update(&mut self, now: u64) -> u64 {
        while self.flushed.front().is_some_and(|(_, change)| Arc::strong_count(change) == 1) {
            self.flushed.pop_front();
        }
        // Released chunks behind an unreleased one stay counted (records of
        // different sinks leave at different times): an overestimate.
        let oldest = self.flushed.iter().map(|(start, _)| *start).chain(self.local_start.iter().flatten().copied()).min();
        let span = oldest.map_or(0, |o| now.saturating_sub(o));
        self.mode = if span <= BUDGET { Values::Shared } else { Values::Owned };
        span
    }
}

#[cfg(test)]
mod tests {
    use pgfanout_sdk::{Lsn, Op, SinkRecord};

    use super::*;

    fn record() -> Item {
        Item::Record(SinkRecord {
            change: Arc::new(Change {
                op: Op::Insert,
                schema: "public".into(),
                table: "t".into(),
                key: None,
                before: None,
                after: None,
                unchanged_toast: vec![],
                lsn: Lsn(1),
                commit_lsn: Lsn(1),
                ordinal: 0,
                xid: Some(1),
                commit_ts: Some(0),
            }),
            route: 0,
            source: None,
        })
    }

    #[test]
    fn the_span_runs_from_the_oldest_record_a_sink_still_holds() {
        let mut pins = Pins::new(2);
        assert_eq!(pins.update(1_000), 0, "nothing queued pins nothing");

        // Sink 0 gets a record at offset 100, sink 1 one at 200.
        pins.on_record(0, 100);
        pins.on_record(0, 150);
        pins.on_record(1, 200);
        assert_eq!(pins.update(300), 200, "local records count");
        let chunk0 = vec![record(), Item::Commit(1)];
        let chunk1 = vec![record()];
        pins.on_flush(0, &chunk0);
        pins.on_flush(1, &chunk1);
        assert_eq!(pins.update(300), 200);

        // Far past the budget while sink 0 holds its chunk: values are copied.
        assert_eq!(pins.update(100 + BUDGET + 1), BUDGET + 1);
        assert_eq!(pins.mode(), Values::Owned);

        // Sink 0 is done with its chunk: sink 1's, from offset 200, is the oldest.
        drop(chunk0);
        assert_eq!(pins.update(100 + BUDGET + 1), BUDGET + 1 - 100);
        assert_eq!(pins.mode(), Values::Shared);
        assert_eq!(pins.update(200 + BUDGET + 1), BUDGET + 1);
        assert_eq!(pins.mode(), Values::Owned);
        drop(chunk1);
        assert_eq!(pins.update(200 + BUDGET + 1), 0);
        assert_eq!(pins.mode(), Values::Shared);
    }
}
