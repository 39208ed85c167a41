//! Kafka topics read back from the beginning, as a consumer that joins
//! late sees them. Shared by the end-to-end tests and the Kafka connector's
//! own tests (`connectors/kafka/tests/kafka.rs` includes this file), so it
//! uses nothing but the connector's rdkafka and serde_json.
// Each includer uses a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pgfanout_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use pgfanout_kafka::rdkafka::message::{Headers, Message};
use pgfanout_kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// One record as read back.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Header name -> value (lossy UTF-8; `None` for a null value).
    pub headers: HashMap<String, Option<String>>,
}

impl Record {
    /// The key as (lossy) UTF-8 text.
    pub fn key_text(&self) -> Option<String> {
        self.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned())
    }

    /// A header's value, if present and not null.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.as_deref())
    }

    /// The value parsed as JSON; panics on a tombstone or non-JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.value.as_deref().expect("a value")).expect("value is JSON")
    }
}

/// Reads every partition of `topics` from the beginning (each partition in
/// order), waiting for each topic to exist. `enough` sees each record as it
/// arrives and says when enough have; reading goes on until no record came
/// for `settle` after that (to catch extra ones), or until `timeout`.
/// Blocking (run inside `block_in_place` on a runtime).
pub fn read_topics(
    bootstrap: &str,
    topics: &[&str],
    timeout: Duration,
    settle: Duration,
    mut enough: impl FnMut(&Record) -> bool,
) -> Vec<Record> {
    static READERS: AtomicUsize = AtomicUsize::new(0);
    let group = format!("test-reader-{}-{}", std::process::id(), READERS.fetch_add(1, Ordering::Relaxed));
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let start = Instant::now();
    let mut tpl = TopicPartitionList::new();
    for &topic in topics {
        let partitions = loop {
            let n = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .ok()
                .and_then(|md| md.topics().iter().find(|t| t.name() == topic && t.error().is_none()).map(|t| t.partitions().len()))
                .unwrap_or(0);
            if n > 0 {
                break n;
            }
            assert!(start.elapsed() < timeout, "topic {topic} never appeared");
            std::thread::sleep(Duration::from_millis(200));
        };
        for p in 0..partitions as i32 {
            tpl.add_partition_offset(topic, p, Offset::Beginning).expect("add partition");
        }
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut done = false;
    let mut quiet = Instant::now();
    while start.elapsed() < timeout && !(done && quiet.elapsed() > settle) {
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else { continue };
        let msg = msg.expect("consume");
        quiet = Instant::now();
        let headers = msg
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(|v| String::from_utf8_lossy(v).into_owned()))).collect())
            .unwrap_or_default();
        let record = Record {
            topic: msg.topic().to_string(),
            partition: msg.partition(),
            key: msg.key().map(<[u8]>::to_vec),
            value: msg.payload().map(<[u8]>::to_vec),
            headers,
        };
        done |= enough(&record);
        out.push(record);
    }
    out
}
