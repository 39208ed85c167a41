//! Unchanged TOAST columns: values PostgreSQL did not send with an update
//! (they did not change and are stored out of line).
//!
//! Where the old row carries them (`REPLICA IDENTITY FULL`) they are copied
//! in before encoding ([`toast_from_before`]); otherwise the script keeps the
//! stored value, which works only when what is written reads nothing but
//! unchanged columns ([`unchanged_value`]).

use std::sync::Arc;

use pgfanout_sdk::{Change, Op, Template, TemplateError};

/// An update whose unchanged TOAST columns the old row carries (with
/// `REPLICA IDENTITY FULL` PostgreSQL sends the old row detoasted), with
/// those columns copied into `after` and no longer listed as unchanged.
/// `None` when there is nothing to complete. Without this a row that moved
/// to a new key (primary key or key-template column changed) would be
/// written there without its large columns: the stored copy is under the
/// old key, which the same change removes.
pub(crate) fn toast_from_before(change: &Change) -> Option<Change> {
    if change.op != Op::Update || change.unchanged_toast.is_empty() {
        return None;
    }
    let before = change.before.as_ref()?;
    if !change.unchanged_toast.iter().any(|c| before.contains(c)) {
        return None;
    }
    let mut filled = change.clone();
    let after = filled.after.as_mut()?;
    filled.unchanged_toast.retain(|col| match before.get(col) {
        Some(v) if !after.contains(col) => {
            after.push(Arc::clone(col), v.clone());
            false
        }
        _ => true,
    });
    Some(filled)
}

/// Why a value template cannot be rendered for `change`, when the reason
/// is unchanged TOAST: `Ok(Some(column))` when every column it reads is
/// unchanged (the stored value is still right), `Err` when it also reads
/// columns that were sent (the new value needs the old text of the unchanged
/// one, which only `REPLICA IDENTITY FULL` sends), `Ok(None)` for any other
/// failure.
pub(crate) fn unchanged_value<'t>(t: &'t Template, e: &TemplateError, change: &Change) -> Result<Option<&'t str>, String> {
    let unchanged = |c: &str| change.unchanged_toast.iter().any(|u| &**u == c);
    match e {
        TemplateError::MissingColumn { column, .. } if unchanged(column) => {
            if let Some(sent) = t.columns().find(|c| !unchanged(c)) {
                return Err(format!(
                    "value: {:?} reads column {column:?}, unchanged (TOAST, not sent), together with column {sent:?}: the new \
                     value cannot be built (REPLICA IDENTITY FULL sends the old row detoasted)",
                    t.source()
                ));
            }
            Ok(t.columns().next())
        }
        _ => Ok(None),
    }
}
