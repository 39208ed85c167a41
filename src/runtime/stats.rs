//! What the reader counts per change, published to the metrics once per
//! tick instead of per change (`pgfanout_changes_read_total`,
//! `pgfanout_transactions_total`, `pgfanout_bytes_read_total`).

use std::collections::HashMap;
use std::sync::Arc;

use pgfanout_sdk::{Change, Op};

use crate::metrics as m;

/// (schema name pointer, table name pointer, op): cheap to hash per change.
type ChangeKey = (usize, usize, Op);
/// (schema, table, changes since the last publish).
type ChangeCount = (Arc<str>, Arc<str>, u64);

#[derive(Default)]
pub struct ReadStats {
    bytes: u64,
    transactions: u64,
    changes: rustc_hash::FxHashMap<ChangeKey, ChangeCount>,
}

impl ReadStats {
    #[inline]
    pub fn bytes(&mut self, n: usize) {
        self.bytes += n as u64;
    }

    #[inline]
    pub fn transaction(&mut self) {
        self.transactions += 1;
    }

    /// Counts a change. Keyed by the relation's shared name pointers: no
    /// string hashing per change.
    #[inline]
    pub fn change(&mut self, change: &Change) {
        let key = (Arc::as_ptr(&change.schema) as *const u8 as usize, Arc::as_ptr(&change.table) as *const u8 as usize, change.op);
        match self.changes.get_mut(&key) {
            Some(entry) => entry.2 += 1,
            None => {
                self.changes.insert(key, (change.schema.clone(), change.table.clone(), 1));
            }
        }
    }

    /// Adds what was counted since the last call to the metrics.
    pub fn publish(&mut self) {
        metrics::counter!(m::BYTES_READ_TOTAL).increment(std::mem::take(&mut self.bytes));
        metrics::counter!(m::TRANSACTIONS_TOTAL).increment(std::mem::take(&mut self.transactions));
        let mut totals: HashMap<(String, Op), u64> = HashMap::new();
        for ((_, _, op), (schema, table, n)) in self.changes.iter_mut() {
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
        self.changes.clear();
    }
}
