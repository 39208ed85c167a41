//! Making sure a topic exists before records are produced to it.
//!
//! Topic templates can depend on the record (`{schema}.{table}`), so the full
//! set of topics is only known as records arrive: each topic is checked (or
//! created) the first time a batch needs it, and remembered. The memory is
//! dropped after any retriable failure, because a broker that lost its data
//! (or an operator who deleted a topic) must not make the sink produce into
//! a topic that no longer exists.

use std::collections::HashSet;
use std::time::Duration;

use crate::error::KafkaSinkError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use tracing::info;

use crate::config::TopicCreation;

/// What happened when a topic was needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicStatus {
    Ready,
    /// The topic cannot be used and retrying will not help (missing while
    /// `topics.create` is false, or the broker refused to create it).
    Unusable(String),
}

/// The topics known to exist, and the policy for the others.
///
/// The admin client that creates topics is built for each creation and
/// dropped after it: a librdkafka instance keeps its own threads, broker
/// connections and buffers (about 3 MB of a sidecar's resident memory), and
/// a sink only creates topics the first time it meets them.
pub struct Topics {
    client_config: ClientConfig,
    policy: TopicCreation,
    known: HashSet<String>,
    timeout: Duration,
}

impl Topics {
    pub fn new(client_config: ClientConfig, policy: TopicCreation, timeout: Duration) -> Topics {
        Topics { client_config, policy, known: HashSet::new(), timeout }
    }

    /// Forgets which topics exist (after a retriable failure).
    pub fn forget(&mut self) {
        self.known.clear();
    }

    /// Ensures `topic` exists, creating it when the policy says so.
    /// `Err` is retriable (the broker could not be asked).
    pub async fn ensure(&mut self, producer: &FutureProducer, topic: &str) -> Result<TopicStatus, KafkaSinkError> {
        if self.known.contains(topic) {
            return Ok(TopicStatus::Ready);
        }
        let status = if self.policy.create { self.create(topic).await? } else { self.check(producer, topic).await? };
        if status == TopicStatus::Ready {
            self.known.insert(topic.to_string());
        }
        Ok(status)
    }

    async fn create(&self, topic: &str) -> Result<TopicStatus, KafkaSinkError> {
        let mut new = NewTopic::new(topic, self.policy.partitions, TopicReplication::Fixed(self.policy.replication_factor));
        for (k, v) in &self.policy.config {
            new = new.set(k, v);
        }
        let opts = AdminOptions::new().operation_timeout(Some(self.timeout)).request_timeout(Some(self.timeout));
        let admin: AdminClient<DefaultClientContext> = self.client_config.create().map_err(KafkaSinkError::ClientConfig)?;
        let results = admin.create_topics([&new], &opts).await;
        // Dropping a librdkafka instance joins its threads: off the async ones.
        tokio::task::spawn_blocking(move || drop(admin));
        let results = results.map_err(|source| KafkaSinkError::CreateTopic { topic: topic.to_string(), source })?;
        for result in results {
            match result {
                Ok(_) => info!(topic, partitions = self.policy.partitions, "kafka topic created"),
                Err((_, code)) => {
                    if let Some(status) = create_refused(topic, self.policy.replication_factor, code)? {
                        return Ok(status);
                    }
                }
            }
        }
        Ok(TopicStatus::Ready)
    }

    async fn check(&self, producer: &FutureProducer, topic: &str) -> Result<TopicStatus, KafkaSinkError> {
        let producer = producer.clone();
        let name = topic.to_string();
        let timeout = self.timeout;
        let metadata = tokio::task::spawn_blocking(move || producer.client().fetch_metadata(Some(&name), timeout))
            .await
            .map_err(|source| KafkaSinkError::Task { context: "kafka: metadata".into(), source })?;
        let missing = || {
            TopicStatus::Unusable(format!(
                "kafka topic {topic:?} does not exist and `topics.create` is false: create it, or set topics.create: true"
            ))
        };
        match metadata {
            Ok(md) => match md.topics().iter().find(|t| t.name() == topic) {
                Some(t) => match t.error() {
                    None if !t.partitions().is_empty() => Ok(TopicStatus::Ready),
                    None => Ok(missing()),
                    Some(code) => match RDKafkaErrorCode::from(code) {
                        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => Ok(missing()),
                        code => Err(KafkaSinkError::TopicError { topic: topic.to_string(), code }),
                    },
                },
                None => Ok(missing()),
            },
            Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)) => Ok(missing()),
            Err(source) => Err(KafkaSinkError::TopicMetadata { topic: topic.to_string(), source }),
        }
    }
}

/// What a refused topic creation means: `Ok(None)` the topic is there
/// anyway, `Ok(Some(Unusable))` the topic can never be created as
/// configured (its records are dead-lettered), `Err(Retriable)` the cluster
/// is not ready (retried, records wait).
fn create_refused(topic: &str, replication_factor: i32, code: RDKafkaErrorCode) -> Result<Option<TopicStatus>, KafkaSinkError> {
    match code {
        RDKafkaErrorCode::TopicAlreadyExists => Ok(None),
        // Fewer brokers alive than the replication factor: a rolling restart
        // or an outage, not a bad topic. Retried until the brokers are back.
        RDKafkaErrorCode::InvalidReplicationFactor => {
            Err(KafkaSinkError::CreateRefused { topic: topic.to_string(), replication_factor, code })
        }
        RDKafkaErrorCode::InvalidTopic
        | RDKafkaErrorCode::InvalidPartitions
        | RDKafkaErrorCode::InvalidConfig
        | RDKafkaErrorCode::PolicyViolation => Ok(Some(TopicStatus::Unusable(format!("kafka refused to create topic {topic:?}: {code}")))),
        code => Err(KafkaSinkError::CreateRefused { topic: topic.to_string(), replication_factor, code }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_few_brokers_is_retried_and_a_bad_topic_is_not() {
        assert!(create_refused("t", 3, RDKafkaErrorCode::InvalidReplicationFactor).unwrap_err().is_retriable());
        assert!(matches!(create_refused("t", 1, RDKafkaErrorCode::InvalidTopic), Ok(Some(TopicStatus::Unusable(_)))));
        assert!(matches!(create_refused("t", 1, RDKafkaErrorCode::TopicAlreadyExists), Ok(None)));
        assert!(create_refused("t", 1, RDKafkaErrorCode::RequestTimedOut).unwrap_err().is_retriable());
    }
}
