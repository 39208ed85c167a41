//! Batches of COPY rows whose values share one buffer.
//!
//! A reader stages up to a batch of rows: their fields, escapes undone, are
//! appended to one buffer (the arena) and remembered as ranges of it. When
//! the batch is handed over, every text, number, json and date value of its
//! rows becomes a slice of the arena: one allocation and one UTF-8 check per
//! batch instead of one of each per value (a profile of the snapshot had
//! per-value `malloc`/`free` and `from_utf8` at about a tenth of its time).
//!
//! A queued row keeps its whole arena alive. Rows leave the queues in
//! roughly the order they came, so that is normally a few arenas, but a
//! filter that drops most rows in front of a slow sink would let each kept
//! row hold an arena full of dropped ones. The bytes of arenas alive are
//! counted in [`Pinned`]; a batch that would take them past its budget
//! copies its values instead (one allocation each, the same values), so
//! arenas never hold more than the budget, however the rows are kept.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use pgfanout_sdk::{Change, Lsn, Row, Text, Value};

use super::copy_text::for_each_field;
use super::plan::RelationPlan;
use crate::error::SourceError;
use crate::pgoutput::DecodeError;
use crate::types::TypeDecoder;

/// Arena bytes queued records may keep alive before batches copy instead.
pub const DEFAULT_BUDGET: usize = 8 << 20;

/// The size every arena is allocated with, and a batch is handed over once
/// its arena is nearly full (within [`ARENA_SLACK`]), whatever its rows. One
/// size for all arenas lets the allocator reuse a freed one for the next
/// instead of keeping freed buffers of assorted sizes around; a larger row
/// grows its arena.
pub const ARENA_BYTES: usize = 32 << 10;

/// Room left for one more typical row before an arena is full.
pub const ARENA_SLACK: usize = 4 << 10;

/// The bytes of snapshot arenas alive, and how many may be.
#[derive(Debug)]
pub struct Pinned {
    live: AtomicUsize,
    budget: usize,
}

impl Pinned {
    pub fn new(budget: usize) -> Arc<Self> {
        Arc::new(Pinned { live: AtomicUsize::new(0), budget })
    }

    /// Bytes of arenas that records still hold.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Counts `n` more bytes alive if that stays within the budget.
    fn try_take(&self, n: usize) -> bool {
        let before = self.live.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > self.budget {
            self.live.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        true
    }
}

/// The owner of an arena's bytes: gives them back to [`Pinned`] when the
/// last value sliced from them is dropped.
struct Arena {
    buf: Vec<u8>,
    pinned: Arc<Pinned>,
}

impl AsRef<[u8]> for Arena {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        self.pinned.live.fetch_sub(self.buf.capacity(), Ordering::AcqRel);
    }
}

/// Names a reader's rows carry: copies of the relation's, made per piece,
/// so the reference counts the readers bump are not one cache line shared
/// by every reader thread.
pub struct Names {
    schema: Arc<str>,
    table: Arc<str>,
    columns: Vec<Arc<str>>,
}

impl Names {
    pub fn new(rel: &RelationPlan) -> Self {
        Names {
            schema: Arc::from(&*rel.schema),
            table: Arc::from(&*rel.table),
            columns: rel.columns.iter().map(|c| Arc::from(&*c.name)).collect(),
        }
    }
}

/// A field: a range of the arena, or `None` for NULL.
type Field = Option<Range<usize>>;

/// Rows read but not handed over yet.
#[derive(Default)]
pub struct Staged {
    buf: Vec<u8>,
    fields: Vec<Field>,
    rows: usize,
}

impl Staged {
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// True when the arena cannot take a typical row more.
    pub fn is_full(&self) -> bool {
        self.buf.len() + ARENA_SLACK >= ARENA_BYTES
    }

    /// Stages one COPY text line (without its `\n`) of `rel`.
    pub fn push_line(&mut self, rel: &RelationPlan, line: &[u8], scratch: &mut Vec<u8>) -> Result<(), SourceError> {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(ARENA_BYTES);
        }
        let first = self.fields.len();
        // A table without columns prints empty lines; any other empty line
        // is one empty field.
        if !rel.columns.is_empty() || !line.is_empty() {
            let (buf, fields) = (&mut self.buf, &mut self.fields);
            let mut columns = rel.columns.iter();
            for_each_field(line, scratch, |field| {
                let col = columns.next().ok_or_else(|| column_count_error(rel))?;
                let Some(text) = field else {
                    fields.push(None);
                    return Ok(());
                };
                let start = buf.len();
                // Timestamps are staged in their JSON form, so that they
                // too are slices of the arena.
                col.decoder.render_into(text, buf).map_err(|e| decode_error(rel, &col.name, e))?;
                fields.push(Some(start..buf.len()));
                Ok::<_, SourceError>(())
            })?;
        }
        if self.fields.len() - first != rel.columns.len() {
            return Err(column_count_error(rel));
        }
        self.rows += 1;
        Ok(())
    }

    /// Appends the staged rows to `out` as read changes and empties the
    /// stage. Values share the arena when `pinned` has room for it, else
    /// each is a copy.
    pub fn finish(
        &mut self,
        rel: &RelationPlan,
        names: &Names,
        version: Lsn,
        pinned: &Arc<Pinned>,
        out: &mut Vec<Change>,
    ) -> Result<(), SourceError> {
        if self.rows == 0 {
            return Ok(());
        }
        let cap = self.buf.capacity();
        if cap > 0 && pinned.try_take(cap) {
            let next = Vec::with_capacity(ARENA_BYTES);
            let arena = Bytes::from_owner(Arena { buf: std::mem::replace(&mut self.buf, next), pinned: pinned.clone() });
            match Text::try_from(arena.clone()) {
                // One UTF-8 check for the batch; a field that does not start
                // and end on character boundaries is invalid on its own and
                // goes through the per-value path (which replaces it).
                Ok(text) => self.build(rel, names, version, out, |decoder, range| match text.get(range.clone()) {
                    Some(sub) => decoder.decode_text(text.slice_ref(sub)),
                    None => decoder.decode_in(&arena[range], &arena),
                }),
                Err(_) => self.build(rel, names, version, out, |decoder, range| decoder.decode_in(&arena[range], &arena)),
            }?;
        } else {
            let buf = std::mem::take(&mut self.buf);
            let built = self.build(rel, names, version, out, |decoder, range| decoder.decode(&buf[range]));
            // A buffer a large row grew is not kept for the small ones.
            self.buf = if buf.capacity() > 4 * ARENA_BYTES { Vec::new() } else { buf };
            self.buf.clear();
            built?;
        }
        self.fields.clear();
        self.rows = 0;
        Ok(())
    }

    fn build(
        &self,
        rel: &RelationPlan,
        names: &Names,
        version: Lsn,
        out: &mut Vec<Change>,
        mut decode: impl FnMut(&TypeDecoder, Range<usize>) -> Result<Value, DecodeError>,
    ) -> Result<(), SourceError> {
        let width = rel.columns.len();
        let has_key = rel.has_key();
        out.reserve(self.rows);
        for r in 0..self.rows {
            let fields = &self.fields[r * width..(r + 1) * width];
            let mut row = Vec::with_capacity(width);
            let mut key = has_key.then(|| Vec::with_capacity(1));
            for ((col, name), field) in rel.columns.iter().zip(&names.columns).zip(fields) {
                // What `render_into` staged is the value's string already.
                let decoder = if col.decoder.renders() { &RENDERED } else { &*col.decoder };
                let value = match field {
                    None => Value::Null,
                    Some(range) => decode(decoder, range.clone()).map_err(|e| decode_error(rel, &col.name, e))?,
                };
                if col.is_key {
                    if let Some(k) = key.as_mut() {
                        k.push((name.clone(), value.clone()));
                    }
                }
                row.push((name.clone(), value));
            }
            out.push(super::read_change(names.schema.clone(), names.table.clone(), key.map(Row), Row(row), version));
        }
        Ok(())
    }
}

/// How a staged value that [`TypeDecoder::render_into`] wrote is read back.
static RENDERED: TypeDecoder = TypeDecoder::Text;

pub(super) fn decode_error(rel: &RelationPlan, column: &str, e: DecodeError) -> SourceError {
    SourceError::permanent(format!("snapshot of {}.{}, column {column}: {e}", rel.schema, rel.table))
}

pub fn column_count_error(rel: &RelationPlan) -> SourceError {
    SourceError::permanent(format!(
        "snapshot of {}.{}: a COPY row does not have the table's {} columns",
        rel.schema,
        rel.table,
        rel.columns.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relation::ColumnInfo;
    use pgfanout_sdk::Op;

    fn rel() -> RelationPlan {
        let col = |name: &str, is_key: bool, decoder: TypeDecoder| ColumnInfo {
            name: Arc::from(name),
            type_oid: 0,
            is_key,
            decoder: Arc::new(decoder),
        };
        RelationPlan {
            given: 0,
            schema: Arc::from("public"),
            table: Arc::from("t"),
            columns: vec![
                col("id", true, TypeDecoder::Number),
                col("a", false, TypeDecoder::Text),
                col("b", false, TypeDecoder::Text),
                col("at", false, TypeDecoder::Timestamptz),
                col("j", false, TypeDecoder::Json),
            ],
            select: String::new(),
            blocks: 0,
            estimate: 0,
        }
    }

    const LINES: [&[u8]; 4] = [
        b"1\t\xc3\xa9 tab\\there\t\\N\t2024-01-02 03:04:05.5+00\t {\"k\": [1, 2]} ",
        // Each field alone is not UTF-8, the two together are: the batch's
        // single check passes, and each value is replaced as on its own.
        b"2\t\xc3\t\xa9\t-infinity\tnull",
        b"3\t\t\\\\N\t\\N\t\\N",
        // Longer than `Text` keeps inline: slices of the arena.
        b"4\tthis value is longer than thirty-eight bytes\t\\N\t\\N\t  {\"long\": \"enough to be shared, not copied\"}  ",
    ];

    /// Stages `lines` and hands them over with `pinned`.
    fn changes(lines: &[&[u8]], pinned: &Arc<Pinned>) -> Vec<Change> {
        let rel = rel();
        let mut staged = Staged::default();
        let mut scratch = Vec::new();
        for line in lines {
            staged.push_line(&rel, line, &mut scratch).unwrap();
        }
        let mut out = Vec::new();
        staged.finish(&rel, &Names::new(&rel), Lsn(7), pinned, &mut out).unwrap();
        assert_eq!(staged.rows(), 0);
        out
    }

    fn json(c: &Change) -> String {
        let mut out = Vec::new();
        c.after.as_ref().unwrap().write_json(&mut out);
        out.push(b'|');
        c.key.as_ref().unwrap().write_json(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn shared_and_copied_values_are_the_same_and_right() {
        let shared = Pinned::new(usize::MAX);
        let got = changes(&LINES, &shared);
        assert!(shared.live() > 0, "the values hold the arena");
        let copied_budget = Pinned::new(0);
        let copied = changes(&LINES, &copied_budget);
        assert_eq!(copied_budget.live(), 0);
        assert_eq!(got, copied);
        let rows: Vec<String> = got.iter().map(json).collect();
        assert_eq!(
            rows,
            [
                r#"{"id":1,"a":"é tab\there","b":null,"at":"2024-01-02T03:04:05.5+00:00","j":{"k": [1, 2]}}|{"id":1}"#,
                r#"{"id":2,"a":"�","b":"�","at":"-infinity","j":null}|{"id":2}"#,
                r#"{"id":3,"a":"","b":"\\N","at":null,"j":null}|{"id":3}"#,
                r#"{"id":4,"a":"this value is longer than thirty-eight bytes","b":null,"at":null,"j":{"long": "enough to be shared, not copied"}}|{"id":4}"#,
            ]
        );
        assert!(got.iter().all(|c| c.op == Op::Read && c.lsn == Lsn(7) && c.commit_lsn == Lsn(7)));
        drop(got);
        assert_eq!(shared.live(), 0, "dropping the rows gives the arena back");
    }

    #[test]
    fn a_row_with_the_wrong_number_of_fields_is_an_error() {
        let rel = rel();
        let mut staged = Staged::default();
        let mut scratch = Vec::new();
        for line in [&b"1\ta\tb\t\\N"[..], b"1\ta\tb\t\\N\t1\textra"] {
            let err = staged.push_line(&rel, line, &mut scratch).unwrap_err();
            assert!(err.to_string().contains("does not have the table's 5 columns"), "{err}");
        }
    }
}
