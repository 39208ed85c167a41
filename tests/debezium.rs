//! Debezium's topics as a source: Debezium's PostgreSQL connector (3.6.1,
//! in its embedded engine, producing to Kafka as Kafka Connect would with
//! the JsonConverter and its schemas; testkit's `Debezium`) writes a
//! 3-partition topic, and two pgfanout appliers (`source.kafka`,
//! `format: debezium`) feed Redis and OpenSearch from it. Beside them, a
//! pgfanout on its own slot feeds the same stores under other names: the
//! two paths must end with the same values, and both equal to the table.
//!
//! Against real servers: PostgreSQL, Apache Kafka, Redis, OpenSearch and
//! Debezium itself. Rows made before Debezium starts come from its snapshot
//! (`op: r`); the workload then mixes inserts with large TOASTed values,
//! updates that leave them unchanged (Debezium's
//! `__debezium_unavailable_value`), key changes, a change and a move of one
//! row in one transaction, deletes, and values at the edges (25-digit
//! numerics, floats PostgreSQL prints in exponent form, jsonb, arrays,
//! bytea, dates and times). Debezium is SIGKILLed mid-way and restarted: it
//! sends again what it had not committed, and versions keep the copies from
//! taking rows back.
#![cfg(feature = "kafka")]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value as Json;
use testkit::{Debezium, KafkaBroker, OpenSearchNode, PgCluster, RedisServer, Server};

const TOPIC: &str = "dbz.public.items";

fn statement(w: &mut Workload) -> String {
    let n = |w: &mut Workload| {
        format!("{}{:03}.{:04}", 1_000_000_000_000_000u64 + w.rng.below(1 << 40), w.rng.below(1000), w.rng.below(10_000))
    };
    let floats = ["1.5e-300", "0.1", "1e16", "123456.789", "'-0'", "-0.5", "1e-5"];
    match (w.rng.below(100), w.pick()) {
        (0..35, _) | (_, None) => {
            let id = w.insert();
            let bio = if w.rng.below(2) == 0 { w.big("bio", "x", 3000) } else { "NULL".into() };
            let (num, k) = (n(w), w.rng.below(9));
            let f = floats[w.rng.below(floats.len() as u64) as usize];
            let day = w.rng.below(20_000);
            // unconstrained: Debezium keeps no trailing zeros of its scale
            let v = format!("{}.{}{}", w.rng.below(1 << 50), w.rng.below(10_000_000), 1 + w.rng.below(9));
            format!(
                "INSERT INTO items VALUES ({id}, {num}, {v}, '{{\"k\": {k}, \"f\": 1.50}}', ARRAY[{k}, NULL], {bio}, {f},
                   timestamp '1990-01-01 00:00:00' + interval '{day} hours 0.25 seconds', timestamptz '2001-02-03 04:05:06.5+02' + interval '{day} minutes',
                   date '1970-01-01' + {day}, '\\x{k:02x}ff'::bytea)"
            )
        }
        (35..60, Some(id)) => format!("UPDATE items SET n = n + 1.01, v = v * 3 WHERE id = {id}"),
        (60..70, Some(id)) => {
            format!("UPDATE items SET doc = jsonb_set(coalesce(doc, '{{}}'), '{{k}}', to_jsonb({})) WHERE id = {id}", w.rng.below(99))
        }
        (70..78, Some(id)) => {
            let to = w.rekey(id);
            let bio = w.big("moved", "y", 3000);
            format!("UPDATE items SET id = {to}, bio = {bio} WHERE id = {id}")
        }
        (78..84, Some(id)) => {
            let to = w.rekey(id);
            let bio = w.big("moved", "z", 3000);
            format!("UPDATE items SET n = n * 2 WHERE id = {id}; UPDATE items SET id = {to}, bio = {bio} WHERE id = {id}")
        }
        (_, Some(id)) => {
            w.delete(id);
            format!("DELETE FROM items WHERE id = {id}")
        }
    }
}

fn sinks(redis: &RedisServer, search: &OpenSearchNode) -> String {
    format!(
        "  cache: {{ type: redis, url: \"{}\", reconnect_max_delay: 1s }}\n  search: {{ type: opensearch, urls: [\"{}\"] }}",
        redis.url(),
        search.url()
    )
}

fn pipelines(prefix: &str, index: &str) -> String {
    format!(
        "  - name: rows\n    from: public.items\n    to: cache\n    redis: {{ type: string, key: \"{prefix}:{{id}}\" }}\n  - name: docs\n    from: public.items\n    to: search\n    elasticsearch: {{ index: {index} }}"
    )
}

/// An applier of Debezium's topic; `source.postgres` names Debezium's slot
/// (the position `/wait` starts from).
fn applier_config(
    pg: &PgCluster,
    broker: &KafkaBroker,
    redis: &RedisServer,
    search: &OpenSearchNode,
    dir: &Path,
    name: &str,
    http: Option<u16>,
) -> String {
    let listener = match http {
        Some(port) => format!("http:\n  listen: 127.0.0.1:{port}\n"),
        None => "http:\n  enabled: false\n".into(),
    };
    let kafka = format!(
        "  kafka:\n    brokers: \"{}\"\n    topics: [\"^dbz\\\\.public\\\\..*\"]\n    group: dbz-appliers\n    format: debezium\n    commit_interval: 200ms\n    properties: {{ session.timeout.ms: \"6000\", heartbeat.interval.ms: \"1000\", topic.metadata.refresh.interval.ms: \"1000\" }}\n",
        broker.bootstrap()
    );
    daemon_config(pg, "dbz", "dbz", &sinks(redis, search), &pipelines("item", "items"), &dir.join(format!("{name}.dead.jsonl")))
        .replacen("sinks:\n", &format!("{kafka}sinks:\n"), 1)
        .replacen("http:\n  enabled: false\n", &listener, 1)
        + "  batch_size: 200\n"
}

fn direct_config(pg: &PgCluster, redis: &RedisServer, search: &OpenSearchNode, dir: &Path) -> String {
    daemon_config(pg, "dbz", "direct", &sinks(redis, search), &pipelines("direct", "direct"), &dir.join("direct.dead.jsonl")).replacen(
        "snapshot: never",
        "snapshot: initial",
        1,
    )
}

/// Every row as `to_jsonb`.
async fn table(c: &tokio_postgres::Client) -> BTreeMap<String, Json> {
    c.query("SELECT id::text, to_jsonb(i)::text FROM items i", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), serde_json::from_str(r.get::<_, &str>(1)).unwrap()))
        .collect()
}

/// Redis values under `prefix:`, as their text (the two paths must write
/// the same bytes).
fn redis_rows(redis: &RedisServer, prefix: &str) -> BTreeMap<String, String> {
    let p = format!("{prefix}:");
    redis
        .keys()
        .into_iter()
        .filter(|k| k.starts_with(&p))
        .filter_map(|k| Some((k[p.len()..].to_string(), redis.cmd(&["GET", &k]).opt_text()?)))
        .collect()
}

async fn index_rows(url: &str, index: &str) -> BTreeMap<String, Json> {
    let http = reqwest::Client::new();
    let _ = http.post(format!("{url}/{index}/_refresh")).send().await;
    let body: Json = http
        .post(format!("{url}/{index}/_search"))
        .json(&serde_json::json!({"size": 10000, "query": {"match_all": {}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let Some(hits) = body["hits"]["hits"].as_array() else { return BTreeMap::new() };
    hits.iter().map(|h| (h["_id"].as_str().unwrap().to_string(), h["_source"].clone())).collect()
}

fn differences<V: PartialEq>(want: &BTreeMap<String, V>, got: &BTreeMap<String, V>) -> Vec<String> {
    let mut out: Vec<String> = want.iter().filter(|(id, row)| got.get(*id) != Some(*row)).map(|(id, _)| id.clone()).collect();
    out.extend(got.keys().filter(|id| !want.contains_key(*id)).cloned());
    out
}

async fn wait_log(d: &testkit::Daemon, what: &str) {
    let start = Instant::now();
    while !d.log().contains(what) {
        assert!(start.elapsed() < Duration::from_secs(90), "no {what:?} in the log after 90 s\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debeziums_topics_feed_redis_and_opensearch_as_pgfanouts_own_source_does() {
    let (pg, c) = cluster_with("dbz", &[("timezone", "UTC")]).await;
    c.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, n numeric(40,4) NOT NULL, v numeric, doc jsonb, tags int[], bio text, f float8,
           at timestamp, zoned timestamptz, day date, raw bytea);
         ALTER TABLE items ALTER COLUMN bio SET STORAGE EXTERNAL;",
    )
    .await
    .unwrap();
    let mut w = Workload::new(Mix { statement, max_statements: 4 }, 0x5eed_0d8e);
    // Rows Debezium's snapshot reads.
    let writer = pg.client("dbz").await;
    for _ in 0..40 {
        let sql = format!(
            "INSERT INTO items (id, n, v, bio) VALUES ({}, 0.10, 12345678901234567890.123456789, {})",
            w.insert(),
            w.big("snap", "s", 3000)
        );
        writer.batch_execute(&sql).await.unwrap();
    }

    let broker = tokio::task::spawn_blocking(KafkaBroker::start).await.unwrap();
    let search = tokio::task::spawn_blocking(OpenSearchNode::start).await.unwrap();
    let redis = tokio::task::spawn_blocking(RedisServer::start).await.unwrap();
    {
        use pgfanout_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<_> =
            pgfanout_kafka::rdkafka::ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).create().unwrap();
        let made = admin.create_topics(&[NewTopic::new(TOPIC, 3, TopicReplication::Fixed(1))], &AdminOptions::new()).await.unwrap();
        assert!(made.iter().all(Result::is_ok), "{made:?}");
    }
    // Both indexes mapped up front: dynamic mapping would race between
    // writers (a float and a long first seen at once refuse each other).
    for index in ["items", "direct"] {
        let mapping =
            serde_json::json!({"mappings": {"properties": {"f": {"type": "double"}, "n": {"type": "double"}, "v": {"type": "double"}}}});
        let r = reqwest::Client::new().put(format!("{}/{index}", search.url())).json(&mapping).send().await.unwrap();
        assert!(r.status().is_success(), "{:?}", r.text().await);
    }
    let dir = scratch();
    let d = dir.path();
    let bootstrap = broker.bootstrap();
    let debezium_props = [
        ("topic.prefix", "dbz"),
        ("slot.name", "dbz"),
        ("converter.schemas.enable", "true"),
        ("table.include.list", "public.items"),
        ("publication.autocreate.mode", "filtered"),
        ("heartbeat.interval.ms", "500"),
    ];
    let debezium = tokio::task::block_in_place(|| Debezium::start(&pg, "dbz", &bootstrap, &debezium_props));
    let direct = testkit::Daemon::start(bin(), d, "direct", &direct_config(&pg, &redis, &search, d));
    let a1_http = testkit::free_port();
    let mut appliers = vec![
        testkit::Daemon::start(bin(), d, "a1", &applier_config(&pg, &broker, &redis, &search, d, "a1", Some(a1_http))),
        testkit::Daemon::start(bin(), d, "a2", &applier_config(&pg, &broker, &redis, &search, d, "a2", None)),
    ];
    wait_slot(&c, "direct", &direct).await;
    for a in &appliers {
        wait_log(a, "partitions assigned").await;
    }

    let started = Instant::now();
    for round in 0..8 {
        w.run(&writer, 80).await;
        if round == 3 {
            // Debezium dies between producing and committing its offsets:
            // it sends again from its last flushed offset.
            tokio::task::block_in_place(|| debezium.kill());
            println!("SIGKILLed Debezium after {:?}", started.elapsed());
            w.run(&writer, 40).await;
            tokio::task::block_in_place(|| debezium.start_server());
            println!("Debezium restarted after {:?}", started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!("workload done after {:?}; {} rows", started.elapsed(), w.live());

    let want = table(&c).await;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (applied, direct_rows) = (redis_rows(&redis, "item"), redis_rows(&redis, "direct"));
        let (applied_docs, direct_docs) = (index_rows(&search.url(), "items").await, index_rows(&search.url(), "direct").await);
        let parsed = |m: &BTreeMap<String, String>| -> BTreeMap<String, Json> {
            m.iter().map(|(k, v)| (k.clone(), serde_json::from_str(v).unwrap_or(Json::Null))).collect()
        };
        let problems = [
            ("Redis (applier) vs the table", differences(&want, &parsed(&applied))),
            ("OpenSearch (applier) vs the table", differences(&want, &applied_docs)),
            ("Redis: applier vs pgfanout's own source, byte for byte", differences(&direct_rows, &applied)),
            ("OpenSearch: applier vs pgfanout's own source", differences(&direct_docs, &applied_docs)),
        ];
        if problems.iter().all(|(_, p)| p.is_empty()) {
            assert_eq!(applied.len(), want.len());
            break;
        }
        if Instant::now() > deadline {
            let mut report = String::new();
            for (what, ids) in &problems {
                report.push_str(&format!("{what}: {} differ, e.g. {:?}\n", ids.len(), &ids[..ids.len().min(5)]));
                if let Some(id) = ids.first() {
                    report.push_str(&format!(
                        "  table {:?}\n  applier redis {:?}\n  direct redis {:?}\n  applier doc {:?}\n  direct doc {:?}\n",
                        want.get(id),
                        applied.get(id),
                        direct_rows.get(id),
                        applied_docs.get(id),
                        direct_docs.get(id)
                    ));
                }
            }
            let logs: String = appliers.iter().map(|a| a.log()).collect::<Vec<_>>().join("\n----\n");
            panic!(
                "after 180 s the stores differ:\n{report}\n{logs}\n---- debezium\n{}",
                testkit::process::tail(&debezium.slot().log_file(), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "Redis and OpenSearch equal the table ({} rows) through Debezium and through pgfanout {:?} after the workload",
        want.len(),
        started.elapsed()
    );
    let letters: Vec<String> = appliers
        .iter()
        .flat_map(|a| {
            std::fs::read_to_string(a.config_path.with_extension("dead.jsonl"))
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(letters.is_empty(), "dead letters: {letters:?}");
    assert!(debezium.log().contains("Processing messages"), "Debezium streamed");

    // /wait on an applier: from Debezium's slot position, through the
    // topic's end offsets, to the group's committed offsets.
    for id in [900_001, 900_002] {
        c.batch_execute(&format!("INSERT INTO items (id, n, bio) VALUES ({id}, 1.5, 'waited')")).await.unwrap();
        let lsn: String = c.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
        let asked = Instant::now();
        let (status, body) = tokio::task::block_in_place(|| http_get(a1_http, &format!("/wait?lsn={lsn}&timeout=30s")));
        assert_eq!(status, 200, "{body}\n{}", appliers[0].log());
        let cached = redis.cmd(&["GET", &format!("item:{id}")]).opt_text();
        assert!(cached.is_some_and(|t| t.contains("waited")), "item:{id} is in Redis once /wait answered");
        assert!(index_rows(&search.url(), "items").await.contains_key(&id.to_string()), "{id} is in the index once /wait answered");
        println!("/wait through Debezium for row {id} answered after {:?}", asked.elapsed());
    }

    for a in appliers.iter_mut() {
        a.signal("TERM");
        let status = a.wait(Duration::from_secs(30)).expect("an applier stops on SIGTERM");
        assert!(status.success(), "{}", a.log());
    }
}
