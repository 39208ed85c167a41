//! A compacted topic of keyed entries, read back whole: the Kafka
//! destination of pgfanout's dead letters (`dead_letter: { to: kafka }`).
//!
//! Each entry is a key (a letter's id) and a value (the letter, JSON) or
//! none (a tombstone: the letter was resolved). The topic has one
//! partition, so entries keep the order they were written in, and
//! `cleanup.policy=compact`, so Kafka keeps the latest entry of each key
//! (and drops tombstones after `delete.retention.ms`). [`LetterTopic::put`]
//! returns once every entry is acknowledged by all in-sync replicas (an
//! idempotent producer, `acks=all`); [`LetterTopic::read`] reads from the
//! beginning up to the end offsets taken when it starts and keeps the
//! latest entry of each key.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::{client_config, KafkaSinkConfig};

/// One entry: its key, and its value or `None` (a tombstone).
pub type Entry = (String, Option<Vec<u8>>);

/// A compacted, single-partition topic on the cluster of a Kafka sink's
/// settings (brokers, SASL, TLS, properties).
pub struct LetterTopic {
    config: ClientConfig,
    producer: FutureProducer,
    topic: String,
    replication_factor: i32,
    timeout: Duration,
    created: std::sync::atomic::AtomicBool,
}

impl LetterTopic {
    /// A producer for `topic` with `settings`' connection. No I/O yet.
    pub fn new(settings: &KafkaSinkConfig, topic: &str) -> Result<LetterTopic, String> {
        let mut config = client_config(settings);
        // Plain idempotent delivery: no transactions here.
        config.remove("transactional.id");
        let producer = config.create().map_err(|e| format!("kafka: {e}"))?;
        Ok(LetterTopic {
            config,
            producer,
            topic: topic.to_string(),
            replication_factor: settings.topics.replication_factor,
            timeout: settings.delivery_timeout.max(Duration::from_secs(5)),
            created: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Creates the topic (one partition, compacted) unless it exists.
    pub async fn ensure(&self) -> Result<(), String> {
        if self.created.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let new = NewTopic::new(&self.topic, 1, TopicReplication::Fixed(self.replication_factor)).set("cleanup.policy", "compact");
        let opts = AdminOptions::new().operation_timeout(Some(self.timeout)).request_timeout(Some(self.timeout));
        let admin: AdminClient<DefaultClientContext> = self.config.create().map_err(|e| format!("kafka: {e}"))?;
        let results = admin.create_topics([&new], &opts).await;
        tokio::task::spawn_blocking(move || drop(admin));
        for result in results.map_err(|e| format!("kafka: cannot create topic {:?}: {e}", self.topic))? {
            match result {
                Ok(_) => tracing::info!(topic = %self.topic, "kafka dead-letter topic created (compacted, 1 partition)"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(format!("kafka: cannot create topic {:?}: {code}", self.topic)),
            }
        }
        self.created.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Writes `entries` in order; returns once every one is acknowledged.
    /// On `Err` some may have been written: writing them again is harmless
    /// (the latest entry of a key wins).
    pub async fn put(&self, entries: &[Entry]) -> Result<(), String> {
        self.ensure().await?;
        let mut pending = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let mut record = FutureRecord::<str, [u8]>::to(&self.topic).key(key.as_str()).partition(0);
            if let Some(v) = value {
                record = record.payload(v.as_slice());
            }
            let delivery = self.producer.send_result(record).map_err(|(e, _)| format!("kafka: {e}"))?;
            pending.push(delivery);
        }
        for delivery in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(format!("kafka: topic {:?}: {e}", self.topic)),
                Err(_) => return Err(format!("kafka: topic {:?}: the delivery was cancelled", self.topic)),
            }
        }
        Ok(())
    }

    /// The latest entry of each key written before this call, in the order
    /// the keys were first written. Blocking (a consumer): call off the
    /// async threads.
    pub fn read(&self) -> Result<Vec<Entry>, String> {
        let err = |e: rdkafka::error::KafkaError| format!("kafka: topic {:?}: {e}", self.topic);
        let mut config = self.config.clone();
        config
            .set("group.id", format!("pgfanout-dead-letters-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        let consumer: BaseConsumer = config.create().map_err(err)?;
        let (low, high) = match consumer.fetch_watermarks(&self.topic, 0, self.timeout) {
            Ok(w) => w,
            Err(rdkafka::error::KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)) => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(err(e)),
        };
        let mut latest: HashMap<String, Option<Vec<u8>>> = HashMap::new();
        let mut order = Vec::new();
        if high > low {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.topic, 0, Offset::Beginning).map_err(err)?;
            consumer.assign(&tpl).map_err(err)?;
            let started = Instant::now();
            let mut next = low;
            while next < high {
                if started.elapsed() > self.timeout * 6 {
                    return Err(format!("kafka: topic {:?}: read {} of {} entries before timing out", self.topic, next - low, high - low));
                }
                let Some(msg) = consumer.poll(Duration::from_millis(200)) else { continue };
                let msg = msg.map_err(err)?;
                next = msg.offset() + 1;
                let Some(key) = msg.key() else { continue };
                let key = String::from_utf8_lossy(key).into_owned();
                if !latest.contains_key(&key) {
                    order.push(key.clone());
                }
                latest.insert(key, msg.payload().map(<[u8]>::to_vec));
            }
        }
        drop(consumer);
        Ok(order
            .into_iter()
            .map(|k| {
                let v = latest.remove(&k).flatten();
                (k, v)
            })
            .collect())
    }
}
