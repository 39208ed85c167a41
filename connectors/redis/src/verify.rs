//! Reading a route's Redis state back for `pgfanout verify`.
//!
//! What a source row must look like in Redis is what [`encode`] writes for
//! it as a snapshot row: a whole hash (`HGETALL`, every field compared as
//! text, a field no column maps to is a difference), one hash field, a
//! string or RedisJSON document (compared as JSON when it holds a row), a set
//! member, or a sorted-set member with its score. Streams are append-only
//! logs of changes, not state: they cannot be verified.
//!
//! Comparisons are exact: JSON is read with [`exact_json`], which keeps
//! every number's digits (`2.50` differs from `2.5`). Two stores hold only
//! 64-bit numbers, and there both sides are compared as the store keeps
//! them: RedisJSON documents (numbers as i64/u64/f64) and sorted-set scores
//! (doubles).
//!
//! Repairs write the row again through the sink; for the mappings whose
//! entry is the whole row (a hash per row, a string, a RedisJSON document,
//! a hash field holding the row) that write replaces the entry, stray
//! fields included. Extra entries (keys, hash fields of a field mapping,
//! set and sorted-set members) are removed.
//!
//! Extras: the route's key space is the key template with every placeholder
//! as `*` (`cart:{user_id}` → `SCAN MATCH cart:*`, of the mapping's Redis
//! type), and for field/member mappings every field or member of those keys.
//! Keys of another mapping that match the same pattern and type would be
//! reported as extra: give mappings distinct key prefixes.

use std::collections::HashMap;

use pgfanout_sdk::connector::BoxFuture;
use pgfanout_sdk::verify::{Expected, Verifier};
use pgfanout_sdk::{SinkError, SinkRecord};
use redis::aio::ConnectionManager;
use serde_json::Value as Json;

use crate::client::build_client;
use crate::config::{MappingKind, RedisMapping, RedisSinkConfig};
use crate::encode::{encode, CompiledMapping, WHOLE_KEY};
use crate::error::RedisSinkError;
use crate::exact_json;

/// Where one entry lives.
#[derive(Debug, Clone)]
struct Target {
    key: String,
    /// Field or member; `None` for a whole key.
    sub: Option<String>,
}

pub(crate) struct RedisVerifier {
    conn: ConnectionManager,
    mapping: CompiledMapping,
    version_prefix: String,
    targets: HashMap<String, Target>,
}

/// Why route `m` cannot be verified, if it cannot.
pub(crate) fn verifiable(m: &RedisMapping) -> Result<(), String> {
    match m.kind {
        MappingKind::Stream => Err("a stream mapping appends every change: it holds a log, not state to compare".into()),
        _ => Ok(()),
    }
}

pub(crate) async fn connect(cfg: &RedisSinkConfig, m: &RedisMapping) -> Result<Box<dyn Verifier>, SinkError> {
    verifiable(m).map_err(SinkError::Permanent)?;
    let mapping = CompiledMapping::compile(m).map_err(SinkError::Permanent)?;
    let client = build_client(cfg)?;
    let conn = ConnectionManager::new(client).await.map_err(RedisSinkError::request)?;
    Ok(Box::new(RedisVerifier { conn, mapping, version_prefix: cfg.version_prefix.clone(), targets: HashMap::new() }))
}

fn id_of(key: &str, sub: Option<&str>) -> String {
    match sub {
        None => key.to_string(),
        Some(s) => format!("{key} [{s}]"),
    }
}

/// Text that may hold a row as JSON: parsed (exactly, see [`exact_json`]),
/// so that key order and whitespace do not count as differences.
fn json_or_text(s: &str) -> Json {
    match exact_json::parse(s) {
        Some(v @ (Json::Object(_) | Json::Array(_))) => v,
        _ => Json::String(s.to_string()),
    }
}

/// A sorted-set score as Redis keeps it: the nearest double.
fn score(text: &str) -> Json {
    text.trim().parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Json::Number).unwrap_or(Json::Null)
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisVerifier {
    fn remember(&mut self, key: &str, sub: Option<&str>) -> String {
        let id = id_of(key, sub);
        self.targets.entry(id.clone()).or_insert_with(|| Target { key: key.to_string(), sub: sub.map(str::to_string) });
        id
    }

    fn redis_type(&self) -> &'static str {
        match self.mapping.kind {
            MappingKind::Hash => "hash",
            MappingKind::String => "string",
            MappingKind::Json => "ReJSON-RL",
            MappingKind::Set => "set",
            MappingKind::SortedSet => "zset",
            MappingKind::Stream => "stream",
        }
    }
}

impl Verifier for RedisVerifier {
    fn expect(&mut self, record: &SinkRecord) -> Result<Vec<Expected>, String> {
        let encoded = encode(&self.mapping, &record.change)?;
        let mut out = Vec::new();
        for op in encoded.ops {
            let sub = (op.sub != WHOLE_KEY).then_some(op.sub.as_str());
            let text = |i: usize| op.args.get(i).map(|a| String::from_utf8_lossy(a).into_owned()).unwrap_or_default();
            let value = match op.code {
                "H" => {
                    let mut fields = serde_json::Map::new();
                    for pair in op.args.chunks(2) {
                        fields.insert(
                            String::from_utf8_lossy(&pair[0]).into_owned(),
                            Json::String(String::from_utf8_lossy(&pair[1]).into_owned()),
                        );
                    }
                    Json::Object(fields)
                }
                "HF" | "HM" | "S" => json_or_text(&text(0)),
                "J" => exact_json::as_f64_store(json_or_text(&text(0))),
                "SA" => Json::Bool(true),
                "ZA" => score(&text(0)),
                // Removals (of a moved row's old target) and version-only ops
                // describe no state of a snapshot row.
                _ => continue,
            };
            let id = self.remember(&op.key, sub);
            out.push(Expected { id, value });
        }
        Ok(out)
    }

    fn read<'a>(&'a mut self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<Option<Json>>, SinkError>> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            let kind = self.mapping.kind;
            for id in ids {
                let t = self.targets.get(id).ok_or_else(|| SinkError::Permanent(format!("unknown entry {id}")))?;
                match (kind, &t.sub) {
                    (MappingKind::Hash, None) => pipe.cmd("HGETALL").arg(&t.key),
                    (MappingKind::Hash, Some(f)) => pipe.cmd("HGET").arg(&t.key).arg(f),
                    (MappingKind::String, _) => pipe.cmd("GET").arg(&t.key),
                    (MappingKind::Json, _) => pipe.cmd("JSON.GET").arg(&t.key).arg("$"),
                    (MappingKind::Set, Some(m)) => pipe.cmd("SISMEMBER").arg(&t.key).arg(m),
                    (MappingKind::SortedSet, Some(m)) => pipe.cmd("ZSCORE").arg(&t.key).arg(m),
                    _ => return Err(SinkError::Permanent(format!("entry {id} cannot be read for a {} mapping", kind.as_str()))),
                };
            }
            let replies: Vec<redis::Value> = pipe.query_async(&mut self.conn).await.map_err(RedisSinkError::request)?;
            let text = |v: &redis::Value| -> Option<String> {
                match v {
                    redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
                    redis::Value::SimpleString(s) => Some(s.clone()),
                    redis::Value::Double(d) => Some(d.to_string()),
                    redis::Value::Int(i) => Some(i.to_string()),
                    _ => None,
                }
            };
            let out = replies
                .iter()
                .map(|r| match (kind, r) {
                    (MappingKind::Hash, redis::Value::Array(items)) if !items.is_empty() => {
                        let mut fields = serde_json::Map::new();
                        for pair in items.chunks(2) {
                            if let [k, v] = pair {
                                fields.insert(text(k).unwrap_or_default(), Json::String(text(v).unwrap_or_default()));
                            }
                        }
                        Some(Json::Object(fields))
                    }
                    (MappingKind::Hash, redis::Value::Map(items)) if !items.is_empty() => Some(Json::Object(
                        items.iter().map(|(k, v)| (text(k).unwrap_or_default(), Json::String(text(v).unwrap_or_default()))).collect(),
                    )),
                    (MappingKind::Set, redis::Value::Int(1)) => Some(Json::Bool(true)),
                    (MappingKind::Set, _) => None,
                    (MappingKind::SortedSet, v) => text(v).map(|s| score(&s)),
                    // JSON.GET key $ answers a one-element array.
                    (MappingKind::Json, v) => text(v).map(|s| match exact_json::as_f64_store(json_or_text(&s)) {
                        Json::Array(mut a) if a.len() == 1 => a.remove(0),
                        other => other,
                    }),
                    (_, v) => text(v).map(|s| json_or_text(&s)),
                })
                .collect();
            Ok(out)
        })
    }

    fn list(&mut self) -> BoxFuture<'_, Result<Option<Vec<String>>, SinkError>> {
        Box::pin(async move {
            let pattern = self.mapping.key.pattern(glob_escape, "*");
            let mut keys: Vec<String> = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .arg("TYPE")
                    .arg(self.redis_type())
                    .query_async(&mut self.conn)
                    .await
                    .map_err(RedisSinkError::request)?;
                keys.extend(batch.into_iter().filter(|k| !k.starts_with(&self.version_prefix)));
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
            keys.sort();
            keys.dedup();
            let whole = matches!(self.mapping.kind, MappingKind::String | MappingKind::Json)
                || (self.mapping.kind == MappingKind::Hash && self.mapping.field.is_none());
            let mut ids = Vec::new();
            for key in keys {
                if whole {
                    ids.push(self.remember(&key, None));
                    continue;
                }
                let subs: Vec<String> = match self.mapping.kind {
                    MappingKind::Hash => redis::cmd("HKEYS").arg(&key).query_async(&mut self.conn).await,
                    MappingKind::Set => redis::cmd("SMEMBERS").arg(&key).query_async(&mut self.conn).await,
                    _ => redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).query_async(&mut self.conn).await,
                }
                .map_err(RedisSinkError::request)?;
                for sub in subs {
                    ids.push(self.remember(&key, Some(&sub)));
                }
            }
            Ok(Some(ids))
        })
    }

    fn remove<'a>(&'a mut self, ids: &'a [String]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            for id in ids {
                let Some(t) = self.targets.get(id) else { continue };
                let vkey = format!("{}{}", self.version_prefix, t.key);
                match (&t.sub, self.mapping.kind) {
                    (None, _) => pipe.cmd("DEL").arg(&t.key).arg(&vkey),
                    (Some(f), MappingKind::Hash) => pipe.cmd("HDEL").arg(&t.key).arg(f),
                    (Some(m), MappingKind::Set) => pipe.cmd("SREM").arg(&t.key).arg(m),
                    (Some(m), _) => pipe.cmd("ZREM").arg(&t.key).arg(m),
                };
            }
            let _: Vec<redis::Value> = pipe.query_async(&mut self.conn).await.map_err(RedisSinkError::request)?;
            Ok(())
        })
    }
}
