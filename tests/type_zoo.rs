//! The type zoo through every sink at once (issue 30): a table with a value
//! at the edge of every kind PostgreSQL has (numerics of 60 and 400 digits,
//! NaN and infinities, json with duplicate keys, jsonb with long numbers,
//! dates and timestamps BC, at year 294276 and infinite, control characters,
//! NULL array elements, a TOASTed column) is streamed by one daemon into a
//! file, Redis (string and hash mappings), OpenSearch and Kafka (native and debezium),
//! and from the native topic by an applier (`source.kafka`) into Redis and MongoDB,
//! on every path a value takes: the initial snapshot, inserts, partial
//! updates (unchanged TOAST), key changes, delete + re-insert, a SIGKILL and
//! its replay, a backfill, and `verify --repair` after stray fields were
//! added behind pgfanout's back. Every store must end equal to `to_jsonb` of
//! the rows, digit by digit: the mapping of these sinks is `to_jsonb`
//! itself (numbers compared by their text: serde_json's arbitrary_precision
//! keeps it). Neo4j and Cassandra have typed mappings and their own edge
//! value suites (`tests/neo4j.rs`, `tests/scylla.rs`).
#![cfg(all(feature = "kafka", feature = "elasticsearch", feature = "redis", feature = "mongodb"))]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::Duration;

use common::kafka::read_topics as read_records;
use common::*;
use serde_json::Value as Json;
use testkit::{FerretDb, KafkaBroker, OpenSearchNode, RedisServer};

const SCHEMA: &str = r#"
CREATE TABLE zoo (
    id int PRIMARY KEY,
    n60 numeric, n400 numeric, n_scaled numeric(30, 10), n_special numeric,
    f8 float8, f4 real, i8 int8,
    j json, jb jsonb,
    d date, ts timestamp, tstz timestamptz,
    t text, b bytea, arr int4[], tarr text[], ip inet, iv interval, u uuid,
    big text
);
ALTER TABLE zoo ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE FUNCTION zoo_rows(lo int, hi int, salt int) RETURNS SETOF zoo LANGUAGE sql AS $$
SELECT g,
    (repeat('7', 30) || g || '.' || repeat('3', 28) || salt)::numeric,
    (repeat('9', 399) || g)::numeric,
    (g || '.5' || salt)::numeric(30, 10),
    (CASE g % 4 WHEN 0 THEN 'NaN' WHEN 1 THEN 'Infinity' WHEN 2 THEN '-Infinity' ELSE '-0.000' END)::numeric,
    (CASE g % 4 WHEN 0 THEN 'NaN' WHEN 1 THEN '1e308' WHEN 2 THEN '5e-324' ELSE '-0.1' END)::float8,
    (CASE g % 3 WHEN 0 THEN '3.4028235e+38' WHEN 1 THEN '1.17549435e-38' ELSE 'Infinity' END)::real,
    -9223372036854775808 + g + salt,
    ('{"k": ' || g || ', "k": "last", "n": 1.0e2, "big": 123456789012345678901234567890.1234567890, "a": [1E-3, -0]}')::json,
    jsonb_build_object('big', 1e30::numeric + g + salt, 'tiny', 1e-30::numeric, 'arr', jsonb_build_array(1.50, null, 'x')),
    (CASE g % 4 WHEN 0 THEN '0044-03-15 BC' WHEN 1 THEN 'infinity' WHEN 2 THEN '5874897-12-31' ELSE '2024-02-29' END)::date,
    (CASE g % 4 WHEN 0 THEN '4713-01-01 00:00:00 BC' WHEN 1 THEN '294276-12-31 23:59:59.999999' WHEN 2 THEN '-infinity'
                ELSE '2024-02-29 13:14:15.123456' END)::timestamp,
    (CASE g % 3 WHEN 0 THEN '0010-05-06 07:08:09.000001+00 BC' WHEN 1 THEN 'infinity' ELSE '2024-02-29 13:14:15.5+05:30' END)::timestamptz,
    E'quote " backslash \\ nl \n tab \t é ✓ 🎉 \x01 ' || g,
    decode(md5(g::text), 'hex'),
    (CASE g % 2 WHEN 0 THEN ARRAY[NULL, g, NULL] ELSE '{}' END)::int4[],
    ARRAY['a b', NULL, '"q"', ''],
    ('2001:db8::' || g || '/64')::inet,
    (g || ' days 04:05:06.789')::interval,
    md5(g::text)::uuid,
    repeat(md5((g + salt)::text), 100)
FROM generate_series(lo, hi) g
$$;
"#;

#[allow(clippy::too_many_arguments)]
fn config(
    pg: &PgCluster,
    db: &str,
    redis: &str,
    search: &str,
    kafka: &str,
    mongo: &str,
    out: &std::path::Path,
    dir: &std::path::Path,
) -> String {
    let sinks = format!(
        "  audit: {{ type: file, path: \"{out}\" }}\n\
         \x20 cache: {{ type: redis, url: \"{redis}\", reconnect_max_delay: 1s }}\n\
         \x20 search: {{ type: opensearch, urls: [\"{search}\"], retry: {{ max_backoff: 1s }} }}\n\
         \x20 events: {{ type: kafka, brokers: \"{kafka}\", delivery_timeout: 5s }}\n\
         \x20 docs: {{ type: mongodb, uri: \"{mongo}\", database: zoo, timeout: 2s }}",
        out = out.display()
    );
    let pipelines = "  - { name: audit, from: public.zoo, to: audit }\n\
        \x20 - { name: cache, from: public.zoo, to: cache, redis: { type: string, key: \"zoo:{id}\" } }\n\
        \x20 - { name: hashes, from: public.zoo, to: cache, redis: { type: hash, key: \"zooh:{id}\" } }\n\
        \x20 - { name: search, from: public.zoo, to: search, opensearch: { index: zoo, id: \"{id}\", mappings: { dynamic: false } } }\n\
        \x20 - { name: native, from: public.zoo, to: events, kafka: { topic: zoo-native, format: native } }\n\
        \x20 - { name: debezium, from: public.zoo, to: events, kafka: { topic: zoo-debezium, key: \"{id}\", format: debezium } }\n\
        \x20 - { name: docs, from: public.zoo, to: docs, mongodb: { collection: zoo } }";
    daemon_config(pg, db, db, &sinks, pipelines, &dir.join(format!("{db}.dead.jsonl"))).replace("snapshot: never", "snapshot: initial")
}

/// Replays change records (pgfanout's record: `op`, `key`, `before`,
/// `after`, `unchanged_toast`) into the rows they describe, the way a
/// consumer keeping a table would: a partial change keeps the columns it
/// did not carry from the row's previous state, a key change moves the
/// row.
#[derive(Default)]
struct Replay {
    state: HashMap<String, Json>,
}

impl Replay {
    fn id(row: &Json) -> String {
        row["id"].to_string()
    }

    fn apply(&mut self, op: &str, before: &Json, after: &Json, unchanged: &[String]) {
        match op {
            "delete" | "d" => {
                self.state.remove(&Self::id(before));
            }
            "truncate" | "t" => self.state.clear(),
            _ => {
                let id = Self::id(after);
                let old_id = if before.is_object() { Self::id(before) } else { id.clone() };
                let previous = self.state.remove(&old_id).or_else(|| self.state.get(&id).cloned());
                let mut row = after.clone();
                for col in unchanged {
                    if let Some(v) = previous.as_ref().and_then(|p| p.get(col)) {
                        row[col.as_str()] = v.clone();
                    }
                }
                self.state.insert(id, row);
            }
        }
    }

    fn record(&mut self, r: &Json) {
        let unchanged: Vec<String> =
            r["unchanged_toast"].as_array().map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_string)).collect()).unwrap_or_default();
        let before = if r["op"] == "delete" && r["before"].is_null() { &r["key"] } else { &r["before"] };
        self.apply(r["op"].as_str().unwrap_or_default(), before, &r["after"], &unchanged);
    }

    /// A Debezium envelope: unchanged TOASTed columns are absent from
    /// `after`, so every column `before`'s previous state has and `after`
    /// lacks is carried over.
    fn debezium(&mut self, v: &Json) {
        let op = v["op"].as_str().unwrap_or_default();
        let after = &v["after"];
        let before = &v["before"];
        let unchanged: Vec<String> = match (op, after.as_object()) {
            ("u", Some(a)) => {
                let old_id = if before.is_object() { Self::id(before) } else { Self::id(after) };
                let prev = self.state.get(&old_id).or_else(|| self.state.get(&Self::id(after)));
                prev.and_then(Json::as_object).map(|p| p.keys().filter(|k| !a.contains_key(*k)).cloned().collect()).unwrap_or_default()
            }
            _ => Vec::new(),
        };
        self.apply(op, before, after, &unchanged);
    }
}

fn assert_same_rows(what: &str, got: &HashMap<String, Json>, want: &BTreeMap<String, Json>) {
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "{what}: missing {missing:?}, extra {extra:?}");
    let mut differ = Vec::new();
    for (id, row) in want {
        let have = &got[id];
        for (col, v) in row.as_object().expect("row object") {
            if have.get(col) != Some(v) {
                differ.push(format!("{id}.{col}: want {v}, have {}", have.get(col).map(Json::to_string).unwrap_or("(absent)".into())));
            }
        }
        if have.as_object().is_some_and(|h| h.len() != row.as_object().map_or(0, |r| r.len())) {
            differ.push(format!("{id}: fields {:?}", have.as_object().map(|h| h.keys().collect::<Vec<_>>())));
        }
    }
    assert!(differ.is_empty(), "{what}: {} values differ from to_jsonb, e.g.\n{}", differ.len(), differ[..differ.len().min(8)].join("\n"));
}

/// Every value of a topic's partitions, in partition order (one partition
/// per key keeps each key's order).
fn read_topic(bootstrap: &str, topic: &str, min: usize, timeout: Duration) -> Vec<(Option<String>, Json)> {
    let mut n = 0;
    let records = read_records(bootstrap, &[topic], timeout, Duration::from_secs(2), |_| {
        n += 1;
        n >= min
    });
    assert!(records.len() >= min, "{topic}: {} records, expected at least {min}", records.len());
    let mut by_partition: BTreeMap<i32, Vec<(Option<String>, Json)>> = BTreeMap::new();
    for r in records {
        let value = r.value.as_deref().map(|p| serde_json::from_slice(p).expect("JSON value")).unwrap_or(Json::Null);
        by_partition.entry(r.partition).or_default().push((r.key_text(), value));
    }
    by_partition.into_values().flatten().collect()
}

fn run_cli(args: &[&str], config: &std::path::Path) -> (i32, String) {
    let out = tokio::task::block_in_place(|| Command::new(bin()).args(&args[..1]).arg("-c").arg(config).args(&args[1..]).output().unwrap());
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_type_zoo_reaches_every_store_exactly_on_every_path() {
    let db = "zoo";
    let (pg, c) = cluster_with(db, &[("wal_sender_timeout", "10s"), ("timezone", "UTC")]).await;
    c.batch_execute(SCHEMA).await.unwrap();
    // Rows before the first start: the initial snapshot.
    c.batch_execute("INSERT INTO zoo SELECT * FROM zoo_rows(1, 40, 1)").await.unwrap();
    let redis = tokio::task::spawn_blocking(RedisServer::start).await.unwrap();
    let search = tokio::task::spawn_blocking(|| OpenSearchNode::shared().url()).await.unwrap();
    let kafka = tokio::task::spawn_blocking(|| KafkaBroker::shared().bootstrap()).await.unwrap();
    let ferret = tokio::task::block_in_place(|| FerretDb::start(&pg));
    let dir = scratch();
    let out = out_path(dir.path(), db);
    let yaml = config(&pg, db, &redis.url(), &search, &kafka, &ferret.uri(), &out, dir.path());
    let path = dir.path().join("zoo.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let mut d = Daemon::start(bin(), dir.path(), db, &yaml);
    testkit::wait_until(Duration::from_secs(120), "the snapshot", || d.log().contains("snapshot complete"));

    // Inserts, partial updates (big is TOASTed and unchanged), key changes.
    c.batch_execute("INSERT INTO zoo SELECT * FROM zoo_rows(41, 80, 2)").await.unwrap();
    c.batch_execute("UPDATE zoo SET i8 = i8 + 1, n60 = n60 + 0.0000000000000000000000000001 WHERE id % 3 = 0").await.unwrap();
    c.batch_execute("UPDATE zoo SET id = id + 1000 WHERE id % 7 = 1").await.unwrap();
    c.batch_execute("UPDATE zoo SET t = t || '+' WHERE id > 1000").await.unwrap();
    // A crash, then delete + re-insert of the same keys while down.
    tokio::time::sleep(Duration::from_millis(200)).await;
    d.kill9();
    c.batch_execute("DELETE FROM zoo WHERE id % 11 = 2; INSERT INTO zoo SELECT * FROM zoo_rows(1, 80, 3) z WHERE z.id % 11 = 2")
        .await
        .unwrap();
    c.batch_execute("UPDATE zoo SET n_scaled = n_scaled + 1, id = id + 2000 WHERE id % 13 = 4").await.unwrap();
    d.spawn(bin());
    c.batch_execute("UPDATE zoo SET jb = jb || '{\"more\": 99999999999999999999.99999999999999999999}' WHERE id % 2 = 0").await.unwrap();
    // A backfill of the whole table while streaming.
    let (code, text) = run_cli(&["backfill", "--table", "public.zoo"], &path);
    assert_eq!(code, 0, "{text}");
    testkit::wait_until(Duration::from_secs(120), "the backfill", || d.log().contains("backfill done"));
    c.batch_execute("UPDATE zoo SET f8 = -f8 WHERE id % 5 = 0").await.unwrap();

    let end = insert_lsn(&c).await;
    testkit::wait_for(Duration::from_secs(180), "everything confirmed", || {
        let c = &c;
        async move { confirmed_flush(c, db).await >= end }
    })
    .await;
    let want = rows_by_id(&c, "zoo").await;
    assert!(want.len() > 70, "{}", want.len());
    let toasted: i64 = c.query_one("SELECT count(*) FROM zoo WHERE pg_column_size(big) > 2000", &[]).await.unwrap().get(0);
    assert!(toasted == want.len() as i64, "every row's big column must be TOASTed: {toasted}");

    // The search index.
    let h = reqwest::Client::new();
    let docs: HashMap<String, Json> = documents(&search, "zoo").await.into_iter().collect();
    assert_same_rows("opensearch", &docs, &want);

    // Redis, string mapping: one JSON document per row, no key left behind.
    let mut cached = HashMap::new();
    for key in redis.cli(&["--scan", "--pattern", "zoo:*"]).lines().filter(|k| !k.trim().is_empty()) {
        let text = redis.cli(&["GET", key.trim()]);
        let doc: Json = serde_json::from_str(text.trim_end_matches('\n')).unwrap_or_else(|e| panic!("{key}: {e}: {text}"));
        cached.insert(key.trim().trim_start_matches("zoo:").to_string(), doc);
    }
    assert_same_rows("redis string", &cached, &want);

    // Redis, hash per row: a field per non-NULL column, strings bare,
    // numbers and booleans as their JSON text, JSON values as JSON.
    let hash_keys: Vec<String> = redis.keys().into_iter().filter(|k| k.starts_with("zooh:")).collect();
    assert_eq!(hash_keys.len(), want.len(), "one hash per row: {hash_keys:?}");
    let mut hash_diffs = Vec::new();
    for (id, row) in &want {
        let fields: HashMap<String, String> = redis.cmd(&["HGETALL", &format!("zooh:{id}")]).pairs().into_iter().collect();
        let row = row.as_object().expect("row");
        for (col, v) in row {
            let have = fields.get(col);
            let same = match v {
                Json::Null => have.is_none(),
                Json::String(s) => have == Some(s),
                Json::Number(_) | Json::Bool(_) => have.map(String::as_str) == Some(v.to_string().as_str()),
                _ => have.and_then(|h| serde_json::from_str::<Json>(h).ok()).as_ref() == Some(v),
            };
            if !same {
                hash_diffs.push(format!("zooh:{id} {col}: want {v}, have {have:?}"));
            }
        }
        for f in fields.keys().filter(|f| !row.contains_key(*f)) {
            hash_diffs.push(format!("zooh:{id}: stray field {f}"));
        }
    }
    assert!(hash_diffs.is_empty(), "redis hash: {} differ, e.g.\n{}", hash_diffs.len(), hash_diffs[..hash_diffs.len().min(8)].join("\n"));

    // MongoDB (FerretDB): one document per row, every value exact (numbers
    // no double holds as their text: FerretDB has no decimal128).
    let stored = collection_documents(&ferret.uri(), "zoo", "zoo").await;
    assert_eq!(stored.keys().collect::<std::collections::BTreeSet<_>>(), want.keys().collect(), "mongodb: the documents' ids");
    let differ: Vec<String> = want
        .iter()
        .filter(|(id, row)| !same(row, &mongodb::bson::Bson::Document(stored[*id].clone())))
        .map(|(id, row)| format!("{id}:\n  want {row}\n  got  {}", stored[id]))
        .collect();
    assert!(differ.is_empty(), "mongodb: {} documents differ, e.g.\n{}", differ.len(), differ[..differ.len().min(3)].join("\n"));

    // The file: replayed as a consumer would.
    let mut file = Replay::default();
    for r in records(&out) {
        file.record(&r);
    }
    assert_same_rows("file", &file.state, &want);

    // Kafka, native and debezium.
    let n = want.len();
    let mut native = Replay::default();
    for (_, v) in read_topic(&kafka, "zoo-native", n, Duration::from_secs(120)) {
        if !v.is_null() {
            native.record(&v);
        }
    }
    assert_same_rows("kafka native", &native.state, &want);
    let mut dbz = Replay::default();
    for (_, v) in read_topic(&kafka, "zoo-debezium", n, Duration::from_secs(120)) {
        if !v.is_null() {
            dbz.debezium(&v);
        }
    }
    assert_same_rows("kafka debezium", &dbz.state, &want);

    let dead = dir.path().join(format!("{db}.dead.jsonl"));
    assert_eq!(line_count(&dead), 0, "no dead letters: {}", std::fs::read_to_string(&dead).unwrap_or_default());

    // The applier path: the native topic (snapshot, partial updates, key
    // changes, the replay after the SIGKILL, the backfill) read back by a
    // pgfanout with `source.kafka` into Redis and MongoDB, whose typed
    // documents tell json text from a composite or an array.
    let sinks = format!(
        "  cache: {{ type: redis, url: \"{}\", reconnect_max_delay: 1s }}\n  docs: {{ type: mongodb, uri: \"{}\", database: zoo, timeout: 2s }}",
        redis.url(),
        ferret.uri()
    );
    let pipelines = "  - { name: cache, from: public.zoo, to: cache, redis: { type: string, key: \"applied:{id}\" } }\n\
        \x20 - { name: docs, from: public.zoo, to: docs, mongodb: { collection: applied } }";
    let applier_dead = dir.path().join("applier.dead.jsonl");
    let applier_yaml = daemon_config(&pg, db, db, &sinks, pipelines, &applier_dead).replacen(
        "sinks:\n",
        &format!("  kafka: {{ brokers: \"{kafka}\", topics: [zoo-native], group: zoo-applier }}\nsinks:\n"),
        1,
    );
    let applier = Daemon::start(bin(), dir.path(), "applier", &applier_yaml);
    let applied = |redis: &RedisServer| -> HashMap<String, Json> {
        redis
            .keys()
            .into_iter()
            .filter(|k| k.starts_with("applied:"))
            .filter_map(|k| Some((k["applied:".len()..].to_string(), serde_json::from_str(&redis.cmd(&["GET", &k]).opt_text()?).unwrap())))
            .collect()
    };
    // Each store converges on its own (FerretDB is the slower one under
    // load): both are read until they equal the table, or 180 s pass.
    let differing = |stored: &std::collections::BTreeMap<String, mongodb::bson::Document>| -> Vec<String> {
        want.iter()
            .filter(|(id, row)| !stored.get(*id).is_some_and(|d| same(row, &mongodb::bson::Bson::Document(d.clone()))))
            .map(|(id, row)| format!("{id}:\n  want {row}\n  got  {:?}", stored.get(id)))
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let (rows, stored) = loop {
        let rows = applied(&redis);
        let stored = collection_documents(&ferret.uri(), "zoo", "applied").await;
        let redis_done = rows.len() == want.len() && rows.iter().all(|(id, row)| want.get(id) == Some(row));
        if (redis_done && stored.len() == want.len() && differing(&stored).is_empty()) || std::time::Instant::now() > deadline {
            break (rows, stored);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(rows.len() == want.len(), "the applier wrote {} of {} rows\n{}", rows.len(), want.len(), applier.log());
    assert_same_rows("redis through an applier", &rows, &want);
    let differ = differing(&stored);
    assert!(
        differ.is_empty(),
        "mongodb through an applier: {} differ after 180 s, e.g.\n{}\n{}",
        differ.len(),
        differ[..differ.len().min(3)].join("\n"),
        applier.log()
    );
    assert_eq!(stored.len(), want.len(), "mongodb through an applier: the documents' ids");
    assert_eq!(line_count(&applier_dead), 0, "no dead letters: {}", std::fs::read_to_string(&applier_dead).unwrap_or_default());
    drop(applier);

    // verify agrees; stray fields behind pgfanout's back are found and
    // removed by --repair.
    let (code, text) = run_cli(&["verify"], &path);
    assert_eq!(code, 0, "{text}");
    // pgfanout's own idempotent DDL (`CREATE SCHEMA IF NOT EXISTS
    // pgfanout`) does not print PostgreSQL notices at INFO.
    assert!(!text.lines().any(|l| l.contains("INFO") && l.contains("already exists, skipping")), "{text}");
    let id = want.keys().next().unwrap().clone();
    let resp =
        h.post(format!("{search}/zoo/_update/{id}?refresh=true")).json(&serde_json::json!({"doc": {"junk": 1}})).send().await.unwrap();
    assert!(resp.status().is_success(), "{:?}", resp.text().await);
    let mut doc = cached[&id].clone();
    doc["junk"] = Json::from(1);
    redis.cli(&["SET", &format!("zoo:{id}"), &doc.to_string()]);
    let (code, text) = run_cli(&["verify"], &path);
    assert_eq!(code, 1, "verify must see the stray fields: {text}");
    assert!(text.contains("junk"), "{text}");
    let (_, text) = run_cli(&["verify", "--repair"], &path);
    let (code, again) = run_cli(&["verify"], &path);
    assert_eq!(code, 0, "after --repair:\n{text}\nthen:\n{again}");
    d.signal("TERM");
    assert!(d.wait(Duration::from_secs(30)).expect("exit").success());
}
