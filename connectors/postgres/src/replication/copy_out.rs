//! A plain (non-replication) connection that runs `COPY ... TO STDOUT` and
//! hands each `CopyData` body to its caller straight from the read buffer.
//!
//! The snapshot's readers used tokio-postgres for their COPY: its
//! connection task read the socket, split every row into a message of its
//! own and passed it through a channel to the task that decoded it (12% of
//! a snapshot profile, plus a cross-task wake-up per socket read). Here the
//! task that decodes also reads: complete frames are parsed in place and
//! their bytes are only borrowed, so a row costs no allocation and no
//! hand-off until its batch is sent.

use bytes::Buf;
use futures_util::FutureExt;
use postgres_protocol::message::frontend;

use super::frame::{self, DbError};
use super::socket::Wire;
use crate::conn::PgConnectOptions;
use crate::error::SourceError;

/// Where [`CopyOutClient::drain`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drained {
    /// The buffer holds no complete frame: read more.
    NeedMore,
    /// The caller asked to stop after the row it was given.
    Paused,
    /// The COPY finished and the connection is ready for the next query.
    Done,
}

/// See the module docs.
pub(crate) struct CopyOutClient {
    wire: Wire,
    /// An ErrorResponse seen during the COPY, returned at ReadyForQuery.
    error: Option<DbError>,
}

impl CopyOutClient {
    /// Connects and authenticates as an ordinary client (no replication),
    /// bounded by `opts.connect_timeout`; errors as
    /// [`super::ReplicationClient::connect`].
    pub async fn connect(opts: &PgConnectOptions) -> Result<Self, SourceError> {
        let (wire, _) = super::connect_wire(opts, false, super::ReceiveBuffer::Kernel).await?;
        Ok(CopyOutClient { wire, error: None })
    }

    /// Runs `sql` (one or more statements) with the simple query protocol,
    /// ignoring any rows.
    pub async fn execute(&mut self, sql: &str) -> Result<(), SourceError> {
        super::simple_query(&mut self.wire, sql).await.map(drop)
    }

    /// Sends `sql` (a `COPY ... TO STDOUT` in text format) and waits for
    /// the server to start it; the rows are then read with
    /// [`CopyOutClient::drain`] and [`CopyOutClient::fill`].
    pub async fn start_copy(&mut self, sql: &str) -> Result<(), SourceError> {
        frontend::query(sql, &mut self.wire.wbuf).map_err(|e| SourceError::permanent(format!("invalid query: {e}")))?;
        self.wire.send().await?;
        self.error = None;
        loop {
            let f = self.wire.read_frame().await?;
            match f.tag {
                frame::COPY_OUT_RESPONSE => return Ok(()),
                frame::NOTICE_RESPONSE | frame::PARAMETER_STATUS => {}
                frame::ERROR_RESPONSE => self.error = Some(DbError::parse(&f.body)),
                frame::READY_FOR_QUERY => {
                    let e = self.error.take();
                    return Err(
                        e.map_or_else(|| SourceError::transient("COPY did not start (no CopyOutResponse)"), DbError::into_source_error)
                    );
                }
                other => return Err(unexpected(other)),
            }
        }
    }

    /// Calls `row` with the body of every complete `CopyData` frame in the
    /// read buffer, in order, until the buffer runs dry ([`Drained::NeedMore`]),
    /// `row` returns false ([`Drained::Paused`]) or the COPY has ended and
    /// the connection is ready again ([`Drained::Done`]). An error the
    /// server reports during the COPY is returned once it is ready again.
    pub fn drain(&mut self, mut row: impl FnMut(&[u8]) -> Result<bool, SourceError>) -> Result<Drained, SourceError> {
        let buf = &mut self.wire.rbuf;
        loop {
            let Some(total) = frame::complete_len(buf)? else { return Ok(Drained::NeedMore) };
            let tag = buf[0];
            match tag {
                frame::COPY_DATA => {
                    let more = row(&buf[frame::HEADER..total])?;
                    buf.advance(total);
                    if !more {
                        return Ok(Drained::Paused);
                    }
                    continue;
                }
                frame::COPY_DONE | frame::COMMAND_COMPLETE | frame::NOTICE_RESPONSE | frame::PARAMETER_STATUS => {}
                frame::ERROR_RESPONSE => self.error = Some(DbError::parse(&buf[frame::HEADER..total])),
                frame::READY_FOR_QUERY => {
                    buf.advance(total);
                    return match self.error.take() {
                        Some(e) => Err(e.into_source_error()),
                        None => Ok(Drained::Done),
                    };
                }
                other => return Err(unexpected(other)),
            }
            buf.advance(total);
        }
    }

    /// Reads more of the stream, waiting for it. EOF is a Transient error,
    /// or the error the server sent before closing (a terminated backend).
    pub async fn fill(&mut self) -> Result<(), SourceError> {
        let read = self.wire.fill().await;
        self.read_result(read)
    }

    /// Reads what has already arrived, without waiting: false when nothing
    /// had (the read is cancel-safe, so abandoning it loses nothing).
    pub fn fill_now(&mut self) -> Result<bool, SourceError> {
        match self.wire.fill().now_or_never() {
            Some(read) => self.read_result(read).map(|()| true),
            None => Ok(false),
        }
    }

    fn read_result(&mut self, read: Result<usize, SourceError>) -> Result<(), SourceError> {
        match (read, self.error.take()) {
            (Ok(_), error) => {
                self.error = error;
                Ok(())
            }
            (Err(_), Some(reason)) => Err(reason.into_source_error()),
            (Err(e), None) => Err(e),
        }
    }
}

fn unexpected(tag: u8) -> SourceError {
    SourceError::transient(format!("unexpected message {:?} from PostgreSQL during COPY", tag as char))
}
