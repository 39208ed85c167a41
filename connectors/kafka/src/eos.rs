//! Exactly-once delivery (`delivery: exactly_once`): Kafka transactions
//! aligned to PostgreSQL commits, with the position they cover kept in
//! Kafka itself.
//!
//! - The producer is transactional (`transactional.id`, stable across
//!   restarts, unique to one slot and sink). `init_transactions` at start
//!   fences any older producer with the same id and aborts the transaction
//!   it left open, so what a crashed instance had sent but not committed is
//!   never visible to `read_committed` consumers.
//! - Each batch is one Kafka transaction: its records, then one record in
//!   the compacted progress topic (key: the transactional id, value: the
//!   last position of the batch), then the commit. The runtime cuts batches
//!   between PostgreSQL transactions ([`Sink::whole_transactions`]), so a
//!   consumer sees a source transaction whole or not at all, unless it has
//!   more records than `runtime.batch_size` (then it spans several Kafka
//!   transactions, each whole).
//! - After a restart the sink reads the progress topic back (as a
//!   `read_committed` consumer) and skips every change at or before the
//!   position found: the slot is confirmed only after the Kafka commit, so
//!   PostgreSQL may send again changes that Kafka already holds.
//!   Snapshot and backfill rows (`op: read`) are never skipped: a copy
//!   interrupted by a crash is copied again, and its rows are appended
//!   again (they all carry the copy's single position).
//!
//! [`Sink::whole_transactions`]: pgfanout_sdk::Sink::whole_transactions

use std::time::{Duration, Instant};

use pgfanout_sdk::{Lsn, Op, SinkRecord};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::info;

use crate::error::KafkaSinkError;

/// A change's place in the stream: (commit LSN, ordinal in its transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub commit_lsn: Lsn,
    pub ordinal: u32,
}

impl Position {
    /// The position of a record, None for snapshot and backfill rows.
    pub fn of(record: &SinkRecord) -> Option<Position> {
        (record.change.op != Op::Read).then_some(Position { commit_lsn: record.change.commit_lsn, ordinal: record.change.ordinal })
    }

    /// The progress record's value.
    pub fn to_json(self) -> Vec<u8> {
        format!(r#"{{"commit_lsn":"{}","ordinal":{}}}"#, self.commit_lsn, self.ordinal).into_bytes()
    }

    fn from_json(bytes: &[u8]) -> Option<Position> {
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        Some(Position { commit_lsn: v["commit_lsn"].as_str()?.parse().ok()?, ordinal: u32::try_from(v["ordinal"].as_u64()?).ok()? })
    }
}

/// The exactly-once state of a sink.
#[derive(Debug)]
pub struct Transactions {
    pub id: String,
    pub progress_topic: String,
    replication_factor: i32,
    /// `init_transactions` done and the position read back.
    pub ready: bool,
    /// The last position committed to Kafka (read back at start, then kept).
    pub committed: Option<Position>,
}

impl Transactions {
    pub fn new(id: String, progress_topic: String, replication_factor: i32) -> Transactions {
        Transactions { id, progress_topic, replication_factor, ready: false, committed: None }
    }

    /// Whether `record` is already in Kafka (a change at or before the
    /// committed position).
    pub fn has(&self, record: &SinkRecord) -> bool {
        matches!((Position::of(record), self.committed), (Some(p), Some(c)) if p <= c)
    }

    /// Creates the progress topic (one partition, compacted) if missing.
    pub async fn ensure_progress_topic(&self, config: &ClientConfig, timeout: Duration) -> Result<(), KafkaSinkError> {
        let admin: AdminClient<DefaultClientContext> = config.create().map_err(KafkaSinkError::ClientConfig)?;
        let topic =
            NewTopic::new(&self.progress_topic, 1, TopicReplication::Fixed(self.replication_factor)).set("cleanup.policy", "compact");
        let results = admin
            .create_topics([&topic], &AdminOptions::new().operation_timeout(Some(timeout)))
            .await
            .map_err(|e| KafkaSinkError::Transaction { what: format!("create progress topic {}", self.progress_topic), source: e })?;
        for r in results {
            match r {
                Ok(_) => info!(topic = %self.progress_topic, "kafka progress topic created"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(KafkaSinkError::Transaction {
                        what: format!("create progress topic {name}"),
                        source: KafkaError::AdminOp(code),
                    })
                }
            }
        }
        Ok(())
    }

    /// Reads the last position committed under this transactional id
    /// (a `read_committed` consumer, from the start of the compacted topic
    /// to its end). Blocking.
    pub fn read_committed(&self, config: &ClientConfig, timeout: Duration) -> Result<Option<Position>, KafkaSinkError> {
        let err = |source| KafkaSinkError::Transaction { what: format!("read progress topic {}", self.progress_topic), source };
        let mut cc = config.clone();
        for key in ["transactional.id", "enable.idempotence", "acks", "message.timeout.ms", "batch.size", "message.copy.max.bytes"] {
            cc.remove(key);
        }
        cc.set("group.id", format!("{}-progress-reader", self.id))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true");
        let consumer: BaseConsumer = cc.create().map_err(err)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.progress_topic, 0, Offset::Beginning).map_err(err)?;
        consumer.assign(&tpl).map_err(err)?;
        let started = Instant::now();
        let mut last = None;
        loop {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) if m.key() == Some(self.id.as_bytes()) => {
                    if let Some(p) = m.payload().and_then(Position::from_json) {
                        last = Some(p);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(last),
                Some(Err(e)) => return Err(err(e)),
                None => {}
            }
            if started.elapsed() > timeout {
                return Err(err(KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut)));
            }
        }
    }
}
