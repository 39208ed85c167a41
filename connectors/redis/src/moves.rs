//! An update that moved a row: its key or member changed, so the old
//! target is removed at the same version the new one is written.
//!
//! The old target is rendered from the record seen from before the update
//! ([`old_view`]). When the new write keeps unchanged TOAST columns as
//! stored, it must copy them from the old target before that is removed
//! ([`into_move`]), in the old key's lane (see `lanes`).

use std::borrow::Cow;
use std::sync::Arc;

use pgfanout_sdk::{Change, Row, Template};

use crate::encode::ScriptOp;

/// A moved row (`ops` = removal of the old target, then the write of the
/// new one) whose write keeps unchanged TOAST columns as stored: the write
/// becomes its move variant, which copies them from the old target (named
/// by its first two arguments), and goes first, so the removal that follows
/// (same version, a tombstone) runs after the copy, in the same script call.
/// Returns the old key, whose lane the record takes. Whole rows, sets and
/// streams need nothing stored and keep their order.
pub(crate) fn into_move(ops: &mut Vec<ScriptOp<'_>>, (old_key, old_sub): (String, String)) -> Option<String> {
    let code = match (ops[1].code, ops[1].args.len()) {
        ("HP", _) => "HPM",
        ("S", n) if n > 1 => "SM",
        ("HM", _) => "HMM",
        ("V", _) => "VM",
        ("JP", _) => "JPM",
        _ => return None,
    };
    let mut write = ops.pop()?;
    write.code = code;
    write.args.splice(0..0, [Cow::Owned(old_key.clone().into_bytes()), Cow::Owned(old_sub.into_bytes())]);
    ops.insert(0, write);
    Some(old_key)
}

/// The record seen from before the update: `before`, then `key`, then
/// `after` for columns neither has (an update under the default replica
/// identity only sends the old key columns).
pub(crate) fn old_view(change: &Change) -> Change {
    let mut row = Row::with_capacity(change.after.as_ref().map_or(0, Row::len));
    for source in [&change.before, &change.key, &change.after].into_iter().flatten() {
        for (col, v) in source.0.iter() {
            if !row.contains(col) {
                row.push(Arc::clone(col), v.clone());
            }
        }
    }
    Change {
        op: change.op,
        schema: Arc::clone(&change.schema),
        table: Arc::clone(&change.table),
        key: None,
        before: None,
        after: Some(row),
        unchanged_toast: Vec::new(),
        lsn: change.lsn,
        commit_lsn: change.commit_lsn,
        ordinal: change.ordinal,
        xid: change.xid,
        commit_ts: change.commit_ts,
    }
}

/// The target before the update when it differs from the new one
/// (`(key, sub)`), or `None` when the row did not move or its old target
/// cannot be told.
pub(crate) fn old_target(
    key_t: &Template,
    sub_t: Option<&Template>,
    old: Option<&Change>,
    key: &str,
    sub: Option<&str>,
) -> Option<(String, Option<String>)> {
    let old_key = key_t.render(old?).ok()?;
    let old_sub = match sub_t {
        Some(t) => Some(t.render(old?).ok()?),
        None => None,
    };
    if old_key == key && old_sub.as_deref() == sub {
        return None;
    }
    Some((old_key, old_sub))
}
