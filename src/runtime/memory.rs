//! The byte budget of the sinks' queues (`runtime.queue_memory`).
//!
//! `queue_batches` bounds how many chunks a sink holds, but a chunk of
//! 1,024 records of a few MB each is gigabytes. Every chunk the reader hands
//! to a sink is charged its records' size ([`Change::approx_size`]) against
//! one budget shared by all sinks; the charge is returned when the sink has
//! written the records (durable, or dead-lettered). The reader waits for
//! room as it waits for queue space, keeping the walsender alive meanwhile.
//!
//! A record shared by several sinks is charged once per sink, so the budget
//! over-counts rather than under-counts. A record that a transform made
//! also holds the change as read (`SinkRecord::source`, kept for its dead
//! letter): both are charged ([`record_size`]). A chunk larger than the whole
//! budget (one value of hundreds of MB) waits until everything else was
//! written and then takes the whole budget: it goes alone.
//!
//! [`Change::approx_size`]: pgfanout_sdk::Change::approx_size

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics as m;

/// What a queued record holds: its change, and the change as read when a
/// transform made a new one (`measured` is the size of the change as read,
/// when the caller has it).
pub fn record_size(record: &pgfanout_sdk::SinkRecord, measured: Option<(&Arc<pgfanout_sdk::Change>, usize)>) -> usize {
    let size_of = |c: &Arc<pgfanout_sdk::Change>| match measured {
        Some((read, size)) if Arc::ptr_eq(c, read) => size,
        _ => c.approx_size(),
    };
    let source = record.source.as_ref().filter(|s| !Arc::ptr_eq(s, &record.change)).map_or(0, size_of);
    size_of(&record.change) + source
}

/// Permits are KiB, so a `u32` count covers any budget.
const UNIT: usize = 1024;

#[derive(Clone)]
pub struct QueueMemory {
    permits: Arc<Semaphore>,
    budget: u32,
}

impl QueueMemory {
    pub fn new(budget_bytes: u64) -> Self {
        let budget = (budget_bytes / UNIT as u64).clamp(1, u32::MAX as u64 >> 3) as u32;
        QueueMemory { permits: Arc::new(Semaphore::new(budget as usize)), budget }
    }

    /// Waits until `bytes` (at most the whole budget) are free and takes them.
    pub async fn charge(&self, bytes: usize) -> Charge {
        let units = (bytes.div_ceil(UNIT)).clamp(1, self.budget as usize) as u32;
        let permit = self.permits.clone().acquire_many_owned(units).await.expect("the queue budget is never closed");
        metrics::gauge!(m::QUEUE_MEMORY_BYTES).increment((units as usize * UNIT) as f64);
        Charge { _permit: permit, bytes: units as usize * UNIT }
    }

    /// Bytes free now.
    #[cfg(test)]
    pub fn free(&self) -> usize {
        self.permits.available_permits() * UNIT
    }
}

/// Bytes of the budget held by a chunk until it is dropped.
#[derive(Debug)]
pub struct Charge {
    _permit: OwnedSemaphorePermit,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        metrics::gauge!(m::QUEUE_MEMORY_BYTES).decrement(self.bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_chunk_waits_for_room_and_an_oversized_one_takes_the_whole_budget() {
        let mem = QueueMemory::new(64 * 1024);
        let a = mem.charge(40 * 1024).await;
        assert_eq!(mem.free(), 24 * 1024);
        let blocked = tokio::time::timeout(Duration::from_millis(50), mem.charge(30 * 1024)).await;
        assert!(blocked.is_err(), "30 KiB does not fit in the 24 KiB left");
        drop(a);
        let huge = mem.charge(500 << 20).await;
        assert_eq!(mem.free(), 0, "a chunk larger than the budget takes all of it");
        assert!(tokio::time::timeout(Duration::from_millis(50), mem.charge(1)).await.is_err());
        drop(huge);
        assert_eq!(mem.free(), 64 * 1024);
        let _tiny = mem.charge(0).await;
        assert_eq!(mem.free(), 63 * 1024, "even an empty chunk holds one unit");
    }

    #[test]
    fn a_transformed_record_is_charged_with_the_change_it_was_made_from() {
        use pgfanout_sdk::testing::{At, Table};
        let read = Arc::new(Table("t").insert(At(1, 0), &[("id", "1"), ("v", &format!("\"{}\"", "x".repeat(10_000)))]));
        let made = Arc::new(Table("t").insert(At(1, 0), &[("id", "1")]));
        let (read_size, made_size) = (read.approx_size(), made.approx_size());
        assert!(read_size > 10_000 && made_size < 1_000);
        let plain = pgfanout_sdk::SinkRecord { change: read.clone(), route: 0, source: None };
        assert_eq!(record_size(&plain, None), read_size);
        assert_eq!(record_size(&plain, Some((&read, 7))), 7, "a measured size is used");
        let transformed = pgfanout_sdk::SinkRecord { change: made, route: 0, source: Some(read.clone()) };
        assert_eq!(record_size(&transformed, None), made_size + read_size);
        assert_eq!(record_size(&transformed, Some((&read, read_size))), made_size + read_size);
    }
}
