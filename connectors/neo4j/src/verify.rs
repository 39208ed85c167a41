//! Reading a route's nodes or relationships back for `pgfanout verify`.
//!
//! - `node`: a source row must be the node `(:Label {key})` with the mapped
//!   properties (key properties included), read with one `UNWIND ... MATCH`
//!   per batch. Every other property of the node is compared too (as
//!   "expected absent"), except pgfanout's `_pgfanout_version` and the
//!   properties the sink's other routes write on the label (see
//!   `ownership`): a property set behind pgfanout's back is reported, and
//!   `--repair` (a full write, which replaces the properties) removes it.
//!   When another route writes every column of its table on the label, only
//!   the route's own properties are compared. Extras: every node of the label
//!   whose key no row has (nodes another route MERGEs as relationship
//!   endpoints count too when their label is this one).
//! - `relationship`: a source row must be the relationship with its row key
//!   (`_pgfanout_key`), between the endpoints its columns name, with the
//!   mapped properties and no other (as for nodes). Extras: every
//!   relationship of the type.
//! - `cypher` routes run the user's statements: what they write cannot be
//!   told, so they are not verified.
//!
//! Values are compared exactly, by type and value, never through a float
//! that could merge two values: integers beyond 2^53 and floats with an
//! integral value are compared as tagged text (`{"integer": "…"}`,
//! `{"float": "2.0"}`), so `1` never equals `1.0` and no two distinct
//! integers compare equal.

use std::collections::HashMap;

use neo4rs::{query, BoltList, BoltMap, BoltNull, BoltString, BoltType, Graph};
use pgfanout_sdk::connector::BoxFuture;
use pgfanout_sdk::verify::{Expected, Verifier};
use pgfanout_sdk::{SinkError, SinkRecord};
use serde_json::{json, Map, Value as Json};

use crate::config::{Neo4jMapping, Neo4jSinkConfig, ROW_KEY_PROPERTY, VERSION_PROPERTY};
use crate::cypher::ident;
use crate::encode::{self, MAX_EXACT_INT};
use crate::error::Neo4jSinkError;
use crate::ownership;
use crate::sink::open_graph;

pub(crate) fn verifiable(m: &Neo4jMapping) -> Result<(), String> {
    if m.cypher.is_some() {
        return Err("a cypher mapping runs your own statements: what they write cannot be told from the row".into());
    }
    Ok(())
}

/// A verifier for route `route` of a sink whose routes are `routes`.
pub(crate) async fn connect(cfg: &Neo4jSinkConfig, routes: &[Neo4jMapping], route: usize) -> Result<Box<dyn Verifier>, SinkError> {
    let m = routes.get(route).ok_or_else(|| SinkError::Permanent(format!("no route {route}")))?;
    verifiable(m).map_err(SinkError::Permanent)?;
    let others = if m.node.is_some() { ownership::node_others(routes, route).keep } else { ownership::rel_others(routes, route) };
    let graph = open_graph(cfg).await?;
    Ok(Box::new(Neo4jVerifier { graph, mapping: m.clone(), others, keys: HashMap::new(), compared: HashMap::new() }))
}

pub(crate) struct Neo4jVerifier {
    graph: Graph,
    mapping: Neo4jMapping,
    /// The properties the sink's other routes write on the label or type
    /// (not compared); `None`: unknown, so only the route's own are compared.
    others: Option<Vec<String>>,
    /// id -> the node's key map, or the relationship's row key.
    keys: HashMap<String, BoltType>,
    /// id -> the properties the mapping writes there.
    compared: HashMap<String, Vec<String>>,
}

/// A Bolt value as JSON, exactly (see the module docs): no two distinct
/// values of the graph give equal JSON, whatever JSON numbers compare as.
fn to_json(v: &BoltType) -> Json {
    match v {
        BoltType::Null(_) => Json::Null,
        BoltType::Boolean(b) => Json::Bool(b.value),
        BoltType::Integer(i) if i.value.unsigned_abs() <= MAX_EXACT_INT => Json::from(i.value),
        BoltType::Integer(i) => json!({"integer": i.value.to_string()}),
        BoltType::Float(f) => match serde_json::Number::from_f64(f.value) {
            Some(n) if f.value.fract() != 0.0 => Json::Number(n),
            _ => json!({"float": format!("{:?}", f.value)}),
        },
        BoltType::String(s) => Json::String(s.value.clone()),
        BoltType::List(l) => Json::Array(l.value.iter().map(to_json).collect()),
        BoltType::Map(m) => {
            let mut entries: Vec<(&String, &BoltType)> = m.value.iter().map(|(k, v)| (&k.value, v)).collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Json::Object(entries.into_iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
        other => Json::String(format!("{other:?}")),
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

fn failed(e: neo4rs::Error) -> SinkError {
    Neo4jSinkError::bolt("verify", e).into()
}

fn column<T: serde::de::DeserializeOwned>(r: &neo4rs::Row, name: &str) -> Result<T, SinkError> {
    r.get::<T>(name).map_err(|e| Neo4jSinkError::Column { column: name.to_string(), detail: e.to_string() }.into())
}

impl Neo4jVerifier {
    fn node_id(label: &str, key: &Json) -> String {
        format!("(:{label} {key})")
    }

    /// The stored properties as compared: without bookkeeping, and without
    /// what other routes write (or, when that is unknown, only `own`).
    fn comparable(&self, props: &BoltType, own: Option<&Vec<String>>) -> Map<String, Json> {
        let Json::Object(mut props) = to_json(props) else { return Map::new() };
        props.remove(VERSION_PROPERTY);
        props.remove(ROW_KEY_PROPERTY);
        let mine = |k: &String| own.is_some_and(|o| o.contains(k));
        match &self.others {
            Some(others) => props.retain(|k, _| mine(k) || !others.contains(k)),
            None => props.retain(|k, _| mine(k)),
        }
        props
    }

    async fn rows(&self, cypher: String, params: Vec<(&str, BoltType)>) -> Result<Vec<neo4rs::Row>, SinkError> {
        let mut q = query(&cypher);
        for (k, v) in params {
            q = q.param(k, v);
        }
        let mut stream = self.graph.execute(q).await.map_err(failed)?;
        let mut out = Vec::new();
        while let Some(row) = stream.next().await.map_err(failed)? {
            out.push(row);
        }
        Ok(out)
    }
}

impl Verifier for Neo4jVerifier {
    fn expect(&mut self, record: &SinkRecord) -> Result<Vec<Expected>, String> {
        let change = &record.change;
        if let Some(m) = &self.mapping.node {
            let (row, _) = encode::node_row(m, change)?;
            let key = field(&row, "k").cloned().unwrap_or(BoltType::Null(BoltNull));
            let key_json = to_json(&key);
            let mut value = key_json.as_object().cloned().unwrap_or_default();
            if let Some(Json::Object(p)) = field(&row, "p").map(to_json) {
                value.extend(p);
            }
            let mut compared: Vec<String> = value.keys().cloned().collect();
            compared.extend(m.properties.as_ref().map_or_else(Vec::new, |p| p.keys().cloned().collect()));
            // A graph cannot hold a null property: NULL columns are absent.
            value.retain(|_, v| !v.is_null());
            let id = Self::node_id(&m.label, &key_json);
            self.compared.insert(id.clone(), compared);
            self.keys.insert(id.clone(), key);
            return Ok(vec![Expected { id, value: Json::Object(value) }]);
        }
        if let Some(m) = &self.mapping.relationship {
            let (row, _) = encode::rel_row(m, change)?;
            let row_key = encode::row_key(m, change)?;
            let mut value = match field(&row, "p").map(to_json) {
                Some(Json::Object(p)) => p,
                _ => Map::new(),
            };
            let mut compared: Vec<String> = value.keys().cloned().collect();
            compared.extend(m.properties.as_ref().map_or_else(Vec::new, |p| p.keys().cloned().collect()));
            value.retain(|_, v| !v.is_null());
            value.insert("_from".into(), field(&row, "f").map(to_json).unwrap_or(Json::Null));
            value.insert("_to".into(), field(&row, "t").map(to_json).unwrap_or(Json::Null));
            let id = format!("[:{} {row_key}]", m.rel_type);
            self.compared.insert(id.clone(), compared);
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
                    let i: i64 = column(&r, "i")?;
                    let Some(slot) = usize::try_from(i).ok().and_then(|i| out.get_mut(i)) else { continue };
                    let p: BoltType = column(&r, "p")?;
                    *slot = Some(Json::Object(self.comparable(&p, self.compared.get(&ids[i as usize]))));
                }
            } else if let Some(m) = &self.mapping.relationship {
                let cypher = format!(
                    "UNWIND $rows AS row MATCH (a)-[r:{} {{{}: row.k}}]->(b) RETURN row.i AS i, properties(r) AS p, properties(a) AS a, properties(b) AS b",
                    ident(&m.rel_type),
                    ident(ROW_KEY_PROPERTY)
                );
                let pick = |props: &BoltType, keys: Vec<&String>| -> Json {
                    Json::Object(keys.into_iter().map(|k| (k.clone(), field(props, k).map(to_json).unwrap_or(Json::Null))).collect())
                };
                for r in self.rows(cypher, vec![("rows", rows)]).await? {
                    let i: i64 = column(&r, "i")?;
                    let Some(id) = usize::try_from(i).ok().and_then(|i| ids.get(i)) else { continue };
                    let mut p = self.comparable(&column::<BoltType>(&r, "p")?, self.compared.get(id));
                    p.insert("_from".into(), pick(&column::<BoltType>(&r, "a")?, m.from.key.keys().collect()));
                    p.insert("_to".into(), pick(&column::<BoltType>(&r, "b")?, m.to.key.keys().collect()));
                    out[i as usize] = Some(Json::Object(p));
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
                    let k: BoltType = column(&r, "k")?;
                    let id = Self::node_id(&m.label, &to_json(&k));
                    self.keys.entry(id.clone()).or_insert(k);
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
            self.graph.run(query(&cypher).param("keys", list)).await.map_err(failed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neo4rs::{BoltFloat, BoltInteger};

    #[test]
    fn values_compare_exactly() {
        let diff = |a: BoltType, b: BoltType| pgfanout_sdk::verify::diff_fields(&to_json(&a), &to_json(&b));
        let int = |i: i64| BoltType::Integer(BoltInteger::new(i));
        let float = |f: f64| BoltType::Float(BoltFloat::new(f));
        assert!(diff(int(42), int(42)).is_empty());
        assert!(diff(float(2.5), float(2.5)).is_empty());
        assert!(!diff(int(1), float(1.0)).is_empty(), "an integer is not a float");
        assert!(!diff(int(9_007_199_254_740_993), int(9_007_199_254_740_992)).is_empty());
        assert!(!diff(float(1e300), int(i64::MAX)).is_empty());
        assert!(!diff(BoltType::from("42"), int(42)).is_empty(), "text is not a number");
        assert_eq!(to_json(&float(2.0)), json!({"float": "2.0"}));
    }
}
