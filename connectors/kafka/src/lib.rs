//! Kafka sink: every change as an event, in the format Kafka consumers of
//! CDC streams already read.
//!
//! Each pipeline's [`KafkaMapping`] names a topic and a key (`{column}`,
//! `{schema}`, `{table}` templates) and a value format: `native` (pgfanout's
//! change record, docs/design.md section 3) or `debezium` (the Debezium
//! PostgreSQL connector's JSON envelope, so existing Debezium consumers
//! switch without changes). Every record carries its position in headers
//! (`pgfanout.commit_lsn`, `pgfanout.ordinal`, ...), which is how consumers
//! drop the duplicates that at-least-once delivery allows.
//!
//! Why Kafka needs no version guard of its own, unlike the other sinks: the
//! log is append-only and read in order, so a replay after a crash appends
//! copies of changes the topic already has, never an older state over a
//! newer one; the idempotent producer keeps one session free of
//! duplicates, and the headers identify the ones across sessions. With
//! `delivery: exactly_once` (module `eos`) there are none across sessions
//! either: batches are Kafka transactions that record the position they
//! cover, read back at start.

mod config;
pub mod connect;
mod debezium;
mod encode;
mod eos;
mod error;
pub mod letters;
mod sink;
pub mod source;
mod topics;

pub use config::{
    check_topic_name, DebeziumConfig, Delivery, Format, HeaderSet, KafkaMapping, KafkaSinkConfig, OutboxColumns, SaslConfig, SaslMechanism,
    TopicCreation,
};
pub use debezium::{op_code, write_envelope};
pub use encode::header;
pub use error::KafkaSinkError;
pub use sink::{client_config, KafkaSink};

use pgfanout_sdk::connector::{boxed_sink, TypedConnector};

/// The rdkafka this sink is built on, so code that reads topics back (the
/// daemon's end-to-end tests, tools) uses the same librdkafka build without
/// a second copy of the dependency.
pub use rdkafka;

/// The connector: `type: kafka`, settings [`KafkaSinkConfig`], a `kafka:` mapping
/// ([`KafkaMapping`]) per pipeline.
pub static CONNECTOR: TypedConnector<KafkaSinkConfig, KafkaMapping> =
    TypedConnector::new("kafka", KafkaSinkConfig::validate, KafkaMapping::validate, |settings, mappings| {
        boxed_sink(async move { Ok(KafkaSink::connect(settings, mappings.to_vec()).await?) })
    });
