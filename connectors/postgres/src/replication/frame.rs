//! Backend message framing: split complete frames off a read buffer.
//!
//! Every parser here takes `&mut BytesMut` and returns `Ok(None)` when the
//! buffer does not yet hold a complete frame, leaving it untouched (the
//! mini-redis `Connection::parse_frame` shape). That is what makes
//! [`super::ReplicationStream::recv`] cancel-safe: bytes are only consumed
//! once a whole frame is there, and a read that is cancelled has read nothing.
//!
//! The streaming hot path ([`parse_copy_both`]) handles `CopyData` without
//! building a generic frame: it advances past the 1+4+1+24 header bytes and
//! splits the pgoutput payload off as a `Bytes` that shares the read buffer
//! (no copy, no allocation beyond the handle).

use bytes::{Buf, Bytes, BytesMut};
use pgfanout_sdk::Lsn;

use crate::error::SourceError;

pub(crate) const AUTHENTICATION: u8 = b'R';
pub(crate) const PARAMETER_STATUS: u8 = b'S';
pub(crate) const BACKEND_KEY_DATA: u8 = b'K';
pub(crate) const READY_FOR_QUERY: u8 = b'Z';
pub(crate) const ERROR_RESPONSE: u8 = b'E';
pub(crate) const NOTICE_RESPONSE: u8 = b'N';
pub(crate) const ROW_DESCRIPTION: u8 = b'T';
pub(crate) const DATA_ROW: u8 = b'D';
pub(crate) const COMMAND_COMPLETE: u8 = b'C';
pub(crate) const EMPTY_QUERY: u8 = b'I';
pub(crate) const COPY_BOTH_RESPONSE: u8 = b'W';
pub(crate) const COPY_OUT_RESPONSE: u8 = b'H';
pub(crate) const COPY_IN_RESPONSE: u8 = b'G';
pub(crate) const COPY_DATA: u8 = b'd';
pub(crate) const COPY_DONE: u8 = b'c';

/// XLogData: 'w' + wal_start + wal_end + send_time.
const XLOG_DATA: u8 = b'w';
const XLOG_HEADER: usize = 1 + 8 + 8 + 8;
/// Primary keepalive: 'k' + wal_end + send_time + reply flag.
const KEEPALIVE: u8 = b'k';
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;
/// Frame header: tag + i32 length (which counts itself).
pub(crate) const HEADER: usize = 5;
/// The server never sends a message near this size (its limit is 1 GB);
/// anything larger is a corrupt stream, not a reason to allocate.
const MAX_FRAME: usize = (1 << 30) + (1 << 20);

/// One complete backend message.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// A message of the logical replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// WAL data: `data` is one pgoutput message, sharing the read buffer.
    XLogData { wal_start: Lsn, wal_end: Lsn, send_time: i64, data: Bytes },
    /// The server's position; answer with a status update when
    /// `reply_requested` (or the server times the connection out).
    Keepalive { wal_end: Lsn, send_time: i64, reply_requested: bool },
}

/// What the next complete frame of a CopyBoth stream means.
#[derive(Debug)]
pub(crate) enum Step {
    Message(ReplicationMessage),
    /// A frame with nothing for the caller (notice, parameter status).
    Skipped,
    /// The server ended the COPY (CopyDone, CommandComplete, ReadyForQuery).
    Ended,
    /// No complete frame buffered.
    NeedMore,
}

fn protocol_error(what: &str) -> SourceError {
    SourceError::transient(format!("PostgreSQL protocol error: {what}"))
}

/// Length of the complete frame at the start of `buf`, or None if it is
/// not fully buffered yet.
#[inline]
pub(crate) fn complete_len(buf: &BytesMut) -> Result<Option<usize>, SourceError> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Err(protocol_error("message length < 4"));
    }
    if len > MAX_FRAME {
        return Err(protocol_error("message length over 1 GiB"));
    }
    let total = len + 1;
    Ok((buf.len() >= total).then_some(total))
}

/// How many bytes the first incomplete frame in `buf` still needs (0 when
/// every frame is complete or the next one's length is not known yet), so a
/// reader can reserve room for a large frame at once. Complete frames
/// before it are skipped: a reader that reads ahead of parsing (coalescing)
/// must not grow its buffer by doubling for a frame of hundreds of MB.
pub(crate) fn missing_bytes(buf: &BytesMut) -> usize {
    let mut at = 0usize;
    while buf.len() - at >= HEADER {
        let len = u32::from_be_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]) as usize;
        let end = at + (len + 1).min(MAX_FRAME);
        if end > buf.len() {
            return end - buf.len();
        }
        at = end.max(at + HEADER);
    }
    0
}

/// Splits one complete frame off `buf`.
pub(crate) fn split_frame(buf: &mut BytesMut) -> Result<Option<Frame>, SourceError> {
    let Some(total) = complete_len(buf)? else { return Ok(None) };
    let tag = buf[0];
    buf.advance(HEADER);
    let body = buf.split_to(total - HEADER).freeze();
    Ok(Some(Frame { tag, body }))
}

/// Parses the next frame of a CopyBoth (replication) stream. Errors:
/// ErrorResponse mapped by SQLSTATE ([`DbError::into_source_error`]),
/// malformed frames -> Transient protocol error.
#[inline]
pub(crate) fn parse_copy_both(buf: &mut BytesMut) -> Result<Step, SourceError> {
    let Some(total) = complete_len(buf)? else { return Ok(Step::NeedMore) };
    if buf[0] == COPY_DATA {
        let body_len = total - HEADER;
        if body_len == 0 {
            return Err(protocol_error("empty CopyData"));
        }
        match buf[HEADER] {
            XLOG_DATA => {
                if body_len < XLOG_HEADER {
                    return Err(protocol_error("short XLogData header"));
                }
                let h = &buf[HEADER + 1..HEADER + XLOG_HEADER];
                let wal_start = Lsn(read_u64(&h[0..8]));
                let wal_end = Lsn(read_u64(&h[8..16]));
                let send_time = read_u64(&h[16..24]) as i64;
                buf.advance(HEADER + XLOG_HEADER);
                let data = buf.split_to(body_len - XLOG_HEADER).freeze();
                Ok(Step::Message(ReplicationMessage::XLogData { wal_start, wal_end, send_time, data }))
            }
            KEEPALIVE => {
                if body_len < KEEPALIVE_LEN {
                    return Err(protocol_error("short keepalive"));
                }
                let h = &buf[HEADER + 1..HEADER + KEEPALIVE_LEN];
                let wal_end = Lsn(read_u64(&h[0..8]));
                let send_time = read_u64(&h[8..16]) as i64;
                let reply_requested = h[16] != 0;
                buf.advance(total);
                Ok(Step::Message(ReplicationMessage::Keepalive { wal_end, send_time, reply_requested }))
            }
            other => Err(protocol_error(&format!("unknown CopyData message {:?}", other as char))),
        }
    } else {
        let frame = match split_frame(buf)? {
            Some(f) => f,
            None => return Ok(Step::NeedMore),
        };
        match frame.tag {
            NOTICE_RESPONSE | PARAMETER_STATUS => Ok(Step::Skipped),
            COPY_DONE | COMMAND_COMPLETE | READY_FOR_QUERY => Ok(Step::Ended),
            ERROR_RESPONSE => Err(DbError::parse(&frame.body).into_source_error()),
            other => Err(protocol_error(&format!("unexpected message {:?} during replication", other as char))),
        }
    }
}

#[inline]
fn read_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// A cursor over a frame body. Every read checks bounds and reports a
/// protocol error instead of panicking on a short body.
pub(crate) struct Body<'a> {
    buf: &'a [u8],
}

impl<'a> Body<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Body { buf }
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], SourceError> {
        if self.buf.len() < n {
            return Err(protocol_error("message shorter than its fields"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub fn u8(&mut self) -> Result<u8, SourceError> {
        Ok(self.bytes(1)?[0])
    }

    pub fn i16(&mut self) -> Result<i16, SourceError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, SourceError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A NUL-terminated string (lossy UTF-8).
    pub fn cstr(&mut self) -> Result<String, SourceError> {
        let end = self.buf.iter().position(|&b| b == 0).ok_or_else(|| protocol_error("unterminated string"))?;
        let s = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }
}

/// The fields of an ErrorResponse / NoticeResponse that matter here.
#[derive(Debug, Default, Clone)]
pub(crate) struct DbError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl DbError {
    /// Parses the field list; a malformed body yields what could be read.
    pub fn parse(body: &[u8]) -> DbError {
        let mut e = DbError::default();
        let mut b = Body::new(body);
        while let Ok(kind) = b.u8() {
            if kind == 0 {
                break;
            }
            let Ok(value) = b.cstr() else { break };
            match kind {
                b'V' => e.severity = value,
                b'S' if e.severity.is_empty() => e.severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                _ => {}
            }
        }
        e
    }

    /// `ERROR 42704: message (detail: ..) (hint: ..)`.
    pub fn describe(&self) -> String {
        let mut s = format!("{} {}: {}", self.severity, self.code, self.message);
        if let Some(d) = &self.detail {
            s.push_str(&format!(" (detail: {d})"));
        }
        if let Some(h) = &self.hint {
            s.push_str(&format!(" (hint: {h})"));
        }
        s
    }

    /// Permanent for the SQLSTATEs retrying cannot fix
    /// ([`crate::error::is_permanent_sqlstate`]), Transient otherwise (e.g. 57P01
    /// walsender terminated, 53300 too many connections).
    pub fn into_source_error(self) -> SourceError {
        SourceError::from_sqlstate(&self.code, self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn xlog(start: u64, end: u64, time: i64, data: &[u8]) -> Vec<u8> {
        let mut body = vec![b'w'];
        body.extend_from_slice(&start.to_be_bytes());
        body.extend_from_slice(&end.to_be_bytes());
        body.extend_from_slice(&time.to_be_bytes());
        body.extend_from_slice(data);
        frame(b'd', &body)
    }

    fn keepalive(end: u64, time: i64, reply: bool) -> Vec<u8> {
        let mut body = vec![b'k'];
        body.extend_from_slice(&end.to_be_bytes());
        body.extend_from_slice(&time.to_be_bytes());
        body.push(reply as u8);
        frame(b'd', &body)
    }

    #[test]
    fn xlogdata_every_partial_prefix_then_complete() {
        let bytes = xlog(0x10, 0x20, 7, b"BEGIN-ish payload");
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert!(matches!(parse_copy_both(&mut buf).unwrap(), Step::NeedMore), "cut {cut}");
            assert_eq!(buf.len(), cut, "partial frame must not be consumed");
        }
        let mut buf = BytesMut::from(&bytes[..]);
        match parse_copy_both(&mut buf).unwrap() {
            Step::Message(ReplicationMessage::XLogData { wal_start, wal_end, send_time, data }) => {
                assert_eq!((wal_start, wal_end, send_time), (Lsn(0x10), Lsn(0x20), 7));
                assert_eq!(&data[..], b"BEGIN-ish payload");
            }
            other => panic!("{other:?}"),
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn back_to_back_frames_and_split_reads() {
        let mut all = xlog(1, 2, 3, b"B");
        all.extend(keepalive(99, 5, true));
        all.extend(xlog(4, 5, 6, b"C"));
        all.extend(frame(b'c', b""));
        // Feed in 3-byte chunks, like short reads.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in all.chunks(3) {
            buf.extend_from_slice(chunk);
            loop {
                match parse_copy_both(&mut buf).unwrap() {
                    Step::NeedMore => break,
                    Step::Ended => got.push(None),
                    Step::Skipped => {}
                    Step::Message(m) => got.push(Some(m)),
                }
            }
        }
        assert_eq!(got.len(), 4);
        assert_eq!(got[1], Some(ReplicationMessage::Keepalive { wal_end: Lsn(99), send_time: 5, reply_requested: true }));
        assert!(matches!(&got[2], Some(ReplicationMessage::XLogData { data, .. }) if &data[..] == b"C"));
        assert_eq!(got[3], None);
    }

    #[test]
    fn data_shares_the_read_buffer() {
        let bytes = xlog(1, 2, 3, &[7u8; 1000]);
        let mut buf = BytesMut::from(&bytes[..]);
        let base = buf.as_ptr() as usize;
        let Step::Message(ReplicationMessage::XLogData { data, .. }) = parse_copy_both(&mut buf).unwrap() else { panic!() };
        assert_eq!(data.as_ptr() as usize, base + 30, "payload must not be copied");
    }

    #[test]
    fn error_response_classified() {
        let body = b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0";
        let mut buf = BytesMut::from(&frame(b'E', body)[..]);
        let e = parse_copy_both(&mut buf).unwrap_err();
        assert!(e.is_retriable());
        assert!(e.to_string().contains("57P01"), "{e}");
        let body = b"SERROR\0VERROR\0C55000\0Mcan no longer get changes from replication slot \"s\"\0\0";
        let mut buf = BytesMut::from(&frame(b'E', body)[..]);
        let e = parse_copy_both(&mut buf).unwrap_err();
        assert!(!e.is_retriable());
        assert!(e.to_string().contains("can no longer get changes"));
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        for bad in [frame(b'd', b""), frame(b'd', b"w123"), frame(b'd', b"k1"), frame(b'd', b"x"), vec![b'd', 0, 0, 0, 1]] {
            let mut buf = BytesMut::from(&bad[..]);
            assert!(parse_copy_both(&mut buf).is_err(), "{bad:?}");
        }
        let mut b = Body::new(b"ab");
        assert!(b.i32().is_err());
        assert!(Body::new(b"no nul").cstr().is_err());
        let e = DbError::parse(b"Sx");
        assert!(e.code.is_empty());
    }

    #[test]
    fn notices_skipped() {
        let mut buf = BytesMut::from(&frame(b'N', b"SNOTICE\0Mhi\0\0")[..]);
        assert!(matches!(parse_copy_both(&mut buf).unwrap(), Step::Skipped));
        assert!(buf.is_empty());
    }

    #[test]
    fn missing_bytes_for_large_frame() {
        let bytes = xlog(1, 2, 3, &[0u8; 500]);
        let buf = BytesMut::from(&bytes[..100]);
        assert_eq!(missing_bytes(&buf), bytes.len() - 100);
        // behind complete frames still to be parsed
        let mut ahead = keepalive(1, 2, false);
        ahead.extend_from_slice(&keepalive(3, 4, true));
        let complete = ahead.len();
        ahead.extend_from_slice(&bytes[..100]);
        assert_eq!(missing_bytes(&BytesMut::from(&ahead[..])), bytes.len() - 100);
        assert_eq!(missing_bytes(&BytesMut::from(&ahead[..complete])), 0, "all complete");
        assert_eq!(missing_bytes(&BytesMut::from(&ahead[..complete + 3])), 0, "the next length is not known yet");
    }
}
