//! Reading a route's nodes or relationships back for `pgfanout verify`.
//!
//! - `node`: a source row must be the node `(:Label {key})` with the mapped
//!   properties (key properties included), read with one `UNWIND ... MATCH`
//!   per batch. Properties the mapping does not write (another pipeline's,
//!   pgfanout's `_pgfanout_version`) are not compared. Extras: every node of
//!   the label whose key no row has (nodes another route MERGEs as
//!   relationship endpoints count too when their label is this one).
//! - `relationship`: a source row must be the relationship with its row key
//!   (`_pgfanout_key`), between the endpoints its columns name, with the
//!   mapped properties. Extras: every relationship of the type.
//! - `cypher` routes run the user's statements: what they write cannot be
//!   told, so they are not verified.

use std::collections::HashMap;

use neo4rs::{query, BoltList, BoltMap, BoltNull, BoltString, BoltType, Graph};
use pgfanout_sdk::connector::BoxFuture;
use pgfanout_sdk::verify::{Expected, Verifier};
use pgfanout_sdk::{SinkError, SinkRecord};
use serde_json::{Map, Value as Json};

use crate::config::{Neo4jMapping, Neo4jSinkConfig, ROW_KEY_PROPERTY, VERSION_PROPERTY};
use crate::cypher::ident;
use crate::encode;
use crate::error::classify;
use crate::sink::open_graph;

pub(crate) fn verifiable(m: &Neo4jMapping) -> Result<(), String> {
    if m.cypher.is_some() {
        return Err("a cypher mapping runs your own statements: what they write cannot be told from the row".into());
    }
    Ok(())
}

pub(crate) async fn connect(cfg: &Neo4jSinkConfig, m: &Neo4jMapping) -> Result<Box<dyn Verifier>, SinkError> {
    verifiable(m).map_err(SinkError::Permanent)?;
    let graph = open_graph(cfg).await?;
    Ok(Box::new(Neo4jVerifier { graph, mapping: m.clone(), keys: HashMap::new(), compared: HashMap::new() }))
}

pub(crate) struct Neo4jVerifier {
    graph: Graph,
    mapping: Neo4jMapping,
    /// id -> the node's key map, or the relationship's row key.
    keys: HashMap<String, BoltType>,
    /// id -> the properties the mapping writes (compared; others ignored).
    compared: HashMap<String, Vec<String>>,
}

/// A Bolt value as JSON, for comparing and reporting.
fn to_json(v: &BoltType) -> Json {
    match v {
        BoltType::Null(_) => Json::Null,
        BoltType::Boolean(b) => Json::Bool(b.value),
        BoltType::Integer(i) => Json::from(i.value),
        BoltType::Float(f) => serde_json::Number::from_f64(f.value).map(Json::Number).unwrap_or(Json::Null),
        BoltType::String(s) => Json::String(s.value.clone()),
        BoltType::List(l) => Json::Array(l.value.iter().map(to_json).collect()),
        BoltType::Map(m) => Json::Object(m.value.iter().map(|(k, v)| (k.value.clone(), to_json(v))).collect()),
        other => Json::String(format!("{other:?}")),
    }
}

fn from_json(v: &Json) -> BoltType {
    match v {
        Json::Null => BoltType::Null(BoltNull),
        Json::Bool(b) => BoltType::from(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => BoltType::from(i),
            None => BoltType::from(n.as_f64().unwrap_or_default()),
        },
        Json::String(s) => BoltType::from(s.as_str()),
        Json::Array(a) => BoltType::List(BoltList::from(a.iter().map(from_json).collect::<Vec<_>>())),
        Json::Object(o) => {
            let mut m = BoltMap::new();
            for (k, v) in o {
                m.put(BoltString::from(k.as_str()), from_json(v));
            }
            BoltType::Map(m)
        }
    }
}

fn field<'a>(row: &'a BoltType, name: &str) -> Option<&'a BoltType> {
    match row {
        BoltType::Map(m) => m.value.get(name),
        _ => None,
    }
}

fn key_pattern(props: &[String], source: &str) -> String {
    let parts: Vec<String> = props.iter().map(|p| format!("{}: {source}.{}", ident(p), ident(p))).collect();
    format!("{{{}}}", parts.join(", "))
}

fn failed(e: &neo4rs::Error) -> SinkError {
    classify("verify", e)
}

impl Neo4jVerifier {
    fn node_id(label: &str, key: &Json) -> String {
        format!("(:{label} {key})")
    }

    fn without_bookkeeping(mut props: Map<String, Json>) -> Map<String, Json> {
        props.remove(VERSION_PROPERTY);
        props.remove(ROW_KEY_PROPERTY);
        props
    }

    async fn rows(&self, cypher: String, params: Vec<(&str, BoltType)>) -> Result<Vec<neo4rs::Row>, SinkError> {
        let mut q = query(&cypher);
        for (k, v) in params {
            q = q.param(k, v);
        }
        let mut stream = self.graph.execute(q).await.map_err(|e| failed(&e))?;
        let mut out = Vec::new();
        while let Some(row) = stream.next().await.map_err(|e| failed(&e))? {
            out.push(row);
        }
        Ok(out)
    }
}

impl Verifier for Neo4jVerifier {
    fn expect(&mut self, record: &SinkRecord) -> Result<Vec<Expected>, String> {
        let change = &record.change;
        if let Some(m) = &self.mapping.node {
            let row = encode::node_row(m, change)?;
            let key = field(&row, "k").cloned().unwrap_or(BoltType::Null(BoltNull));
            let key_json = to_json(&key);
            let mut value = key_json.as_object().cloned().unwrap_or_default();
            if let Some(Json::Object(p)) = field(&row, "p").map(to_json) {
                value.extend(p);
            }
            // A graph cannot hold a null property: NULL columns are absent.
            value.retain(|_, v| !v.is_null());
            let id = Self::node_id(&m.label, &key_json);
            let mut compared: Vec<String> = value.keys().cloned().collect();
            compared.extend(m.properties.as_ref().map_or_else(Vec::new, |p| p.keys().cloned().collect()));
            self.compared.insert(id.clone(), compared);
            self.keys.insert(id.clone(), key);
            return Ok(vec![Expected { id, value: Json::Object(value) }]);
        }
        if let Some(m) = &self.mapping.relationship {
            let row = encode::rel_row(m, change)?;
            let row_key = encode::row_key(m, change)?;
            let mut value = match field(&row, "p").map(to_json) {
                Some(Json::Object(p)) => p,
                _ => Map::new(),
            };
            value.retain(|_, v| !v.is_null());
            value.insert("_from".into(), field(&row, "f").map(to_json).unwrap_or(Json::Null));
            value.insert("_to".into(), field(&row, "t").map(to_json).unwrap_or(Json::Null));
            let id = format!("[:{} {row_key}]", m.rel_type);
            self.compared.insert(id.clone(), value.keys().cloned().collect());
            self.keys.insert(id.clone(), BoltType::from(row_key));
            return Ok(vec![Expected { id, value: Json::Object(value) }]);
        }
        Ok(Vec::new())
    }

    fn read<'a>(&'a mut self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<Option<Json>>, SinkError>> {
        Box::pin(async move {
            let mut out: Vec<Option<Json>> = vec![None; ids.len()];
            let mut list = Vec::with_capacity(ids.len());
            for (i, id) in ids.iter().enumerate() {
                let key = self.keys.get(id).cloned().ok_or_else(|| SinkError::Permanent(format!("unknown entry {id}")))?;
                let mut m = BoltMap::new();
                m.put(BoltString::from("i"), BoltType::from(i as i64));
                m.put(BoltString::from("k"), key);
                list.push(BoltType::Map(m));
            }
            let rows = BoltType::List(BoltList::from(list));
            if let Some(m) = &self.mapping.node {
                let props: Vec<String> = m.key.keys().cloned().collect();
                let cypher = format!(
                    "UNWIND $rows AS row MATCH (n:{} {}) RETURN row.i AS i, properties(n) AS p",
                    ident(&m.label),
                    key_pattern(&props, "row.k")
                );
                for r in self.rows(cypher, vec![("rows", rows)]).await? {
                    let i: i64 = r.get("i").map_err(|e| SinkError::Permanent(format!("neo4j verify: {e}")))?;
                    let p: Json = r.get("p").map_err(|e| SinkError::Permanent(format!("neo4j verify: {e}")))?;
                    out[i as usize] = Some(Json::Object(Self::without_bookkeeping(p.as_object().cloned().unwrap_or_default())));
                }
            } else if let Some(m) = &self.mapping.relationship {
                let cypher = format!(
                    "UNWIND $rows AS row MATCH (a)-[r:{} {{{}: row.k}}]->(b) RETURN row.i AS i, properties(r) AS p, properties(a) AS a, properties(b) AS b",
                    ident(&m.rel_type),
                    ident(ROW_KEY_PROPERTY)
                );
                let pick = |props: &Json, keys: Vec<&String>| -> Json {
                    Json::Object(keys.into_iter().map(|k| (k.clone(), props.get(k).cloned().unwrap_or(Json::Null))).collect())
                };
                for r in self.rows(cypher, vec![("rows", rows)]).await? {
                    let get = |name: &str| r.get::<Json>(name).map_err(|e| SinkError::Permanent(format!("neo4j verify: {e}")));
                    let i: i64 = r.get("i").map_err(|e| SinkError::Permanent(format!("neo4j verify: {e}")))?;
                    let mut p = Self::without_bookkeeping(get("p")?.as_object().cloned().unwrap_or_default());
                    p.insert("_from".into(), pick(&get("a")?, m.from.key.keys().collect()));
                    p.insert("_to".into(), pick(&get("b")?, m.to.key.keys().collect()));
                    out[i as usize] = Some(Json::Object(p));
                }
            }
            // Only what the mapping writes is compared.
            for (id, v) in ids.iter().zip(out.iter_mut()) {
                if let (Some(Json::Object(props)), Some(keep)) = (v.as_mut(), self.compared.get(id)) {
                    props.retain(|k, _| keep.contains(k));
                }
            }
            Ok(out)
        })
    }

    fn list(&mut self) -> BoxFuture<'_, Result<Option<Vec<String>>, SinkError>> {
        Box::pin(async move {
            let mut ids = Vec::new();
            if let Some(m) = self.mapping.node.clone() {
                let parts: Vec<String> = m.key.keys().map(|p| format!("{}: n.{}", ident(p), ident(p))).collect();
                let cypher = format!("MATCH (n:{}) RETURN {{{}}} AS k", ident(&m.label), parts.join(", "));
                for r in self.rows(cypher, Vec::new()).await? {
                    let k: Json = r.get("k").map_err(|e| SinkError::Permanent(format!("neo4j verify: {e}")))?;
                    let id = Self::node_id(&m.label, &k);
                    self.keys.entry(id.clone()).or_insert_with(|| from_json(&k));
                    ids.push(id);
                }
            } else if let Some(m) = self.mapping.relationship.clone() {
                let cypher = format!("MATCH ()-[r:{}]->() RETURN r.{} AS k", ident(&m.rel_type), ident(ROW_KEY_PROPERTY));
                for r in self.rows(cypher, Vec::new()).await? {
                    let Ok(Some(k)) = r.get::<Option<String>>("k") else { continue };
                    let id = format!("[:{} {k}]", m.rel_type);
                    self.keys.entry(id.clone()).or_insert_with(|| BoltType::from(k));
                    ids.push(id);
                }
            }
            Ok(Some(ids))
        })
    }

    fn remove<'a>(&'a mut self, ids: &'a [String]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let keys: Vec<BoltType> = ids.iter().filter_map(|id| self.keys.get(id).cloned()).collect();
            let list = BoltType::List(BoltList::from(keys));
            let cypher = if let Some(m) = &self.mapping.node {
                let props: Vec<String> = m.key.keys().cloned().collect();
                format!("UNWIND $keys AS k MATCH (n:{} {}) DETACH DELETE n", ident(&m.label), key_pattern(&props, "k"))
            } else if let Some(m) = &self.mapping.relationship {
                format!("UNWIND $keys AS k MATCH ()-[r:{} {{{}: k}}]->() DELETE r", ident(&m.rel_type), ident(ROW_KEY_PROPERTY))
            } else {
                return Ok(());
            };
            self.graph.run(query(&cypher).param("keys", list)).await.map_err(|e| failed(&e))
        })
    }
}
