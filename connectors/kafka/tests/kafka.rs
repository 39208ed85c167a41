//! The Kafka sink against a real Apache Kafka 4 broker (KRaft, started by
//! testkit on a free loopback port), read back with an rdkafka consumer.
//!
//! Records are hand-built `Change`s: these tests pin the sink's contract
//! (topic, key, headers, value, order per key, tombstones, topic policy,
//! retriable failures while the broker is down). The PostgreSQL → daemon →
//! Kafka path is tested end to end in the daemon's tests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfanout_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use pgfanout_kafka::rdkafka::ClientConfig;
use pgfanout_kafka::{KafkaMapping, KafkaSink, KafkaSinkConfig};
use pgfanout_sdk::testing::{number as int, records, row_of, At, Table};
use pgfanout_sdk::{Change, Lsn, Op, Row, Sink, SinkError, SinkRecord, Value};
use testkit::{KafkaBroker, Server};

#[path = "../../../tests/common/kafka.rs"]
mod topic;

use topic::Record as Read;

/// Reads every message of `topic` from the beginning until `expected` have
/// arrived (then until none came for 500 ms, to catch extra ones) or 30 s
/// passed.
fn read_topic(broker: &KafkaBroker, topic: &str, expected: usize) -> Vec<Read> {
    let mut n = 0;
    topic::read_topics(&broker.bootstrap(), &[topic], Duration::from_secs(30), Duration::from_millis(500), |_| {
        n += 1;
        n >= expected
    })
}

/// A change of `table` for row `id`; `seq` orders changes globally.
fn change(op: Op, table: &str, id: i64, seq: u64, name: &str) -> Change {
    let row = row_of(&[("id", int(id)), ("name", Value::String(name.into())), ("qty", int(seq as i64))]);
    let after = if op == Op::Delete { None } else { Some(row) };
    let at = At(0x1000 + seq * 0x40 + 0x20, (seq % 3) as u32);
    Change {
        lsn: Lsn(0x1000 + seq * 0x40),
        xid: Some(700 + seq as u32),
        commit_ts: Some(1_795_514_400_000_000 + seq as i64),
        ..Table(table).change(op, at, row_of(&[("id", int(id))]), None, after, &[])
    }
}

/// A mixed workload over two tables and five keys each: insert, three
/// updates, and for even ids a delete.
fn workload() -> Vec<Change> {
    let mut out = Vec::new();
    let mut seq = 0;
    for round in 0..5 {
        for table in ["orders", "users"] {
            for id in 1..=5 {
                let op = match round {
                    0 => Op::Insert,
                    4 if id % 2 == 0 => Op::Delete,
                    4 => continue,
                    _ => Op::Update,
                };
                seq += 1;
                out.push(change(op, table, id, seq, &format!("{table}-{id}-r{round}")));
            }
        }
    }
    out
}

fn sink_config(broker: &KafkaBroker, extra: serde_json::Value) -> KafkaSinkConfig {
    let mut v = serde_json::json!({"brokers": broker.bootstrap(), "delivery_timeout": "10s"});
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in extra {
            obj.insert(k.clone(), val.clone());
        }
    }
    serde_json::from_value(v).expect("sink config")
}

fn mapping(v: serde_json::Value) -> KafkaMapping {
    serde_json::from_value(v).expect("mapping")
}

/// Checks what was read from `topic` against the changes sent for `table`:
/// per key, the same changes in the same order, each followed by a
/// tombstone after deletes when `tombstones`; every header right. Values are
/// compared when `value_of` gives the expected bytes.
fn check_topic(read: &[Read], sent: &[Change], table: &str, tombstones: bool, value_of: impl Fn(&Change) -> Option<Vec<u8>>) {
    let mut by_key: HashMap<Vec<u8>, Vec<&Read>> = HashMap::new();
    for r in read {
        by_key.entry(r.key.clone().expect("every record has a key")).or_default().push(r);
    }
    let mut expected_total = 0;
    for id in 1..=5 {
        let key = format!("{{\"id\":{id}}}").into_bytes();
        let got = by_key.get(&key).unwrap_or_else(|| panic!("no records for key {id}"));
        let partitions: Vec<i32> = got.iter().map(|r| r.partition).collect();
        assert!(partitions.windows(2).all(|w| w[0] == w[1]), "one key, one partition: {partitions:?}");
        let mut want = Vec::new();
        for c in sent.iter().filter(|c| &*c.table == table && c.key.as_ref().and_then(|k| k.get("id")) == Some(&int(id))) {
            want.push((c, false));
            if tombstones && c.op == Op::Delete {
                want.push((c, true));
            }
        }
        expected_total += want.len();
        assert_eq!(got.len(), want.len(), "records for key {id}");
        for (r, (c, tomb)) in got.iter().zip(want) {
            if tomb {
                assert_eq!(r.value, None, "tombstone after delete of key {id}");
            } else if let Some(v) = value_of(c) {
                assert_eq!(r.value.as_deref(), Some(&v[..]), "value for key {id}");
            } else {
                assert!(r.value.is_some(), "a value for key {id}");
            }
            assert_eq!(r.header("pgfanout.lsn"), Some(&*c.lsn.to_string()));
            assert_eq!(r.header("pgfanout.commit_lsn"), Some(&*c.commit_lsn.to_string()));
            assert_eq!(r.header("pgfanout.ordinal"), Some(&*c.ordinal.to_string()));
            assert_eq!(r.header("pgfanout.xid"), c.xid.map(|x| x.to_string()).as_deref());
            assert_eq!(r.header("pgfanout.op"), Some(c.op.as_str()));
            assert_eq!(r.header("pgfanout.schema"), Some("public"));
            assert_eq!(r.header("pgfanout.table"), Some(table));
        }
    }
    assert_eq!(read.len(), expected_total, "no record beyond the expected ones");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_records_have_topic_key_headers_and_order() {
    let broker = KafkaBroker::start();
    let cfg = sink_config(&broker, serde_json::json!({"topics": {"partitions": 3}}));
    let mut sink = KafkaSink::connect(&cfg, vec![mapping(serde_json::json!({"topic": "shop.{schema}.{table}", "tombstones": true}))])
        .await
        .expect("connect");
    let changes = workload();
    // Two batches, to cross a write() boundary.
    let (a, b) = changes.split_at(17);
    for part in [a, b] {
        let rejected = sink.write(&records(part.iter().cloned(), 0)).await.expect("write");
        assert!(rejected.is_empty(), "{rejected:?}");
    }
    for table in ["orders", "users"] {
        let topic = format!("shop.public.{table}");
        let read = read_topic(&broker, &topic, 24);
        check_topic(&read, &changes, table, true, |c| Some(c.to_json_string().into_bytes()));
        let parts: std::collections::HashSet<i32> = read.iter().map(|r| r.partition).collect();
        assert!(parts.len() > 1, "keys spread over the 3 partitions: {parts:?}");
    }
    sink.close().await.expect("close");
}

/// `headers: position` sends only the three position headers, `none`
/// none at all; the records are otherwise the same (tombstones included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_sets_position_and_none() {
    let broker = KafkaBroker::start();
    let changes = workload();
    for set in ["position", "none"] {
        let cfg = sink_config(&broker, serde_json::json!({"headers": set}));
        let topic = format!("headers-{set}.{{table}}");
        let mut sink =
            KafkaSink::connect(&cfg, vec![mapping(serde_json::json!({"topic": topic, "tombstones": true}))]).await.expect("connect");
        let rejected = sink.write(&records(changes.iter().cloned(), 0)).await.expect("write");
        assert!(rejected.is_empty(), "{rejected:?}");
        sink.close().await.expect("close");
        for table in ["orders", "users"] {
            let read = read_topic(&broker, &format!("headers-{set}.{table}"), 24);
            assert_eq!(read.len(), 24, "{set}: every change of {table} and its tombstones");
            let sent: Vec<&Change> = changes.iter().filter(|c| &*c.table == table).collect();
            let mut names: Vec<&str> = read.iter().flat_map(|r| r.headers.keys().map(String::as_str)).collect();
            names.sort_unstable();
            names.dedup();
            if set == "none" {
                assert!(names.is_empty(), "no headers: {names:?}");
                continue;
            }
            assert_eq!(names, ["pgfanout.commit_lsn", "pgfanout.lsn", "pgfanout.ordinal"]);
            // Every record's position is one of the sent changes', and each
            // sent change's position arrived.
            let got: std::collections::HashSet<(String, String, String)> = read
                .iter()
                .map(|r| {
                    let h = |n| r.header(n).unwrap_or_else(|| panic!("{n} on {r:?}")).to_string();
                    (h("pgfanout.lsn"), h("pgfanout.commit_lsn"), h("pgfanout.ordinal"))
                })
                .collect();
            let want: std::collections::HashSet<(String, String, String)> =
                sent.iter().map(|c| (c.lsn.to_string(), c.commit_lsn.to_string(), c.ordinal.to_string())).collect();
            assert_eq!(got, want, "{set}: positions of {table}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_envelopes_round_trip() {
    let broker = KafkaBroker::start();
    let cfg = sink_config(&broker, serde_json::json!({"debezium": {"server_name": "shopdb", "database": "shop"}}));
    let mut sink =
        KafkaSink::connect(&cfg, vec![mapping(serde_json::json!({"topic": "dbz.{table}", "format": "debezium"}))]).await.expect("connect");
    let changes = workload();
    let before = pgfanout_kafka_now_ms();
    assert!(sink.write(&records(changes.iter().cloned(), 0)).await.expect("write").is_empty());
    let after = pgfanout_kafka_now_ms();
    let read = read_topic(&broker, "dbz.orders", 22);
    // Values carry a processing time, so compare them as JSON field by field.
    check_topic(&read, &changes, "orders", false, |_| None);
    let sent: Vec<&Change> = changes.iter().filter(|c| &*c.table == "orders").collect();
    let mut by_lsn: HashMap<String, &Read> = HashMap::new();
    for r in &read {
        by_lsn.insert(r.header("pgfanout.lsn").expect("lsn header").to_string(), r);
    }
    for c in sent {
        let v = by_lsn[&c.lsn.to_string()].json();
        let op = match c.op {
            Op::Insert => "c",
            Op::Update => "u",
            Op::Delete => "d",
            _ => unreachable!(),
        };
        assert_eq!(v["op"], op);
        let row = |r: &Option<Row>| r.as_ref().map_or(serde_json::Value::Null, Row::to_serde);
        assert_eq!(v["after"], row(&c.after));
        let expect_before = if c.op == Op::Insert { serde_json::Value::Null } else { row(&c.key) };
        assert_eq!(v["before"], expect_before);
        let s = &v["source"];
        assert_eq!(s["connector"], "postgresql");
        assert_eq!(s["name"], "shopdb");
        assert_eq!(s["db"], "shop");
        assert_eq!(s["schema"], "public");
        assert_eq!(s["table"], "orders");
        assert_eq!(s["snapshot"], "false");
        assert_eq!(s["txId"], c.xid.expect("xid"));
        assert_eq!(s["lsn"], c.lsn.0);
        assert_eq!(s["xmin"], serde_json::Value::Null);
        assert_eq!(s["ts_ms"], c.commit_ts.expect("commit ts") / 1000);
        assert_eq!(s["sequence"], format!("[\"{}\",\"{}\"]", c.commit_lsn.0, c.lsn.0));
        let ts = v["ts_ms"].as_i64().expect("ts_ms");
        assert!((before..=after).contains(&ts), "processing time {ts} within the write");
        assert_eq!(v["transaction"], serde_json::Value::Null);
    }
}

fn pgfanout_kafka_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_rejected_alone() {
    let broker = KafkaBroker::start();
    let cfg = sink_config(&broker, serde_json::json!({"properties": {"message.max.bytes": "100000"}}));
    let routes = vec![
        mapping(serde_json::json!({"topic": "events", "key": "user-{id}"})),
        mapping(serde_json::json!({"topic": "events.{name}"})),
        mapping(serde_json::json!({"topic": "events", "key": "{missing}"})),
    ];
    let mut sink = KafkaSink::connect(&cfg, routes).await.expect("connect");
    let mut big = change(Op::Insert, "orders", 3, 3, "x");
    big.after = Some(row_of(&[("id", int(3)), ("blob", Value::String("x".repeat(200_000).into()))]));
    let mut null_name = change(Op::Insert, "orders", 4, 4, "x");
    null_name.after = Some(row_of(&[("id", int(4)), ("name", Value::Null)]));
    let batch = vec![
        SinkRecord { change: Arc::new(change(Op::Insert, "orders", 1, 1, "a")), route: 0, source: None },
        SinkRecord { change: Arc::new(change(Op::Insert, "orders", 2, 2, "has space")), route: 1, source: None },
        SinkRecord { change: Arc::new(big), route: 0, source: None },
        SinkRecord { change: Arc::new(null_name), route: 1, source: None },
        SinkRecord { change: Arc::new(change(Op::Insert, "orders", 5, 5, "e")), route: 2, source: None },
        SinkRecord { change: Arc::new(change(Op::Update, "orders", 1, 6, "b")), route: 0, source: None },
        SinkRecord { change: Arc::new(change(Op::Insert, "orders", 7, 7, "g")), route: 9, source: None },
    ];
    let rejected = sink.write(&batch).await.expect("write");
    let indexes: Vec<usize> = rejected.iter().map(|r| r.index).collect();
    assert_eq!(indexes, vec![1, 2, 3, 4, 6], "{rejected:?}");
    assert!(rejected[0].error.contains("has space"), "{}", rejected[0].error);
    assert!(rejected[1].error.to_lowercase().contains("size"), "{}", rejected[1].error);
    assert!(rejected[2].error.contains("NULL"), "{}", rejected[2].error);
    assert!(rejected[3].error.contains("missing"), "{}", rejected[3].error);
    assert!(rejected[4].error.contains("route 9"), "{}", rejected[4].error);
    let read = read_topic(&broker, "events", 2);
    let keys: Vec<Option<Vec<u8>>> = read.iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys, vec![Some(b"user-1".to_vec()), Some(b"user-1".to_vec())]);
    assert_eq!(read[1].header("pgfanout.op"), Some("update"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_with_the_configured_partitions() {
    let broker = KafkaBroker::start();
    let cfg = sink_config(&broker, serde_json::json!({"topics": {"create": true, "partitions": 4, "replication_factor": 1}}));
    let mut sink =
        KafkaSink::connect(&cfg, vec![mapping(serde_json::json!({"topic": "fixed"})), mapping(serde_json::json!({"topic": "t.{table}"}))])
            .await
            .expect("connect");
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).create().expect("client");
    let partitions = |topic: &str| {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        md.topics().iter().find(|t| t.name() == topic && t.error().is_none()).map(|t| t.partitions().len())
    };
    assert_eq!(partitions("fixed"), Some(4), "constant topics are created at connect");
    assert!(sink.write(&records([change(Op::Insert, "orders", 1, 1, "a")], 1)).await.expect("write").is_empty());
    assert_eq!(partitions("t.orders"), Some(4), "template topics are created when first needed");
    sink.check().await.expect("check");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topics_are_an_error_when_creation_is_off() {
    let broker = KafkaBroker::start();
    let cfg = sink_config(&broker, serde_json::json!({"topics": {"create": false}}));
    let err = KafkaSink::connect(&cfg, vec![mapping(serde_json::json!({"topic": "not-there"}))])
        .await
        .err()
        .map(SinkError::from)
        .expect("connect must fail");
    assert!(matches!(&err, SinkError::Permanent(m) if m.contains("\"not-there\"") && m.contains("topics.create")), "{err:?}");

    // An existing topic is used; a rendered one that is missing rejects its records only.
    let creating = sink_config(&broker, serde_json::json!({}));
    KafkaSink::connect(&creating, vec![mapping(serde_json::json!({"topic": "t.orders"}))]).await.expect("create t.orders");
    let mut sink = KafkaSink::connect(&cfg, vec![mapping(serde_json::json!({"topic": "t.{table}"}))]).await.expect("connect");
    let batch = records([change(Op::Insert, "orders", 1, 1, "a"), change(Op::Insert, "users", 1, 2, "b")], 0);
    let rejected = sink.write(&batch).await.expect("write");
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].index, 1);
    assert!(rejected[0].error.contains("\"t.users\" does not exist"), "{}", rejected[0].error);
    assert_eq!(read_topic(&broker, "t.orders", 1).len(), 1);
}

/// The broker goes away mid-workload: writes fail as retriable (nothing is
/// reported durable), and once it is back the same batches succeed. The
/// broker keeps its log on disk, so the records acknowledged before the
/// restart are still there after it: per key, the topic holds every change
/// of the workload in order (before the restart and the retried batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_gives_retriable_errors_then_delivers() {
    let broker = KafkaBroker::start();
    let cfg = sink_config(&broker, serde_json::json!({"delivery_timeout": "2s"}));
    let mut sink = KafkaSink::connect(&cfg, vec![mapping(serde_json::json!({"topic": "restart.{table}"}))]).await.expect("connect");
    let changes = workload();
    let (first, rest) = changes.split_at(10);
    assert!(sink.write(&records(first.iter().cloned(), 0)).await.expect("write before the restart").is_empty());

    broker.stop();
    let batch = records(rest.iter().cloned(), 0);
    let err = sink.write(&batch).await.expect_err("no broker: the batch must not be acknowledged");
    assert!(err.is_retriable(), "{err:?}");

    broker.start_server();
    let start = Instant::now();
    let mut attempts = 1;
    loop {
        attempts += 1;
        match sink.write(&batch).await {
            Ok(rejected) => {
                assert!(rejected.is_empty(), "{rejected:?}");
                break;
            }
            Err(e) => {
                assert!(e.is_retriable(), "{e:?}");
                assert!(start.elapsed() < Duration::from_secs(90), "still failing after the restart: {e}\n{}", broker.log());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // Every change is there, in order per key: those acknowledged before the
    // restart and those of the retried batch (a duplicate from a partly
    // delivered attempt would be allowed).
    for table in ["orders", "users"] {
        let sent: Vec<&Change> = changes.iter().filter(|c| &*c.table == table).collect();
        let read = read_topic(&broker, &format!("restart.{table}"), sent.len());
        for id in 1..=5 {
            let want: Vec<String> =
                sent.iter().filter(|c| c.key.as_ref().and_then(|k| k.get("id")) == Some(&int(id))).map(|c| c.lsn.to_string()).collect();
            let key = format!("{{\"id\":{id}}}").into_bytes();
            let mut got: Vec<String> = read
                .iter()
                .filter(|r| r.key.as_deref() == Some(&key[..]))
                .filter_map(|r| r.header("pgfanout.lsn").map(str::to_string))
                .collect();
            got.dedup();
            assert_eq!(got, want, "table {table} key {id} after {attempts} attempts");
        }
    }
}

/// Rows per second through `write` (100k native records in batches of
/// 10k, 8 partitions). Run with `--ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_100k() {
    let broker = KafkaBroker::start();
    let cfg = sink_config(&broker, serde_json::json!({"topics": {"partitions": 8}, "delivery_timeout": "60s"}));
    let mut sink = KafkaSink::connect(&cfg, vec![mapping(serde_json::json!({"topic": "bench"}))]).await.expect("connect");
    let all: Vec<SinkRecord> = (0..100_000u64)
        .map(|i| SinkRecord { change: Arc::new(change(Op::Insert, "orders", i as i64, i, "name-of-a-row")), route: 0, source: None })
        .collect();
    let start = Instant::now();
    for chunk in all.chunks(10_000) {
        assert!(sink.write(chunk).await.expect("write").is_empty());
    }
    let secs = start.elapsed().as_secs_f64();
    println!("kafka sink: 100000 records in {secs:.2} s = {:.0} rows/s", 100_000.0 / secs);
    // Read back rather than trusting watermarks.
    let read = read_topic(&broker, "bench", 100_000);
    let distinct: std::collections::HashSet<&str> = read.iter().filter_map(|r| r.header("pgfanout.lsn")).collect();
    assert_eq!(distinct.len(), 100_000, "every acknowledged record is in the topic");
}

/// A batch larger than librdkafka's local queue: `write` waits for
/// deliveries to make room instead of failing, and keeps the order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_larger_than_the_producer_queue_are_delivered_in_order() {
    let broker = KafkaBroker::start();
    let cfg = sink_config(&broker, serde_json::json!({"properties": {"queue.buffering.max.messages": "500"}}));
    let mut sink = KafkaSink::connect(&cfg, vec![mapping(serde_json::json!({"topic": "small-queue", "key": "k"}))]).await.expect("connect");
    let changes: Vec<Change> = (0..5_000u64).map(|i| change(Op::Update, "orders", 1, i, "x")).collect();
    assert!(sink.write(&records(changes.iter().cloned(), 0)).await.expect("write").is_empty());
    let read = read_topic(&broker, "small-queue", changes.len());
    let got: Vec<&str> = read.iter().filter_map(|r| r.header("pgfanout.lsn")).collect();
    let want: Vec<String> = changes.iter().map(|c| c.lsn.to_string()).collect();
    assert_eq!(got, want.iter().map(String::as_str).collect::<Vec<_>>());
}

/// An update that changes the primary key leaves a tombstone for the old key
/// (with `tombstones: true`), so a compacted topic does not keep the row
/// under both keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_change_tombstones_the_old_key() {
    let broker = KafkaBroker::start();
    let cfg = sink_config(&broker, serde_json::json!({}));
    let mut sink =
        KafkaSink::connect(&cfg, vec![mapping(serde_json::json!({"topic": "moves", "tombstones": true}))]).await.expect("connect");
    let insert = change(Op::Insert, "orders", 1, 1, "a");
    let mut moved = change(Op::Update, "orders", 2, 2, "a");
    moved.before = Some(row_of(&[("id", int(1))]));
    assert!(sink.write(&records([insert, moved], 0)).await.expect("write").is_empty());
    let read = read_topic(&broker, "moves", 3);
    let mut seen: Vec<(String, bool)> =
        read.iter().map(|r| (String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned(), r.value.is_some())).collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![("{\"id\":1}".to_string(), false), ("{\"id\":1}".to_string(), true), ("{\"id\":2}".to_string(), true)],
        "insert under 1, the update under 2, a tombstone for 1"
    );
    let tomb = read.iter().find(|r| r.value.is_none()).expect("tombstone");
    assert_eq!(tomb.header("pgfanout.op"), Some("update"));
}
