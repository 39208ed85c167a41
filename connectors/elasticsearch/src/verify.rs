//! Reading a route's documents back for `pgfanout verify`.
//!
//! A source row must be the document [`plan_change`] indexes for it as a
//! snapshot row (its `_source`, with `soft_delete_field: false` under soft
//! deletes), read with `_mget`. Extras: every document of the route's
//! indexes (the constant index, or each index a source row mapped to),
//! listed with a scroll, soft-deleted documents excepted. An index shared
//! with another pipeline shows that pipeline's documents as extra.
//!
//! Routes with an ingest `pipeline` are not verified: the pipeline rewrites
//! documents, so what the index must hold cannot be told from the row.

use std::collections::{BTreeSet, HashMap};

use pgfanout_sdk::connector::BoxFuture;
use pgfanout_sdk::verify::{Expected, Verifier};
use pgfanout_sdk::{SinkError, SinkRecord};
use reqwest::Method;
use serde_json::{json, Value as Json};

use crate::client::Client;
use crate::config::{DeleteMode, SearchMapping, SearchSinkConfig};
use crate::error::EsError;
use crate::plan::{plan_change, Action, Planned};
use crate::route::{compile, DocRef, Route};

pub(crate) struct SearchVerifier {
    client: Client,
    route: Route,
    docs: HashMap<String, DocRef>,
    indexes: BTreeSet<String>,
}

/// Whether the route's documents can be verified (the SDK's answer: the
/// reason as text).
pub(crate) fn verifiable(m: &SearchMapping) -> Result<(), String> {
    check_verifiable(m).map_err(|e| e.to_string())
}

fn check_verifiable(m: &SearchMapping) -> Result<(), EsError> {
    match &m.pipeline {
        Some(p) => Err(EsError::Unverifiable(p.clone())),
        None => Ok(()),
    }
}

pub(crate) fn connect(cfg: &SearchSinkConfig, m: &SearchMapping) -> Result<Box<dyn Verifier>, SinkError> {
    check_verifiable(m)?;
    let route = compile(m)?;
    let client = Client::new(cfg)?;
    Ok(Box::new(SearchVerifier { client, route, docs: HashMap::new(), indexes: BTreeSet::new() }))
}

fn id_of(d: &DocRef) -> String {
    match &d.routing {
        None => format!("{}/{}", d.index, d.id),
        Some(r) => format!("{}/{} (routing {r})", d.index, d.id),
    }
}

impl SearchVerifier {
    fn remember(&mut self, d: DocRef) -> String {
        let id = id_of(&d);
        self.docs.entry(id.clone()).or_insert(d);
        id
    }

    /// POSTs `body` to `path`: the answer, `null` for a missing index.
    async fn post(&self, path: &str, body: &Json) -> Result<Json, EsError> {
        let resp = self.client.call(Method::POST, path, Some((serde_json::to_vec(body).unwrap_or_default(), "application/json"))).await?;
        if resp.status.as_u16() == 404 {
            return Ok(Json::Null);
        }
        resp.success(path)?.json()
    }

    /// The documents [`plan_change`] indexes for a row.
    fn expected(&mut self, record: &SinkRecord) -> Result<Vec<Expected>, EsError> {
        let mut out = Vec::new();
        if let Some(Planned::Actions(_, actions)) = plan_change(&self.route, &record.change)? {
            for a in actions {
                if let Action::Index { doc, source, .. } = a {
                    let value: Json = serde_json::from_slice(&source).map_err(EsError::RowNotObject)?;
                    self.indexes.insert(doc.index.to_string());
                    out.push(Expected { id: self.remember(doc), value });
                }
            }
        }
        Ok(out)
    }

    /// Each document's `_source` (`None`: missing), read with `_mget`.
    async fn sources(&self, ids: &[String]) -> Result<Vec<Option<Json>>, EsError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let docs = chunk
                .iter()
                .map(|id| self.docs.get(id).map(DocRef::to_json).ok_or_else(|| EsError::UnknownDocument(id.clone())))
                .collect::<Result<Vec<_>, _>>()?;
            let j = self.post("/_mget", &json!({ "docs": docs })).await?;
            let got = j["docs"].as_array().cloned().unwrap_or_default();
            for k in 0..chunk.len() {
                let g = got.get(k);
                out.push(g.filter(|g| g["found"] == true).map(|g| g["_source"].clone()));
            }
        }
        Ok(out)
    }

    /// Every document of the route's indexes (soft-deleted ones excepted),
    /// listed with a scroll; `None` for a templated index no row named yet.
    async fn all_ids(&mut self) -> Result<Option<Vec<String>>, EsError> {
        if self.route.index.is_constant() {
            self.indexes.insert(self.route.index.source().to_lowercase());
        } else if self.indexes.is_empty() {
            // A templated index: its names are known once rows mapped to them.
            return Ok(None);
        }
        let query = match self.route.delete {
            DeleteMode::Soft => json!({"bool": {"must_not": {"term": {(self.route.soft_field.clone()): true}}}}),
            DeleteMode::Delete => json!({"match_all": {}}),
        };
        let mut ids = Vec::new();
        for index in self.indexes.clone() {
            let body = json!({"size": 1000, "_source": false, "sort": ["_doc"], "query": query});
            let mut page = self.post(&format!("/{index}/_search?scroll=2m"), &body).await?;
            loop {
                let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
                if hits.is_empty() {
                    break;
                }
                for h in hits {
                    let d = DocRef {
                        index: h["_index"].as_str().unwrap_or(&index).into(),
                        id: h["_id"].as_str().unwrap_or_default().to_string(),
                        routing: h["_routing"].as_str().map(str::to_string),
                    };
                    ids.push(self.remember(d));
                }
                let Some(scroll) = page["_scroll_id"].as_str().map(str::to_string) else { break };
                page = self.post("/_search/scroll", &json!({"scroll": "2m", "scroll_id": scroll})).await?;
            }
            if let Some(scroll) = page["_scroll_id"].as_str() {
                let body = serde_json::to_vec(&json!({"scroll_id": scroll})).unwrap_or_default();
                let _ = self.client.send(Method::DELETE, "/_search/scroll", Some((body, "application/json"))).await;
            }
        }
        Ok(Some(ids))
    }

    /// Deletes the documents (`--repair` of extras), refreshed.
    async fn delete(&self, ids: &[String]) -> Result<(), EsError> {
        let mut body = Vec::new();
        for d in ids.iter().filter_map(|id| self.docs.get(id)) {
            body.extend(serde_json::to_vec(&json!({ "delete": d.to_json() })).unwrap_or_default());
            body.push(b'\n');
        }
        if body.is_empty() {
            return Ok(());
        }
        let resp = self.client.call(Method::POST, "/_bulk?refresh=true", Some((body, "application/x-ndjson"))).await?;
        resp.success("_bulk delete")?;
        Ok(())
    }
}

/// The SDK boundary: [`EsError`]s become the verifier's errors here.
impl Verifier for SearchVerifier {
    fn expect(&mut self, record: &SinkRecord) -> Result<Vec<Expected>, String> {
        self.expected(record).map_err(|e| e.to_string())
    }

    fn read<'a>(&'a mut self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<Option<Json>>, SinkError>> {
        Box::pin(async move { Ok(self.sources(ids).await?) })
    }

    fn list(&mut self) -> BoxFuture<'_, Result<Option<Vec<String>>, SinkError>> {
        Box::pin(async move { Ok(self.all_ids().await?) })
    }

    fn remove<'a>(&'a mut self, ids: &'a [String]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move { Ok(self.delete(ids).await?) })
    }
}
