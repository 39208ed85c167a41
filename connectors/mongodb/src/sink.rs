//! The document sink: the path of a batch.
//!
//! [`Route::plan`] each record into document operations → read what the
//! server holds of those documents (their versions, the tombstones of
//! deleted ones, the whole document a key change with unchanged TOAST
//! columns moves) → resolve the batch in order into one final write per
//! document ([`resolve`]) → send them as `update` and `delete` commands
//! whose filters carry the version guard → the batch is durable once every
//! command was acknowledged under the write concern.
//!
//! Errors are [`MongoError`]s inside the crate; they become the runtime's
//! [`SinkError`] at the boundary.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use indexmap::IndexMap;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};
use pgfanout_sdk::{BatchOutcome, Rejected, Sink, SinkError, SinkRecord, StoreError};
use tracing::{debug, info, warn};

use crate::config::{Decimals, MongoMapping, MongoSinkConfig, ELEMENT_KEY_FIELD};
use crate::convert::{Convert, Inexact};
use crate::elements::{self, Arrays, ElemSegment};
use crate::error::MongoError;
use crate::route::{compile, set_path, Body, DocKey, DocOp, Planned, Route};

/// Ids per `find` when reading what is stored.
const READ_CHUNK: usize = 1000;

/// Documents remembered as replayed (see [`resolve`]); the memory only
/// matters right after a restart, when the replay runs.
const REPLAYED_LIMIT: usize = 100_000;

/// Statements per command on FerretDB 1.x: its `update` and `delete` hold
/// a PostgreSQL connection per statement until the command ends, and a
/// command with more statements than its pool (50) waits forever.
const FERRETDB_MAX_BATCH: usize = 16;

/// The document sink. See the crate docs.
pub struct MongoSink {
    client: Client,
    db: Database,
    routes: Vec<Route>,
    version_field: String,
    tombstones: String,
    tombstone_ttl: Duration,
    max_batch: usize,
    /// Documents per `insert` command (`max_batch`, also on FerretDB).
    max_insert: usize,
    write_concern: Bson,
    request_timeout: Duration,
    last_sweep: Option<Instant>,
    /// Documents whose replayed changes were found applied already.
    replayed: HashSet<DocKey>,
    server: String,
    /// Collection -> the array fields `embed:` routes keep in its
    /// documents (a parent's whole write keeps them).
    embedded: HashMap<String, Vec<String>>,
}

/// A connected client and what the server is.
pub(crate) struct Server {
    pub(crate) client: Client,
    pub(crate) db: Database,
    pub(crate) description: String,
    pub(crate) inexact: Inexact,
    pub(crate) ferretdb: bool,
}

/// Connects, and asks the server what it is (`buildInfo`).
pub(crate) async fn connect_server(cfg: &MongoSinkConfig) -> Result<Server, MongoError> {
    let mut options = ClientOptions::parse(cfg.uri.expose()).await?;
    options.server_selection_timeout = Some(cfg.timeout);
    options.connect_timeout = Some(cfg.timeout);
    options.app_name.get_or_insert_with(|| "pgfanout".into());
    let client = Client::with_options(options)?;
    let db = client.database(&cfg.database);
    let info = db.run_command(doc! {"buildInfo": 1}).await?;
    let version = info.get_str("version").unwrap_or("?").to_string();
    let (description, ferret) = match info.get_str("ferretdbVersion") {
        Ok(f) => (format!("FerretDB {f} (MongoDB {version} wire protocol)"), true),
        Err(_) => (format!("MongoDB {version}"), false),
    };
    let inexact = match cfg.decimals {
        Decimals::Decimal128 => Inexact::Decimal128,
        Decimals::String => Inexact::String,
        Decimals::Auto if ferret => Inexact::String,
        Decimals::Auto => Inexact::Decimal128,
    };
    Ok(Server { client, db, description, inexact, ferretdb: ferret })
}

/// Compiles every route with the server's number rule.
pub(crate) fn compile_routes(mappings: &[MongoMapping], inexact: Inexact) -> Result<Vec<Route>, MongoError> {
    mappings
        .iter()
        .enumerate()
        .map(|(route, m)| compile(m, Convert { inexact, json: m.json }).map_err(|e| MongoError::Mapping { route, message: e.to_string() }))
        .collect()
}

/// A segment's document removals, written after its arrays: (tombstone
/// statements, delete statements per collection), each with its record.
type Removals = (Vec<(Document, usize)>, IndexMap<String, Vec<(Document, usize)>>);

/// (collection, array field) of an `embed:` route; per one, a segment
/// reads (parent ids, element keys).
type ArrayField = (std::sync::Arc<str>, std::sync::Arc<str>);

/// What the server holds of one document before the batch.
#[derive(Debug, Default)]
struct Stored {
    /// Its version field (`None`: a document pgfanout did not write).
    version: Option<String>,
    /// The whole document, read only for documents a key change moves.
    doc: Option<Document>,
    /// Its embedded arrays (`embed:` routes'), kept by a whole write.
    embedded: Vec<(String, Bson)>,
}

/// The one write a batch makes to a document.
#[derive(Debug, Clone, PartialEq)]
enum Final {
    Write(Document),
    Set(Vec<(String, Bson)>),
    Delete,
}

/// What the batch does to the documents it touches, in the order first
/// touched: (final write, its version, the record it comes from).
type Finals = IndexMap<DocKey, (Final, String, usize)>;

/// One batch segment's records: (record index, its version, its operations).
type Segment = Vec<(usize, String, Vec<DocOp>)>;

/// Resolves a segment, in order, into one final write per document.
///
/// A document's newest known version is its final write's in this batch,
/// else the newer of its stored version and its tombstone. An operation
/// older than that is superseded (skipped). A partial change (unchanged
/// TOAST columns) is completed from the batch's own earlier write of the
/// document, or from the stored document a key change moves; otherwise it
/// becomes a `$set` of the columns sent, on a stored document. A partial
/// change of a document that is neither in the batch nor stored is
/// refused (the runtime dead-letters it).
fn resolve(
    segment: Segment,
    stored: &HashMap<DocKey, Stored>,
    tombs: &HashMap<DocKey, String>,
    version_field: &str,
    replayed: &mut HashSet<DocKey>,
    rejected: &mut Vec<Rejected>,
) -> Finals {
    let mut finals: Finals = IndexMap::new();
    for (record, version, ops) in segment {
        for op in ops {
            let newest = |finals: &Finals, k: &DocKey| -> Option<String> {
                if let Some((_, v, _)) = finals.get(k) {
                    return Some(v.clone());
                }
                let s = stored.get(k).and_then(|s| s.version.clone());
                let t = tombs.get(k).cloned();
                s.max(t)
            };
            if newest(&finals, &op.key).is_some_and(|n| n > version) {
                continue; // superseded by a newer write or delete
            }
            let body = match op.body {
                Body::Delete => Final::Delete,
                Body::Full(doc) => Final::Write(doc),
                Body::Partial(fields, missing) => {
                    let source = op.moved_from.as_ref().unwrap_or(&op.key);
                    let base = match finals.get(source).map(|(f, _, _)| f) {
                        Some(Final::Write(doc)) => Some(Final::Write(doc.clone())),
                        Some(Final::Set(prev)) if op.moved_from.is_none() => Some(Final::Set(prev.clone())),
                        Some(Final::Set(prev)) => stored.get(source).and_then(|s| s.doc.clone()).map(|mut d| {
                            apply_fields(&mut d, prev);
                            Final::Write(d)
                        }),
                        Some(Final::Delete) => None,
                        None if op.moved_from.is_some() => stored.get(source).and_then(|s| s.doc.clone()).map(|mut d| {
                            d.remove("_id");
                            d.remove(version_field);
                            Final::Write(d)
                        }),
                        None if stored.contains_key(source) => Some(Final::Set(Vec::new())),
                        None => None,
                    };
                    match base {
                        Some(Final::Write(mut d)) => {
                            apply_fields(&mut d, &fields);
                            Final::Write(d)
                        }
                        Some(Final::Set(mut prev)) => {
                            for (path, value) in fields {
                                match prev.iter_mut().find(|(p, _)| *p == path) {
                                    Some(slot) => slot.1 = value,
                                    None => prev.push((path, value)),
                                }
                            }
                            Final::Set(prev)
                        }
                        _ => {
                            // A replay of a change already applied: its
                            // document holds this version or a newer one,
                            // or the document it moves from has a tombstone
                            // of this change or a newer one. A batch writes
                            // its documents before its tombstones, so such a
                            // tombstone means every write of the batch that
                            // held this change is stored, and what came
                            // after it in that batch (a later delete of the
                            // document, whose tombstone a crash may have
                            // cut off) is replayed after it. Superseded.
                            // A document such a batch made and deleted again
                            // was never stored, and the crash may have cut off
                            // its tombstone: its later partial changes in the
                            // replay, and key changes away from it, are
                            // superseded too (the batch wrote their targets).
                            if newest(&finals, &op.key).is_some_and(|n| n >= version)
                                || newest(&finals, source).is_some_and(|n| n >= version)
                                || replayed.contains(&op.key)
                                || replayed.contains(source)
                            {
                                if replayed.len() >= REPLAYED_LIMIT {
                                    replayed.clear();
                                }
                                replayed.insert(op.key.clone());
                                continue;
                            }
                            debug!(
                                document = %op.key.name(),
                                source = %source.name(),
                                version = %version,
                                stored = ?stored.get(source).map(|s| &s.version),
                                stored_key = ?stored.get(&op.key).map(|s| &s.version),
                                tomb = ?tombs.get(source),
                                in_batch = ?finals.get(source).map(|f| (&f.1, f.2)),
                                "mongodb: partial change of a missing document"
                            );
                            let error = MongoError::PartialOfMissing { document: source.name(), missing: missing.join(", ") };
                            rejected.push(Rejected { index: record, error: error.to_string() });
                            continue;
                        }
                    }
                }
            };
            finals.insert(op.key, (body, version.clone(), record));
        }
    }
    finals
}

/// Sets each (field path, value) in `doc`.
fn apply_fields(doc: &mut Document, fields: &[(String, Bson)]) {
    for (path, value) in fields {
        let parts: Vec<String> = path.split('.').map(str::to_string).collect();
        set_path(doc, &parts, value.clone());
    }
}

impl MongoSink {
    /// Connects, learns what the server is and compiles the mappings.
    pub async fn connect(cfg: &MongoSinkConfig, mappings: Vec<MongoMapping>) -> Result<MongoSink, SinkError> {
        let server = connect_server(cfg).await?;
        let routes = compile_routes(&mappings, server.inexact)?;
        let write_concern = match cfg.write_concern.parse::<i32>() {
            Ok(n) => Bson::Int32(n),
            Err(_) => Bson::String(cfg.write_concern.clone()),
        };
        let max_batch = if server.ferretdb { cfg.max_batch.min(FERRETDB_MAX_BATCH) } else { cfg.max_batch };
        let mut embedded: HashMap<String, Vec<String>> = HashMap::new();
        for (m, r) in mappings.iter().zip(&routes) {
            if let Some(e) = &r.embed {
                let fields = embedded.entry(m.collection.clone()).or_default();
                if !fields.iter().any(|f| **f == *e.field) {
                    fields.push(e.field.to_string());
                }
            }
        }
        info!(server = %server.description, database = %cfg.database, routes = routes.len(), decimals = ?server.inexact, max_batch, "mongodb sink connected");
        Ok(MongoSink {
            client: server.client,
            db: server.db,
            routes,
            version_field: cfg.version_field.clone(),
            tombstones: cfg.tombstone_collection.clone(),
            tombstone_ttl: cfg.tombstone_ttl,
            max_batch,
            max_insert: cfg.max_batch,
            write_concern,
            request_timeout: cfg.request_timeout,
            last_sweep: None,
            replayed: HashSet::new(),
            server: server.description,
            embedded,
        })
    }

    /// `MongoDB 7.0.5` or `FerretDB 1.24.2 (MongoDB 7.0.77 wire protocol)`.
    pub fn server(&self) -> &str {
        &self.server
    }

    async fn write_batch(&mut self, batch: &[SinkRecord]) -> Result<Vec<Rejected>, MongoError> {
        let mut rejected = Vec::new();
        let mut segment: Segment = Vec::new();
        let mut elements: ElemSegment = Vec::new();
        for (i, record) in batch.iter().enumerate() {
            let Some(route) = self.routes.get(record.route) else {
                rejected.push(Rejected { index: i, error: format!("mongodb: no route {}", record.route) });
                continue;
            };
            match route.plan(&record.change) {
                Err(e) => rejected.push(Rejected { index: i, error: e.to_string() }),
                Ok(Planned::Nothing) => {}
                Ok(Planned::Ops(ops)) => segment.push((i, record.change.position().sortable_text(), ops)),
                Ok(Planned::Elements(ops)) => elements.push((i, record.change.position().sortable_text(), ops)),
                Ok(Planned::Truncate(collection)) => {
                    let removals = self.apply(std::mem::take(&mut segment), &mut rejected).await?;
                    self.apply_elements(std::mem::take(&mut elements), &mut rejected).await?;
                    self.remove(removals, &mut rejected).await?;
                    let statements = vec![doc! {"q": {}, "limit": 0}];
                    if let Err(e) = self.send("delete", &collection, statements, &[i], &mut rejected).await {
                        if e.is_retriable() {
                            return Err(e);
                        }
                        rejected.push(Rejected { index: i, error: e.to_string() });
                    }
                }
            }
        }
        // Documents first, then the arrays in them, then the documents'
        // removals: a parent's whole write keeps the arrays it read, the
        // arrays are read after it, and an element a change of the batch
        // moves out of a parent a later change deletes is still there.
        let removals = self.apply(segment, &mut rejected).await?;
        self.apply_elements(elements, &mut rejected).await?;
        self.remove(removals, &mut rejected).await?;
        self.sweep().await;
        rejected.sort_by_key(|r| r.index);
        rejected.dedup_by_key(|r| r.index);
        Ok(rejected)
    }

    /// Reads what is stored, resolves the segment and writes its
    /// documents; returns its removals, for [`Self::remove`].
    async fn apply(&mut self, segment: Segment, rejected: &mut Vec<Rejected>) -> Result<Removals, MongoError> {
        if segment.is_empty() {
            return Ok(Removals::default());
        }
        let mut keys: Vec<DocKey> = Vec::new();
        let mut moved: Vec<DocKey> = Vec::new();
        for (_, _, ops) in &segment {
            for op in ops {
                keys.push(op.key.clone());
                if let (Some(m), Body::Partial(..)) = (&op.moved_from, &op.body) {
                    moved.push(m.clone());
                }
            }
        }
        let started = Instant::now();
        let stored = self.read_stored(&keys, &moved).await?;
        let tombs = self.read_tombstones(&keys).await?;
        debug!(documents = keys.len(), stored = stored.len(), tombstones = tombs.len(), took = ?started.elapsed(), "mongodb: read what is stored");
        let finals = resolve(segment, &stored, &tombs, &self.version_field, &mut self.replayed, rejected);
        self.write_finals(finals, &stored, rejected).await
    }

    /// Writes a segment's removals: tombstones, then deletes. A tombstone
    /// precedes its delete, so a crash between them leaves a document the
    /// replay deletes.
    async fn remove(&self, (tombs, deletes): Removals, rejected: &mut Vec<Rejected>) -> Result<(), MongoError> {
        if !tombs.is_empty() {
            let (statements, records): (Vec<_>, Vec<_>) = tombs.into_iter().unzip();
            self.send("update", &self.tombstones, statements, &records, rejected).await?;
        }
        for (collection, items) in deletes {
            let (statements, records): (Vec<_>, Vec<_>) = items.into_iter().unzip();
            self.send("delete", &collection, statements, &records, rejected).await?;
        }
        Ok(())
    }

    /// The version guard: the stored version is not newer (or the
    /// document has none).
    fn guard(&self, id: &Bson, version: &str) -> Document {
        let v = self.version_field.as_str();
        doc! {"_id": id.clone(), "$or": [{v: {"$lte": version}}, {v: {"$exists": false}}]}
    }

    async fn write_finals(
        &self,
        finals: Finals,
        stored: &HashMap<DocKey, Stored>,
        rejected: &mut Vec<Rejected>,
    ) -> Result<Removals, MongoError> {
        let now = DateTime::now();
        let mut tombs: Vec<(Document, usize)> = Vec::new();
        let mut deletes: IndexMap<String, Vec<(Document, usize)>> = IndexMap::new();
        let mut updates: IndexMap<String, Vec<(Document, usize)>> = IndexMap::new();
        let mut inserts: IndexMap<String, Vec<(Document, usize)>> = IndexMap::new();
        for (key, (body, version, record)) in finals {
            let v = self.version_field.as_str();
            match body {
                Final::Delete => {
                    tombs.push((doc! {"q": {"_id": key.name()}, "u": {"$set": {"v": &version, "at": now}}, "upsert": true}, record));
                    deletes
                        .entry(key.collection.to_string())
                        .or_default()
                        .push((doc! {"q": self.guard(&key.id, &version), "limit": 1}, record));
                }
                Final::Write(mut d) => {
                    d.remove("_id");
                    d.insert(v, version.as_str());
                    if let Some(s) = stored.get(&key) {
                        for (field, array) in &s.embedded {
                            d.insert(field.clone(), array.clone());
                        }
                    }
                    if stored.contains_key(&key) {
                        let statement = doc! {"q": self.guard(&key.id, &version), "u": d, "upsert": false};
                        updates.entry(key.collection.to_string()).or_default().push((statement, record));
                    } else {
                        // Not stored: an insert (many documents per
                        // command). A duplicate key (a writer beside
                        // pgfanout) fails the batch, and the retry reads
                        // the document and updates it.
                        let mut whole = doc! {"_id": key.id.clone()};
                        whole.extend(d);
                        inserts.entry(key.collection.to_string()).or_default().push((whole, record));
                    }
                }
                Final::Set(fields) => {
                    let mut set: Document = fields.into_iter().collect();
                    set.insert(v, version.as_str());
                    let statement = doc! {"q": self.guard(&key.id, &version), "u": {"$set": set}, "upsert": false};
                    updates.entry(key.collection.to_string()).or_default().push((statement, record));
                }
            }
        }
        // Writes now, tombstones and deletes later (the caller's `remove`).
        // A key change's new document is written before its old one goes,
        // so a crash in between leaves the old one (and its fields) for the
        // replay.
        for (collection, items) in inserts {
            let (documents, records): (Vec<_>, Vec<_>) = items.into_iter().unzip();
            self.send("insert", &collection, documents, &records, rejected).await?;
        }
        for (collection, items) in updates {
            let (statements, records): (Vec<_>, Vec<_>) = items.into_iter().unzip();
            self.send("update", &collection, statements, &records, rejected).await?;
        }
        Ok((tombs, deletes))
    }

    /// Sends `statements` (documents of command `insert`, statements of
    /// `update` or `delete`) to `collection`
    /// in ordered commands of at most `max_batch`. A statement the server
    /// refuses for good rejects its record, and the statements after it
    /// are sent again; a transient refusal fails the batch (retried).
    async fn send(
        &self,
        command: &str,
        collection: &str,
        statements: Vec<Document>,
        records: &[usize],
        rejected: &mut Vec<Rejected>,
    ) -> Result<(), MongoError> {
        let (field, limit) = match command {
            "insert" => ("documents", self.max_insert),
            "update" => ("updates", self.max_batch),
            _ => ("deletes", self.max_batch),
        };
        let mut start = 0;
        while start < statements.len() {
            let end = (start + limit).min(statements.len());
            let chunk: Vec<Bson> = statements[start..end].iter().cloned().map(Bson::Document).collect();
            let run = self
                .db
                .run_command(doc! {command: collection, field: chunk, "ordered": true, "writeConcern": {"w": self.write_concern.clone()}});
            let reply = self.timed(format!("{command} of {collection}"), run).await?;
            debug!(command, collection, statements = end - start, "mongodb: sent");
            if let Ok(wce) = reply.get_document("writeConcernError") {
                return Err(MongoError::WriteConcern(wce.get_str("errmsg").unwrap_or("?").to_string()));
            }
            let first_error = reply.get_array("writeErrors").ok().and_then(|errors| errors.first().cloned());
            match first_error {
                Some(Bson::Document(e)) => {
                    let index = e.get_i32("index").unwrap_or(0).max(0) as usize;
                    let code = e.get_i32("code").unwrap_or(0);
                    let error = MongoError::refused(code, e.get_str("errmsg").unwrap_or("?").to_string());
                    if error.is_retriable() {
                        return Err(error);
                    }
                    let failed = start + index.min(end - start - 1);
                    rejected.push(Rejected { index: records[failed], error: error.to_string() });
                    start = failed + 1;
                }
                _ => start = end,
            }
        }
        Ok(())
    }

    /// Reads the arrays an element segment touches (its parents', and
    /// those holding its elements), resolves it ([`elements::resolve`]) and
    /// writes each changed array once, then the tombstones of removed
    /// elements.
    async fn apply_elements(&mut self, segment: ElemSegment, rejected: &mut Vec<Rejected>) -> Result<(), MongoError> {
        if segment.is_empty() {
            return Ok(());
        }
        let mut wanted: IndexMap<ArrayField, (Vec<Bson>, Vec<String>)> = IndexMap::new();
        let mut names = Vec::new();
        let mut parents = Vec::new();
        for (_, _, ops) in &segment {
            for op in ops {
                if let Some(p) = &op.parent {
                    parents.push(DocKey::new(op.collection.clone(), p.clone()));
                }
                let w = wanted.entry((op.collection.clone(), op.field.clone())).or_default();
                w.0.extend(op.parent.clone());
                w.1.push(op.element.clone());
                w.1.extend(op.moved_from.clone());
                names.push(elements::tombstone_name(&op.collection, &op.field, &op.element));
            }
        }
        let mut arrays = Arrays::default();
        for ((collection, field), (parents, keys)) in &wanted {
            let coll = self.db.collection::<Document>(collection);
            let by_element = format!("{field}.{ELEMENT_KEY_FIELD}");
            for filter in [doc! {"_id": {"$in": parents.clone()}}, doc! {by_element: {"$in": keys.clone()}}] {
                let find =
                    async { coll.find(filter.clone()).projection(doc! {field.as_ref(): 1}).await?.try_collect::<Vec<Document>>().await };
                let found = self.timed(format!("find in {collection}"), find).await?;
                debug!(?filter, found = ?found.iter().map(|d| d.get("_id").cloned()).collect::<Vec<_>>(), "mongodb: arrays read");
                for d in found {
                    let Some(id) = d.get("_id").cloned() else { continue };
                    let array = match d.get(field.as_ref()) {
                        Some(Bson::Array(a)) => a.clone(),
                        _ => Vec::new(),
                    };
                    arrays.add_parent(collection, field, id, array);
                }
            }
        }
        let mut tombs = self.read_tombstone_names(&names).await?;
        tombs.extend(self.read_tombstones(&parents).await?.into_iter().map(|(k, v)| (k.name(), v)));
        let new_tombs = elements::resolve(segment, &mut arrays, &tombs, &self.version_field, rejected);
        // Tombstones first: a crash before the arrays are written leaves
        // the elements, and the replay removes them again.
        if !new_tombs.is_empty() {
            let now = DateTime::now();
            let (statements, records): (Vec<_>, Vec<_>) = new_tombs
                .into_iter()
                .map(|(name, v, record)| (doc! {"q": {"_id": name}, "u": {"$set": {"v": v, "at": now}}, "upsert": true}, record))
                .unzip();
            self.send("update", &self.tombstones, statements, &records, rejected).await?;
        }
        let mut updates: IndexMap<String, Vec<(Document, usize)>> = IndexMap::new();
        for ((collection, field, _), parent) in arrays.parents {
            let Some(record) = parent.changed else { continue };
            if !parent.exists && parent.elements.is_empty() {
                continue;
            }
            // An emptied array goes away (a parent without children has
            // none, as one that never had any).
            let statement = if parent.elements.is_empty() {
                doc! {"q": {"_id": parent.id}, "u": {"$unset": {field.as_ref(): ""}}, "upsert": false}
            } else {
                doc! {"q": {"_id": parent.id}, "u": {"$set": {field.as_ref(): parent.elements}}, "upsert": true}
            };
            updates.entry(collection.to_string()).or_default().push((statement, record));
        }
        for (collection, items) in updates {
            let (statements, records): (Vec<_>, Vec<_>) = items.into_iter().unzip();
            self.send("update", &collection, statements, &records, rejected).await?;
        }
        Ok(())
    }

    /// The tombstones of `names` (elements'): name -> version.
    async fn read_tombstone_names(&self, names: &[String]) -> Result<HashMap<String, String>, MongoError> {
        let coll = self.db.collection::<Document>(&self.tombstones);
        let mut out = HashMap::new();
        for chunk in names.chunks(READ_CHUNK) {
            let ids: Vec<Bson> = chunk.iter().map(|n| Bson::String(n.clone())).collect();
            let find = async { coll.find(doc! {"_id": {"$in": ids}}).await?.try_collect::<Vec<Document>>().await };
            for d in self.timed(format!("find in {}", self.tombstones), find).await? {
                if let (Ok(name), Ok(v)) = (d.get_str("_id"), d.get_str("v")) {
                    out.insert(name.to_string(), v.to_string());
                }
            }
        }
        Ok(out)
    }

    /// What is stored of `keys`: versions, and the whole documents of
    /// `whole`.
    async fn read_stored(&self, keys: &[DocKey], whole: &[DocKey]) -> Result<HashMap<DocKey, Stored>, MongoError> {
        let mut out: HashMap<DocKey, Stored> = HashMap::new();
        let v = self.version_field.as_str();
        for (list, full) in [(keys, false), (whole, true)] {
            let mut by_collection: IndexMap<&str, Vec<&DocKey>> = IndexMap::new();
            for k in list {
                by_collection.entry(&*k.collection).or_default().push(k);
            }
            for (collection, ks) in by_collection {
                let coll = self.db.collection::<Document>(collection);
                let mut ids: Vec<Bson> = ks.iter().map(|k| k.id.clone()).collect();
                ids.dedup();
                for chunk in ids.chunks(READ_CHUNK) {
                    let find = coll.find(doc! {"_id": {"$in": chunk.to_vec()}});
                    let embedded = self.embedded.get(collection).map(Vec::as_slice).unwrap_or_default();
                    let find = if full {
                        find
                    } else {
                        let mut projection = doc! {v: 1};
                        for f in embedded {
                            projection.insert(f.clone(), 1);
                        }
                        find.projection(projection)
                    };
                    let docs: Vec<Document> =
                        self.timed(format!("find in {collection}"), async { find.await?.try_collect().await }).await?;
                    for d in docs {
                        let Some(id) = d.get("_id").cloned() else { continue };
                        let key = DocKey::new(collection.into(), id);
                        let entry = out.entry(key).or_default();
                        entry.version = d.get_str(v).ok().map(str::to_string);
                        entry.embedded = embedded.iter().filter_map(|f| d.get(f).map(|a| (f.clone(), a.clone()))).collect();
                        if full {
                            entry.doc = Some(d);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// The tombstones (delete versions) of `keys`.
    async fn read_tombstones(&self, keys: &[DocKey]) -> Result<HashMap<DocKey, String>, MongoError> {
        let names: HashMap<String, &DocKey> = keys.iter().map(|k| (k.name(), k)).collect();
        let coll = self.db.collection::<Document>(&self.tombstones);
        let mut out = HashMap::new();
        let all: Vec<&String> = names.keys().collect();
        for chunk in all.chunks(READ_CHUNK) {
            let ids: Vec<Bson> = chunk.iter().map(|n| Bson::String((*n).clone())).collect();
            let find = async { coll.find(doc! {"_id": {"$in": ids}}).await?.try_collect().await };
            let docs: Vec<Document> = self.timed(format!("find in {}", self.tombstones), find).await?;
            for d in docs {
                if let (Ok(name), Ok(v)) = (d.get_str("_id"), d.get_str("v")) {
                    if let Some(k) = names.get(name) {
                        out.insert((*k).clone(), v.to_string());
                    }
                }
            }
        }
        Ok(out)
    }

    /// Runs a driver call with `request_timeout`.
    async fn timed<T>(
        &self,
        what: String,
        call: impl std::future::IntoFuture<Output = Result<T, mongodb::error::Error>>,
    ) -> Result<T, MongoError> {
        match tokio::time::timeout(self.request_timeout, call.into_future()).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(MongoError::Timeout(what, self.request_timeout)),
        }
    }

    /// Removes tombstones older than `tombstone_ttl`, at most every tenth
    /// of it (and at least every minute). Best effort: a failure is logged.
    async fn sweep(&mut self) {
        let every = (self.tombstone_ttl / 10).min(Duration::from_secs(60));
        if self.last_sweep.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last_sweep = Some(Instant::now());
        let cutoff = DateTime::from_millis(DateTime::now().timestamp_millis() - self.tombstone_ttl.as_millis() as i64);
        let command = doc! {"delete": &self.tombstones, "deletes": [{"q": {"at": {"$lt": cutoff}}, "limit": 0}]};
        if let Err(e) = self.timed("removing expired tombstones".into(), self.db.run_command(command)).await {
            warn!(error = %e, collection = %self.tombstones, "mongodb: removing expired tombstones failed; tried again later");
        }
    }
}

/// The sink boundary: [`MongoError`]s become [`SinkError`]s here (`?`).
impl Sink for MongoSink {
    async fn write(&mut self, batch: &[SinkRecord]) -> BatchOutcome {
        Ok(self.write_batch(batch).await?)
    }

    async fn check(&mut self) -> Result<(), SinkError> {
        self.timed("ping".into(), self.db.run_command(doc! {"ping": 1})).await?;
        Ok(())
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        self.client.clone().shutdown().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(id: i32) -> DocKey {
        DocKey::new(Arc::from("c"), Bson::Int32(id))
    }

    fn op(id: i32, body: Body) -> DocOp {
        DocOp { key: key(id), body, moved_from: None }
    }

    fn v(n: u64) -> String {
        format!("{n:030}")
    }

    #[test]
    fn a_batch_becomes_one_write_per_document_in_order() {
        let segment: Segment = vec![
            (0, v(1), vec![op(1, Body::Full(doc! {"a": 1, "b": "x"}))]),
            (1, v(2), vec![op(1, Body::Partial(vec![("a".into(), Bson::Int32(2))], vec!["b".into()]))]),
            (2, v(3), vec![op(2, Body::Full(doc! {"a": 9}))]),
            (3, v(4), vec![op(2, Body::Delete)]),
        ];
        let mut rejected = Vec::new();
        let finals = resolve(segment, &HashMap::new(), &HashMap::new(), "_v", &mut HashSet::new(), &mut rejected);
        assert!(rejected.is_empty());
        assert_eq!(finals[&key(1)], (Final::Write(doc! {"a": 2, "b": "x"}), v(2), 1));
        assert_eq!(finals[&key(2)], (Final::Delete, v(4), 3));
    }

    #[test]
    fn older_writes_are_superseded_and_partials_of_missing_documents_refused() {
        let stored = HashMap::from([(key(1), Stored { version: Some(v(10)), doc: None, embedded: Vec::new() })]);
        let tombs = HashMap::from([(key(2), v(10))]);
        let partial = |id| op(id, Body::Partial(vec![("a".into(), Bson::Int32(1))], vec!["b".into()]));
        let segment: Segment = vec![
            (0, v(5), vec![op(1, Body::Full(doc! {"a": 0}))]),
            (1, v(5), vec![op(2, Body::Full(doc! {"a": 0}))]),
            (2, v(6), vec![partial(2)]),
            (3, v(11), vec![partial(1)]),
            (4, v(11), vec![partial(3)]),
        ];
        let mut rejected = Vec::new();
        let finals = resolve(segment, &stored, &tombs, "_v", &mut HashSet::new(), &mut rejected);
        assert_eq!(finals.len(), 1, "{finals:?}");
        assert_eq!(finals[&key(1)].0, Final::Set(vec![("a".into(), Bson::Int32(1))]));
        assert_eq!(rejected.iter().map(|r| r.index).collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn a_replayed_key_change_already_applied_is_superseded() {
        // 1 -> 2 at v(2) was applied before a crash: 2 holds v(2), 1 is gone
        // with its tombstone at v(2).
        let stored = HashMap::from([(key(2), Stored { version: Some(v(2)), doc: None, embedded: Vec::new() })]);
        let tombs = HashMap::from([(key(1), v(2))]);
        let moved =
            DocOp { key: key(2), body: Body::Partial(vec![("a".into(), Bson::Int32(5))], vec!["bio".into()]), moved_from: Some(key(1)) };
        let segment: Segment = vec![(0, v(1), vec![op(1, Body::Full(doc! {"a": 1}))]), (1, v(2), vec![moved, op(1, Body::Delete)])];
        let mut rejected = Vec::new();
        let mut replayed = HashSet::new();
        let finals = resolve(segment, &stored, &tombs, "_v", &mut replayed, &mut rejected);
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(finals.get(&key(2)), None);
        // The batch before the crash deleted 2 again (its tombstone cut off):
        // a later partial change of 2, in the next batch, is superseded too.
        let later: Segment = vec![(0, v(3), vec![op(2, Body::Partial(vec![("a".into(), Bson::Int32(6))], vec!["bio".into()]))])];
        let finals = resolve(later, &HashMap::new(), &HashMap::new(), "_v", &mut replayed, &mut rejected);
        assert!(rejected.is_empty() && finals.is_empty(), "{rejected:?} {finals:?}");
    }

    #[test]
    fn a_moved_document_completes_a_partial_change() {
        let stored = HashMap::from([(
            key(1),
            Stored { version: Some(v(1)), doc: Some(doc! {"_id": 1, "_v": v(1), "a": 1, "bio": "long"}), embedded: Vec::new() },
        )]);
        let moved = DocOp {
            key: key(2),
            body: Body::Partial(vec![("id".into(), Bson::Int32(2)), ("a".into(), Bson::Int32(5))], vec!["bio".into()]),
            moved_from: Some(key(1)),
        };
        let segment: Segment = vec![(0, v(2), vec![moved, op(1, Body::Delete)])];
        let mut rejected = Vec::new();
        let finals = resolve(segment, &stored, &HashMap::new(), "_v", &mut HashSet::new(), &mut rejected);
        assert!(rejected.is_empty());
        assert_eq!(finals[&key(2)].0, Final::Write(doc! {"a": 5, "bio": "long", "id": 2}));
        assert_eq!(finals[&key(1)].0, Final::Delete);
    }
}
