//! Reading a route's documents back for `pgfanout verify`.
//!
//! A source row must be the document the sink writes for it as a snapshot
//! row (the version field and `_id` left out), compared field by field with
//! exact numbers. Extras: every document of the route's collections (the
//! constant one, or each a source row mapped to). A collection shared with
//! another pipeline shows that pipeline's documents as extra.
//!
//! Arrays an `embed:` route keeps in a document (their elements carry
//! [`ELEMENT_KEY_FIELD`]) are left out of the parent's comparison. An
//! `embed:` route is verified element by element: each source row must be
//! an element of its parent's array (its `_id` compared as `_parent`), and
//! every element of the collection's arrays is checked for extras.

use std::collections::{BTreeSet, HashMap};

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Database;
use pgfanout_sdk::connector::BoxFuture;
use pgfanout_sdk::verify::{Expected, Verifier};
use pgfanout_sdk::{SinkError, SinkRecord};
use serde_json::Value as Json;

use crate::config::{MongoMapping, MongoSinkConfig, ELEMENT_KEY_FIELD};
use crate::convert::document_json;
use crate::error::MongoError;
use crate::route::{Body, DocKey, ElemBody, Planned, Route};
use crate::sink::{compile_routes, connect_server};

pub(crate) struct MongoVerifier {
    db: Database,
    route: Route,
    version_field: String,
    docs: HashMap<String, DocKey>,
    collections: BTreeSet<String>,
}

pub(crate) async fn connect(cfg: &MongoSinkConfig, m: &MongoMapping) -> Result<Box<dyn Verifier>, SinkError> {
    let server = connect_server(cfg).await?;
    let route = compile_routes(std::slice::from_ref(m), server.inexact)?.remove(0);
    Ok(Box::new(MongoVerifier {
        db: server.db,
        route,
        version_field: cfg.version_field.clone(),
        docs: HashMap::new(),
        collections: BTreeSet::new(),
    }))
}

impl MongoVerifier {
    fn remember(&mut self, key: DocKey) -> String {
        let name = key.name();
        self.collections.insert(key.collection.to_string());
        self.docs.entry(name.clone()).or_insert(key);
        name
    }

    fn expected(&mut self, record: &SinkRecord) -> Result<Vec<Expected>, MongoError> {
        let mut out = Vec::new();
        match self.route.plan(&record.change)? {
            Planned::Ops(ops) => {
                for op in ops {
                    if let Body::Full(doc) = op.body {
                        out.push(Expected { value: document_json(&doc), id: self.remember(op.key) });
                    }
                }
            }
            Planned::Elements(ops) => {
                for op in ops {
                    if let (ElemBody::Full(mut doc), Some(parent)) = (op.body, op.parent) {
                        doc.insert("_parent", parent);
                        out.push(Expected { value: document_json(&doc), id: self.remember_element(&op.collection, &op.element) });
                    }
                }
            }
            Planned::Truncate(_) | Planned::Nothing => {}
        }
        Ok(out)
    }

    /// An element's id in reports: `collection#field/key`.
    fn remember_element(&mut self, collection: &str, element: &str) -> String {
        self.collections.insert(collection.to_string());
        let field = self.route.embed.as_ref().map(|e| e.field.to_string()).unwrap_or_default();
        crate::elements::tombstone_name(collection, &field, element)
    }

    /// The embed route's elements: `filter` selects the parents, `keep`
    /// the elements (by key); id -> element with `_parent`.
    async fn elements(
        &self,
        filter: Document,
        keep: Option<&std::collections::HashSet<&str>>,
    ) -> Result<HashMap<String, Json>, MongoError> {
        let mut out = HashMap::new();
        let Some(embed) = &self.route.embed else { return Ok(out) };
        for collection in &self.collections {
            let coll = self.db.collection::<Document>(collection);
            let docs: Vec<Document> = coll.find(filter.clone()).projection(doc! {embed.field.as_ref(): 1}).await?.try_collect().await?;
            for d in docs {
                let Some(parent) = d.get("_id").cloned() else { continue };
                let Ok(array) = d.get_array(embed.field.as_ref()) else { continue };
                for e in array {
                    let Bson::Document(e) = e else { continue };
                    let Ok(key) = e.get_str(ELEMENT_KEY_FIELD) else { continue };
                    if keep.is_some_and(|k| !k.contains(key)) {
                        continue;
                    }
                    let mut e = e.clone();
                    e.remove(ELEMENT_KEY_FIELD);
                    e.remove(&self.version_field);
                    e.insert("_parent", parent.clone());
                    out.insert(crate::elements::tombstone_name(collection, &embed.field, key), document_json(&e));
                }
            }
        }
        Ok(out)
    }

    /// The element key of an embed route's id.
    fn element_key<'a>(&self, id: &'a str) -> &'a str {
        id.split_once('/').map_or(id, |(_, k)| k)
    }

    async fn documents(&self, ids: &[String]) -> Result<Vec<Option<Json>>, MongoError> {
        if let Some(embed) = &self.route.embed {
            let keys: std::collections::HashSet<&str> = ids.iter().map(|id| self.element_key(id)).collect();
            let list: Vec<&str> = keys.iter().copied().collect();
            let filter = doc! {format!("{}.{ELEMENT_KEY_FIELD}", embed.field): {"$in": list}};
            let mut found = self.elements(filter, Some(&keys)).await?;
            return Ok(ids.iter().map(|id| found.remove(id)).collect());
        }
        let mut found: HashMap<String, Json> = HashMap::new();
        let mut by_collection: HashMap<&str, Vec<Bson>> = HashMap::new();
        for id in ids {
            let key = self.docs.get(id).ok_or_else(|| MongoError::UnknownDocument(id.clone()))?;
            by_collection.entry(&key.collection).or_default().push(key.id.clone());
        }
        for (collection, keys) in by_collection {
            for chunk in keys.chunks(500) {
                let coll = self.db.collection::<Document>(collection);
                let docs: Vec<Document> = coll.find(doc! {"_id": {"$in": chunk.to_vec()}}).await?.try_collect().await?;
                for mut d in docs {
                    let Some(id) = d.remove("_id") else { continue };
                    d.remove(&self.version_field);
                    // Arrays of embedded elements belong to `embed:` routes.
                    let embedded: Vec<String> = d
                        .iter()
                        .filter(|(_, v)| matches!(v, Bson::Array(a) if a.iter().any(|e| matches!(e, Bson::Document(e) if e.contains_key(ELEMENT_KEY_FIELD)))))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in embedded {
                        d.remove(&k);
                    }
                    found.insert(DocKey::new(collection.into(), id).name(), document_json(&d));
                }
            }
        }
        Ok(ids.iter().map(|id| found.remove(id)).collect())
    }

    async fn all_ids(&mut self) -> Result<Option<Vec<String>>, MongoError> {
        if let Some(c) = self.route.constant_collection() {
            self.collections.insert(c.to_string());
        } else if self.collections.is_empty() {
            return Ok(None);
        }
        if let Some(embed) = &self.route.embed {
            let all = self.elements(doc! {embed.field.as_ref(): {"$exists": true}}, None).await?;
            return Ok(Some(all.into_keys().collect()));
        }
        let mut out = Vec::new();
        for collection in self.collections.clone() {
            let coll = self.db.collection::<Document>(&collection);
            let docs: Vec<Document> = coll.find(doc! {}).projection(doc! {"_id": 1}).await?.try_collect().await?;
            for d in docs {
                if let Some(id) = d.get("_id") {
                    out.push(self.remember(DocKey::new(collection.as_str().into(), id.clone())));
                }
            }
        }
        Ok(Some(out))
    }

    async fn delete(&self, ids: &[String]) -> Result<(), MongoError> {
        if let Some(embed) = &self.route.embed {
            // Extra elements: out of their parents' arrays.
            let gone: std::collections::HashSet<&str> = ids.iter().map(|id| self.element_key(id)).collect();
            let list: Vec<&str> = gone.iter().copied().collect();
            for collection in &self.collections {
                let coll = self.db.collection::<Document>(collection);
                let filter = doc! {format!("{}.{ELEMENT_KEY_FIELD}", embed.field): {"$in": list.clone()}};
                let docs: Vec<Document> = coll.find(filter).projection(doc! {embed.field.as_ref(): 1}).await?.try_collect().await?;
                for d in docs {
                    let (Some(id), Ok(array)) = (d.get("_id"), d.get_array(embed.field.as_ref())) else { continue };
                    let kept: Vec<Bson> = array
                        .iter()
                        .filter(|e| !matches!(e, Bson::Document(e) if e.get_str(ELEMENT_KEY_FIELD).is_ok_and(|k| gone.contains(k))))
                        .cloned()
                        .collect();
                    coll.update_one(doc! {"_id": id.clone()}, doc! {"$set": {embed.field.as_ref(): kept}}).await?;
                }
            }
            return Ok(());
        }
        let mut by_collection: HashMap<&str, Vec<Bson>> = HashMap::new();
        for key in ids.iter().filter_map(|id| self.docs.get(id)) {
            by_collection.entry(&key.collection).or_default().push(key.id.clone());
        }
        for (collection, keys) in by_collection {
            self.db.collection::<Document>(collection).delete_many(doc! {"_id": {"$in": keys}}).await?;
        }
        Ok(())
    }
}

/// The SDK boundary: [`MongoError`]s become the verifier's errors here.
impl Verifier for MongoVerifier {
    fn expect(&mut self, record: &SinkRecord) -> Result<Vec<Expected>, String> {
        self.expected(record).map_err(|e| e.to_string())
    }

    fn read<'a>(&'a mut self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<Option<Json>>, SinkError>> {
        Box::pin(async move { Ok(self.documents(ids).await?) })
    }

    fn list(&mut self) -> BoxFuture<'_, Result<Option<Vec<String>>, SinkError>> {
        Box::pin(async move { Ok(self.all_ids().await?) })
    }

    fn remove<'a>(&'a mut self, ids: &'a [String]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move { Ok(self.delete(ids).await?) })
    }
}
