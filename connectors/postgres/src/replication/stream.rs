//! The CopyBoth stream of a logical replication connection.
//!
//! Reading is the hot path: one large buffer, `read_buf` into it, frames
//! parsed in place and payloads handed out as `Bytes` that share the buffer.
//! [`ReplicationStream::recv`] consumes bytes only once a complete frame is
//! buffered, so it can sit in a `tokio::select!` next to a timer and be
//! cancelled at any await point without losing data.
//!
//! Feedback: the standby status update carries write/flush/apply LSNs. The
//! server treats flush as "everything before this may be recycled", so the
//! values sent only ever move forward here, whatever the caller passes; a
//! caller that confirms an older position after a reconnect cannot make the
//! server go back (it would ignore it anyway) nor make our own reporting go
//! backwards.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BufMut;
use pgfanout_sdk::Lsn;
use postgres_protocol::message::frontend;

use super::frame::{self, ReplicationMessage, Step};
use super::socket::Wire;
use crate::error::SourceError;

/// Seconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_OFFSET_SECS: u64 = 946_684_800;
/// How long [`ReplicationStream::finish`] waits for the server to end the COPY.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);
/// A frame this large was read into a buffer of its own (see
/// [`Wire::detach`](super::socket::Wire::detach)).
const LARGE_FRAME: usize = 4 << 20;
/// A read at least this large says the data arrives faster than it is read:
/// read again at once instead of coalescing (a quarter of the receive
/// buffer when that is set smaller, see [`ReceiveBuffer`]).
const BIG_READ: usize = 64 * 1024;
/// The receive buffer [`ReceiveBuffer::Auto`] asks for on a same-host
/// connection (the kernel reports twice this; the window it advertises is
/// about 24 kB).
pub const SAME_HOST_RECEIVE_BUFFER: usize = 16 * 1024;

/// The kernel's receive buffer for the replication socket (`SO_RCVBUF`).
///
/// Why it matters: the walsender sends every change on its own (a `send`
/// per change, `TCP_NODELAY`). While the receive window has room, each such
/// send goes through the whole TCP stack, and on a same-host connection
/// through the receiving side's too, in the walsender's own time: about
/// three quarters of a walsender's CPU were in the kernel, 4.4 µs per row.
/// When the window is full, a send only appends to the socket's queue, and
/// the queue goes out in large segments when the reader makes room again,
/// in the reader's time. A small buffer read on the coalescing schedule
/// keeps the window full most of the time: the walsender spends 2.5 µs per
/// row and streams 1.7× faster (README, Performance, seventh pass). Across
/// a network a small window would cap throughput at window / round trip,
/// so [`ReceiveBuffer::Auto`] applies it on loopback connections only. The
/// gain needs reads on the coalescing schedule
/// ([`ReplicationStream::set_read_coalesce`]; plain TCP): a reader that
/// reads whatever arrives keeps the window open.
///
/// Set when the socket connects ([`ReplicationClient::connect_with`]): the
/// window scale is agreed on in the handshake, and a buffer shrunk later
/// could not hold the window already advertised (the kernel drops what does
/// not fit, and the stream crawls from retransmission to retransmission).
///
/// [`ReplicationClient::connect_with`]: super::ReplicationClient::connect_with
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReceiveBuffer {
    /// [`SAME_HOST_RECEIVE_BUFFER`] on a TCP connection to a loopback
    /// address; the kernel's autotuning otherwise.
    #[default]
    Auto,
    /// The kernel's autotuning, always.
    Kernel,
    /// This many bytes on any TCP connection (TLS included).
    Bytes(usize),
}

/// Microseconds since 2000-01-01 (PostgreSQL's timestamp epoch), now.
pub fn pg_now_micros() -> i64 {
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    unix.as_micros() as i64 - (PG_EPOCH_OFFSET_SECS as i64) * 1_000_000
}

/// A running logical replication stream (after START_REPLICATION).
pub struct ReplicationStream {
    wire: Wire,
    slot: String,
    /// The server ended the COPY; no more messages.
    ended: bool,
    sent_write: Lsn,
    sent_flush: Lsn,
    sent_apply: Lsn,
    /// See [`ReplicationStream::set_read_coalesce`].
    coalesce: Duration,
    /// While coalescing: when to read the socket next, whatever woke us.
    read_again_at: Option<Instant>,
    /// The socket's `SO_RCVLOWAT` as last set.
    wake_threshold: usize,
    /// While coalescing: the wake threshold, and the read size that means
    /// "more is queued, read again at once" (both depend on the receive
    /// buffer).
    coalesced_wake: usize,
    big_read: usize,
    /// `SO_RCVBUF` as the kernel reports it, when the connection set it.
    receive_buffer: Option<usize>,
    /// Socket reads that brought data.
    reads: u64,
    /// When the last read that brought data returned, and when the run of
    /// reads it belongs to began (reads less than four intervals apart).
    last_read: Option<Instant>,
    burst_start: Option<Instant>,
}

impl ReplicationStream {
    pub(crate) fn new(wire: Wire, slot: String) -> Self {
        // With a receive buffer set smaller than the kernel's, reads count as
        // big at a quarter of it, and the coalescing wake threshold is half
        // of it (the kernel's own cap for `SO_RCVLOWAT`).
        let receive_buffer = wire.receive_buffer();
        let (coalesced_wake, big_read) = match receive_buffer {
            Some(size) => ((size / 2).clamp(1, BIG_READ), (size / 4).clamp(1, BIG_READ)),
            None => (BIG_READ, BIG_READ),
        };
        ReplicationStream {
            wire,
            slot,
            ended: false,
            sent_write: Lsn::ZERO,
            sent_flush: Lsn::ZERO,
            sent_apply: Lsn::ZERO,
            coalesce: Duration::ZERO,
            read_again_at: None,
            wake_threshold: 1,
            coalesced_wake,
            big_read,
            receive_buffer,
            reads: 0,
            last_read: None,
            burst_start: None,
        }
    }

    /// Reads the socket at most once per `every` while changes stream in
    /// (zero, the default: as soon as anything arrives). Plain TCP only;
    /// TLS and Unix-socket connections read as soon as anything arrives.
    /// Only a sustained stream is coalesced: reads keep coming for four
    /// intervals with no gap of four intervals (or one read is big: 64 kB,
    /// or a quarter of a receive buffer set smaller, see [`ReceiveBuffer`]);
    /// a short burst, such as one transaction now and then, is read as it
    /// arrives and waits for no timer.
    ///
    /// The walsender sends every change on its own, and a reader that keeps
    /// up wakes for a few of them at a time (about 8 rows of 150 bytes per
    /// read at 120,000 rows/s here): each wake-up (an epoll return, a thread
    /// switch) costs more CPU than the rows it brings. While coalescing, the
    /// socket's `SO_RCVLOWAT` is raised to 64 kB (half a receive buffer set
    /// smaller), so arriving data wakes no
    /// one until that much is queued, and the stream reads whatever is
    /// queued `every` after the previous read (at once after a big read,
    /// i.e. when data arrives faster than it is read). A
    /// read that finds nothing means the stream went quiet: the threshold
    /// goes back to one byte and the next byte wakes the reader at once. So
    /// a busy stream costs one wake-up per `every`, an idle one none, and
    /// the latency added is at most `every` (what arrives in the meantime
    /// waits in the kernel's socket buffer: 20 kB per millisecond at
    /// 20 MB/s, far below its size).
    pub fn set_read_coalesce(&mut self, every: Duration) {
        self.coalesce = every;
    }

    /// `SO_RCVBUF` as the kernel reports it when the connection set it (see
    /// [`ReceiveBuffer`]); `None` while the kernel sizes the buffer itself.
    pub fn receive_buffer(&self) -> Option<usize> {
        self.receive_buffer
    }

    fn set_wake_threshold(&mut self, bytes: usize) -> Result<(), SourceError> {
        if self.wake_threshold != bytes {
            self.wire.set_wake_threshold(bytes)?;
            self.wake_threshold = bytes;
        }
        Ok(())
    }

    /// Reads once: on the coalescing schedule if one is running, else as
    /// soon as anything arrives. Cancel-safe (the schedule is state, and a
    /// cancelled read consumed nothing).
    async fn read_more(&mut self) -> Result<(), SourceError> {
        let n = loop {
            let Some(at) = self.read_again_at else { break self.wire.fill().await? };
            if at > Instant::now() {
                tokio::time::sleep_until(at.into()).await;
            }
            match self.wire.read_now()? {
                Some(n) => break n,
                None => {
                    // Quiet: wait for the next byte as usual.
                    self.read_again_at = None;
                    self.set_wake_threshold(1)?;
                }
            }
        };
        self.reads += 1;
        if self.coalesce.is_zero() || !self.wire.can_coalesce() {
            return Ok(());
        }
        // The sustained-stream rule of the doc comment above.
        let now = Instant::now();
        let span = self.coalesce * 4;
        if self.last_read.is_none_or(|t| now.duration_since(t) > span) {
            self.burst_start = Some(now);
        }
        self.last_read = Some(now);
        let sustained = self.burst_start.is_some_and(|t| now.duration_since(t) >= span);
        if sustained || n >= self.big_read || self.read_again_at.is_some() {
            let pause = if n < self.big_read { self.coalesce } else { Duration::ZERO };
            self.read_again_at = Some(now + pause);
            self.set_wake_threshold(self.coalesced_wake)?;
        }
        Ok(())
    }

    /// The next message, reading from the server as needed. Cancel-safe.
    ///
    /// `Ok(None)` once the server ended the COPY (CopyDone /
    /// CommandComplete). Errors: an ErrorResponse is Permanent for the
    /// SQLSTATEs retrying cannot fix (e.g. 55000 "can no longer get changes
    /// from replication slot" = slot invalidated, 42704 publication missing)
    /// and Transient otherwise (57P01 walsender terminated); EOF and I/O
    /// errors are Transient.
    pub async fn recv(&mut self) -> Result<Option<ReplicationMessage>, SourceError> {
        loop {
            if let Some(m) = self.try_recv_buffered()? {
                return Ok(Some(m));
            }
            if self.ended {
                return Ok(None);
            }
            self.read_more().await?;
        }
    }

    /// A message only if a complete frame is already buffered; never does
    /// I/O. `Ok(None)` means "nothing buffered" (or the COPY ended; `recv`
    /// tells the two apart).
    #[inline]
    pub fn try_recv_buffered(&mut self) -> Result<Option<ReplicationMessage>, SourceError> {
        if self.ended {
            return Ok(None);
        }
        loop {
            let buffered = self.wire.rbuf.len();
            match frame::parse_copy_both(&mut self.wire.rbuf) {
                Ok(Step::Message(m)) => {
                    if buffered - self.wire.rbuf.len() > LARGE_FRAME {
                        // The frame had a buffer of its own size; what
                        // follows it must not keep that alive after the
                        // frame is dropped.
                        self.wire.detach();
                    }
                    return Ok(Some(m));
                }
                Ok(Step::Skipped) => continue,
                Ok(Step::Ended) => {
                    self.ended = true;
                    return Ok(None);
                }
                Ok(Step::NeedMore) => return Ok(None),
                Err(e) => return Err(self.explain(e)),
            }
        }
    }

    fn explain(&self, e: SourceError) -> SourceError {
        // 55000 object_not_in_prerequisite_state on a started stream: the
        // slot can no longer be read (invalidated).
        match e.sqlstate() {
            Some("55000") => e.definite_with_fix(format!(
                "replication slot {slot:?} was invalidated (it fell behind max_slot_wal_keep_size); drop it with \
                 SELECT pg_drop_replication_slot('{slot}') and start again; data changed since is lost to this slot",
                slot = self.slot
            )),
            _ => e,
        }
    }

    /// Sends a standby status update (`r`) and flushes the socket. Each LSN
    /// is clamped to the highest value sent before, so what the server sees
    /// never moves backwards. `reply_requested` asks the server for an
    /// immediate keepalive. Not cancel-safe (do not race it in a select).
    pub async fn send_status_update(&mut self, write: Lsn, flush: Lsn, apply: Lsn, reply_requested: bool) -> Result<(), SourceError> {
        let write = write.max(self.sent_write);
        let flush = flush.max(self.sent_flush);
        let apply = apply.max(self.sent_apply);
        let buf = &mut self.wire.wbuf;
        buf.put_u8(frame::COPY_DATA);
        buf.put_i32(4 + 1 + 8 * 4 + 1);
        buf.put_u8(b'r');
        buf.put_u64(write.0);
        buf.put_u64(flush.0);
        buf.put_u64(apply.0);
        buf.put_i64(pg_now_micros());
        buf.put_u8(u8::from(reply_requested));
        self.wire.send().await?;
        self.sent_write = write;
        self.sent_flush = flush;
        self.sent_apply = apply;
        Ok(())
    }

    /// How many socket reads brought data so far.
    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// The last flush LSN actually sent (ZERO before the first update).
    pub fn last_flush_sent(&self) -> Lsn {
        self.sent_flush
    }

    /// The slot this stream reads.
    pub fn slot(&self) -> &str {
        &self.slot
    }

    /// Clean shutdown: CopyDone, then read (and drop) whatever the server
    /// still sends until it is ready again or closes, within 5 s; then
    /// Terminate. Call [`send_status_update`](Self::send_status_update)
    /// first to confirm the final position. An ErrorResponse during the
    /// drain is returned; a timeout is Transient.
    pub async fn finish(mut self) -> Result<(), SourceError> {
        // The answers are small: a raised wake threshold would hide them.
        self.read_again_at = None;
        self.set_wake_threshold(1)?;
        let drain = async {
            frontend::copy_done(&mut self.wire.wbuf);
            self.wire.send().await?;
            loop {
                let f = match self.wire.read_frame().await {
                    Ok(f) => f,
                    // The server may close right after CommandComplete.
                    Err(e) if e.is_connection_closed() => return Ok(()),
                    Err(e) => return Err(e),
                };
                match f.tag {
                    frame::READY_FOR_QUERY => break,
                    frame::ERROR_RESPONSE => return Err(frame::DbError::parse(&f.body).into_source_error()),
                    _ => {}
                }
            }
            frontend::terminate(&mut self.wire.wbuf);
            // The server may already be gone; nothing is lost if this fails.
            let _ = self.wire.send().await;
            Ok(())
        };
        match tokio::time::timeout(FINISH_TIMEOUT, drain).await {
            Ok(r) => r,
            Err(_) => Err(SourceError::transient(format!("the server did not end replication within {FINISH_TIMEOUT:?}"))),
        }
    }
}

impl std::fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("slot", &self.slot)
            .field("ended", &self.ended)
            .field("last_flush_sent", &self.sent_flush)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_epoch() {
        let now = pg_now_micros();
        // After 2024-01-01 (in PG micros) and not absurdly large.
        assert!(now > 757_382_400_000_000, "{now}");
        assert!(now < 4_000_000_000_000_000);
    }
}
