//! Reads of what the MongoDB sink wrote (FerretDB in the tests), compared
//! with `to_jsonb` rows exactly.

use mongodb::bson::{Bson, Document};
use serde_json::Value as Json;

/// Whether a stored value equals a `to_jsonb` value exactly: numbers by
/// exact decimal value, whether stored as numbers or (no decimal128 on
/// FerretDB) as their text.
pub fn same(want: &Json, got: &Bson) -> bool {
    use pgfanout_sdk::exact::same_number;
    match (want, got) {
        (Json::Null, Bson::Null) => true,
        (Json::Bool(a), Bson::Boolean(b)) => a == b,
        (Json::String(a), Bson::String(b)) => a == b,
        (Json::Number(n), Bson::String(s)) => same_number(&n.to_string(), s),
        (Json::Number(n), Bson::Int32(i)) => same_number(&n.to_string(), &i.to_string()),
        (Json::Number(n), Bson::Int64(i)) => same_number(&n.to_string(), &i.to_string()),
        (Json::Number(n), Bson::Double(f)) => same_number(&n.to_string(), &format!("{f:e}")),
        (Json::Number(n), Bson::Decimal128(d)) => same_number(&n.to_string(), &d.to_string()),
        (Json::Array(a), Bson::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y)),
        (Json::Object(a), Bson::Document(b)) => a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|g| same(v, g))),
        _ => false,
    }
}

/// Every document of `database.collection`, by `_id` (relaxed extended
/// JSON text), `_id` and the version field left out.
pub async fn collection_documents(uri: &str, database: &str, collection: &str) -> std::collections::BTreeMap<String, Document> {
    use futures_util::TryStreamExt;
    let client = mongodb::Client::with_uri_str(uri).await.unwrap();
    let docs: Vec<Document> = client
        .database(database)
        .collection::<Document>(collection)
        .find(mongodb::bson::doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    client.shutdown().await;
    docs.into_iter()
        .map(|mut d| {
            let id = d.remove("_id").unwrap();
            d.remove("_pgfanout_version");
            (id.into_relaxed_extjson().to_string(), d)
        })
        .collect()
}
