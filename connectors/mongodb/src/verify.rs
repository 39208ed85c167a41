//! Reading a route's documents back for `pgfanout verify`.
//!
//! A source row must be the document the sink writes for it as a snapshot
//! row (the version field and `_id` left out), compared field by field with
//! exact numbers. Extras: every document of the route's collections (the
//! constant one, or each a source row mapped to). A collection shared with
//! another pipeline shows that pipeline's documents as extra.

use std::collections::{BTreeSet, HashMap};

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Database;
use pgfanout_sdk::connector::BoxFuture;
use pgfanout_sdk::verify::{Expected, Verifier};
use pgfanout_sdk::{SinkError, SinkRecord};
use serde_json::Value as Json;

use crate::config::{MongoMapping, MongoSinkConfig};
use crate::convert::document_json;
use crate::error::MongoError;
use crate::route::{Body, DocKey, Planned, Route};
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
        if let Planned::Ops(ops) = self.route.plan(&record.change)? {
            for op in ops {
                if let Body::Full(doc) = op.body {
                    out.push(Expected { value: document_json(&doc), id: self.remember(op.key) });
                }
            }
        }
        Ok(out)
    }

    async fn documents(&self, ids: &[String]) -> Result<Vec<Option<Json>>, MongoError> {
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
