//! Reading a `_bulk` reply: per item, its status and, when it failed, the
//! engine's error.
//!
//! The common reply, every item applied, is read for its verdict only
//! (`errors` and the number of items) without building the items: parsing
//! and cloning them was a third of the sink's CPU.

use serde_json::Value as Json;

use crate::client::Response;
use crate::error::{EsError, ItemError};

/// `_bulk`, answering only what is read of each item: its status and, when
/// it failed, its error. The full answer (index, id, version, shards, seq_no
/// per item) is ~8 times larger: memory held per request in flight, and
/// work for the search node, which shares the machine.
pub(crate) const BULK_PATH: &str = "/_bulk?filter_path=errors,items.*.status,items.*.error";

/// A `_bulk` answer read for its verdict only: `errors` and the number of
/// items.
#[derive(serde::Deserialize)]
struct BulkSummary {
    #[serde(default = "yes")]
    errors: bool,
    #[serde(default)]
    items: Vec<serde::de::IgnoredAny>,
}

fn yes() -> bool {
    true
}

/// What a `_bulk` reply says of its items.
pub(crate) enum BulkReply {
    /// Every item applied (2xx).
    AllApplied,
    /// Each item's result, in request order.
    Items(Vec<ItemResult>),
}

/// One item of a `_bulk` reply.
pub(crate) struct ItemResult {
    /// Its status (0: the reply had none).
    pub(crate) status: u16,
    result: Json,
}

impl ItemResult {
    pub(crate) fn applied(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The engine's error for this item.
    pub(crate) fn error(&self) -> ItemError {
        ItemError::new(&self.result)
    }
}

/// Reads the reply to a `_bulk` request of `sent` actions (`request`
/// names it in errors). Err (retriable): not JSON, or another number of
/// results than actions sent.
pub(crate) fn read(resp: &Response, sent: usize, request: &'static str, what: &'static str) -> Result<BulkReply, EsError> {
    if let Ok(summary) = serde_json::from_slice::<BulkSummary>(&resp.body) {
        if !summary.errors && summary.items.len() == sent {
            return Ok(BulkReply::AllApplied);
        }
    }
    let mut j = resp.json()?;
    let answers = match j["items"].take() {
        Json::Array(a) => a,
        _ => Vec::new(),
    };
    if answers.len() != sent {
        return Err(EsError::Mismatch { request, got: answers.len(), asked: sent, what });
    }
    Ok(BulkReply::Items(
        answers
            .into_iter()
            .map(|answer| {
                // `{"index":{"status":…,"error":…}}`: the one value is the result.
                let result = match answer {
                    Json::Object(o) => o.into_iter().next().map(|(_, v)| v).unwrap_or(Json::Null),
                    _ => Json::Null,
                };
                let status = result["status"].as_u64().and_then(|s| u16::try_from(s).ok()).unwrap_or(0);
                ItemResult { status, result }
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    fn reply(body: &str) -> Response {
        Response { status: StatusCode::OK, body: bytes::Bytes::from(body.to_string()) }
    }

    #[test]
    fn a_clean_reply_is_read_for_its_verdict_and_a_failed_one_per_item() {
        let ok = reply(r#"{"errors":false,"items":[{"index":{"status":201}},{"delete":{"status":200}}]}"#);
        assert!(matches!(read(&ok, 2, "_bulk", "actions").unwrap(), BulkReply::AllApplied));
        let short = read(&ok, 3, "_bulk", "actions").err().unwrap();
        assert!(short.is_retriable());
        assert_eq!(short.to_string(), "_bulk returned 2 results for 3 actions");
        let mixed = reply(
            r#"{"errors":true,"items":[{"index":{"status":201}},{"index":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"bad"}}},{"index":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"full"}}}]}"#,
        );
        let BulkReply::Items(items) = read(&mixed, 3, "_bulk", "actions").unwrap() else { panic!() };
        assert!(items[0].applied());
        assert_eq!(items[1].status, 400);
        assert_eq!(items[1].error().to_string(), "400 mapper_parsing_exception: bad");
        assert!(!items[1].error().is_retriable() && items[2].error().is_retriable());
        assert!(read(&reply("<html>proxy</html>"), 1, "_bulk", "actions").err().unwrap().is_retriable());
    }
}
