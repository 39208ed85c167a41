//! The ack rule: which LSN may be confirmed to PostgreSQL.
//!
//! Every committed transaction gets a sequence number, in commit order, and
//! its Commit message's end LSN is remembered here. Each sink worker publishes
//! the highest sequence number up to which everything it was sent is durable
//! (changes filtered out for it and dead-lettered ones count as done: the
//! commit markers still flow through its queue). The confirmed flush LSN is
//! the end LSN of the newest transaction that every sink has made durable,
//! and it only moves forward.
//!
//! When nothing is in flight — no transaction is open and every committed one
//! is durable everywhere — the latest keepalive `wal_end` may be confirmed,
//! so an idle or fully filtered slot does not hold WAL back. That is safe
//! because the server sends a transaction only once it has committed, and
//! sends it before any keepalive whose position is past its commit. A
//! keepalive that arrives between transactions while some are still in
//! flight is kept with the last sequence number registered before it, and
//! applied once everything up to that number is durable (per sink for the
//! sink's position, everywhere for the confirmed one): exactly what the same
//! keepalive would have done had it arrived then. Without that, the stream's
//! last keepalive could arrive while its last transaction was still being
//! written, and the slot (and `/wait` for the server's current position)
//! would stay behind until the server happened to send another.
//!
//! # The invariant, enforced here and only here
//!
//! **The flush position sent to PostgreSQL never exceeds the end of the last
//! transaction received from the replication stream (or the last stream
//! keepalive/heartbeat position received between transactions) that is
//! durable in every sink.** Rows written by a snapshot or a backfill carry a
//! version (a WAL position taken from `pg_current_wal_insert_lsn()`), but that
//! version is not a stream position: the stream may still hold a backlog far
//! below it. Such work is registered with [`AckTracker::barrier`]: the
//! tracker waits for it like a transaction (nothing after it is confirmed
//! before it is durable) but it never moves the confirmed position. Every
//! position that can be confirmed enters through [`AckTracker::commit`] or
//! [`AckTracker::idle_position`], which only the stream reader calls with
//! positions read from the stream; [`AckTracker::poll`] additionally clamps
//! the result to the highest such position, so no other path can raise it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use pgfanout_sdk::Lsn;

/// A sink's published progress: the highest transaction sequence number up
/// to which all its records are durable. Shared between a worker and the
/// tracker.
/// Every sink's `DurableSeq` may share one [`Notify`] (see
/// [`DurableSeq::waking`]) that is signalled on each advance, so the stream
/// reader publishes new positions (for `/wait`) without polling.
#[derive(Debug, Default, Clone)]
pub struct DurableSeq {
    seq: Arc<AtomicU64>,
    wake: Arc<Notify>,
}

impl DurableSeq {
    /// A sequence whose advances signal `wake`.
    pub fn waking(wake: Arc<Notify>) -> Self {
        DurableSeq { seq: Arc::default(), wake }
    }

    pub fn get(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// What [`advance`](Self::advance) signals.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Publishes progress; never moves backwards.
    pub fn advance(&self, seq: u64) {
        if self.seq.fetch_max(seq, Ordering::AcqRel) < seq {
            self.wake.notify_one();
        }
    }
}

/// Tracks committed transactions until every sink has them durable.
#[derive(Debug)]
pub struct AckTracker {
    sinks: Vec<DurableSeq>,
    /// (sequence, (commit LSN, end LSN)) of committed transactions not yet
    /// durable everywhere; `None` for barriers (snapshot or backfill work),
    /// which must be durable before anything after them is confirmed but
    /// confirm nothing themselves.
    pending: VecDeque<(u64, Option<(Lsn, Lsn)>)>,
    /// The highest stream position registered (commit end LSNs, idle
    /// keepalives) or the slot's start: the ceiling of `confirmed`.
    stream_high: Lsn,
    next_seq: u64,
    /// End LSN of the newest transaction durable everywhere (or the last
    /// idle keepalive position).
    confirmed: Lsn,
    /// Per sink: the last (seq, end LSN) known durable in that sink.
    sink_lsn: Vec<(u64, Lsn)>,
    /// Per sink: its durable sequence as of the last `poll`.
    seen: Vec<u64>,
    /// A keepalive position received between transactions while some were
    /// in flight, with the last sequence number registered before it: it
    /// applies once everything up to that number is durable.
    deferred_idle: Option<(u64, Lsn)>,
}

impl AckTracker {
    /// `start` is the slot's confirmed position (nothing below it is resent).
    pub fn new(sinks: Vec<DurableSeq>, start: Lsn) -> Self {
        let n = sinks.len();
        AckTracker {
            sinks,
            pending: VecDeque::new(),
            stream_high: start,
            next_seq: 1,
            confirmed: start,
            sink_lsn: vec![(0, start); n],
            seen: vec![0; n],
            deferred_idle: None,
        }
    }

    /// Signalled when a sink's durable sequence advances (the sinks share
    /// one, see [`DurableSeq::waking`]).
    pub fn wake(&self) -> Arc<Notify> {
        self.sinks.first().map(DurableSeq::wake).unwrap_or_default()
    }

    /// Registers a transaction committed in the replication stream (its
    /// Commit message's commit and end LSNs) and returns the sequence number
    /// to send to every sink as its commit marker.
    pub fn commit(&mut self, commit_lsn: Lsn, end_lsn: Lsn) -> u64 {
        self.stream_high = self.stream_high.max(end_lsn);
        self.push(Some((commit_lsn, end_lsn)))
    }

    /// Registers work that is not a stream transaction (snapshot or backfill
    /// rows): its marker must be durable in every sink before anything
    /// registered after it is confirmed, but it confirms no position of its
    /// own, whatever version its rows carry.
    pub fn barrier(&mut self) -> u64 {
        self.push(None)
    }

    fn push(&mut self, end_lsn: Option<(Lsn, Lsn)>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back((seq, end_lsn));
        seq
    }

    /// Whether the work registered as `seq` is durable in sinks `sinks`
    /// (indexes; none: at once).
    pub fn durable_in(&self, seq: u64, sinks: &[usize]) -> bool {
        sinks.iter().all(|&i| self.sinks.get(i).is_none_or(|s| s.get() >= seq))
    }

    /// Number of committed transactions not yet durable everywhere.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Pops what every sink made durable and returns the confirmed LSN.
    pub fn poll(&mut self) -> Lsn {
        let durable: Vec<u64> = self.sinks.iter().map(DurableSeq::get).collect();
        for (i, &d) in durable.iter().enumerate() {
            if let Some((seq, lsn)) = self.pending.iter().take_while(|(s, _)| *s <= d).filter_map(|&(s, l)| l.map(|l| (s, l.1))).last() {
                if seq > self.sink_lsn[i].0 {
                    self.sink_lsn[i] = (seq, lsn);
                }
            }
        }
        let min = durable.iter().copied().min().unwrap_or(u64::MAX);
        while let Some(&(seq, lsn)) = self.pending.front() {
            if seq > min {
                break;
            }
            self.pending.pop_front();
            if let Some((_, lsn)) = lsn {
                self.confirmed = self.confirmed.max(lsn);
            }
        }
        if let Some((upto, wal_end)) = self.deferred_idle {
            for (s, &d) in self.sink_lsn.iter_mut().zip(&durable) {
                if d >= upto {
                    s.1 = s.1.max(wal_end);
                }
            }
            if min >= upto {
                self.stream_high = self.stream_high.max(wal_end);
                self.confirmed = self.confirmed.max(wal_end);
                self.deferred_idle = None;
            }
        }
        self.seen = durable;
        // The invariant (module docs): never past what the stream delivered.
        debug_assert!(self.confirmed <= self.stream_high);
        self.confirmed = self.confirmed.min(self.stream_high);
        self.confirmed
    }

    /// Called on a keepalive (or any point between transactions): when no
    /// transaction is open and nothing is in flight, `wal_end` is confirmed;
    /// when transactions are still in flight, it is confirmed once they are
    /// durable (see the module docs).
    pub fn idle_position(&mut self, wal_end: Lsn, in_transaction: bool) -> Lsn {
        self.poll();
        if in_transaction {
            return self.confirmed;
        }
        if self.pending.is_empty() {
            self.stream_high = self.stream_high.max(wal_end);
            self.confirmed = self.confirmed.max(wal_end);
            for s in &mut self.sink_lsn {
                s.1 = s.1.max(wal_end);
            }
        } else {
            let upto = self.next_seq - 1;
            let wal_end = self.deferred_idle.map_or(wal_end, |(_, w)| w.max(wal_end));
            self.deferred_idle = Some((upto, wal_end));
        }
        self.confirmed
    }

    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// Where a reconnect resumes the stream: the highest stream position
    /// registered (the end of the last committed transaction received, or
    /// the last idle keepalive), or the slot's start. Everything before it
    /// was received and handed to the sinks (their queues outlive a
    /// reconnect), so PostgreSQL need not send it again.
    pub fn resume_position(&self) -> Lsn {
        self.stream_high
    }

    /// Per sink: the end LSN up to which it is durable.
    pub fn sink_positions(&self) -> Vec<Lsn> {
        self.sink_lsn.iter().map(|(_, l)| *l).collect()
    }

    /// Per sink, as of the last [`poll`](Self::poll): the commit LSN of the
    /// oldest transaction received but not yet durable in it. With
    /// [`sink_positions`](Self::sink_positions) this answers "is every
    /// transaction committed at or before X durable in this sink?": yes when
    /// its position is at least X and no transaction committed at or before X
    /// is still pending in it (a commit LSN given as X is the start of the
    /// commit record, so the position alone cannot tell).
    pub fn sink_oldest_pending(&self) -> Vec<Option<Lsn>> {
        self.seen.iter().map(|&d| self.pending.iter().filter(|(s, _)| *s > d).find_map(|(_, l)| l.map(|(commit, _)| commit))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracker of two sinks, `a` and `b`, confirmed up to LSN 10.
    fn two_sinks() -> (DurableSeq, DurableSeq, AckTracker) {
        let (a, b) = (DurableSeq::default(), DurableSeq::default());
        let t = AckTracker::new(vec![a.clone(), b.clone()], Lsn(10));
        (a, b, t)
    }

    #[test]
    fn confirms_only_what_every_sink_has() {
        let (a, b, mut t) = two_sinks();
        let s1 = t.commit(Lsn(99), Lsn(100));
        let s2 = t.commit(Lsn(199), Lsn(200));
        assert_eq!(t.poll(), Lsn(10));
        a.advance(s2);
        assert_eq!(t.poll(), Lsn(10), "sink b has nothing yet");
        b.advance(s1);
        assert_eq!(t.poll(), Lsn(100));
        b.advance(s2);
        assert_eq!(t.poll(), Lsn(200));
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.sink_positions(), vec![Lsn(200), Lsn(200)]);
    }

    #[test]
    fn oldest_pending_commit_per_sink() {
        let (a, b, mut t) = two_sinks();
        let s1 = t.commit(Lsn(90), Lsn(100));
        // The next commit record starts exactly where the first one ends: a
        // wait for LSN 100 must still wait for it.
        let s2 = t.commit(Lsn(100), Lsn(110));
        a.advance(s1);
        t.poll();
        assert_eq!(t.sink_positions(), vec![Lsn(100), Lsn(10)]);
        assert_eq!(t.sink_oldest_pending(), vec![Some(Lsn(100)), Some(Lsn(90))]);
        a.advance(s2);
        b.advance(s2);
        t.poll();
        assert_eq!(t.sink_oldest_pending(), vec![None, None]);
    }

    #[test]
    fn idle_keepalive_confirms_only_when_nothing_in_flight() {
        let a = DurableSeq::default();
        let mut t = AckTracker::new(vec![a.clone()], Lsn(10));
        assert_eq!(t.idle_position(Lsn(50), false), Lsn(50));
        assert_eq!(t.idle_position(Lsn(60), true), Lsn(50), "open transaction");
        let s = t.commit(Lsn(69), Lsn(70));
        assert_eq!(t.idle_position(Lsn(80), false), Lsn(50), "transaction in flight");
        a.advance(s);
        assert_eq!(t.idle_position(Lsn(80), false), Lsn(80));
        assert_eq!(t.idle_position(Lsn(40), false), Lsn(80), "never backwards");
    }

    #[test]
    fn a_keepalive_during_the_last_write_applies_once_it_is_durable() {
        let (a, b) = (DurableSeq::default(), DurableSeq::default());
        let mut t = AckTracker::new(vec![a.clone(), b.clone()], Lsn(10));
        let s1 = t.commit(Lsn(69), Lsn(70));
        // the stream's last keepalive comes while s1 is still being written
        assert_eq!(t.idle_position(Lsn(90), false), Lsn(10));
        a.advance(s1);
        assert_eq!(t.poll(), Lsn(10), "b does not have s1 yet");
        assert_eq!(t.sink_positions(), vec![Lsn(90), Lsn(10)], "a has everything up to the keepalive");
        // a transaction after the keepalive is not covered by it
        let s2 = t.commit(Lsn(99), Lsn(100));
        b.advance(s1);
        assert_eq!(t.poll(), Lsn(90), "no further keepalive needed");
        assert_eq!(t.sink_positions(), vec![Lsn(90), Lsn(90)]);
        assert_eq!(t.sink_oldest_pending(), vec![Some(Lsn(99)), Some(Lsn(99))]);
        a.advance(s2);
        b.advance(s2);
        assert_eq!(t.poll(), Lsn(100));
    }

    #[test]
    fn a_barrier_waits_like_a_transaction_but_confirms_nothing() {
        // A snapshot versioned at 1000 while the slot starts at 10 with a
        // backlog below 1000: confirming 1000 would skip the backlog.
        let a = DurableSeq::default();
        let mut t = AckTracker::new(vec![a.clone()], Lsn(10));
        let snap = t.barrier();
        a.advance(snap);
        assert_eq!(t.poll(), Lsn(10), "a snapshot's version is not a stream position");
        assert_eq!(t.sink_positions(), vec![Lsn(10)]);
        let s1 = t.commit(Lsn(99), Lsn(100));
        let b = t.barrier();
        let s2 = t.commit(Lsn(199), Lsn(200));
        assert_eq!(t.idle_position(Lsn(150), false), Lsn(10), "work in flight");
        a.advance(s1);
        assert_eq!(t.poll(), Lsn(100));
        a.advance(b);
        assert_eq!(t.poll(), Lsn(100), "the barrier adds nothing");
        a.advance(s2);
        assert_eq!(t.poll(), Lsn(200));
    }

    #[test]
    fn random_interleavings_never_confirm_undurable_work() {
        // A small deterministic pseudo-random walk over commits, keepalives
        // between transactions and sink progress.
        let sinks: Vec<DurableSeq> = (0..3).map(|_| DurableSeq::default()).collect();
        let mut t = AckTracker::new(sinks.clone(), Lsn(0));
        let mut commits: Vec<(u64, Lsn)> = Vec::new();
        // (last sequence registered before it, position)
        let mut keepalives: Vec<(u64, Lsn)> = Vec::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut last = Lsn(0);
        for step in 0..10_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(3) {
                let lsn = Lsn(step * 10 + 5);
                commits.push((t.commit(Lsn(lsn.0 - 1), lsn), lsn));
            } else if x % 7 == 1 {
                let lsn = Lsn(step * 10 + 7);
                keepalives.push((commits.last().map_or(0, |c| c.0), lsn));
                t.idle_position(lsn, false);
            } else if !commits.is_empty() {
                let s = &sinks[(x % 3) as usize];
                let target = commits[(x as usize / 3) % commits.len()].0;
                s.advance(target);
            }
            let c = t.poll();
            assert!(c >= last, "moved backwards");
            last = c;
            let min = sinks.iter().map(DurableSeq::get).min().unwrap();
            let durable = |list: &[(u64, Lsn)]| list.iter().filter(|(s, _)| *s <= min).map(|(_, l)| *l).max().unwrap_or(Lsn(0));
            // never past what is durable everywhere; keepalives may lag by
            // one (a newer one replaces a deferred one), commits never
            let (by_commit, by_keepalive) = (durable(&commits), durable(&keepalives));
            assert!(c <= by_commit.max(by_keepalive), "step {step}: {c} past what is durable");
            assert!(c >= by_commit, "step {step}: {c} behind a durable commit {by_commit}");
        }
        assert!(keepalives.len() > 100);
    }
}
