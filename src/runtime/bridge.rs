//! The backfill bridge: the reader's side of a backfill (`crate::backfill`).
//!
//! The backfill driver reads a table in chunks between two watermarks
//! written into the WAL (DBLog). The reader sees each chunk's window open
//! and close in the stream, drops the chunk's rows that the stream changed
//! inside the window (the streamed change is newer), and routes the rest
//! once the high watermark passed and no transaction is open: a reconnect
//! cuts a half-received transaction's records out of the local queues, and
//! backfill rows must not be cut with them. Each routed chunk ends with an
//! [`AckTracker::barrier`]; the driver hears that the chunk is durable when
//! every sink passed that barrier, and only then records its progress.

use pgfanout_sdk::{Change, Lsn};
use tokio::sync::{mpsc, oneshot};

use crate::backfill::{Ready, ToSource, Windows};
use crate::runtime::ack::AckTracker;

#[derive(Default)]
pub struct BackfillBridge {
    /// Chunks and windows from the driver (none: no driver).
    rx: Option<mpsc::Receiver<ToSource>>,
    /// The chunks' windows open in the stream.
    windows: Windows,
    /// Chunks whose windows closed, to route once no transaction is open.
    ready: Vec<Ready>,
    /// Chunks routed but not yet durable everywhere: (barrier seq, reply,
    /// rows routed).
    awaiting: Vec<(u64, oneshot::Sender<usize>, usize, Vec<usize>)>,
}

impl BackfillBridge {
    /// Takes chunks from the driver's channel.
    pub fn connect(&mut self, rx: mpsc::Receiver<ToSource>) {
        self.rx = Some(rx);
    }

    /// The driver's next message; pending forever without a driver (so it
    /// can stand in a `select!`).
    pub async fn next(&mut self) -> ToSource {
        match &mut self.rx {
            Some(r) => match r.recv().await {
                Some(m) => m,
                None => {
                    self.rx = None;
                    std::future::pending().await
                }
            },
            None => std::future::pending().await,
        }
    }

    /// A message of the driver (a window opens, its rows arrive, or it is
    /// abandoned).
    pub fn on_message(&mut self, msg: ToSource) {
        if let Some(ready) = self.windows.on_message(msg) {
            self.ready.push(ready);
        }
    }

    /// A watermark in the stream, standing at `at`.
    pub fn on_watermark(&mut self, content: &[u8], at: Lsn) {
        if let Some(ready) = self.windows.on_watermark(content, at) {
            self.ready.push(ready);
        }
    }

    /// A streamed change: chunk rows it supersedes are dropped.
    #[inline]
    pub fn on_change(&mut self, change: &Change) {
        if !self.windows.is_empty() {
            self.windows.on_change(change);
        }
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The chunks ready to route, in order.
    pub fn take_ready(&mut self) -> Vec<Ready> {
        std::mem::take(&mut self.ready)
    }

    /// A chunk of `rows` rows was routed to `sinks`, ending at barrier `seq`.
    pub fn routed(&mut self, seq: u64, reply: oneshot::Sender<usize>, rows: usize, sinks: Vec<usize>) {
        self.awaiting.push((seq, reply, rows, sinks));
    }

    /// Tells the driver which routed chunks are durable in the sinks their
    /// rows went to.
    pub fn answer(&mut self, tracker: &AckTracker) {
        if self.awaiting.is_empty() {
            return;
        }
        let (done, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.awaiting).into_iter().partition(|(seq, _, _, sinks)| tracker.durable_in(*seq, sinks));
        self.awaiting = waiting;
        for (_, reply, n, _) in done {
            let _ = reply.send(n);
        }
    }
}
