//! Kafka failures, typed where they are born, and which are worth retrying.
//!
//! A retriable error makes the runtime send the whole batch again (the
//! producer is rebuilt first); a permanent one stops the sink's start or
//! makes it isolate records. Anything the cluster's state explains (brokers
//! down, timeouts, leadership changes, a topic the broker lost, too few
//! brokers for the replication factor, authorization) is retried: a record
//! must never be dead-lettered because of the cluster's state. Only a
//! record's own fault ([`delivery_is_permanent`]: too large, invalid) or an
//! invalid configuration is permanent.
//!
//! A [`KafkaSinkError`] keeps librdkafka's error (and its
//! [`RDKafkaErrorCode`], [`KafkaSinkError::code`]); it becomes a
//! [`SinkError`] only at the sink's boundary.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::task::JoinError;

/// A failure of the Kafka sink.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    /// The sink's settings, a mapping or a constant topic cannot be used
    /// (the message says what to fix). Permanent.
    #[error("{0}")]
    Invalid(String),
    /// librdkafka refused its configuration. Permanent.
    #[error("kafka sink: invalid librdkafka configuration: {0}")]
    ClientConfig(KafkaError),
    /// Deliveries of a batch failed for a reason other than the record's
    /// own (the first failure is kept). Retriable.
    #[error("kafka {brokers}: {failures} of {records} deliveries failed, first at batch index {index}: {source}")]
    Deliveries { brokers: String, failures: usize, records: usize, index: usize, source: Box<KafkaError> },
    /// A batch submitted before this one failed after this one was
    /// enqueued. Retriable.
    #[error("kafka: a batch before this one failed after it was enqueued; sending it again after that one")]
    EarlierBatchFailed,
    /// No broker answered a metadata request. Retriable.
    #[error("kafka {brokers}: cannot fetch cluster metadata: {source}")]
    Metadata { brokers: String, source: KafkaError },
    /// The metadata of one topic could not be read. Retriable.
    #[error("kafka: cannot read metadata of topic {topic:?}: {source}")]
    TopicMetadata { topic: String, source: KafkaError },
    /// The broker reported an error for one topic's metadata. Retriable.
    #[error("kafka: metadata of topic {topic:?}: {code}")]
    TopicError { topic: String, code: RDKafkaErrorCode },
    /// Creating a topic failed as a request. Retriable.
    #[error("kafka: cannot create topic {topic:?}: {source}")]
    CreateTopic { topic: String, source: KafkaError },
    /// The cluster refused to create a topic for a reason it may get over
    /// (fewer brokers than the replication factor, a timeout). Retriable.
    #[error("{}", create_refused(topic, *replication_factor, *code))]
    CreateRefused { topic: String, replication_factor: i32, code: RDKafkaErrorCode },
    /// Flushing the producer at shutdown failed. Retriable.
    #[error("kafka: flush at shutdown: {0}")]
    Flush(KafkaError),
    /// A step of exactly-once delivery (`what`: init, begin, commit,
    /// abort, the progress topic) failed. Retriable: the transaction is
    /// aborted and the batch sent again in a new one.
    #[error("kafka transaction: {what}: {source}")]
    Transaction { what: String, source: KafkaError },
    /// Some records of a transaction were refused for their own fault
    /// (too large, invalid): the transaction is aborted, and its records are
    /// written one by one so that only the faulty ones are dead-lettered.
    /// Permanent.
    #[error("kafka transaction aborted: {0}")]
    RecordsRefused(String),
    /// A blocking task (`what`: metadata, flush) died. Retriable.
    #[error("{context} task failed: {source}")]
    Task { context: String, source: JoinError },
}

fn create_refused(topic: &str, replication_factor: i32, code: RDKafkaErrorCode) -> String {
    if code == RDKafkaErrorCode::InvalidReplicationFactor {
        format!(
            "kafka: cannot create topic {topic:?} with replication factor {replication_factor}: {code} (fewer brokers available; retrying)"
        )
    } else {
        format!("kafka: cannot create topic {topic:?}: {code}")
    }
}

impl KafkaSinkError {
    /// Whether retrying the batch can help.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, KafkaSinkError::Invalid(_) | KafkaSinkError::ClientConfig(_) | KafkaSinkError::RecordsRefused(_))
    }

    /// librdkafka's error code, when the failure has one.
    pub fn code(&self) -> Option<RDKafkaErrorCode> {
        match self {
            KafkaSinkError::Deliveries { source, .. } => source.rdkafka_error_code(),
            KafkaSinkError::ClientConfig(e)
            | KafkaSinkError::Metadata { source: e, .. }
            | KafkaSinkError::TopicMetadata { source: e, .. }
            | KafkaSinkError::CreateTopic { source: e, .. }
            | KafkaSinkError::Flush(e)
            | KafkaSinkError::Transaction { source: e, .. } => e.rdkafka_error_code(),
            KafkaSinkError::TopicError { code, .. } | KafkaSinkError::CreateRefused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The sink boundary: the only place a [`KafkaSinkError`] becomes the runtime's
/// `SinkError` (retriable as [`KafkaSinkError::is_retriable`] says, same message).
impl pgfanout_sdk::StoreError for KafkaSinkError {
    fn is_retriable(&self) -> bool {
        KafkaSinkError::is_retriable(self)
    }
}

/// A failed delivery that will recur for this record however often it is
/// sent (the record is rejected alone). Everything else (timeouts, broker
/// down, leadership changes, unknown topic after a broker lost its data,
/// authorization) fails the batch as retriable.
pub(crate) fn delivery_is_permanent(err: &KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::UnsupportedForMessageFormat
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_is_kept_and_the_message_too() {
        let e =
            KafkaSinkError::CreateRefused { topic: "t".into(), replication_factor: 3, code: RDKafkaErrorCode::InvalidReplicationFactor };
        assert!(e.is_retriable());
        assert_eq!(e.code(), Some(RDKafkaErrorCode::InvalidReplicationFactor));
        assert!(e.to_string().contains("replication factor 3") && e.to_string().ends_with("(fewer brokers available; retrying)"));
        let too_big = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(delivery_is_permanent(&too_big));
        assert!(!delivery_is_permanent(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)));
        assert!(!delivery_is_permanent(&KafkaError::Canceled));
    }
}
