//! The relation cache and turning row messages into [`Change`]s.
//!
//! pgoutput describes a table once (Relation message) and then sends rows as
//! bare tuples that refer to it by OID; the shape is sent again after any
//! change (ALTER TABLE), before the first row that uses it. [`RelationCache`]
//! keeps the latest shape of each table with one resolved [`TypeDecoder`] per
//! column, so decoding a row is a loop over its values with no lookups.
//!
//! [`build_change`] applies docs/design.md section 3: unchanged TOAST columns are
//! absent from `after` and listed, `before` is only what the server sent, and
//! `key` is the replica identity.

use rustc_hash::FxHashMap;
use std::sync::Arc;

use pgfanout_sdk::{Change, Lsn, Op, Row, Value};

use crate::catalog::TypeRegistry;
use crate::error::SourceError;
use crate::pgoutput::{DecodeError, LogicalMessage, RelationMessage, TupleData, TupleValue};
use crate::types::TypeDecoder;

/// A table's current shape, with each column's decoder resolved.
#[derive(Debug, Clone)]
pub struct RelationInfo {
    pub id: u32,
    pub schema: Arc<str>,
    pub table: Arc<str>,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<ColumnInfo>,
}

impl RelationInfo {
    /// `schema.table`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    fn has_key(&self) -> bool {
        self.columns.iter().any(|c| c.is_key)
    }
}

#[derive(Debug, Clone)]
pub struct ColumnInfo {
    /// Shared with every [`Row`] built for this relation.
    pub name: Arc<str>,
    pub type_oid: u32,
    /// Part of the change key: the replica identity columns, except under
    /// REPLICA IDENTITY FULL where it is the primary key when there is one
    /// (every column otherwise).
    pub is_key: bool,
    pub decoder: Arc<TypeDecoder>,
}

/// Relation OID -> latest shape.
#[derive(Debug, Default)]
pub struct RelationCache {
    relations: FxHashMap<u32, Arc<RelationInfo>>,
}

impl RelationCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves the column types (builtins without I/O, others through
    /// `types` and `client`) and replaces any previous shape of the relation.
    /// Under REPLICA IDENTITY FULL, where the server marks every column as
    /// identity, the key becomes the primary key (one catalog query) when the
    /// table has one, so that sinks keep a stable key per row.
    pub async fn on_relation(
        &mut self,
        msg: RelationMessage,
        types: &mut TypeRegistry,
        client: &tokio_postgres::Client,
    ) -> Result<Arc<RelationInfo>, SourceError> {
        let primary_key = if msg.replica_identity == b'f' { primary_key_columns(client, msg.id).await? } else { Vec::new() };
        let mut columns = Vec::with_capacity(msg.columns.len());
        for col in msg.columns {
            let decoder = match types.resolve_cached(col.type_oid) {
                Some(d) => d,
                None => types.resolve(client, col.type_oid).await?,
            };
            let is_key = if primary_key.is_empty() { col.is_key } else { primary_key.contains(&col.name) };
            columns.push(ColumnInfo { name: Arc::from(col.name), type_oid: col.type_oid, is_key, decoder });
        }
        let schema: Arc<str> = if msg.namespace.is_empty() { Arc::from("pg_catalog") } else { Arc::from(msg.namespace) };
        let info =
            Arc::new(RelationInfo { id: msg.id, schema, table: Arc::from(msg.name), replica_identity: msg.replica_identity, columns });
        self.relations.insert(info.id, info.clone());
        Ok(info)
    }

    /// Inserts an already resolved shape (tests, snapshots).
    pub fn insert(&mut self, info: RelationInfo) -> Arc<RelationInfo> {
        let info = Arc::new(info);
        self.relations.insert(info.id, info.clone());
        info
    }

    pub fn get(&self, id: u32) -> Option<&Arc<RelationInfo>> {
        self.relations.get(&id)
    }
}

async fn primary_key_columns(client: &tokio_postgres::Client, relid: u32) -> Result<Vec<String>, SourceError> {
    const SQL: &str = "SELECT a.attname::text FROM pg_catalog.pg_index i \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
         WHERE i.indrelid = $1 AND i.indisprimary";
    let rows = client.query(SQL, &[&relid]).await?;
    rows.iter().map(|r| r.try_get::<_, String>(0).map_err(SourceError::from)).collect()
}

/// Transaction metadata from Begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxMeta {
    pub commit_lsn: Lsn,
    pub xid: u32,
    pub commit_ts: i64,
}

impl TxMeta {
    /// From a Begin message; `None` for any other message.
    pub fn from_begin(msg: &LogicalMessage) -> Option<TxMeta> {
        match *msg {
            LogicalMessage::Begin { final_lsn, commit_ts, xid } => Some(TxMeta { commit_lsn: final_lsn, xid, commit_ts }),
            _ => None,
        }
    }
}

/// Which columns of a tuple to keep.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    All,
    KeyOnly,
}

/// Whether decoded values may share the received message's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Values {
    /// Text, number, json and date values are slices of the message: no
    /// copy, but the value keeps the whole receive buffer it came in alive.
    Shared,
    /// Every value owns its bytes.
    Owned,
}

/// Decodes a tuple into a row. UnchangedToast columns are left out (and
/// named in `toast` when given); key columns are also copied into `key` when
/// given.
fn decode_row(
    rel: &RelationInfo,
    tuple: &TupleData,
    part: Part,
    mut toast: Option<&mut Vec<Arc<str>>>,
    mut key: Option<&mut Row>,
    values: Values,
) -> Result<Row, DecodeError> {
    if tuple.0.len() != rel.columns.len() {
        return Err(DecodeError::ColumnCount { relation: rel.qualified_name(), expected: rel.columns.len(), got: tuple.0.len() });
    }
    let mut row = Row::with_capacity(rel.columns.len());
    for (col, value) in rel.columns.iter().zip(&tuple.0) {
        if part == Part::KeyOnly && !col.is_key {
            continue;
        }
        let v = match value {
            TupleValue::Null => Value::Null,
            TupleValue::Text(_) | TupleValue::TextAt(..) => {
                // The buffer a long value may slice: the hand-built value's
                // own, or the message's.
                let (text, buf) = match value {
                    TupleValue::Text(own) => (&own[..], own),
                    _ => (
                        tuple.text(value).ok_or_else(|| DecodeError::ColumnCount {
                            relation: rel.qualified_name(),
                            expected: rel.columns.len(),
                            got: tuple.0.len(),
                        })?,
                        &tuple.1,
                    ),
                };
                match values {
                    Values::Shared => col.decoder.decode_in(text, buf)?,
                    Values::Owned => col.decoder.decode(text)?,
                }
            }
            TupleValue::UnchangedToast => {
                if let Some(t) = toast.as_deref_mut() {
                    t.push(col.name.clone());
                }
                continue;
            }
        };
        if col.is_key {
            if let Some(k) = key.as_deref_mut() {
                k.push(col.name.clone(), v.clone());
            }
        }
        row.push(col.name.clone(), v);
    }
    Ok(row)
}

/// Builds the [`Change`] for an Insert, Update or Delete message of `rel`.
/// `lsn` is the message's own WAL LSN; the position is
/// (`tx.commit_lsn`, `ordinal`).
///
/// - `after`: the new tuple; unchanged TOAST columns are absent from it and
///   listed in `unchanged_toast`.
/// - `before`: the old tuple when sent: the whole old row for 'O' (REPLICA
///   IDENTITY FULL), only the key columns for 'K'.
/// - `key`: the key columns of `after` (insert, update) or of the old tuple
///   (delete); the whole row when the relation has no key columns.
pub fn build_change(rel: &RelationInfo, msg: &LogicalMessage, lsn: Lsn, tx: &TxMeta, ordinal: u32) -> Result<Change, DecodeError> {
    build_change_with(rel, msg, lsn, tx, ordinal, Values::Shared)
}

/// [`build_change`], choosing whether values share the message's buffer.
pub fn build_change_with(
    rel: &RelationInfo,
    msg: &LogicalMessage,
    lsn: Lsn,
    tx: &TxMeta,
    ordinal: u32,
    values: Values,
) -> Result<Change, DecodeError> {
    let (op, old, old_is_key, new) = row_parts(msg)?;
    let has_key = rel.has_key();
    let mut unchanged_toast = Vec::new();
    let mut key = has_key.then(|| Row::with_capacity(1));
    let after = match new {
        Some(t) => Some(decode_row(rel, t, Part::All, Some(&mut unchanged_toast), key.as_mut(), values)?),
        None => None,
    };
    let before = match old {
        Some(t) => {
            let part = if old_is_key && has_key { Part::KeyOnly } else { Part::All };
            let key_from_old = if after.is_none() { key.as_mut() } else { None };
            Some(decode_row(rel, t, part, None, key_from_old, values)?)
        }
        None => None,
    };
    if !has_key {
        key = after.as_ref().or(before.as_ref()).cloned();
    }
    Ok(Change { key, before, after, unchanged_toast, ..empty_change(op, rel, lsn, tx, ordinal) })
}

/// A change of `rel` in transaction `tx` with no key, rows or unchanged
/// TOAST columns (no allocation): the base the builders fill in.
fn empty_change(op: Op, rel: &RelationInfo, lsn: Lsn, tx: &TxMeta, ordinal: u32) -> Change {
    Change {
        op,
        schema: rel.schema.clone(),
        table: rel.table.clone(),
        key: None,
        before: None,
        after: None,
        unchanged_toast: Vec::new(),
        lsn,
        commit_lsn: tx.commit_lsn,
        ordinal,
        xid: Some(tx.xid),
        commit_ts: Some(tx.commit_ts),
    }
}

type RowParts<'a> = (Op, Option<&'a TupleData>, bool, Option<&'a TupleData>);

/// (op, old tuple, old is key only, new tuple) of a row message.
fn row_parts(msg: &LogicalMessage) -> Result<RowParts<'_>, DecodeError> {
    Ok(match msg {
        LogicalMessage::Insert { new, .. } => (Op::Insert, None, false, Some(new)),
        LogicalMessage::Update { old, old_is_key, new, .. } => (Op::Update, old.as_ref(), *old_is_key, Some(new)),
        LogicalMessage::Delete { old, old_is_key, .. } => (Op::Delete, Some(old), *old_is_key, None),
        other => return Err(DecodeError::NotARowChange(other.kind())),
    })
}

/// The change as PostgreSQL sent it, undecoded: every value is its text
/// output as a string (NULL stays null; unchanged TOAST columns are listed),
/// for the dead-letter entry of a row [`build_change`] could not decode.
/// Columns beyond the relation's are named `$1`, `$2`, ... by position.
pub fn raw_change(rel: &RelationInfo, msg: &LogicalMessage, lsn: Lsn, tx: &TxMeta, ordinal: u32) -> Change {
    let mut unchanged_toast = Vec::new();
    let mut raw = |t: &TupleData, toast: bool| {
        let mut row = Row::with_capacity(t.0.len());
        for (i, v) in t.0.iter().enumerate() {
            let name = rel.columns.get(i).map(|c| c.name.clone()).unwrap_or_else(|| Arc::from(format!("${}", i + 1)));
            match v {
                TupleValue::Null => row.push(name, Value::Null),
                TupleValue::Text(_) | TupleValue::TextAt(..) => {
                    let b = t.text(v).unwrap_or_default();
                    row.push(name, Value::String(String::from_utf8_lossy(b).into_owned().into()))
                }
                TupleValue::UnchangedToast if toast => unchanged_toast.push(name),
                TupleValue::UnchangedToast => {}
            }
        }
        row
    };
    let (op, old, new) = match row_parts(msg) {
        Ok((op, old, _, new)) => (op, old, new),
        Err(_) => (Op::Insert, None, None),
    };
    let before = old.map(|t| raw(t, false));
    let after = new.map(|t| raw(t, true));
    Change { before, after, unchanged_toast, ..empty_change(op, rel, lsn, tx, ordinal) }
}

/// One truncate [`Change`] per relation of a Truncate message, in order, with
/// ordinals `first_ordinal`, `first_ordinal + 1`, ... Fails on a relation id
/// with no Relation message.
pub fn build_truncates(
    cache: &RelationCache,
    relation_ids: &[u32],
    lsn: Lsn,
    tx: &TxMeta,
    first_ordinal: u32,
) -> Result<Vec<Change>, DecodeError> {
    relation_ids
        .iter()
        .zip(first_ordinal..)
        .map(|(&id, ordinal)| {
            let rel = cache.get(id).ok_or(DecodeError::UnknownRelation(id))?;
            Ok(empty_change(Op::Truncate, rel, lsn, tx, ordinal))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::TupleValue::{Null, Text, UnchangedToast};
    use bytes::Bytes;

    fn rel(identity: u8, keys: &[bool]) -> RelationInfo {
        let names = ["id", "name", "bio"];
        let decoders = [TypeDecoder::Number, TypeDecoder::Text, TypeDecoder::Text];
        RelationInfo {
            id: 1,
            schema: "public".into(),
            table: "t".into(),
            replica_identity: identity,
            columns: names
                .iter()
                .zip(decoders)
                .zip(keys)
                .map(|((n, d), &k)| ColumnInfo { name: Arc::from(*n), type_oid: 0, is_key: k, decoder: Arc::new(d) })
                .collect(),
        }
    }

    fn t(s: &'static str) -> TupleValue {
        Text(Bytes::from_static(s.as_bytes()))
    }

    const TX: TxMeta = TxMeta { commit_lsn: Lsn(100), xid: 7, commit_ts: 1 };

    #[test]
    fn update_with_toast_and_key_change() {
        let r = rel(b'd', &[true, false, false]);
        let msg = LogicalMessage::Update {
            relation_id: 1,
            old: Some(TupleData(vec![t("1"), Null, Null], Bytes::new())),
            old_is_key: true,
            new: TupleData(vec![t("2"), t("x"), UnchangedToast], Bytes::new()),
        };
        let c = build_change(&r, &msg, Lsn(50), &TX, 3).unwrap();
        assert_eq!(
            c.to_json_string(),
            r#"{"op":"update","schema":"public","table":"t","key":{"id":2},"before":{"id":1},"after":{"id":2,"name":"x"},"unchanged_toast":["bio"],"lsn":"0/32","commit_lsn":"0/64","xid":7,"commit_ts":"1970-01-01T00:00:00.000001Z"}"#
        );
    }

    #[test]
    fn delete_without_key_columns_keys_on_the_whole_row() {
        let r = rel(b'f', &[false, false, false]);
        let msg = LogicalMessage::Delete { relation_id: 1, old: TupleData(vec![t("1"), t("a"), Null], Bytes::new()), old_is_key: false };
        let c = build_change(&r, &msg, Lsn(50), &TX, 0).unwrap();
        assert_eq!(c.key, c.before);
        assert_eq!(c.before.as_ref().unwrap().len(), 3);
        assert!(c.after.is_none());
    }

    #[test]
    fn wrong_column_count_is_an_error() {
        let r = rel(b'd', &[true, false, false]);
        let msg = LogicalMessage::Insert { relation_id: 1, new: TupleData(vec![t("1")], Bytes::new()) };
        assert!(matches!(build_change(&r, &msg, Lsn(1), &TX, 0), Err(DecodeError::ColumnCount { expected: 3, got: 1, .. })));
    }
}
