//! What a search index (OpenSearch or Elasticsearch) holds, read back.

use std::collections::BTreeMap;

use serde_json::Value as Json;

/// Every document of `index` at `url` after a refresh: id -> source.
/// Panics when the search fails.
pub async fn documents(url: &str, index: &str) -> BTreeMap<String, Json> {
    let h = reqwest::Client::new();
    h.post(format!("{url}/{index}/_refresh")).send().await.unwrap();
    let body: Json = h
        .post(format!("{url}/{index}/_search"))
        .json(&serde_json::json!({"size": 10000, "query": {"match_all": {}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["hits"]["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("search of {index} failed: {body}"))
        .iter()
        .map(|h| (h["_id"].as_str().unwrap().to_string(), h["_source"].clone()))
        .collect()
}
