//! Which connection ("lane") each record of a batch travels on.
//!
//! A batch is split into lanes by a hash of each record's key, so two
//! changes of one key always travel on the same connection, in order.
//! A record whose old target sits in another lane (an update that moved a
//! row or member between keys) is still safe when it writes whole values:
//! every target is version-guarded, so whichever lane runs first, the older
//! write is skipped.
//!
//! A moved row that is completed from its old entry (an update that changed
//! the key and left TOASTed columns unchanged, so PostgreSQL sent neither
//! their values nor, under the default replica identity, the old row) needs
//! every earlier change of the OLD key applied before it: it travels in the
//! old key's lane ([`Encoded::lane_from`]), where those changes are, and
//! copies the values from the old entry in the same script call that removes
//! it. That leaves one race: a later change of the NEW key, hashed to
//! another lane, could run before the move. A whole row would still win by
//! version (the move then skips itself), but a partial one would find no
//! stored entry and be refused. So from the move on, the new key is
//! redirected to the move's lane ([`Lanes`]): every later record of it, in
//! this batch and in later ones, goes there too (a chain of moves follows
//! along), until every batch that used the redirect is acknowledged; then
//! the move is in Redis and the key's own lane is safe again. Earlier
//! records of the new key (a delete before the row moved in) may still run
//! after the move in their own lane; they are older, so the version guard
//! skips them. What remains is what the script cannot know: a new key whose
//! earlier change was lost (expired by a TTL, deleted by hand) is completed
//! or refused as the script's rules say.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use crate::encode::Encoded;

/// Which lane each record takes: a hash of its key, except for keys a
/// moved row was completed into (see the module docs), which follow the
/// move's lane while a batch that routed a record that way is unacknowledged.
#[derive(Debug)]
pub(crate) struct Lanes {
    n: usize,
    /// Key -> (lane, sequence number of the latest batch routed by it).
    redirects: HashMap<String, (usize, u64)>,
    /// Batches planned and not yet acknowledged (or dropped).
    pending: Arc<Mutex<BTreeSet<u64>>>,
    next_seq: u64,
}

/// A planned batch: its sequence number leaves [`Lanes`]' pending set when
/// this is dropped (after the batch's replies are read, or when abandoned).
pub(crate) struct BatchGuard {
    pending: Arc<Mutex<BTreeSet<u64>>>,
    seq: u64,
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.seq);
    }
}

impl Lanes {
    pub(crate) fn new(n: usize) -> Lanes {
        Lanes { n: n.max(1), redirects: HashMap::new(), pending: Arc::default(), next_seq: 0 }
    }

    /// How many lanes there are.
    pub(crate) fn count(&self) -> usize {
        self.n
    }

    fn hashed(&self, key: &str) -> usize {
        if self.n == 1 {
            return 0;
        }
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % self.n as u64) as usize
    }

    /// The lane of each record, in order, and the guard to drop once the
    /// batch is acknowledged.
    pub(crate) fn assign(&mut self, encoded: &[(usize, Encoded<'_>)]) -> (Vec<usize>, Option<BatchGuard>) {
        if self.n == 1 {
            return (vec![0; encoded.len()], None);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            // Every batch before the oldest pending one is acknowledged.
            let oldest = pending.first().copied().unwrap_or(u64::MAX);
            self.redirects.retain(|_, (_, last)| *last >= oldest);
            pending.insert(seq);
        }
        let guard = BatchGuard { pending: Arc::clone(&self.pending), seq };
        let mut out = Vec::with_capacity(encoded.len());
        for (_, enc) in encoded {
            let lane = match &enc.lane_from {
                Some(from) => {
                    let lane = self.lane_of(from, seq);
                    if *from != enc.lane_key {
                        self.redirects.insert(enc.lane_key.clone(), (lane, seq));
                    }
                    lane
                }
                None => self.lane_of(&enc.lane_key, seq),
            };
            out.push(lane);
        }
        (out, Some(guard))
    }

    fn lane_of(&mut self, key: &str, seq: u64) -> usize {
        match self.redirects.get_mut(key) {
            Some((lane, last)) => {
                *last = seq;
                *lane
            }
            None => self.hashed(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(key: &str, from: Option<&str>) -> (usize, Encoded<'static>) {
        (0, Encoded { lane_key: key.into(), lane_from: from.map(String::from), ops: vec![] })
    }

    /// Two keys that hash to different lanes of `lanes`.
    fn two_lanes(lanes: &Lanes) -> (String, String, String) {
        let keys: Vec<String> = (0..100).map(|i| format!("k:{i}")).collect();
        let a = keys[0].clone();
        let b = keys.iter().find(|k| lanes.hashed(k) != lanes.hashed(&a)).unwrap().clone();
        let c = keys.iter().find(|k| lanes.hashed(k) != lanes.hashed(&a) && **k != b).unwrap().clone();
        (a, b, c)
    }

    #[test]
    fn a_moved_row_takes_the_old_keys_lane_and_the_new_key_follows_until_acknowledged() {
        let mut lanes = Lanes::new(2);
        let (old, new, next) = two_lanes(&lanes);
        let (lo, ln) = (lanes.hashed(&old), lanes.hashed(&new));
        assert_ne!(lo, ln);
        // Batch 1: a change of the old key, the move, then a partial change
        // of the new key: all in the old key's lane.
        let (got, g1) = lanes.assign(&[enc(&old, None), enc(&new, Some(&old)), enc(&new, None)]);
        assert_eq!(got, [lo, lo, lo]);
        // Batch 2, while batch 1 is in flight: the new key still follows,
        // and a chain of moves (new -> next) too.
        let (got, g2) = lanes.assign(&[enc(&new, None), enc(&next, Some(&new)), enc(&next, None)]);
        assert_eq!(got, [lo, lo, lo]);
        // Batch 1 acknowledged, batch 2 not: batch 2 used the redirects.
        drop(g1);
        let (got, g3) = lanes.assign(&[enc(&new, None)]);
        assert_eq!(got, [lo]);
        drop(g2);
        drop(g3);
        // Everything acknowledged: each key is back in its own lane.
        let (got, _g4) = lanes.assign(&[enc(&new, None), enc(&next, None), enc(&old, None)]);
        assert_eq!(got, [ln, lanes.hashed(&next), lo]);
        assert!(lanes.redirects.is_empty());
        // One connection: one lane, nothing tracked.
        let mut one = Lanes::new(1);
        assert_eq!(one.assign(&[enc(&new, Some(&old))]).0, [0]);
    }
}
