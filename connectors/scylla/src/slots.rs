//! The `USING TIMESTAMP` slots of a transaction's rows.
//!
//! Every statement a row gets within one transaction takes the next of
//! [`SLOTS`] + 1 timestamps `commit_lsn - SLOTS ..= commit_lsn` (the crate
//! docs say why). The counter of each row must survive the batch it was
//! moved in, because a transaction may span several batches, and must be
//! the same when the batch is planned again after a failure: so a batch
//! plans against [`SlotTable`] through a [`SlotOverlay`] of its own, which
//! the table takes in ([`SlotTable::commit`]) only once the batch's
//! statements are sure to run.

use std::collections::HashMap;

use pgfanout_sdk::Lsn;

/// Timestamps below a transaction's commit LSN that one row may use for
/// the writes of that transaction (see the crate docs).
pub const SLOTS: i64 = 16;

/// Buckets of [`SlotTable`]: 1 MiB of counters.
const SLOT_BUCKETS: usize = 1 << 20;

/// How many times each row was written in the current transaction, for the
/// `USING TIMESTAMP` slots (crate docs), in bounded memory: a counter per
/// bucket of a hash of (route, primary key). Rows that share a bucket share
/// a counter, which only makes their slots climb faster: each row's
/// successive writes still get strictly increasing slots until the counter
/// reaches [`SLOTS`] (the documented limit, reached sooner by a transaction
/// that writes millions of rows several times each).
pub(crate) struct SlotTable {
    lsn: Lsn,
    counters: Vec<u8>,
    /// Buckets set in this transaction (cleared when the next begins),
    /// until there are too many to list: then the whole table is cleared.
    touched: Vec<u32>,
    overflow: bool,
}

/// The counters one batch moves, kept aside until the batch is sure to
/// run: those of its last transaction (`lsn`), by bucket.
pub(crate) struct SlotOverlay {
    lsn: Lsn,
    counters: HashMap<u32, u8>,
}

impl SlotTable {
    pub(crate) fn new() -> Self {
        SlotTable { lsn: Lsn(u64::MAX), counters: Vec::new(), touched: Vec::new(), overflow: false }
    }

    fn bucket(row_hash: u64) -> u32 {
        (row_hash % SLOT_BUCKETS as u64) as u32
    }

    /// The counter of `bucket` in transaction `lsn` (0 in a new transaction).
    fn get(&self, lsn: Lsn, bucket: u32) -> u8 {
        if lsn != self.lsn || self.counters.is_empty() {
            0
        } else {
            self.counters[bucket as usize]
        }
    }

    /// An empty overlay for the next batch.
    pub(crate) fn overlay(&self) -> SlotOverlay {
        SlotOverlay { lsn: self.lsn, counters: HashMap::new() }
    }

    /// Takes in the counters a batch ended with (the overlay's transaction
    /// is its last).
    pub(crate) fn commit(&mut self, overlay: SlotOverlay) {
        let SlotOverlay { lsn, counters: updates } = overlay;
        if lsn != self.lsn {
            if self.overflow {
                self.counters.iter_mut().for_each(|c| *c = 0);
            } else {
                for &b in &self.touched {
                    self.counters[b as usize] = 0;
                }
            }
            self.touched.clear();
            self.overflow = false;
            self.lsn = lsn;
        }
        if updates.is_empty() {
            return;
        }
        if self.counters.is_empty() {
            self.counters = vec![0; SLOT_BUCKETS];
        }
        for (b, v) in updates {
            if self.counters[b as usize] == 0 && !self.overflow {
                if self.touched.len() >= SLOT_BUCKETS / 8 {
                    self.overflow = true;
                    self.touched = Vec::new();
                } else {
                    self.touched.push(b);
                }
            }
            self.counters[b as usize] = v;
        }
    }
}

impl SlotOverlay {
    /// The timestamps of the next statements of the row hashed `row_hash` in
    /// transaction `lsn`: call the returned closure once per statement.
    /// Groups come in transaction order, so a new transaction starts a new
    /// overlay (the table clears the old one's counters at commit).
    pub(crate) fn timestamps<'a>(&'a mut self, table: &SlotTable, lsn: Lsn, row_hash: u64) -> impl FnMut() -> i64 + 'a {
        if self.lsn != lsn {
            self.lsn = lsn;
            self.counters.clear();
        }
        let bucket = SlotTable::bucket(row_hash);
        let slot = self.counters.entry(bucket).or_insert_with(|| table.get(lsn, bucket));
        let base = i64::try_from(lsn.0).unwrap_or(i64::MAX);
        move || {
            let ts = base.saturating_sub(SLOTS) + i64::from(*slot).min(SLOTS);
            *slot = slot.saturating_add(1).min(SLOTS as u8 + 1);
            ts
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(table: &SlotTable, overlay: &mut SlotOverlay, lsn: u64, row: u64, n: usize) -> Vec<i64> {
        let mut ts = overlay.timestamps(table, Lsn(lsn), row);
        (0..n).map(|_| ts()).collect()
    }

    #[test]
    fn a_rows_writes_climb_to_the_commit_lsn_and_stay_there() {
        let table = SlotTable::new();
        let mut o = table.overlay();
        assert_eq!(next(&table, &mut o, 1000, 7, 3), vec![984, 985, 986]);
        let all = next(&table, &mut o, 1000, 7, 16);
        assert_eq!(all[13], 1000);
        assert_eq!(*all.last().unwrap(), 1000, "past SLOTS the last timestamp is shared");
        assert_eq!(next(&table, &mut o, 1000, 8, 1), vec![984], "another row starts at the bottom");
    }

    #[test]
    fn counters_carry_across_batches_of_a_transaction_only_once_committed() {
        let mut table = SlotTable::new();
        let mut o = table.overlay();
        assert_eq!(next(&table, &mut o, 1000, 7, 2), vec![984, 985]);
        // Planned again (the batch failed before it started): same timestamps.
        let mut again = table.overlay();
        assert_eq!(next(&table, &mut again, 1000, 7, 2), vec![984, 985]);
        table.commit(again);
        let mut o = table.overlay();
        assert_eq!(next(&table, &mut o, 1000, 7, 1), vec![986], "the next batch of the transaction goes on");
        assert_eq!(next(&table, &mut o, 2000, 7, 1), vec![1984], "a new transaction starts over");
        table.commit(o);
        let mut o = table.overlay();
        assert_eq!(next(&table, &mut o, 2000, 7, 1), vec![1985]);
        assert_eq!(next(&table, &mut o, 3000, 7, 1), vec![2984]);
    }
}
