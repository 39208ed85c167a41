//! What the reader reports about its progress: standby status updates to
//! the server (the position received, and the position every sink made
//! durable, which the slot may confirm), the gauges of both, and the
//! positions `/status` and `/wait` read.

use std::time::{Duration, Instant};

use pgfanout_postgres::replication::ReplicationStream;
use pgfanout_postgres::SourceError;
use pgfanout_sdk::Lsn;

use crate::http::{Health, Progress, SinkProgress};
use crate::metrics as m;
use crate::runtime::ack::AckTracker;

/// What was received and confirmed, for the status updates to the server.
pub struct Feedback {
    /// Highest WAL position received (status update `write`).
    received: Lsn,
    /// Last flush position sent.
    sent_flush: Lsn,
    last_status: Instant,
    /// When the server was last heard from (or the reader last started
    /// listening after doing something else).
    heard: Instant,
    /// Whether a ping (a status update asking for a reply) went out since.
    pinged: bool,
}

/// What the silence on the replication connection calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    Fine,
    /// Half the receive timeout passed: ask the server for a reply.
    Ping,
    /// The whole receive timeout passed, ping unanswered: the link is dead.
    Dead,
}

impl Feedback {
    /// Nothing received or sent beyond `start` yet.
    pub fn new(start: Lsn) -> Self {
        Feedback { received: start, sent_flush: start, last_status: Instant::now(), heard: Instant::now(), pinged: false }
    }

    /// Something arrived from the server; also called when the reader
    /// comes back to listening after waiting for the sinks (its own pause
    /// is not the server's silence).
    pub fn heard(&mut self) {
        self.heard = Instant::now();
        self.pinged = false;
    }

    /// How the silence since [`heard`](Self::heard) compares with `timeout`.
    pub fn silence(&self, timeout: Option<Duration>) -> Silence {
        let Some(timeout) = timeout else { return Silence::Fine };
        let quiet = self.heard.elapsed();
        if quiet >= timeout && self.pinged {
            Silence::Dead
        } else if quiet >= timeout / 2 && !self.pinged {
            Silence::Ping
        } else {
            Silence::Fine
        }
    }

    /// The stream has been received up to `lsn`.
    pub fn received(&mut self, lsn: Lsn) {
        self.received = self.received.max(lsn);
    }

    /// The flush position last sent.
    pub fn sent_flush(&self) -> Lsn {
        self.sent_flush
    }

    /// Whether a status update is due: the server asked (`reply`),
    /// `interval` passed since the last, or `confirmed` moved past what was
    /// sent (at most every 200 ms).
    pub fn due(&self, confirmed: Lsn, interval: Duration, reply: bool) -> bool {
        let since = self.last_status.elapsed();
        reply || since >= interval || (confirmed > self.sent_flush && since >= Duration::from_millis(200))
    }

    /// Sends a status update confirming `flush` (what every sink made
    /// durable), with the gauges of it and of each sink (`names`).
    pub async fn send(
        &mut self,
        stream: &mut ReplicationStream,
        flush: Lsn,
        names: &[String],
        tracker: &AckTracker,
        ping: bool,
    ) -> Result<(), SourceError> {
        let write = self.received.max(flush);
        stream.send_status_update(write, flush, flush, ping).await?;
        self.pinged |= ping;
        self.sent_flush = self.sent_flush.max(flush);
        self.last_status = Instant::now();
        metrics::gauge!(m::CONFIRMED_FLUSH_LSN).set(flush.0 as f64);
        for (name, lsn) in names.iter().zip(tracker.sink_positions()) {
            metrics::gauge!(m::SINK_DURABLE_LSN, m::LABEL_SINK => name.clone()).set(lsn.0 as f64);
        }
        Ok(())
    }
}

/// Publishes the positions of the tracker's last `poll` (for `/status` and
/// `/wait`) when they changed: every time a sink makes something durable,
/// not only with status updates.
pub fn publish_progress(health: &Health, names: &[String], tracker: &AckTracker, flush: Lsn) {
    let sinks: Vec<SinkProgress> = names
        .iter()
        .zip(tracker.sink_positions())
        .zip(tracker.sink_oldest_pending())
        .map(|((name, lsn), pending)| SinkProgress { name: name.clone(), durable_lsn: lsn, pending_commit_lsn: pending })
        .collect();
    let next = Progress { confirmed_flush_lsn: flush, sinks };
    health.progress.send_if_modified(|p| {
        if *p == next {
            false
        } else {
            *p = next;
            true
        }
    });
}
