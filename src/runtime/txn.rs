//! The transaction cursor: where the reader stands inside the transaction
//! being received, and what a reconnect must not deliver twice.
//!
//! Changes stream to the sinks before their transaction commits (large
//! transactions never sit in memory whole). When the connection drops
//! mid-transaction, the server sends that transaction again in full on the
//! next connection. Two things then keep every sink's sequence exact:
//!
//! - records of the open transaction still queued here (not yet handed to a
//!   sink) are cut from the local queues, back to the marks taken at
//!   `Begin`: they come again;
//! - changes already handed to the sinks are counted (`flushed`), and when
//!   the same transaction (same commit LSN) begins again its first that
//!   many changes are skipped: decoding the same WAL yields the same
//!   changes in the same order.

use pgfanout_postgres::relation::TxMeta;
use pgfanout_postgres::SourceError;
use pgfanout_sdk::Lsn;

use crate::runtime::worker::Chunk;

pub struct TxCursor {
    /// The open transaction (between `Begin` and `Commit`).
    meta: Option<TxMeta>,
    /// Per sink: how many items of its local chunk precede the open
    /// transaction (0 once part of it was handed to the sink).
    marks: Vec<usize>,
    /// The next change's ordinal within the open transaction.
    ordinal: u32,
    /// Changes (by ordinal) of the open transaction already handed to the
    /// sinks.
    flushed: u32,
    /// A transaction cut off by a reconnect after part of it was handed to
    /// the sinks: (its commit LSN, how many of its changes they have).
    cut_off: Option<(Lsn, u32)>,
    /// Changes of the open transaction below this ordinal are skipped: the
    /// sinks have them from before a reconnect.
    skip_below: u32,
}

impl TxCursor {
    pub fn new(sinks: usize) -> Self {
        TxCursor { meta: None, marks: vec![0; sinks], ordinal: 0, flushed: 0, cut_off: None, skip_below: 0 }
    }

    pub fn is_open(&self) -> bool {
        self.meta.is_some()
    }

    /// The open transaction's commit LSN.
    pub fn commit_lsn(&self) -> Option<Lsn> {
        self.meta.map(|m| m.commit_lsn)
    }

    /// The open transaction, for a change at `lsn` (an error outside one).
    pub fn current(&self, lsn: Lsn) -> Result<TxMeta, SourceError> {
        self.meta.ok_or_else(|| SourceError::transient(format!("change outside a transaction at {lsn}")))
    }

    /// A transaction begins; `local` are the sinks' queued chunks. Returns
    /// how many of its changes the sinks already have (a transaction resent
    /// after a reconnect), which are skipped.
    pub fn begin(&mut self, meta: TxMeta, local: &[Chunk]) -> u32 {
        self.ordinal = 0;
        self.flushed = 0;
        self.skip_below = match self.cut_off.take() {
            Some((commit_lsn, n)) if commit_lsn == meta.commit_lsn => n,
            _ => 0,
        };
        self.meta = Some(meta);
        for (mark, chunk) in self.marks.iter_mut().zip(local) {
            *mark = chunk.len();
        }
        self.skip_below
    }

    pub fn commit(&mut self) {
        self.meta = None;
    }

    /// Takes the next change's ordinal; `None` when the sinks already have
    /// that change.
    #[inline]
    pub fn next(&mut self) -> Option<u32> {
        let ordinal = self.ordinal;
        self.ordinal = self.ordinal.saturating_add(1);
        (ordinal >= self.skip_below).then_some(ordinal)
    }

    /// The next change's ordinal, not taken.
    pub fn ordinal(&self) -> u32 {
        self.ordinal
    }

    /// Takes `n` ordinals at once (a truncate of several tables); returns
    /// the first. Skip each with [`TxCursor::skips`].
    pub fn take(&mut self, n: u32) -> u32 {
        let first = self.ordinal;
        self.ordinal += n;
        first
    }

    pub fn skips(&self, ordinal: u32) -> bool {
        ordinal < self.skip_below
    }

    /// Sink `i`'s local chunk was handed over: nothing queued precedes the
    /// open transaction any more.
    pub fn handed_over(&mut self, i: usize) {
        self.marks[i] = 0;
    }

    /// Sink `i`'s local chunk was compacted to `len` items, all commit
    /// markers of finished transactions: the open transaction starts after
    /// them.
    pub fn compacted(&mut self, i: usize, len: usize) {
        self.marks[i] = self.marks[i].min(len);
    }

    /// Every sink has what was routed of the open transaction so far.
    pub fn all_handed_over(&mut self) {
        if self.meta.is_some() {
            self.flushed = self.ordinal;
        }
    }

    /// The stream broke. Cuts the open transaction's queued records out of
    /// `local` and remembers how many of its changes the sinks have, for
    /// when it comes again. Returns the records dropped.
    pub fn cut(&mut self, local: &mut [Chunk]) -> usize {
        let Some(tx) = self.meta.take() else { return 0 };
        self.cut_off = (self.flushed > 0).then_some((tx.commit_lsn, self.flushed));
        local.iter_mut().zip(&self.marks).map(|(chunk, &mark)| chunk.drain(mark.min(chunk.len())..).count()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::worker::Item;

    fn meta(commit: u64) -> TxMeta {
        TxMeta { commit_lsn: Lsn(commit), xid: 7, commit_ts: 0 }
    }

    #[test]
    fn a_transaction_resent_after_a_cut_skips_what_the_sinks_have() {
        let mut c = TxCursor::new(2);
        let mut local: Vec<Chunk> = vec![vec![Item::Commit(1)], vec![]];
        assert_eq!(c.begin(meta(100), &local), 0);
        assert_eq!((c.next(), c.next()), (Some(0), Some(1)));
        c.handed_over(0);
        c.handed_over(1);
        local = vec![vec![], vec![]];
        c.all_handed_over();
        assert_eq!(c.next(), Some(2));
        local[0].push(Item::Commit(2)); // a record of change 2, still queued
        assert_eq!(c.cut(&mut local), 1, "the queued part is cut");
        assert!(!c.is_open());
        // Another transaction first: nothing skipped, the cut-off is kept
        // only for the same commit.
        assert_eq!(c.begin(meta(100), &local), 2, "changes 0 and 1 are in the sinks");
        assert_eq!((c.next(), c.next(), c.next()), (None, None, Some(2)));
        c.commit();
        assert_eq!(c.begin(meta(200), &local), 0);
    }

    #[test]
    fn a_cut_after_commit_markers_were_compacted_cuts_the_open_transaction_only() {
        let mut c = TxCursor::new(1);
        // Three finished transactions' markers wait for a full queue.
        let mut local: Vec<Chunk> = vec![vec![Item::Commit(1), Item::Commit(2), Item::Commit(3)]];
        c.begin(meta(9), &local);
        c.next();
        // A flush compacts them to the last one.
        local[0].drain(..2);
        c.compacted(0, local[0].len());
        // The open transaction's change comes after it, then the stream breaks.
        local[0].push(Item::Commit(99)); // stands for a record of change 0
        assert_eq!(c.cut(&mut local), 1, "the open transaction's record is cut");
        assert_eq!(local[0].len(), 1);
        assert!(matches!(local[0][0], Item::Commit(3)), "the finished transactions' marker stays");
    }

    #[test]
    fn a_cut_before_anything_was_handed_over_skips_nothing() {
        let mut c = TxCursor::new(1);
        let mut local: Vec<Chunk> = vec![vec![Item::Commit(1)]];
        c.begin(meta(5), &local);
        c.next();
        local[0].push(Item::Commit(2));
        assert_eq!(c.cut(&mut local), 1);
        assert_eq!(local[0].len(), 1, "what preceded the transaction stays");
        assert_eq!(c.begin(meta(5), &local), 0);
    }
}
