//! The Kafka sink against a real Kafka-protocol broker (Tansu, started by
//! testkit on a free loopback port), read back with an rdkafka consumer.
//!
//! Records are hand-built `Change`s: these tests pin the sink's contract
//! (topic, key, headers, value, order per key, tombstones, topic policy,
//! retriable failures while the broker is down). The PostgreSQL → daemon →
//! Kafka path is tested end to end in the daemon's tests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfanout_kafka::{KafkaMapping, KafkaSink, KafkaSinkConfig};
use pgfanout_sdk::{Change, Lsn, Op, Row, Sink, SinkError, SinkRecord, Value};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use testkit::KafkaBroker;

/// One message as read back.
#[derive(Debug, Clone)]
struct Read {
    partition: i32,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: HashMap<String, Option<String>>,
}

impl Read {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.as_deref())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.value.as_deref().expect("a value")).expect("value is JSON")
    }
}

/// Reads every message of `topic` from the beginning until `expected` have
/// arrived (then a little longer, to catch extra ones) or 30 s passed.
fn read_topic(broker: &KafkaBroker, topic: &str, expected: usize) -> Vec<Read> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", format!("test-{topic}"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions = md.topics().iter().find(|t| t.name() == topic).map(|t| t.partitions().len()).unwrap_or(0);
    assert!(partitions > 0, "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("add partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let start = Instant::now();
    let mut settle: Option<Instant> = None;
    while start.elapsed() < Duration::from_secs(30) {
        if out.len() >= expected {
            let since = *settle.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_millis(500) {
                break;
            }
        }
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else { continue };
        let msg = msg.expect("consume");
        let headers = msg
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(|v| String::from_utf8_lossy(v).into_owned()))).collect())
            .unwrap_or_default();
        out.push(Read {
            partition: msg.partition(),
            key: msg.key().map(<[u8]>::to_vec),
            value: msg.payload().map(<[u8]>::to_vec),
            headers,
        });
    }
    out
}

fn int(n: i64) -> Value {
    Value::Number(n.to_string().into())
}

/// A change of `table` for row `id`; `seq` orders changes globally.
fn change(op: Op, table: &str, id: i64, seq: u64, name: &str) -> Change {
    let row = Row(vec![("id".into(), int(id)), ("name".into(), Value::String(name.into())), ("qty".into(), int(seq as i64))]);
    Change {
        op,
        schema: "public".into(),
        table: table.into(),
        key: Some(Row(vec![("id".into(), int(id))])),
        before: None,
        after: if op == Op::Delete { None } else { Some(row) },
        unchanged_toast: vec![],
        lsn: Lsn(0x1000 + seq * 0x40),
        commit_lsn: Lsn(0x1000 + seq * 0x40 + 0x20),
        ordinal: (seq % 3) as u32,
        xid: Some(700 + seq as u32),
        commit_ts: Some(1_795_514_400_000_000 + seq as i64),
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

fn records(changes: &[Change], route: usize) -> Vec<SinkRecord> {
    changes.iter().map(|c| SinkRecord { change: Arc::new(c.clone()), route }).collect()
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
        let rejected = sink.write(&records(part, 0)).await.expect("write");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_envelopes_round_trip() {
    let broker = KafkaBroker::start();
    let cfg = sink_config(&broker, serde_json::json!({"debezium": {"server_name": "shopdb", "database": "shop"}}));
    let mut sink =
        KafkaSink::connect(&cfg, vec![mapping(serde_json::json!({"topic": "dbz.{table}", "format": "debezium"}))]).await.expect("connect");
    let changes = workload();
    let before = pgfanout_kafka_now_ms();
    assert!(sink.write(&records(&changes, 0)).await.expect("write").is_empty());
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
