//! The pgoutput message decoder (protocol versions 1 to 4).
//!
//! Each XLogData payload of a logical replication stream that uses the
//! `pgoutput` plugin is exactly one of these messages. Versions 2 and up
//! (PostgreSQL 14+, `streaming 'on'`) add the messages of in-progress
//! transactions: Stream Start/Stop around blocks of changes that carry
//! their (sub)transaction id after the tag ([`decode_streamed`]), and
//! Stream Commit/Abort. Versions 3 and 4 add two-phase and parallel-apply
//! messages, which only come when asked for (`two_phase`, `streaming
//! 'parallel'`); pgfanout asks for neither. Decoding is pure (no
//! I/O) and zero-copy for column values: a [`TupleValue::TextAt`] is a range
//! of the payload's [`Bytes`], which the tuple holds once, so a row costs no
//! allocation (and one reference on the receive buffer) until its values are
//! turned into [`Value`](pgfanout_sdk::Value)s by [`crate::types`].
//!
//! The layout follows PostgreSQL's "Logical Replication Message Formats"
//! (protocol.sgml) and `src/backend/replication/logical/proto.c`.

use bytes::Bytes;
use pgfanout_sdk::Lsn;

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

const BEGIN_TAG: u8 = b'B';
const COMMIT_TAG: u8 = b'C';
const ORIGIN_TAG: u8 = b'O';
const RELATION_TAG: u8 = b'R';
const TYPE_TAG: u8 = b'Y';
const INSERT_TAG: u8 = b'I';
const UPDATE_TAG: u8 = b'U';
const DELETE_TAG: u8 = b'D';
const TRUNCATE_TAG: u8 = b'T';
const MESSAGE_TAG: u8 = b'M';
const STREAM_START_TAG: u8 = b'S';
const STREAM_STOP_TAG: u8 = b'E';
const STREAM_COMMIT_TAG: u8 = b'c';
const STREAM_ABORT_TAG: u8 = b'A';

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq)]
pub enum LogicalMessage {
    /// Start of a transaction. `final_lsn` is the LSN of its commit record;
    /// `commit_ts` is in microseconds since the Unix epoch.
    Begin {
        final_lsn: Lsn,
        commit_ts: i64,
        xid: u32,
    },
    /// End of a transaction. `end_lsn` is the position to confirm once the
    /// transaction is durable everywhere.
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_ts: i64,
    },
    Origin {
        lsn: Lsn,
        name: String,
    },
    Relation(RelationMessage),
    /// A non-builtin type used by a following Relation message.
    Type {
        id: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation_id: u32,
        new: TupleData,
    },
    /// `old` is sent for REPLICA IDENTITY FULL (`old_is_key == false`, tag
    /// 'O') or when the key changed (`old_is_key == true`, tag 'K').
    Update {
        relation_id: u32,
        old: Option<TupleData>,
        old_is_key: bool,
        new: TupleData,
    },
    Delete {
        relation_id: u32,
        old: TupleData,
        old_is_key: bool,
    },
    /// `options`: bit 1 = CASCADE, bit 2 = RESTART IDENTITY.
    Truncate {
        options: u8,
        relation_ids: Vec<u32>,
    },
    /// A `pg_logical_emit_message` message.
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
    /// A block of changes of the in-progress transaction `xid` follows,
    /// until [`StreamStop`](Self::StreamStop); `first_segment` on its first.
    StreamStart {
        xid: u32,
        first_segment: bool,
    },
    StreamStop,
    /// The streamed transaction `xid` committed: its changes are final, in
    /// the order they were streamed. Fields as [`Commit`](Self::Commit)'s.
    StreamCommit {
        xid: u32,
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_ts: i64,
    },
    /// The streamed transaction `xid` aborted (`subxid == xid`), or its
    /// subtransaction `subxid` did: that subtransaction's changes, the last
    /// streamed, are void.
    StreamAbort {
        xid: u32,
        subxid: u32,
    },
}

impl LogicalMessage {
    /// The message's name, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            LogicalMessage::Begin { .. } => "Begin",
            LogicalMessage::Commit { .. } => "Commit",
            LogicalMessage::Origin { .. } => "Origin",
            LogicalMessage::Relation(_) => "Relation",
            LogicalMessage::Type { .. } => "Type",
            LogicalMessage::Insert { .. } => "Insert",
            LogicalMessage::Update { .. } => "Update",
            LogicalMessage::Delete { .. } => "Delete",
            LogicalMessage::Truncate { .. } => "Truncate",
            LogicalMessage::Message { .. } => "Message",
            LogicalMessage::StreamStart { .. } => "Stream Start",
            LogicalMessage::StreamStop => "Stream Stop",
            LogicalMessage::StreamCommit { .. } => "Stream Commit",
            LogicalMessage::StreamAbort { .. } => "Stream Abort",
        }
    }
}

/// A table's shape as the server describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct RelationMessage {
    /// The table's OID.
    pub id: u32,
    /// Schema name (empty for pg_catalog).
    pub namespace: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RelationColumn {
    /// Part of the replica identity (every column under REPLICA IDENTITY FULL).
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// The columns of one row, in relation order, and the message they were
/// read from (their text is ranges of it: one reference on the receive
/// buffer per tuple instead of one per value).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TupleData(pub Vec<TupleValue>, pub Bytes);

#[derive(Debug, Clone, PartialEq)]
pub enum TupleValue {
    Null,
    /// A TOASTed value that did not change and was not sent.
    UnchangedToast,
    /// The value's text output, owned (tuples built by hand).
    Text(Bytes),
    /// The value's text output: bytes `start..end` of the tuple's message
    /// (what the decoder produces; see [`TupleData::text`]).
    TextAt(u32, u32),
}

impl TupleData {
    /// The text of value `v` of this tuple (`None` for null and unchanged
    /// TOAST).
    pub fn text<'a>(&'a self, v: &'a TupleValue) -> Option<&'a [u8]> {
        match v {
            TupleValue::Text(b) => Some(b),
            TupleValue::TextAt(start, end) => self.1.get(*start as usize..*end as usize),
            TupleValue::Null | TupleValue::UnchangedToast => None,
        }
    }

    /// The text of column `i`.
    pub fn text_at(&self, i: usize) -> Option<&[u8]> {
        self.0.get(i).and_then(|v| self.text(v))
    }
}

/// A malformed message, or a value that does not parse as its type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error("unknown pgoutput message tag {0:?}")]
    UnknownTag(char),
    #[error("pgoutput {message} message truncated while reading {field}")]
    Truncated { message: &'static str, field: &'static str },
    #[error("pgoutput {message} message: invalid {field}: {detail}")]
    Invalid { message: &'static str, field: &'static str, detail: String },
    #[error("pgoutput {message} message has {extra} trailing bytes")]
    TrailingBytes { message: &'static str, extra: usize },
    #[error("invalid {type_name} value {text:?}: {detail}")]
    Value { type_name: &'static str, text: String, detail: &'static str },
    #[error("relation {0} is unknown: no Relation message was received for it")]
    UnknownRelation(u32),
    #[error("relation {relation}: tuple has {got} columns, the Relation message announced {expected}")]
    ColumnCount { relation: String, expected: usize, got: usize },
    #[error("{0} message is not a row change")]
    NotARowChange(&'static str),
}

impl DecodeError {
    /// A value error; keeps at most 200 bytes of the offending text.
    pub(crate) fn value(type_name: &'static str, text: &[u8], detail: &'static str) -> Self {
        let shown = &text[..text.len().min(200)];
        DecodeError::Value { type_name, text: String::from_utf8_lossy(shown).into_owned(), detail }
    }
}

/// Decodes one pgoutput message (one XLogData payload, or one row of
/// `pg_logical_slot_peek_binary_changes`). Column values share `data`'s
/// buffer. Fails on an unknown tag, a truncated or malformed message, or
/// trailing bytes.
pub fn decode(data: Bytes) -> Result<LogicalMessage, DecodeError> {
    decode_framed(data, false)
}

/// Decodes a message of a block of streamed changes (between Stream Start
/// and Stream Stop): as [`decode`], after the (sub)transaction id that
/// protocol 2 puts after the tag of those messages.
pub fn decode_streamed(data: Bytes) -> Result<LogicalMessage, DecodeError> {
    decode_framed(data, true)
}

/// The (sub)transaction id of a message inside a block of streamed changes
/// (Relation, Type, Insert, Update, Delete, Truncate, Message); `None` for
/// any other message (the stream control messages).
pub fn streamed_xid(data: &[u8]) -> Option<u32> {
    match data.first()? {
        &(RELATION_TAG | TYPE_TAG | INSERT_TAG | UPDATE_TAG | DELETE_TAG | TRUNCATE_TAG | MESSAGE_TAG) => {
            Some(u32::from_be_bytes(data.get(1..5)?.try_into().ok()?))
        }
        _ => None,
    }
}

fn decode_framed(data: Bytes, streamed: bool) -> Result<LogicalMessage, DecodeError> {
    let tag = *data.first().ok_or(DecodeError::Empty)?;
    let message = match tag {
        BEGIN_TAG => "Begin",
        COMMIT_TAG => "Commit",
        ORIGIN_TAG => "Origin",
        RELATION_TAG => "Relation",
        TYPE_TAG => "Type",
        INSERT_TAG => "Insert",
        UPDATE_TAG => "Update",
        DELETE_TAG => "Delete",
        TRUNCATE_TAG => "Truncate",
        MESSAGE_TAG => "Message",
        STREAM_START_TAG => "Stream Start",
        STREAM_STOP_TAG => "Stream Stop",
        STREAM_COMMIT_TAG => "Stream Commit",
        STREAM_ABORT_TAG => "Stream Abort",
        other => return Err(DecodeError::UnknownTag(other as char)),
    };
    let mut r = Reader { data, pos: 1, message };
    if streamed {
        match tag {
            STREAM_START_TAG | STREAM_STOP_TAG | STREAM_COMMIT_TAG | STREAM_ABORT_TAG | BEGIN_TAG | COMMIT_TAG | ORIGIN_TAG => {
                return Err(r.invalid("tag", "not a message of a block of streamed changes".into()))
            }
            _ => r.u32("xid")?,
        };
    }
    let msg = match tag {
        STREAM_START_TAG => LogicalMessage::StreamStart { xid: r.u32("xid")?, first_segment: r.u8("first segment")? == 1 },
        STREAM_STOP_TAG => LogicalMessage::StreamStop,
        STREAM_COMMIT_TAG => LogicalMessage::StreamCommit {
            xid: r.u32("xid")?,
            flags: r.u8("flags")?,
            commit_lsn: Lsn(r.u64("commit_lsn")?),
            end_lsn: Lsn(r.u64("end_lsn")?),
            commit_ts: r.timestamp("commit_ts")?,
        },
        STREAM_ABORT_TAG => {
            let msg = LogicalMessage::StreamAbort { xid: r.u32("xid")?, subxid: r.u32("subxid")? };
            // protocol 4 with `streaming 'parallel'` adds the abort's LSN and
            // time; not asked for, and not needed
            r.pos = r.data.len();
            msg
        }
        BEGIN_TAG => {
            LogicalMessage::Begin { final_lsn: Lsn(r.u64("final_lsn")?), commit_ts: r.timestamp("commit_ts")?, xid: r.u32("xid")? }
        }
        COMMIT_TAG => LogicalMessage::Commit {
            flags: r.u8("flags")?,
            commit_lsn: Lsn(r.u64("commit_lsn")?),
            end_lsn: Lsn(r.u64("end_lsn")?),
            commit_ts: r.timestamp("commit_ts")?,
        },
        ORIGIN_TAG => LogicalMessage::Origin { lsn: Lsn(r.u64("lsn")?), name: r.cstr("name")? },
        RELATION_TAG => {
            let id = r.u32("relation id")?;
            let namespace = r.cstr("namespace")?;
            let name = r.cstr("relation name")?;
            let replica_identity = r.u8("replica identity")?;
            let n = r.count("column count")?;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let flags = r.u8("column flags")?;
                columns.push(RelationColumn {
                    is_key: flags & 1 != 0,
                    name: r.cstr("column name")?,
                    type_oid: r.u32("column type")?,
                    type_modifier: r.i32("column type modifier")?,
                });
            }
            LogicalMessage::Relation(RelationMessage { id, namespace, name, replica_identity, columns })
        }
        TYPE_TAG => LogicalMessage::Type { id: r.u32("type id")?, namespace: r.cstr("namespace")?, name: r.cstr("type name")? },
        INSERT_TAG => {
            let relation_id = r.u32("relation id")?;
            r.expect(b'N', "new tuple marker")?;
            LogicalMessage::Insert { relation_id, new: r.tuple()? }
        }
        UPDATE_TAG => {
            let relation_id = r.u32("relation id")?;
            let (old, old_is_key) = match r.u8("tuple marker")? {
                b'K' => (Some(r.tuple()?), true),
                b'O' => (Some(r.tuple()?), false),
                b'N' => (None, false),
                other => return Err(r.invalid("tuple marker", format!("expected 'K', 'O' or 'N', got {:?}", other as char))),
            };
            if old.is_some() {
                r.expect(b'N', "new tuple marker")?;
            }
            LogicalMessage::Update { relation_id, old, old_is_key, new: r.tuple()? }
        }
        DELETE_TAG => {
            let relation_id = r.u32("relation id")?;
            let old_is_key = match r.u8("tuple marker")? {
                b'K' => true,
                b'O' => false,
                other => return Err(r.invalid("tuple marker", format!("expected 'K' or 'O', got {:?}", other as char))),
            };
            LogicalMessage::Delete { relation_id, old: r.tuple()?, old_is_key }
        }
        TRUNCATE_TAG => {
            let n = r.u32("relation count")? as usize;
            let options = r.u8("options")?;
            if n > r.remaining() / 4 {
                return Err(r.truncated("relation ids"));
            }
            let mut relation_ids = Vec::with_capacity(n);
            for _ in 0..n {
                relation_ids.push(r.u32("relation id")?);
            }
            LogicalMessage::Truncate { options, relation_ids }
        }
        _ => {
            let transactional = r.u8("flags")? & 1 != 0;
            let lsn = Lsn(r.u64("lsn")?);
            let prefix = r.cstr("prefix")?;
            let len = r.u32("content length")? as usize;
            LogicalMessage::Message { transactional, lsn, prefix, content: r.bytes(len, "content")? }
        }
    };
    if r.remaining() > 0 {
        return Err(DecodeError::TrailingBytes { message, extra: r.remaining() });
    }
    Ok(msg)
}

/// A cursor over one message; every read names the field it reads so that
/// errors say what was malformed.
struct Reader {
    data: Bytes,
    pos: usize,
    message: &'static str,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn truncated(&self, field: &'static str) -> DecodeError {
        DecodeError::Truncated { message: self.message, field }
    }

    fn invalid(&self, field: &'static str, detail: String) -> DecodeError {
        DecodeError::Invalid { message: self.message, field, detail }
    }

    fn take<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let end = self.pos + N;
        let bytes: [u8; N] = self.data.get(self.pos..end).and_then(|s| s.try_into().ok()).ok_or_else(|| self.truncated(field))?;
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take::<1>(field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.take(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take(field)?))
    }

    /// A PostgreSQL timestamp (micros since 2000-01-01) as micros since 1970.
    fn timestamp(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        let pg = i64::from_be_bytes(self.take(field)?);
        Ok(pg.saturating_add(PG_EPOCH_OFFSET_MICROS))
    }

    /// An Int16 count that must not be negative.
    fn count(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let n = i16::from_be_bytes(self.take(field)?);
        usize::try_from(n).map_err(|_| self.invalid(field, format!("negative count {n}")))
    }

    fn expect(&mut self, want: u8, field: &'static str) -> Result<(), DecodeError> {
        let got = self.u8(field)?;
        if got != want {
            return Err(self.invalid(field, format!("expected {:?}, got {:?}", want as char, got as char)));
        }
        Ok(())
    }

    fn cstr(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let rest = &self.data[self.pos..];
        let nul = rest.iter().position(|&b| b == 0).ok_or_else(|| self.truncated(field))?;
        let s = std::str::from_utf8(&rest[..nul]).map_err(|e| self.invalid(field, e.to_string()))?.to_owned();
        self.pos += nul + 1;
        Ok(s)
    }

    fn bytes(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if len > self.remaining() {
            return Err(self.truncated(field));
        }
        let b = self.data.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(b)
    }

    fn tuple(&mut self) -> Result<TupleData, DecodeError> {
        let n = self.count("tuple column count")?;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            values.push(match self.u8("column kind")? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let len = self.u32("column length")? as usize;
                    if len > self.remaining() {
                        return Err(self.truncated("column value"));
                    }
                    let start = self.pos;
                    self.pos += len;
                    // A message is at most 1 GB: offsets fit in u32.
                    TupleValue::TextAt(start as u32, (start + len) as u32)
                }
                b'b' => return Err(self.invalid("column kind", "binary column values are not supported (use the text format)".into())),
                other => return Err(self.invalid("column kind", format!("expected 'n', 'u' or 't', got {:?}", other as char))),
            });
        }
        Ok(TupleData(values, self.data.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_hand_built_origin() {
        let mut b = vec![b'O'];
        b.extend_from_slice(&0x0000_0001_0000_0010u64.to_be_bytes());
        b.extend_from_slice(b"node_a\0");
        let msg = decode(Bytes::from(b)).unwrap();
        assert_eq!(msg, LogicalMessage::Origin { lsn: Lsn(0x1_0000_0010), name: "node_a".into() });
    }

    #[test]
    fn reports_truncation_and_trailing_bytes() {
        let err = decode(Bytes::from_static(b"B\0\0")).unwrap_err();
        assert_eq!(err, DecodeError::Truncated { message: "Begin", field: "final_lsn" });
        let mut b = vec![b'Y', 0, 0, 0, 1];
        b.extend_from_slice(b"s\0t\0x");
        assert_eq!(decode(Bytes::from(b)).unwrap_err(), DecodeError::TrailingBytes { message: "Type", extra: 1 });
        assert_eq!(decode(Bytes::from_static(b"Z")).unwrap_err(), DecodeError::UnknownTag('Z'));
        assert_eq!(decode(Bytes::new()).unwrap_err(), DecodeError::Empty);
    }

    #[test]
    fn decodes_the_stream_messages() {
        let start = decode(Bytes::from_static(&[b'S', 0, 0, 2, 0, 1])).unwrap();
        assert_eq!(start, LogicalMessage::StreamStart { xid: 512, first_segment: true });
        assert_eq!(decode(Bytes::from_static(b"E")).unwrap(), LogicalMessage::StreamStop);
        let mut c = vec![b'c', 0, 0, 2, 0, 0];
        c.extend_from_slice(&0x10u64.to_be_bytes());
        c.extend_from_slice(&0x20u64.to_be_bytes());
        c.extend_from_slice(&0i64.to_be_bytes());
        let commit = decode(Bytes::from(c)).unwrap();
        let want = LogicalMessage::StreamCommit {
            xid: 512,
            flags: 0,
            commit_lsn: Lsn(0x10),
            end_lsn: Lsn(0x20),
            commit_ts: PG_EPOCH_OFFSET_MICROS,
        };
        assert_eq!(commit, want);
        let abort = decode(Bytes::from_static(&[b'A', 0, 0, 2, 0, 0, 0, 2, 1])).unwrap();
        assert_eq!(abort, LogicalMessage::StreamAbort { xid: 512, subxid: 513 });
        // protocol 4's parallel form: abort LSN and time after the ids
        let mut parallel = vec![b'A', 0, 0, 2, 0, 0, 0, 2, 1];
        parallel.extend_from_slice(&[0; 16]);
        assert_eq!(decode(Bytes::from(parallel)).unwrap(), LogicalMessage::StreamAbort { xid: 512, subxid: 513 });
    }

    #[test]
    fn streamed_changes_carry_their_xid_after_the_tag() {
        let mut b = vec![b'I', 0, 0, 2, 1, 0, 0, 0, 7, b'N', 0, 1, b't', 0, 0, 0, 2];
        b.extend_from_slice(b"42");
        assert_eq!(streamed_xid(&b), Some(513));
        match decode_streamed(Bytes::from(b.clone())).unwrap() {
            LogicalMessage::Insert { relation_id: 7, new } => assert_eq!(new.text_at(0), Some(&b"42"[..])),
            other => panic!("{other:?}"),
        }
        // read without the xid, the same bytes are another (invalid) message
        assert!(decode(Bytes::from(b)).is_err());
        assert_eq!(streamed_xid(b"E"), None);
        assert!(decode_streamed(Bytes::from_static(b"E")).is_err());
    }

    #[test]
    fn tuple_values_are_slices_of_the_message() {
        let mut b = vec![b'I', 0, 0, 0, 7, b'N', 0, 3, b't', 0, 0, 0, 2];
        b.extend_from_slice(b"42");
        b.extend_from_slice(b"nu");
        let data = Bytes::from(b);
        let base = data.as_ptr() as usize;
        match decode(data).unwrap() {
            LogicalMessage::Insert { relation_id: 7, new } => {
                assert_eq!(new.0.len(), 3);
                let t = new.text_at(0).unwrap();
                assert_eq!(t, b"42");
                assert_eq!(t.as_ptr() as usize, base + 13);
                assert_eq!(new.0[1], TupleValue::Null);
                assert_eq!(new.0[2], TupleValue::UnchangedToast);
            }
            other => panic!("{other:?}"),
        }
    }
}
