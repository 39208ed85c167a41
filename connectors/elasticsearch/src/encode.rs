//! NDJSON encoding: a lane job's actions as `_bulk` lines, encoded once.
//!
//! The documents' JSON lives only in the job's body while the job is
//! queued or in flight, not in a buffer per action and again in each
//! request's body: a request is a slice of the body ([`Encoded::request_body`];
//! a copy only for the items a retry picks out).

use crate::plan::Action;
use crate::route::DocRef;

/// A lane job's actions, encoded as `_bulk` NDJSON in order (each action's
/// metadata line and, for an index, its document line).
#[derive(Default)]
pub(crate) struct Encoded {
    pub(crate) body: bytes::Bytes,
    pub(crate) items: Vec<Item>,
}

/// One action of an [`Encoded`] job.
pub(crate) struct Item {
    /// The batch record it came from (for its rejection).
    pub(crate) record: usize,
    pub(crate) doc: DocRef,
    pub(crate) delete: bool,
    /// Its lines: `body[start..end]`.
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl Item {
    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }
}

impl Encoded {
    /// The `_bulk` body of these items (indexes into `items`, in order): a
    /// slice of the job's body when they lie side by side in it.
    pub(crate) fn request_body(&self, chunk: &[usize]) -> bytes::Bytes {
        let (Some(&first), Some(&last)) = (chunk.first(), chunk.last()) else { return bytes::Bytes::new() };
        if chunk.windows(2).all(|w| self.items[w[1]].start == self.items[w[0]].end) {
            return self.body.slice(self.items[first].start..self.items[last].end);
        }
        let mut body = Vec::with_capacity(chunk.iter().map(|&i| self.items[i].len()).sum());
        for &i in chunk {
            body.extend_from_slice(&self.body[self.items[i].start..self.items[i].end]);
        }
        body.into()
    }
}

/// An [`Encoded`] job being built, its body allocated once at its size.
pub(crate) struct JobBuilder {
    body: Vec<u8>,
    items: Vec<Item>,
}

impl JobBuilder {
    /// A job of about `bytes` (the sum of its actions' [`encoded_len`]).
    pub(crate) fn with_capacity(bytes: usize) -> JobBuilder {
        JobBuilder { body: Vec::with_capacity(bytes), items: Vec::new() }
    }

    /// Appends `action` of batch record `record`.
    pub(crate) fn push(&mut self, record: usize, action: Action) {
        let start = self.body.len();
        encode_action(&mut self.body, &action);
        let delete = matches!(action, Action::Delete { .. });
        self.items.push(Item { record, doc: action.into_doc(), delete, start, end: self.body.len() });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(crate) fn finish(self) -> Encoded {
        Encoded { body: self.body.into(), items: self.items }
    }
}

/// An action's `_bulk` lines: its metadata line and, for an index, its
/// document line.
pub(crate) fn encode_action(body: &mut Vec<u8>, a: &Action) {
    let (meta_kind, doc, version, source, pipeline) = match a {
        Action::Index { doc, version, source, pipeline } => ("index", doc, version, Some(source), pipeline.as_ref()),
        Action::Delete { doc, version } => ("delete", doc, version, None, None),
        Action::Partial { .. } => unreachable!("partial actions are resolved before sending"),
    };
    // {"index":{"_index":…,"_id":…,"version":N,"version_type":"external_gte"[,"routing":…][,"pipeline":…]}}
    body.extend_from_slice(b"{\"");
    body.extend_from_slice(meta_kind.as_bytes());
    body.extend_from_slice(b"\":{\"_index\":");
    pgfanout_sdk::json::write_str(body, &doc.index);
    body.extend_from_slice(b",\"_id\":");
    pgfanout_sdk::json::write_str(body, &doc.id);
    body.extend_from_slice(b",\"version\":");
    // Into the body directly (a Vec never fails a write).
    let _ = std::io::Write::write_fmt(body, format_args!("{version}"));
    body.extend_from_slice(b",\"version_type\":\"external_gte\"");
    if let Some(r) = &doc.routing {
        body.extend_from_slice(b",\"routing\":");
        pgfanout_sdk::json::write_str(body, r);
    }
    if let Some(p) = pipeline {
        body.extend_from_slice(b",\"pipeline\":");
        pgfanout_sdk::json::write_str(body, p);
    }
    body.extend_from_slice(b"}}\n");
    if let Some(s) = source {
        body.extend_from_slice(s);
        body.push(b'\n');
    }
}

/// About the length of [`encode_action`]'s lines (exact unless a name
/// needs escaping), to size a body once.
pub(crate) fn encoded_len(a: &Action) -> usize {
    let (doc, source, pipeline) = match a {
        Action::Index { doc, source, pipeline, .. } => (doc, source.len() + 1, pipeline.as_ref().map_or(0, |p| p.len() + 14)),
        Action::Delete { doc, .. } | Action::Partial { doc, .. } => (doc, 0, 0),
    };
    // `{"delete":{"_index":"","_id":"","version":,"version_type":"external_gte"}}\n` and a 20-digit version.
    let meta = 76 + 20 + doc.index.len() + doc.id.len() + doc.routing.as_ref().map_or(0, |r| r.len() + 13);
    meta + source + pipeline
}

#[cfg(test)]
pub(crate) mod tests {
    use pgfanout_sdk::Op;
    use serde_json::Value as Json;

    use super::*;
    use crate::plan::plan_change;
    use crate::plan::test_util::{change, route, row};
    use crate::plan::Planned;

    #[test]
    fn full_rows_index_with_the_commit_lsn_as_external_version() {
        let r = route(serde_json::json!({"index": "{table}", "pipeline": "p"}));
        let c = change(Op::Update, Some(row(&[("id", "7"), ("name", "x")])), None, &[]);
        let Some(Planned::Actions(_, a)) = plan_change(&r, &c).unwrap() else { panic!() };
        let mut body = Vec::new();
        encode_action(&mut body, &a[0]);
        assert!(body.len() <= encoded_len(&a[0]), "{} > {}", body.len(), encoded_len(&a[0]));
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains(r#""_id":"7""#) && text.contains(r#""version":281474976710656"#) && text.contains("external_gte"), "{text}");
        assert!(text.contains(r#""pipeline":"p""#) && text.contains(r#""_index":"products""#), "{text}");
    }

    /// A job of ten 600-byte documents, ids 0..10.
    pub(crate) fn ten_documents() -> Encoded {
        let r = route(serde_json::json!({"index": "products", "id": "{id}"}));
        let mut job = JobBuilder::with_capacity(0);
        for id in 0..10 {
            let c = change(Op::Insert, Some(row(&[("id", &id.to_string()), ("pad", &"x".repeat(600))])), None, &[]);
            let Some(Planned::Actions(_, a)) = plan_change(&r, &c).unwrap() else { panic!() };
            job.push(id, a.into_iter().next().unwrap());
        }
        job.finish()
    }

    #[test]
    fn a_request_is_a_slice_of_the_jobs_body_when_its_items_lie_side_by_side() {
        let job = ten_documents();
        let both = job.request_body(&[4, 5]);
        assert_eq!(both.as_ptr(), job.body[job.items[4].start..].as_ptr());
        let apart = job.request_body(&[7, 9]);
        let text = String::from_utf8(apart.to_vec()).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(text.contains(r#""_id":"7""#) && text.contains(r#""_id":"9""#) && !text.contains(r#""_id":"8""#), "{text}");
        assert!(text.lines().all(|l| serde_json::from_str::<Json>(l).is_ok()), "{text}");
    }
}
