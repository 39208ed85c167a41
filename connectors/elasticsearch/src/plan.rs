//! Action planning: what each change does to the index, as `_bulk` actions
//! ([`Action`]), before anything is encoded or sent.
//!
//! Every action carries the change's commit LSN as its external version
//! (see the crate docs). A whole row becomes one `Index` of its JSON,
//! written once from the record (no map in between: this is the hot path).
//! A row with unchanged TOAST columns is completed from `before` under
//! REPLICA IDENTITY FULL; otherwise it becomes a `Partial` action that
//! [`merge`](crate::merge) resolves against the stored document. A key
//! change deletes the old document first.

use pgfanout_sdk::{Change, Op, Rejected, SinkRecord};
use serde_json::{Map, Value as Json};

use crate::config::{DeleteMode, TruncateMode};
use crate::error::EsError;
use crate::route::{DocRef, Route};

/// One `_bulk` action of a record.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    /// Index the whole document (JSON object bytes).
    Index {
        doc: DocRef,
        version: i64,
        source: Vec<u8>,
        pipeline: Option<String>,
    },
    Delete {
        doc: DocRef,
        version: i64,
    },
    /// Merge `fields` into the stored document (unchanged TOAST columns, a
    /// soft delete); resolved into an `Index` before sending.
    /// `moved_from`: the document's old place when the key changed (its
    /// stored content is the base when the new place is empty).
    Partial {
        doc: DocRef,
        version: i64,
        fields: Map<String, Json>,
        pipeline: Option<String>,
        missing_ok: bool,
        moved_from: Option<DocRef>,
    },
}

impl Action {
    pub(crate) fn doc(&self) -> &DocRef {
        match self {
            Action::Index { doc, .. } | Action::Delete { doc, .. } | Action::Partial { doc, .. } => doc,
        }
    }

    pub(crate) fn into_doc(self) -> DocRef {
        match self {
            Action::Index { doc, .. } | Action::Delete { doc, .. } | Action::Partial { doc, .. } => doc,
        }
    }
}

/// A planned record: its actions, or a truncate of an index; tagged with
/// the record's index in its batch.
pub(crate) enum Planned {
    Actions(usize, Vec<Action>),
    Truncate(usize, String),
}

impl Planned {
    /// Whether an action needs the stored document (read-merge-write).
    pub(crate) fn has_partial(&self) -> bool {
        matches!(self, Planned::Actions(_, a) if a.iter().any(|a| matches!(a, Action::Partial { .. })))
    }
}

/// Turns each record of a batch into actions, tagged with its route (or
/// a rejection). Records with nothing to do are left out.
pub(crate) fn plan_batch(routes: &[Route], batch: &[SinkRecord], rejected: &mut Vec<Rejected>) -> Vec<(Planned, usize)> {
    let mut out = Vec::with_capacity(batch.len());
    for (i, record) in batch.iter().enumerate() {
        let Some(route) = routes.get(record.route) else {
            rejected.push(Rejected { index: i, error: EsError::NoRoute(record.route).to_string() });
            continue;
        };
        match plan_change(route, &record.change) {
            Ok(Some(Planned::Actions(_, a))) if a.is_empty() => {}
            Ok(Some(Planned::Actions(_, a))) => out.push((Planned::Actions(i, a), record.route)),
            Ok(Some(Planned::Truncate(_, index))) => out.push((Planned::Truncate(i, index), record.route)),
            Ok(None) => {}
            Err(e) => rejected.push(Rejected { index: i, error: e.to_string() }),
        }
    }
    out
}

/// One change's actions (tagged record 0), `None` when it does nothing
/// (a TRUNCATE ignored, an insert without a row). Err: the record is
/// refused with the reason.
pub(crate) fn plan_change(route: &Route, change: &Change) -> Result<Option<Planned>, EsError> {
    let version = change.position().commit_version();
    match change.op {
        Op::Truncate => Ok((route.truncate == TruncateMode::DeleteByQuery)
            .then(|| route.truncated_index(change))
            .transpose()?
            .map(|i| Planned::Truncate(0, i))),
        Op::Delete => {
            let doc = route.doc_ref(change, false)?;
            let action = match route.delete {
                DeleteMode::Delete => Action::Delete { doc, version },
                DeleteMode::Soft => {
                    let mut fields = change.row().map(row_object).transpose()?.unwrap_or_default();
                    fields.insert(route.soft_field.clone(), Json::Bool(true));
                    Action::Partial { doc, version, fields, pipeline: route.pipeline.clone(), missing_ok: true, moved_from: None }
                }
            };
            Ok(Some(Planned::Actions(0, vec![action])))
        }
        Op::Insert | Op::Update | Op::Read | Op::Message => {
            let Some(after) = &change.after else { return Ok(None) };
            let doc = route.doc_ref(change, false)?;
            let mut actions = Vec::with_capacity(2);
            // A key change moves the document: the old one goes.
            let mut moved_from = None;
            if change.op == Op::Update && change.before.is_some() {
                let old = route.doc_ref(change, true)?;
                if old != doc {
                    actions.push(Action::Delete { doc: old.clone(), version });
                    moved_from = Some(old);
                }
            }
            // The common case, a whole row: its JSON is the document, written
            // once (no map in between).
            if change.unchanged_toast.is_empty() {
                let mut source = Vec::with_capacity(256);
                after.write_json(&mut source);
                if route.delete == DeleteMode::Soft {
                    add_field(&mut source, &route.soft_field, "false");
                }
                actions.push(Action::Index { doc, version, source, pipeline: route.pipeline.clone() });
                return Ok(Some(Planned::Actions(0, actions)));
            }
            let mut fields = row_object(after)?;
            let mut missing: Vec<&str> = Vec::new();
            for col in &change.unchanged_toast {
                match change.before.as_ref().and_then(|b| b.get(col)) {
                    // REPLICA IDENTITY FULL: the old row has the value.
                    Some(v) => {
                        let value = serde_json::from_str(&v.to_json_string())
                            .map_err(|source| EsError::ColumnNotJson { column: col.to_string(), source })?;
                        fields.insert(col.to_string(), value);
                    }
                    None => missing.push(col),
                }
            }
            if route.delete == DeleteMode::Soft {
                fields.insert(route.soft_field.clone(), Json::Bool(false));
            }
            if missing.is_empty() {
                let source = serde_json::to_vec(&fields).unwrap_or_default();
                actions.push(Action::Index { doc, version, source, pipeline: route.pipeline.clone() });
            } else {
                actions.push(Action::Partial { doc, version, fields, pipeline: route.pipeline.clone(), missing_ok: false, moved_from });
            }
            Ok(Some(Planned::Actions(0, actions)))
        }
    }
}

/// Appends `"name": value` (value: JSON text) to the JSON object in `doc`.
fn add_field(doc: &mut Vec<u8>, name: &str, value: &str) {
    if doc.last() == Some(&b'}') {
        doc.pop();
        if doc.len() > 1 {
            doc.push(b',');
        }
        pgfanout_sdk::json::write_str(doc, name);
        doc.push(b':');
        doc.extend_from_slice(value.as_bytes());
        doc.push(b'}');
    }
}

/// The JSON object of a row. Numbers keep their digits (serde_json's
/// `arbitrary_precision`: no `f64` on the merge path). Err only for a
/// value that is not JSON (never made by the source): the record is
/// refused with the reason, never written as an empty document.
fn row_object(row: &pgfanout_sdk::Row) -> Result<Map<String, Json>, EsError> {
    let mut out = Vec::new();
    row.write_json(&mut out);
    serde_json::from_slice(&out).map_err(EsError::RowNotObject)
}

/// Builders shared by the crate's unit tests.
#[cfg(test)]
pub(crate) mod test_util {
    use std::sync::Arc;

    use pgfanout_sdk::{Change, Lsn, Op, Row, Value};

    use crate::route::{compile, Route};

    pub(crate) fn route(m: serde_json::Value) -> Route {
        compile(&serde_json::from_value(m).unwrap()).unwrap()
    }

    pub(crate) fn change(op: Op, after: Option<Row>, before: Option<Row>, toast: &[&str]) -> Change {
        Change {
            op,
            schema: "public".into(),
            table: "products".into(),
            key: Some(Row(vec![("id".into(), Value::Number("7".into()))])),
            before,
            after,
            unchanged_toast: toast.iter().map(|s| Arc::from(*s)).collect(),
            lsn: Lsn(10),
            commit_lsn: Lsn(1 << 48),
            ordinal: 3,
            xid: Some(1),
            commit_ts: Some(0),
        }
    }

    pub(crate) fn row(cols: &[(&str, &str)]) -> Row {
        Row(cols.iter().map(|(k, v)| (Arc::from(*k), Value::String((*v).into()))).collect())
    }
}

#[cfg(test)]
mod tests {
    use pgfanout_sdk::Op;

    use super::test_util::{change, route, row};
    use super::*;

    #[test]
    fn whole_rows_are_written_as_their_json_and_soft_deletes_add_the_flag() {
        let mut doc = br#"{"id":7}"#.to_vec();
        add_field(&mut doc, "_deleted", "false");
        assert_eq!(doc, br#"{"id":7,"_deleted":false}"#);
        let mut empty = b"{}".to_vec();
        add_field(&mut empty, "d", "true");
        assert_eq!(empty, br#"{"d":true}"#);
        let r = route(serde_json::json!({"index": "p", "delete": "soft"}));
        let c = change(Op::Insert, Some(row(&[("id", "7"), ("name", "x")])), None, &[]);
        let Some(Planned::Actions(_, a)) = plan_change(&r, &c).unwrap() else { panic!() };
        let Action::Index { source, .. } = &a[0] else { panic!() };
        let doc: Json = serde_json::from_slice(source).unwrap();
        assert_eq!(doc["_deleted"], false);
        assert_eq!(doc["name"], "x");
    }

    #[test]
    fn unchanged_toast_is_completed_from_before_or_merged() {
        let r = route(serde_json::json!({"index": "products"}));
        let full_before = change(Op::Update, Some(row(&[("id", "7")])), Some(row(&[("id", "7"), ("bio", "long")])), &["bio"]);
        let Some(Planned::Actions(_, a)) = plan_change(&r, &full_before).unwrap() else { panic!() };
        assert!(matches!(&a[0], Action::Index { source, .. } if String::from_utf8_lossy(source).contains("long")));
        let partial = change(Op::Update, Some(row(&[("id", "7")])), None, &["bio"]);
        let Some(Planned::Actions(_, a)) = plan_change(&r, &partial).unwrap() else { panic!() };
        assert!(matches!(&a[0], Action::Partial { missing_ok: false, .. }));
    }

    #[test]
    fn a_key_change_deletes_the_old_document() {
        let r = route(serde_json::json!({"index": "products", "id": "{id}"}));
        let c = change(Op::Update, Some(row(&[("id", "8")])), Some(row(&[("id", "7")])), &[]);
        let Some(Planned::Actions(_, a)) = plan_change(&r, &c).unwrap() else { panic!() };
        assert!(matches!(&a[0], Action::Delete { doc, .. } if doc.id == "7"));
        assert!(matches!(&a[1], Action::Index { doc, .. } if doc.id == "8"));
    }

    #[test]
    fn a_template_the_row_cannot_fill_refuses_the_record_with_the_field() {
        let r = route(serde_json::json!({"index": "products", "id": "{sku}"}));
        let c = change(Op::Insert, Some(row(&[("id", "7")])), None, &[]);
        let e = plan_change(&r, &c).err().unwrap();
        assert!(!e.is_retriable());
        assert!(e.to_string().starts_with("id: template \"{sku}\""), "{e}");
    }
}
