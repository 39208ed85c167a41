//! In-progress transactions streamed by the server (pgoutput protocol 2+,
//! `streaming 'on'`), kept until they commit.
//!
//! When a transaction's changes outgrow `logical_decoding_work_mem`, a
//! server asked for streaming sends them while the transaction is still
//! running, in blocks between Stream Start and Stream Stop, interleaved
//! with other transactions, instead of spilling them to its own disk and
//! sending them after the commit. The transaction may still abort, and so
//! may any of its subtransactions. Sinks must only ever see committed
//! changes, whole transactions in commit order: so each streamed
//! transaction's messages are kept here, as received, until its Stream
//! Commit hands them back in order ([`Streamed::take`]) to be read like a
//! transaction that came in one piece; a Stream Abort drops them.
//!
//! **Memory is bounded.** All open transactions together keep at most
//! `memory` bytes of messages in memory; past that, the largest one's
//! messages move to a temporary file of its own (deleted when dropped).
//! Nothing here needs to survive a crash: the server streams a transaction
//! again from its start to a new connection as long as it has not
//! committed before the confirmed position.
//!
//! **Subtransactions.** Every streamed change carries the id of the
//! (sub)transaction that made it. The changes of an aborted subtransaction
//! are the last ones streamed for its transaction (a subtransaction runs
//! with its children, nested, before its parent does anything else), so its
//! abort cuts the transaction back to the subtransaction's first change,
//! as PostgreSQL's own apply worker does.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use bytes::{Buf, Bytes, BytesMut};
use pgfanout_sdk::Lsn;

use crate::error::SourceError;
use crate::pgoutput::streamed_xid;

/// Frame header: the message's LSN (u64) and its length (u32), big-endian.
const HEADER: usize = 12;

/// The streamed transactions that have not ended.
pub struct Streamed {
    txns: HashMap<u32, Txn>,
    /// The transaction of the block being received (Stream Start..Stop).
    open_block: Option<u32>,
    /// Most bytes of frames kept in memory, all transactions together.
    memory: usize,
    /// Bytes of frames in memory now.
    in_memory: usize,
    /// Where spill files are made (the system's temporary directory if None).
    spill_dir: Option<PathBuf>,
    /// Bytes written to spill files since the start (for metrics).
    spilled_total: u64,
}

/// One streamed transaction: its frames, the oldest in `file` (when it
/// spilled), the newest in `memory`.
#[derive(Default)]
struct Txn {
    file: Option<BufWriter<File>>,
    /// Frames in the file and its length.
    file_frames: u64,
    file_len: u64,
    memory: Vec<u8>,
    memory_frames: u64,
    /// Each subtransaction's first frame: (subxid, frame number, file
    /// offset if that frame is in the file).
    subxacts: Vec<(u32, u64, Option<u64>)>,
}

impl Txn {
    fn frames(&self) -> u64 {
        self.file_frames + self.memory_frames
    }
}

/// What [`Streamed::abort`] dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aborted {
    /// The whole transaction, with this many changes.
    Transaction(u64),
    /// A subtransaction's changes, this many.
    Subtransaction(u64),
    /// Nothing was kept for it (no change of it was streamed).
    Unknown,
}

impl Streamed {
    /// Keeps at most `memory` bytes of messages in memory; spill files go to
    /// `spill_dir` (default: the system's temporary directory).
    pub fn new(memory: usize, spill_dir: Option<PathBuf>) -> Self {
        Streamed { txns: HashMap::new(), open_block: None, memory, in_memory: 0, spill_dir, spilled_total: 0 }
    }

    /// True between Stream Start and Stream Stop: every message is then a
    /// change of the streamed transaction, for [`push`](Self::push).
    pub fn in_block(&self) -> bool {
        self.open_block.is_some()
    }

    /// Stream Start: a block of `xid`'s changes follows. On its first
    /// segment a transaction starts afresh (it is being streamed again, to
    /// a new connection).
    pub fn start(&mut self, xid: u32, first_segment: bool) {
        if first_segment {
            self.forget(xid);
        }
        self.txns.entry(xid).or_default();
        self.open_block = Some(xid);
    }

    /// Stream Stop.
    pub fn stop(&mut self) {
        self.open_block = None;
    }

    /// Keeps one message of the current block, received at `lsn`.
    pub fn push(&mut self, lsn: Lsn, data: &[u8]) -> Result<(), SourceError> {
        let xid = self
            .open_block
            .ok_or_else(|| SourceError::transient(format!("a streamed change at {lsn} outside a Stream Start/Stop block")))?;
        let len = u32::try_from(data.len())
            .map_err(|_| SourceError::permanent(format!("a streamed message of {} bytes at {lsn}", data.len())))?;
        let txn = self.txns.entry(xid).or_default();
        if let Some(sub) = streamed_xid(data).filter(|&sub| sub != xid) {
            // Most changes belong to the latest subtransaction: checked first,
            // so a transaction of many savepoints does not scan them all per
            // change.
            let latest = txn.subxacts.last().map(|&(s, _, _)| s);
            if latest != Some(sub) && !txn.subxacts.iter().any(|&(s, _, _)| s == sub) {
                txn.subxacts.push((sub, txn.frames(), None));
            }
        }
        if HEADER + data.len() > self.memory / 4 {
            // A large message (one big value) goes straight to the file,
            // after what is in memory: no second copy of it in memory.
            self.spill(xid)?;
            let txn = self.txns.get_mut(&xid).expect("kept above");
            let file = txn.file.as_mut().expect("made by spill");
            file.write_all(&lsn.0.to_be_bytes())
                .and_then(|_| file.write_all(&len.to_be_bytes()))
                .and_then(|_| file.write_all(data))
                .map_err(|e| spill_error(&self.spill_dir, e))?;
            txn.file_len += (HEADER + data.len()) as u64;
            txn.file_frames += 1;
            self.spilled_total += (HEADER + data.len()) as u64;
            return Ok(());
        }
        txn.memory.extend_from_slice(&lsn.0.to_be_bytes());
        txn.memory.extend_from_slice(&len.to_be_bytes());
        txn.memory.extend_from_slice(data);
        txn.memory_frames += 1;
        self.in_memory += HEADER + data.len();
        while self.in_memory > self.memory {
            if !self.spill_largest()? {
                break;
            }
        }
        Ok(())
    }

    /// Moves the in-memory frames of the transaction with the most of them
    /// to its file. False when nothing is in memory.
    fn spill_largest(&mut self) -> Result<bool, SourceError> {
        let Some((&xid, _)) = self.txns.iter().filter(|(_, t)| !t.memory.is_empty()).max_by_key(|(_, t)| t.memory.len()) else {
            return Ok(false);
        };
        self.spill(xid)?;
        Ok(true)
    }

    /// Moves transaction `xid`'s in-memory frames (if any) to its file,
    /// which is created if need be.
    fn spill(&mut self, xid: u32) -> Result<(), SourceError> {
        let dir = self.spill_dir.clone();
        let Some(txn) = self.txns.get_mut(&xid) else { return Ok(()) };
        if txn.file.is_none() {
            let file = match &dir {
                Some(d) => tempfile::tempfile_in(d),
                None => tempfile::tempfile(),
            }
            .map_err(|e| spill_error(&dir, e))?;
            txn.file = Some(BufWriter::with_capacity(1 << 20, file));
        }
        let first_in_memory = txn.file_frames;
        let file_len = txn.file_len;
        // subtransactions starting in the frames that move: their offsets
        let mut offset = 0usize;
        let mut frame = first_in_memory;
        for sub in txn.subxacts.iter_mut().filter(|s| s.2.is_none()) {
            while frame < sub.1 {
                offset += HEADER + frame_len(&txn.memory[offset..]);
                frame += 1;
            }
            sub.2 = Some(file_len + offset as u64);
        }
        let file = txn.file.as_mut().expect("made above");
        file.write_all(&txn.memory).map_err(|e| spill_error(&dir, e))?;
        let moved = txn.memory.len();
        txn.file_len += moved as u64;
        txn.file_frames += txn.memory_frames;
        txn.memory_frames = 0;
        txn.memory = Vec::new();
        self.in_memory -= moved;
        self.spilled_total += moved as u64;
        Ok(())
    }

    /// Stream Abort: drops transaction `xid` (`subxid == xid`) or the
    /// changes of its subtransaction `subxid` (and of those after it).
    pub fn abort(&mut self, xid: u32, subxid: u32) -> Result<Aborted, SourceError> {
        if subxid == xid {
            return Ok(match self.forget(xid) {
                Some(n) => Aborted::Transaction(n),
                None => Aborted::Unknown,
            });
        }
        let Some(txn) = self.txns.get_mut(&xid) else { return Ok(Aborted::Unknown) };
        let Some(i) = txn.subxacts.iter().position(|&(s, _, _)| s == subxid) else { return Ok(Aborted::Unknown) };
        let (_, first, offset) = txn.subxacts[i];
        txn.subxacts.truncate(i);
        let dropped = txn.frames() - first;
        if first >= txn.file_frames {
            // in memory: cut the buffer at that frame
            let mut at = 0usize;
            for _ in txn.file_frames..first {
                at += HEADER + frame_len(&txn.memory[at..]);
            }
            self.in_memory -= txn.memory.len() - at;
            txn.memory.truncate(at);
            txn.memory_frames = first - txn.file_frames;
        } else {
            let offset = offset.expect("a subtransaction whose first frame is in the file has its offset");
            self.in_memory -= txn.memory.len();
            txn.memory = Vec::new();
            txn.memory_frames = 0;
            let file = txn.file.as_mut().expect("frames in the file");
            file.flush().map_err(|e| spill_error(&self.spill_dir, e))?;
            let f = file.get_mut();
            f.set_len(offset).map_err(|e| spill_error(&self.spill_dir, e))?;
            f.seek(SeekFrom::Start(offset)).map_err(|e| spill_error(&self.spill_dir, e))?;
            txn.file_len = offset;
            txn.file_frames = first;
        }
        Ok(Aborted::Subtransaction(dropped))
    }

    /// Stream Commit: the transaction's messages, in the order they were
    /// streamed (none if nothing of it was streamed).
    pub fn take(&mut self, xid: u32) -> Result<Replay, SourceError> {
        let Some(mut txn) = self.txns.remove(&xid) else {
            return Ok(Replay { file: None, file_left: 0, read: BytesMut::new(), memory: Bytes::new(), pos: 0 });
        };
        self.in_memory -= txn.memory.len();
        let file = match txn.file.take() {
            Some(w) => {
                let mut f = w.into_inner().map_err(|e| spill_error(&self.spill_dir, e.into_error()))?;
                f.seek(SeekFrom::Start(0)).map_err(|e| spill_error(&self.spill_dir, e))?;
                Some(f)
            }
            None => None,
        };
        Ok(Replay { file, file_left: txn.file_frames, read: BytesMut::new(), memory: Bytes::from(txn.memory), pos: 0 })
    }

    /// Drops every transaction (the connection ended: a new one streams
    /// them again from their start).
    pub fn clear(&mut self) {
        self.txns.clear();
        self.open_block = None;
        self.in_memory = 0;
    }

    /// Transactions streamed and not ended.
    pub fn open(&self) -> usize {
        self.txns.len()
    }

    /// Bytes of messages held in memory now.
    pub fn memory_bytes(&self) -> usize {
        self.in_memory
    }

    /// Bytes written to spill files since the start.
    pub fn spilled_bytes(&self) -> u64 {
        self.spilled_total
    }

    /// Forgets `xid`; its change count if it was kept.
    fn forget(&mut self, xid: u32) -> Option<u64> {
        let txn = self.txns.remove(&xid)?;
        self.in_memory -= txn.memory.len();
        if self.open_block == Some(xid) {
            self.open_block = None;
        }
        Some(txn.frames())
    }
}

/// A committed streamed transaction's messages, oldest first.
pub struct Replay {
    file: Option<File>,
    /// Frames in the file not returned yet.
    file_left: u64,
    /// Read from the file and not returned yet: frames are split off it
    /// (no allocation per message; the messages share the read chunks).
    read: BytesMut,
    memory: Bytes,
    pos: usize,
}

/// Bytes read from a spill file at once.
const READ_CHUNK: usize = 1 << 20;

impl Replay {
    /// The next message and the LSN it was received at; `None` after the
    /// last.
    pub fn next_message(&mut self) -> Result<Option<(Lsn, Bytes)>, SourceError> {
        if self.file_left > 0 {
            self.fill(HEADER)?;
            let (lsn, len) = parse_header(&self.read[..HEADER]);
            self.fill(HEADER + len)?;
            let mut frame = self.read.split_to(HEADER + len);
            frame.advance(HEADER);
            self.file_left -= 1;
            return Ok(Some((lsn, frame.freeze())));
        }
        if self.pos >= self.memory.len() {
            return Ok(None);
        }
        let (lsn, len) = parse_header(&self.memory[self.pos..self.pos + HEADER]);
        let start = self.pos + HEADER;
        self.pos = start + len;
        Ok(Some((lsn, self.memory.slice(start..start + len))))
    }

    /// Reads until at least `want` bytes are buffered: in chunks, or all at
    /// once for a frame larger than a chunk (one big value: read straight
    /// into a buffer of its size).
    fn fill(&mut self, want: usize) -> Result<(), SourceError> {
        let f = self.file.as_mut().expect("frames in the file");
        while self.read.len() < want {
            let missing = want - self.read.len();
            if self.read.capacity() - self.read.len() < missing {
                // A fresh buffer for what is left and what comes: the
                // messages handed out keep the old one alive as they need.
                let mut fresh = BytesMut::with_capacity(missing.max(READ_CHUNK) + self.read.len());
                fresh.extend_from_slice(&self.read);
                self.read = fresh;
            }
            let start = self.read.len();
            let room = self.read.capacity() - start;
            self.read.resize(start + room, 0);
            let n = f
                .read(&mut self.read[start..])
                .map_err(|e| SourceError::permanent(format!("reading a streamed transaction's spill file: {e}")))?;
            self.read.truncate(start + n);
            if n == 0 {
                return Err(SourceError::permanent("a streamed transaction's spill file ended early"));
            }
        }
        Ok(())
    }
}

fn parse_header(h: &[u8]) -> (Lsn, usize) {
    let lsn = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
    let len = u32::from_be_bytes(h[8..12].try_into().expect("4 bytes"));
    (Lsn(lsn), len as usize)
}

/// The length of the frame starting at `buf`.
fn frame_len(buf: &[u8]) -> usize {
    parse_header(&buf[..HEADER]).1
}

fn spill_error(dir: &Option<PathBuf>, e: std::io::Error) -> SourceError {
    let dir = dir.as_ref().map(|d| d.display().to_string()).unwrap_or_else(|| std::env::temp_dir().display().to_string());
    SourceError::transient(format!(
        "cannot spill a streamed transaction to a file in {dir}: {e} (free space there, or set source.postgres.streaming_spill_dir)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Insert of (sub)transaction `xid` whose only value is `v`.
    fn insert(xid: u32, v: &str) -> Vec<u8> {
        let mut b = vec![b'I'];
        b.extend_from_slice(&xid.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 7, b'N', 0, 1, b't']);
        b.extend_from_slice(&(v.len() as u32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
        b
    }

    /// One block of `xid`'s changes: (subxid, value) inserts.
    fn block(s: &mut Streamed, xid: u32, first: bool, changes: &[(u32, &str)]) {
        s.start(xid, first);
        for (i, (sub, v)) in changes.iter().enumerate() {
            s.push(Lsn(i as u64), &insert(*sub, v)).unwrap();
        }
        s.stop();
    }

    fn values(mut r: Replay) -> Vec<String> {
        let mut out = Vec::new();
        while let Some((_, data)) = r.next_message().unwrap() {
            match crate::pgoutput::decode_streamed(data).unwrap() {
                crate::pgoutput::LogicalMessage::Insert { new, .. } => {
                    out.push(String::from_utf8(new.text_at(0).unwrap().to_vec()).unwrap())
                }
                other => panic!("{other:?}"),
            }
        }
        out
    }

    /// The same history under every memory limit (all in memory, spilled
    /// at every message, in between): the same changes come back.
    #[test]
    fn committed_changes_come_back_in_order_minus_aborted_subtransactions() {
        for memory in [usize::MAX, 0, 64, 120, 200] {
            let mut s = Streamed::new(memory, None);
            block(&mut s, 100, true, &[(100, "a"), (101, "sub-kept")]);
            // another transaction's block in between
            block(&mut s, 200, true, &[(200, "other")]);
            block(&mut s, 100, false, &[(102, "sub-aborted"), (103, "child-of-aborted")]);
            assert_eq!(s.abort(100, 102).unwrap(), Aborted::Subtransaction(2), "memory {memory}");
            block(&mut s, 100, false, &[(100, "b")]);
            assert_eq!(s.abort(200, 200).unwrap(), Aborted::Transaction(1));
            assert_eq!(values(s.take(100).unwrap()), ["a", "sub-kept", "b"], "memory {memory}");
            assert_eq!(s.open(), 0);
            assert_eq!(s.memory_bytes(), 0);
            assert!(values(s.take(300).unwrap()).is_empty(), "a transaction never streamed replays nothing");
        }
    }

    /// Frames read back from the file cross the read chunks' boundaries,
    /// and one larger than a chunk comes back whole.
    #[test]
    fn spilled_frames_of_every_size_come_back_whole() {
        let mut s = Streamed::new(0, None);
        s.start(9, true);
        let sizes: Vec<usize> = (0..3000).map(|i| (i * 7919) % 1500).chain([3 << 20, 5, READ_CHUNK - 40]).collect();
        let texts: Vec<String> = sizes.iter().enumerate().map(|(i, &n)| format!("{i}:{}", "y".repeat(n))).collect();
        for t in &texts {
            s.push(Lsn(1), &insert(9, t)).unwrap();
        }
        s.stop();
        assert_eq!(values(s.take(9).unwrap()), texts);
    }

    #[test]
    fn memory_stays_under_the_limit_and_the_rest_spills() {
        let mut s = Streamed::new(1000, None);
        s.start(7, true);
        let big = "x".repeat(300);
        for _ in 0..100 {
            s.push(Lsn(1), &insert(7, &big)).unwrap();
            assert!(s.memory_bytes() <= 1000);
        }
        assert!(s.spilled_bytes() > 25_000);
        s.stop();
        assert_eq!(values(s.take(7).unwrap()).len(), 100);
    }

    #[test]
    fn a_first_segment_starts_the_transaction_again() {
        let mut s = Streamed::new(0, None);
        block(&mut s, 9, true, &[(9, "first try")]);
        s.clear();
        block(&mut s, 9, true, &[(9, "again")]);
        block(&mut s, 9, true, &[(9, "and again")]);
        assert_eq!(values(s.take(9).unwrap()), ["and again"]);
    }
}
