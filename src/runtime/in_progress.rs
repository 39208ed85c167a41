//! The reader's side of in-progress transactions the server streams
//! (pgoutput 2+, `source.postgres.streaming`): the changes of each are kept
//! in a [`Streamed`] until its Stream Commit, which the reader then reads
//! back as one transaction (`SourceLoop::replay`), or dropped at its Stream
//! Abort; with the metrics of both.

use bytes::Bytes;
use pgfanout_postgres::pgoutput::{self, LogicalMessage};
use pgfanout_postgres::streaming::{Aborted, Replay, Streamed};
use pgfanout_postgres::SourceError;
use pgfanout_sdk::Lsn;
use tracing::debug;

use crate::metrics as m;

/// A streamed transaction's Stream Commit: its kept changes are read now.
pub struct StreamCommit {
    pub xid: u32,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_ts: i64,
}

/// What a decoded message was to [`InProgress::control`].
pub enum Control {
    /// A Stream Start, Stop or Abort, done with.
    Done,
    /// A Stream Commit: the transaction is to be read back.
    Commit(StreamCommit),
    /// Any other message, for the reader.
    Other(LogicalMessage),
}

pub struct InProgress(Streamed);

impl InProgress {
    /// See [`Streamed::new`].
    pub fn new(memory: usize, spill_dir: Option<std::path::PathBuf>) -> Self {
        InProgress(Streamed::new(memory, spill_dir))
    }

    /// Keeps `data` if it is a change inside a block of streamed changes
    /// (true); false for any other message.
    pub fn keep(&mut self, lsn: Lsn, data: &Bytes) -> Result<bool, SourceError> {
        if self.0.in_block() && pgoutput::streamed_xid(data).is_some() {
            self.0.push(lsn, data)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Handles the stream control messages; hands any other back.
    pub fn control(&mut self, msg: LogicalMessage) -> Result<Control, SourceError> {
        match msg {
            LogicalMessage::StreamStart { xid, first_segment } => self.0.start(xid, first_segment),
            LogicalMessage::StreamStop => {
                self.0.stop();
                self.gauges();
            }
            LogicalMessage::StreamAbort { xid, subxid } => {
                let aborted = self.0.abort(xid, subxid)?;
                if aborted != Aborted::Unknown {
                    metrics::counter!(m::STREAMED_ABORTS_TOTAL).increment(1);
                }
                debug!(xid, subxid, ?aborted, "streamed transaction aborted");
                self.gauges();
            }
            LogicalMessage::StreamCommit { xid, commit_lsn, end_lsn, commit_ts, .. } => {
                return Ok(Control::Commit(StreamCommit { xid, commit_lsn, end_lsn, commit_ts }));
            }
            other => return Ok(Control::Other(other)),
        }
        Ok(Control::Done)
    }

    /// The committed transaction `xid`'s messages, in order.
    pub fn take(&mut self, xid: u32) -> Result<Replay, SourceError> {
        let replay = self.0.take(xid);
        self.gauges();
        replay
    }

    /// Forgets every open transaction (a new connection streams them again).
    pub fn clear(&mut self) {
        self.0.clear();
    }

    fn gauges(&self) {
        metrics::gauge!(m::STREAMED_TRANSACTIONS_OPEN).set(self.0.open() as f64);
        metrics::gauge!(m::STREAMED_MEMORY_BYTES).set(self.0.memory_bytes() as f64);
        metrics::counter!(m::STREAMED_SPILLED_BYTES_TOTAL).absolute(self.0.spilled_bytes());
    }
}
