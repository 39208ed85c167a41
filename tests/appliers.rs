//! Past one machine: one pgfanout reads the slot and writes the change
//! records to a 6-partition Kafka topic (`format: native`); several
//! pgfanout appliers (`source.kafka`) share the topic as one consumer group
//! and write it to Redis and OpenSearch.
//!
//! Against real servers: PostgreSQL, an Apache Kafka broker, Redis and an
//! OpenSearch node (testkit). While a random workload runs (inserts with
//! large TOASTed values, updates that leave them unchanged, key changes,
//! deletes, 25-digit numerics, jsonb and arrays), one applier is SIGKILLed
//! and another joins (two rebalances). A sampler reads the Redis versions of
//! the first rows all along: a version never goes back. A record that is no
//! change record is dead-lettered, and its partition goes on. At the end
//! Redis and the index equal the table, value for value.
#![cfg(feature = "kafka")]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value as Json;
use testkit::{KafkaBroker, OpenSearchNode, PgCluster, RedisServer};

const TOPIC: &str = "cdc.items";

/// One statement of the mix. Key changes set the large column too: a key
/// change that leaves a large value unchanged needs the old entry, which
/// lives on another partition (docs/operating.md#appliers).
fn statement(w: &mut Workload) -> String {
    let n = |w: &mut Workload| {
        format!("{}{:03}.{:04}", 1_000_000_000_000_000u64 + w.rng.below(1 << 40), w.rng.below(1000), w.rng.below(10_000))
    };
    match (w.rng.below(100), w.pick()) {
        (0..35, _) | (_, None) => {
            let id = w.insert();
            let bio = if w.rng.below(2) == 0 { w.big("bio", "x", 3000) } else { "NULL".into() };
            let (num, k) = (n(w), w.rng.below(9));
            format!("INSERT INTO items VALUES ({id}, {num}, '{{\"k\": {k}, \"f\": 1.50}}', ARRAY[{k}, NULL], {bio})")
        }
        (35..62, Some(id)) => format!("UPDATE items SET n = n + 1.01 WHERE id = {id}"),
        (62..72, Some(id)) => {
            format!("UPDATE items SET doc = jsonb_set(coalesce(doc, '{{}}'), '{{k}}', to_jsonb({})) WHERE id = {id}", w.rng.below(99))
        }
        (72..80, Some(id)) => {
            let to = w.rekey(id);
            let bio = w.big("moved", "y", 3000);
            format!("UPDATE items SET id = {to}, bio = {bio} WHERE id = {id}")
        }
        // A row changed, then moved, in one transaction: one version (the
        // commit LSN) on two partitions for a store that versions by it
        // alone (OpenSearch); the old key's tombstone keeps them in order.
        (80..86, Some(id)) => {
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

fn reader_config(pg: &PgCluster, broker: &KafkaBroker, dir: &Path) -> String {
    let pipeline =
        format!("  - name: cdc\n    from: public.items\n    to: events\n    kafka: {{ topic: {TOPIC}, key: \"{{id}}\", format: native, tombstones: true }}");
    kafka_config(pg, "appliers", "appliers", &broker.bootstrap(), "topics: { partitions: 6 }", &pipeline, dir)
}

/// An applier's config; `http`: the port of its listener (`/wait`), if any.
fn applier_config(
    pg: &PgCluster,
    broker: &KafkaBroker,
    redis: &RedisServer,
    search: &OpenSearchNode,
    dir: &Path,
    name: &str,
    http: Option<u16>,
) -> String {
    let sinks = format!(
        "  cache: {{ type: redis, url: \"{}\", reconnect_max_delay: 1s }}\n  search: {{ type: opensearch, urls: [\"{}\"] }}",
        redis.url(),
        search.url()
    );
    let pipelines = "  - name: rows\n    from: public.items\n    to: cache\n    redis: { type: string, key: \"item:{id}\" }\n  - name: docs\n    from: public.items\n    to: search\n    elasticsearch: { index: items }";
    let kafka = format!(
        "  kafka:\n    brokers: \"{}\"\n    topics: [{TOPIC}]\n    group: appliers\n    commit_interval: 200ms\n    properties: {{ session.timeout.ms: \"6000\", heartbeat.interval.ms: \"1000\" }}\n",
        broker.bootstrap()
    );
    let listener = match http {
        Some(port) => format!("http:\n  listen: 127.0.0.1:{port}\n"),
        None => "http:\n  enabled: false\n".into(),
    };
    daemon_config(pg, "appliers", "appliers", &sinks, pipelines, &dir.join(format!("{name}.dead.jsonl")))
        .replacen("sinks:\n", &format!("{kafka}sinks:\n"), 1)
        .replacen("http:\n  enabled: false\n", &listener, 1)
        + "  batch_size: 200\n"
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

fn redis_rows(redis: &RedisServer) -> BTreeMap<String, Json> {
    redis
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("item:"))
        .filter_map(|k| {
            // Gone since KEYS: a delete applied meanwhile.
            let text = redis.cmd(&["GET", &k]).opt_text()?;
            Some((k["item:".len()..].to_string(), serde_json::from_str(&text).unwrap_or_else(|e| panic!("{k}: {e}: {text}"))))
        })
        .collect()
}

/// Every document of the index (none while it does not exist).
async fn index_rows(url: &str) -> BTreeMap<String, Json> {
    let http = reqwest::Client::new();
    let _ = http.post(format!("{url}/items/_refresh")).send().await;
    let body: Json = http
        .post(format!("{url}/items/_search"))
        .json(&serde_json::json!({"size": 10000, "query": {"match_all": {}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let Some(hits) = body["hits"]["hits"].as_array() else {
        assert_eq!(body["status"], 404, "{body}");
        return BTreeMap::new();
    };
    hits.iter().map(|h| (h["_id"].as_str().unwrap().to_string(), h["_source"].clone())).collect()
}

async fn wait_log(d: &testkit::Daemon, what: &str) {
    let start = Instant::now();
    while !d.log().contains(what) {
        assert!(start.elapsed() < Duration::from_secs(90), "no {what:?} in the log after 90 s\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ids whose stored value differs (missing, extra or different).
fn differences(want: &BTreeMap<String, Json>, got: &BTreeMap<String, Json>) -> Vec<String> {
    let mut out: Vec<String> = want.iter().filter(|(id, row)| got.get(*id) != Some(*row)).map(|(id, _)| id.clone()).collect();
    out.extend(got.keys().filter(|id| !want.contains_key(*id)).cloned());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_appliers_with_a_kill_and_a_join_feed_redis_and_opensearch_equal_to_the_table() {
    let (pg, c) = cluster_with("appliers", &[("timezone", "UTC")]).await;
    c.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, n numeric NOT NULL, doc jsonb, tags int[], bio text);
         ALTER TABLE items ALTER COLUMN bio SET STORAGE EXTERNAL;",
    )
    .await
    .unwrap();
    let broker = tokio::task::spawn_blocking(KafkaBroker::start).await.unwrap();
    let search = tokio::task::spawn_blocking(OpenSearchNode::start).await.unwrap();
    let redis = Arc::new(tokio::task::spawn_blocking(RedisServer::start).await.unwrap());
    let dir = scratch();
    let d = dir.path();

    let reader = testkit::Daemon::start(bin(), d, "reader", &reader_config(&pg, &broker, d));
    wait_slot(&c, "appliers", &reader).await;
    let config = |name: &str, http: Option<u16>| applier_config(&pg, &broker, &redis, &search, d, name, http);
    let a1_http = testkit::free_port();
    let mut appliers: Vec<testkit::Daemon> = vec![
        testkit::Daemon::start(bin(), d, "a1", &config("a1", Some(a1_http))),
        testkit::Daemon::start(bin(), d, "a2", &config("a2", None)),
        testkit::Daemon::start(bin(), d, "a3", &config("a3", None)),
    ];

    // The sampler: the Redis versions of ids 1..=60 never go back.
    let stop = Arc::new(AtomicBool::new(false));
    // Stops the sampler when the test ends, by panic too (the runtime waits
    // for its thread).
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_sampler = StopOnDrop(stop.clone());
    let backwards = Arc::new(Mutex::new(Vec::<String>::new()));
    let sampler = tokio::task::spawn_blocking({
        let (stop, backwards, redis) = (stop.clone(), backwards.clone(), redis.clone());
        move || {
            const READ: &str =
                "local r = {} for i = 1, 60 do r[i] = redis.call('HGET', 'pgfanout:v:item:' .. i, '_key') or '' end return r";
            let mut last: BTreeMap<usize, String> = BTreeMap::new();
            let mut samples = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (i, v) in redis.cmd(&["EVAL", READ, "0"]).array().iter().map(|v| v.text()).enumerate() {
                    if v.is_empty() {
                        continue;
                    }
                    samples += 1;
                    if let Some(before) = last.get(&i) {
                        if v < *before {
                            backwards.lock().unwrap().push(format!("item:{}: {before} -> {v}", i + 1));
                        }
                    }
                    last.insert(i, v);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        }
    });

    // The appliers hold the partitions before the workload starts.
    for a in &appliers {
        wait_log(a, "partitions assigned").await;
    }
    let mut w = Workload::new(Mix { statement, max_statements: 4 }, 0x5eed_0035);
    let writer = pg.client("appliers").await;
    let started = Instant::now();
    for round in 0..12 {
        w.run(&writer, 100).await;
        match round {
            1 => {
                // A record that is no change record: dead-lettered, and the
                // partition goes on.
                use pgfanout_kafka::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
                let producer: BaseProducer =
                    pgfanout_kafka::rdkafka::ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).create().unwrap();
                producer.send(BaseRecord::to(TOPIC).key("junk").payload("not a change record")).map_err(|(e, _)| e).unwrap();
                producer.flush(Duration::from_secs(10)).unwrap();
            }
            2 => {
                appliers[1].kill9();
                println!("SIGKILLed applier a2 after {:?}", started.elapsed());
            }
            6 => {
                // Once the survivors hold a2's partitions (after the
                // session timeout), a4 joins and takes some from them.
                let held = |a: &testkit::Daemon| a.log().matches("partitions assigned partitions=[(").count();
                let wait = Instant::now();
                while held(&appliers[0]) + held(&appliers[2]) < 3 {
                    assert!(wait.elapsed() < Duration::from_secs(90), "a2's partitions were not taken over");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                println!("a2's partitions taken over after {:?}", started.elapsed());
                appliers.push(testkit::Daemon::start(bin(), d, "a4", &config("a4", None)));
                println!("started applier a4 after {:?}", started.elapsed());
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    println!("workload of 1,200 transactions done after {:?}; {} rows", started.elapsed(), w.live());
    wait_log(&appliers[3], "partitions assigned partitions=[(").await;

    let want = table(&c).await;
    let deadline = Instant::now() + Duration::from_secs(180);
    let (mut in_redis, mut in_search);
    loop {
        in_redis = redis_rows(&redis);
        in_search = index_rows(&search.url()).await;
        if differences(&want, &in_redis).is_empty() && differences(&want, &in_search).is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let logs: String = appliers.iter().map(|a| a.log()).collect::<Vec<_>>().join("\n----\n");
            let show = |got: &BTreeMap<String, Json>| {
                differences(&want, got)
                    .iter()
                    .take(3)
                    .map(|id| format!("{id}: table {:?}\n  store {:?}", want.get(id), got.get(id)))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            // The records of the first differing rows, as the topic holds them.
            let ids: Vec<String> = differences(&want, &in_search).into_iter().chain(differences(&want, &in_redis)).take(3).collect();
            let bootstrap = broker.bootstrap();
            let records = tokio::task::block_in_place(|| {
                common::kafka::read_topics(&bootstrap, &[TOPIC], Duration::from_secs(30), Duration::from_secs(2), |_| false)
            });
            let history: Vec<String> = records
                .iter()
                .filter(|r| r.value.as_deref().is_some_and(|v| v.starts_with(b"{")))
                .filter_map(|r| {
                    let v = r.json();
                    let of = |side: &str| v[side]["id"].to_string();
                    ids.iter().any(|id| [of("key"), of("before"), of("after")].contains(id)).then(|| {
                        format!(
                            "partition {} {} {}#{} key {} before {} after {} toast {}",
                            r.partition,
                            v["op"],
                            v["commit_lsn"],
                            r.header("pgfanout.ordinal").unwrap_or("?"),
                            v["key"],
                            v["before"],
                            v["after"],
                            v["unchanged_toast"]
                        )
                    })
                })
                .collect();
            panic!(
                "after 180 s, Redis differs at {:?} and OpenSearch at {:?}\nredis:\n{}\nopensearch:\n{}\n{}\n{logs}",
                differences(&want, &in_redis),
                differences(&want, &in_search),
                show(&in_redis),
                show(&in_search),
                history.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("Redis and OpenSearch equal the table ({} rows) {:?} after the workload", want.len(), started.elapsed());
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await.unwrap();
    let backwards = backwards.lock().unwrap().clone();
    assert!(backwards.is_empty(), "versions went back: {backwards:?}");
    assert!(samples > 1000, "the sampler read {samples} versions");

    // The junk record, and nothing else, was dead-lettered (by whichever
    // applier held its partition; again by the next owner if that one was
    // killed before committing it: the same letter id).
    let mut letters = Vec::new();
    for a in &appliers {
        let dead = std::fs::read_to_string(a.config_path.with_extension("dead.jsonl")).unwrap_or_default();
        letters.extend(dead.lines().map(|l| serde_json::from_str::<Json>(l).unwrap()));
    }
    assert!(!letters.is_empty(), "the junk record is dead-lettered");
    for l in &letters {
        assert_eq!(l["stage"], "decode", "{l}");
        assert_eq!(l["id"], letters[0]["id"], "one letter: {letters:?}");
        assert!(l["error"].as_str().unwrap().contains("not a pgfanout change record"), "{l}");
    }
    // a4's join moved partitions away from a survivor.
    let moves =
        |a: &testkit::Daemon| a.log().lines().filter(|l| l.contains("partitions")).map(|l| l.to_string()).collect::<Vec<_>>().join("\n");
    println!("rebalances:\n{}", appliers.iter().map(moves).collect::<Vec<_>>().join("\n--\n"));
    assert!([0, 2].iter().any(|&a| appliers[a].log().contains("partitions revoked")), "no partition moved to a4");
    // verify with an applier's config: the stores equal the table. Then,
    // with every applier paused, a new row is in Kafka (the reader's slot
    // has passed it) but in no store: verify's recheck waits for the group,
    // not the slot, and says it could not settle. Resumed, it is equal.
    let a1_config = appliers[0].config_path.clone();
    let (code, report, text) = tokio::task::block_in_place(|| run_verify(&a1_config, "30s", &[]));
    assert_eq!(code, 0, "verify through an applier's config: {text}");
    assert_eq!(pipeline_report(&report, "docs")["rechecked"], true, "{report}");
    let live: Vec<usize> = appliers.iter_mut().enumerate().filter_map(|(i, a)| a.is_running().then_some(i)).collect();
    for &i in &live {
        appliers[i].signal("STOP");
    }
    c.batch_execute("INSERT INTO items VALUES (100000, 1.5, NULL, NULL, 'paused')").await.unwrap();
    wait_confirmed(&c, "appliers", &reader, Duration::from_secs(30)).await;
    let (code, report, text) = tokio::task::block_in_place(|| run_verify(&a1_config, "3s", &[]));
    // `status` with an applier's config shows the group's lag: the row.
    let (status_code, shown) = tokio::task::block_in_place(|| status_of(&a1_config));
    for &i in &live {
        appliers[i].signal("CONT");
    }
    assert_eq!(code, 1, "the paused appliers' stores lack the row: {text}");
    let rows = pipeline_report(&report, "rows");
    assert_eq!(rows["rechecked"], false, "the group had not passed the row, so verify could not settle: {report}");
    let (code, _, text) = tokio::task::block_in_place(|| run_verify(&a1_config, "60s", &[]));
    assert_eq!(code, 0, "resumed, the stores have the row: {text}");
    assert_eq!(status_code, 0, "{shown}");
    assert!(shown.contains("kafka group       appliers ("), "{shown}");
    assert!(kafka_lag(&shown) >= 1, "the paused group has not applied the row: {shown}");
    // Resumed, the group is stable again with every live applier, which
    // `status` and `doctor` both say.
    let members = format!("(Stable, {} member(s))", live.len());
    let deadline = Instant::now() + Duration::from_secs(60);
    let shown = loop {
        let (_, shown) = tokio::task::block_in_place(|| status_of(&a1_config));
        if shown.contains(&members) && kafka_lag(&shown) == 0 || Instant::now() > deadline {
            break shown;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("status:\n{shown}");
    assert!(shown.contains(&members), "{shown}");
    assert_eq!(kafka_lag(&shown), 0, "{shown}");
    let owned =
        shown.lines().filter(|l| l.starts_with("member ")).flat_map(|l| l.matches(&format!("{TOPIC}/")).collect::<Vec<_>>()).count();
    assert_eq!(owned, 6, "every partition is assigned to one member: {shown}");
    let doctor = tokio::task::block_in_place(|| std::process::Command::new(bin()).args(["doctor", "-c"]).arg(&a1_config).output().unwrap());
    let said = String::from_utf8_lossy(&doctor.stdout);
    assert!(doctor.status.success(), "{said}{}", String::from_utf8_lossy(&doctor.stderr));
    assert!(said.contains(&format!("ok    source.kafka: topics {TOPIC} (6 partition(s))")), "{said}");
    assert!(said.contains(&format!("ok    group appliers: {} applier(s), state Stable", live.len())), "{said}");

    // Read-your-writes across the group: a1's /wait answers once the
    // reader and every partition's owner have a write, whichever applier
    // holds the row's partition.
    for id in [100_001, 100_002, 100_003] {
        c.batch_execute(&format!("INSERT INTO items VALUES ({id}, 1.5, NULL, NULL, 'waited')")).await.unwrap();
        let lsn: String = c.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
        let asked = Instant::now();
        let (status, body) = tokio::task::block_in_place(|| http_get(a1_http, &format!("/wait?lsn={lsn}&timeout=30s")));
        assert_eq!(status, 200, "{body}\n{}", appliers[0].log());
        let waited = asked.elapsed();
        let cached = redis.cmd(&["GET", &format!("item:{id}")]).opt_text();
        assert!(cached.is_some_and(|t| t.contains("waited")), "item:{id} is in Redis once /wait answered");
        assert!(index_rows(&search.url()).await.contains_key(&id.to_string()), "{id} is in the index once /wait answered");
        println!("/wait on a1 for row {id} answered after {waited:?}");
    }

    for a in appliers.iter_mut().filter(|a| a.pid() != 0) {
        a.signal("TERM");
        let status = a.wait(Duration::from_secs(30)).expect("an applier stops on SIGTERM");
        assert!(status.success(), "{}", a.log());
    }
    println!("sampled {samples} versions; none went back");
}

/// `pgfanout status -c config`: its exit code and stdout.
fn status_of(config: &Path) -> (i32, String) {
    let out = std::process::Command::new(bin()).args(["status", "-c"]).arg(config).output().unwrap();
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The `kafka_lag` line of `status`; -1 when missing.
fn kafka_lag(shown: &str) -> i64 {
    shown.lines().find_map(|l| l.strip_prefix("kafka_lag")).and_then(|v| v.trim().parse().ok()).unwrap_or(-1)
}
