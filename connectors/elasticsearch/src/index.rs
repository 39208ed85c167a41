//! The indexes themselves: created with the mapping's settings when a write
//! first needs them, and emptied for a TRUNCATE (`_delete_by_query`).

use std::collections::HashSet;
use std::sync::Mutex;

use reqwest::Method;
use serde_json::Value as Json;
use tracing::info;

use crate::client::Client;
use crate::error::EsError;

/// The indexes known to exist (asked once per sink).
#[derive(Default)]
pub(crate) struct Indexes {
    ready: Mutex<HashSet<String>>,
}

impl Indexes {
    /// Creates `index` with `create_body` (`{"settings":…,"mappings":…}`)
    /// unless it exists. A refusal (bad settings) is permanent for the
    /// records; one that lost a race with another writer is not a refusal.
    pub(crate) async fn ensure(&self, client: &Client, index: &str, create_body: &Json) -> Result<(), EsError> {
        if self.ready.lock().unwrap_or_else(|e| e.into_inner()).contains(index) {
            return Ok(());
        }
        if !exists(client, index).await? {
            let body = serde_json::to_vec(create_body).unwrap_or_default();
            let resp = client.call(Method::PUT, &format!("/{index}"), Some((body, "application/json"))).await?;
            if resp.status.is_success() {
                info!(index, "search index created");
            } else {
                let reply = resp.error_reply(500);
                let raced = reply.error_type.as_deref() == Some("resource_already_exists_exception")
                    || resp.text(2000).contains("resource_already_exists_exception");
                if !raced {
                    return Err(EsError::CreateIndex { index: index.to_string(), reply });
                }
            }
        }
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).insert(index.to_string());
        Ok(())
    }
}

/// Whether `index` exists.
pub(crate) async fn exists(client: &Client, index: &str) -> Result<bool, EsError> {
    let resp = client.call(Method::HEAD, &format!("/{index}"), None).await?;
    Ok(resp.status.is_success())
}

/// Deletes every document of `index` (a TRUNCATE under `truncate:
/// delete_by_query`); a missing index is already empty. A refusal is
/// permanent (the truncate record is rejected).
pub(crate) async fn truncate(client: &Client, index: &str) -> Result<(), EsError> {
    let body = br#"{"query":{"match_all":{}}}"#.to_vec();
    let resp = client
        .call(Method::POST, &format!("/{index}/_delete_by_query?conflicts=proceed&refresh=true"), Some((body, "application/json")))
        .await?;
    if resp.status.as_u16() == 404 || resp.status.is_success() {
        info!(index, "index emptied for a TRUNCATE");
        Ok(())
    } else {
        Err(EsError::Truncate { index: index.to_string(), reply: resp.error_reply(300) })
    }
}
