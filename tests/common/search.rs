//! What a search index (OpenSearch or Elasticsearch) holds, read back.

use std::collections::BTreeMap;

use serde_json::Value as Json;

/// The response of `POST <url>/<index>/_search` with `body`.
pub async fn search(url: &str, index: &str, body: Json) -> Json {
    search_with(&reqwest::Client::new(), url, index, body).await
}

/// [`search`] with a given client (e.g. one that trusts a test CA).
pub async fn search_with(http: &reqwest::Client, url: &str, index: &str, body: Json) -> Json {
    http.post(format!("{url}/{index}/_search")).json(&body).send().await.unwrap().json().await.unwrap()
}

/// Every document of `index` at `url` after a refresh: id -> source.
/// Panics when the search fails.
pub async fn documents(url: &str, index: &str) -> BTreeMap<String, Json> {
    documents_with(&reqwest::Client::new(), url, index).await
}

/// [`documents`] with a given client (e.g. one that trusts a test CA).
pub async fn documents_with(http: &reqwest::Client, url: &str, index: &str) -> BTreeMap<String, Json> {
    http.post(format!("{url}/{index}/_refresh")).send().await.unwrap();
    let body = search_with(http, url, index, serde_json::json!({"size": 10000, "query": {"match_all": {}}})).await;
    body["hits"]["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("search of {index} failed: {body}"))
        .iter()
        .map(|h| (h["_id"].as_str().unwrap().to_string(), h["_source"].clone()))
        .collect()
}
