//! Kafka as a source (`source.kafka`): an applier reads change records from
//! topics as one member of a consumer group and hands them to the daemon's
//! pipelines and sinks.
//!
//! This module is the Kafka side: the settings, the consumer (cooperative
//! sticky assignment, no automatic commits, `read_committed`), and turning a
//! record back into the [`Change`] it was written from ([`native`]). Which
//! offsets may be committed is the daemon's business (its offset tracker
//! applies the ack rule per partition); the consumer asks it through
//! [`Rebalances`] when partitions are about to be taken away, so what is
//! already durable is committed before another member takes over.

pub mod debezium;
pub mod native;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pgfanout_sdk::settings::{duration, Problems, TlsFiles};
use pgfanout_sdk::Change;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Deserialize;
use tracing::{info, warn};

use crate::config::{check_connection, check_topic_name, SaslConfig};
use crate::error::KafkaSinkError;

/// `source.kafka`: where the change records are, and the group this applier
/// joins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// librdkafka `client.id` (default `pgfanout-applier`).
    pub client_id: Option<String>,
    pub sasl: Option<SaslConfig>,
    /// TLS; present (even empty, `tls: {}`) means the connection uses TLS.
    pub tls: Option<TlsFiles>,
    /// The topics to read: names, or regular expressions starting with `^`
    /// (every matching topic, including ones created later).
    pub topics: Vec<String>,
    /// The consumer group; every applier of one deployment uses the same
    /// one (default, filled by the daemon: `pgfanout-<slot>`).
    pub group: Option<String>,
    /// How the records are written (default `native`).
    #[serde(default)]
    pub format: SourceFormat,
    /// Where a group without committed offsets starts (default `earliest`).
    #[serde(default)]
    pub start_from: StartFrom,
    /// How often offsets durable in every sink are committed (default 1s).
    #[serde(default = "default_commit_interval", with = "duration")]
    pub commit_interval: Duration,
    /// Extra librdkafka consumer properties, passed through as is.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}

/// The record format of the topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceFormat {
    /// pgfanout's change record (a Kafka sink with `format: native` and its
    /// `pgfanout.*` headers).
    #[default]
    Native,
    /// Debezium's PostgreSQL change events, JSON with or without schemas
    /// ([`debezium`]).
    Debezium,
}

/// Where a consumer group without committed offsets starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    #[default]
    Earliest,
    Latest,
}

/// Properties the source sets itself.
const RESERVED: [(&str, &str); 7] = [
    ("bootstrap.servers", "use `brokers`"),
    ("group.id", "use `group`"),
    ("enable.auto.commit", "offsets are committed only once every sink has the records durable"),
    ("enable.auto.offset.store", "offsets are committed only once every sink has the records durable"),
    ("auto.offset.reset", "use `start_from`"),
    ("partition.assignment.strategy", "the applier relies on cooperative-sticky assignment"),
    ("isolation.level", "the applier reads committed records only (exactly-once topics)"),
];

impl KafkaSourceConfig {
    /// Every problem found, as (dotted sub-path, message). Empty when valid.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Problems::default();
        if self.brokers.trim().is_empty() {
            problems.add("brokers", "must not be empty; expected host:port[,host:port...]");
        }
        if self.topics.is_empty() {
            problems.add("topics", "must name at least one topic (or a ^regex)");
        }
        for (i, t) in self.topics.iter().enumerate() {
            if !t.starts_with('^') {
                if let Err(e) = check_topic_name(t) {
                    problems.add(format!("topics[{i}]"), e);
                }
            }
        }
        if let Some(g) = &self.group {
            if g.trim().is_empty() {
                problems.add("group", "must not be empty (or leave it out for pgfanout-<slot>)");
            }
        }
        if self.commit_interval < Duration::from_millis(10) {
            problems.add("commit_interval", "must be at least 10ms, like 1s");
        }
        check_connection(&mut problems, self.sasl.as_ref(), self.tls.as_ref(), &self.properties, &RESERVED);
        problems.into()
    }

    /// The consumer's librdkafka settings for group `group`.
    pub fn client_config(&self, group: &str) -> ClientConfig {
        let mut props: BTreeMap<&str, String> = BTreeMap::new();
        props.insert("statistics.interval.ms", "5000".into());
        for (k, v) in &self.properties {
            props.insert(k, v.clone());
        }
        props.insert("bootstrap.servers", self.brokers.clone());
        props.insert("client.id", self.client_id.clone().unwrap_or_else(|| "pgfanout-applier".into()));
        props.insert("group.id", group.into());
        props.insert("enable.auto.commit", "false".into());
        props.insert("enable.auto.offset.store", "false".into());
        props.insert("auto.offset.reset", if self.start_from == StartFrom::Earliest { "earliest" } else { "latest" }.into());
        props.insert("partition.assignment.strategy", "cooperative-sticky".into());
        props.insert("isolation.level", "read_committed".into());
        crate::sink::security(&mut props, self.sasl.as_ref(), self.tls.as_ref());
        let mut cc = ClientConfig::new();
        for (k, v) in props {
            cc.set(k, v);
        }
        cc
    }
}

/// A partition of a topic.
pub type Partition = (Arc<str>, i32);

/// What the consumer asks of the daemon around rebalances.
pub trait Rebalances: Send + Sync + 'static {
    /// `partitions` are about to be taken from this member: the offsets
    /// (the next one to read, per partition) that may be committed for them
    /// now, because everything before is durable in every sink. Records of
    /// theirs still on their way to the sinks are written all the same (the
    /// writes are versioned, so the next owner's copies do no harm).
    fn revoking(&self, partitions: &[Partition]) -> Vec<(Partition, i64)>;
    /// `partitions` were given to this member.
    fn assigned(&self, partitions: &[Partition]);
    /// The consumer lag of a partition, from the client's statistics.
    fn lag(&self, partition: &Partition, lag: i64);
    /// Committing these offsets failed (an asynchronous commit refused, e.g.
    /// by a rebalance that began meanwhile): they must be committed again,
    /// or a partition that receives nothing more keeps its committed offset
    /// short of what is durable.
    fn commit_failed(&self, offsets: &[(Partition, i64)]);
}

/// The consumer's context: calls [`Rebalances`].
pub struct Hooked {
    hooks: Arc<dyn Rebalances>,
}

impl ClientContext for Hooked {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            let topic: Arc<str> = Arc::from(topic.as_str());
            for (id, p) in &t.partitions {
                // Partition -1 is librdkafka's internal "unassigned" one; a lag
                // of -1 means unknown.
                if *id >= 0 && p.consumer_lag >= 0 {
                    self.hooks.lag(&(topic.clone(), *id), p.consumer_lag);
                }
            }
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<Partition> {
    tpl.elements().iter().map(|e| (Arc::from(e.topic()), e.partition())).collect()
}

impl ConsumerContext for Hooked {
    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            let failed: Vec<(Partition, i64)> = offsets
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some(((Arc::from(e.topic()), e.partition()), o)),
                    _ => None,
                })
                .collect();
            warn!(error = %e, offsets = ?failed, "kafka source: a commit failed; it is made again");
            self.hooks.commit_failed(&failed);
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = partitions(tpl);
            info!(partitions = ?parts, "kafka source: partitions revoked; committing what is durable");
            let offsets = self.hooks.revoking(&parts);
            if offsets.is_empty() {
                return;
            }
            match offset_list(&offsets) {
                Ok(list) => {
                    if let Err(e) = consumer.commit(&list, CommitMode::Sync) {
                        warn!(error = %e, "kafka source: committing the revoked partitions' offsets failed; their next owner reads some records again");
                    }
                }
                Err(e) => warn!(error = %e, "kafka source: bad offsets"),
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts = partitions(tpl);
            info!(partitions = ?parts, "kafka source: partitions assigned");
            self.hooks.assigned(&parts);
        }
    }
}

fn offset_list(offsets: &[(Partition, i64)]) -> Result<TopicPartitionList, KafkaError> {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    Ok(list)
}

/// One record read.
#[derive(Debug)]
pub struct Received {
    pub partition: Partition,
    pub offset: i64,
    /// `None` for a record without a value (a compacted topic's tombstone),
    /// which carries no change, except the old key's tombstone after a key
    /// change (the delete of that key, see [`native::moved`]).
    pub change: Option<Result<Change, String>>,
    /// The record's value, kept for its dead letter when it cannot be read.
    pub raw: Option<String>,
}

/// The group member.
pub struct SourceConsumer {
    consumer: StreamConsumer<Hooked>,
    format: SourceFormat,
    /// Topic names seen, shared so each record does not allocate its own.
    names: std::sync::Mutex<Vec<Arc<str>>>,
}

impl SourceConsumer {
    /// Creates the consumer and subscribes to the topics.
    pub fn subscribe(cfg: &KafkaSourceConfig, group: &str, hooks: Arc<dyn Rebalances>) -> Result<SourceConsumer, KafkaSinkError> {
        let consumer: StreamConsumer<Hooked> =
            cfg.client_config(group).create_with_context(Hooked { hooks }).map_err(KafkaSinkError::ClientConfig)?;
        let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(KafkaSinkError::ClientConfig)?;
        Ok(SourceConsumer { consumer, format: cfg.format, names: Default::default() })
    }

    fn name(&self, topic: &str) -> Arc<str> {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = names.iter().find(|n| &***n == topic) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(topic);
        names.push(n.clone());
        n
    }

    /// The next record (errors are the client's: a broker down is retried
    /// inside librdkafka and reported here only as information).
    pub async fn recv(&self) -> Result<Received, KafkaError> {
        let msg = self.consumer.recv().await?;
        let partition = (self.name(msg.topic()), msg.partition());
        let offset = msg.offset();
        let Some(payload) = msg.payload() else {
            // Debezium's tombstone follows its delete event: nothing more.
            let change = if self.format == SourceFormat::Native { native::moved(msg.headers()) } else { None };
            let raw = matches!(change, Some(Err(_))).then(|| "(a tombstone)".to_string());
            return Ok(Received { partition, offset, change, raw });
        };
        let change = match self.format {
            SourceFormat::Native => Some(native::decode(payload, msg.headers())),
            SourceFormat::Debezium => debezium::decode(msg.key(), payload, msg.headers()),
        };
        let raw = matches!(change, Some(Err(_))).then(|| String::from_utf8_lossy(payload).into_owned());
        Ok(Received { partition, offset, change, raw })
    }

    /// Commits `offsets` (the next offset to read, per partition).
    pub fn commit(&self, offsets: &[(Partition, i64)], sync: bool) -> Result<(), KafkaError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let list = offset_list(offsets)?;
        self.consumer.commit(&list, if sync { CommitMode::Sync } else { CommitMode::Async })
    }

    /// The next offset to read of every partition held: past every record
    /// handed out, and past transaction markers (which are never handed out).
    pub fn positions(&self) -> Vec<(Partition, i64)> {
        let Ok(list) = self.consumer.position() else { return Vec::new() };
        list.elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(((self.name(e.topic()), e.partition()), o)),
                _ => None,
            })
            .collect()
    }

    /// Leaves the group (revoking every partition first: the last durable
    /// offsets are committed by [`Rebalances::revoking`]).
    pub fn unsubscribe(&self) {
        self.consumer.unsubscribe();
    }
}

/// What `/wait` reads across a group: the topics' end offsets and the
/// group's committed offsets. A client of its own that never joins the
/// group. Its calls block (network round trips bounded by `timeout`).
pub struct GroupWatch {
    client: BaseConsumer,
    topics: Vec<String>,
    group: String,
}

/// A group as `status` and `doctor` show it: its state, its members with
/// the partitions each was assigned, and every partition's lag.
#[derive(Debug, Clone, Default)]
pub struct GroupView {
    /// The coordinator's state (`Stable`, `PreparingRebalance`,
    /// `CompletingRebalance`, `Empty`, `Dead`).
    pub state: String,
    pub members: Vec<GroupMember>,
    /// Every partition of the matched topics, in topic and partition order.
    pub partitions: Vec<PartitionLag>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub client_id: String,
    pub host: String,
    /// `topic/partition`, as the group's leader assigned them.
    pub assigned: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// The group's committed offset; `None` when it never committed one.
    pub committed: Option<i64>,
    /// The first offset still in the log.
    pub low: i64,
    /// The next offset to be written.
    pub end: i64,
}

impl PartitionLag {
    /// Records in the log the group has not committed yet.
    pub fn lag(&self) -> i64 {
        (self.end - self.committed.unwrap_or(self.low).max(self.low)).max(0)
    }
}

impl GroupView {
    pub fn lag(&self) -> i64 {
        self.partitions.iter().map(PartitionLag::lag).sum()
    }

    /// The matched topics with their partition counts, in name order.
    pub fn topics(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = Vec::new();
        for p in &self.partitions {
            match out.last_mut() {
                Some((t, n)) if *t == p.topic => *n += 1,
                _ => out.push((p.topic.clone(), 1)),
            }
        }
        out
    }
}

/// A member's assignment, as the consumer protocol encodes it: version
/// (i16), an array (i32 count) of topics (i16-length name, i32 count of
/// i32 partitions), then user data. `None` when it does not parse.
fn member_assignment(bytes: &[u8]) -> Option<Vec<String>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Some(head)
    }
    fn int(b: &mut &[u8]) -> Option<i32> {
        Some(i32::from_be_bytes(take(b, 4)?.try_into().ok()?))
    }
    let mut b = bytes;
    take(&mut b, 2)?;
    let mut out = Vec::new();
    for _ in 0..int(&mut b)?.max(0) {
        let len = i16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?);
        let topic = std::str::from_utf8(take(&mut b, usize::try_from(len).ok()?)?).ok()?;
        for _ in 0..int(&mut b)?.max(0) {
            out.push(format!("{topic}/{}", int(&mut b)?));
        }
    }
    Some(out)
}

impl GroupWatch {
    pub fn new(cfg: &KafkaSourceConfig, group: &str) -> Result<GroupWatch, KafkaSinkError> {
        let client: BaseConsumer = cfg.client_config(group).create().map_err(KafkaSinkError::ClientConfig)?;
        Ok(GroupWatch { client, topics: cfg.topics.clone(), group: group.to_string() })
    }

    /// The group's state, members and assignments, and the lag of every
    /// partition of the matched topics.
    pub fn describe(&self, timeout: Duration) -> Result<GroupView, KafkaError> {
        let mut view = GroupView::default();
        let groups = self.client.fetch_group_list(Some(&self.group), timeout)?;
        if let Some(g) = groups.groups().iter().find(|g| g.name() == self.group) {
            view.state = g.state().to_string();
            for m in g.members() {
                let assigned = m.assignment().and_then(member_assignment).unwrap_or_default();
                view.members.push(GroupMember { client_id: m.client_id().to_string(), host: m.client_host().to_string(), assigned });
            }
        }
        let metadata = self.client.fetch_metadata(None, timeout)?;
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics().iter().filter(|t| self.wanted(t.name())) {
            for p in t.partitions() {
                let (low, end) = self.client.fetch_watermarks(t.name(), p.id(), timeout)?;
                tpl.add_partition(t.name(), p.id());
                view.partitions.push(PartitionLag { topic: t.name().to_string(), partition: p.id(), committed: None, low, end });
            }
        }
        if view.partitions.is_empty() {
            return Ok(view);
        }
        let committed = self.client.committed_offsets(tpl, timeout)?;
        for p in &mut view.partitions {
            if let Some(Offset::Offset(c)) = committed.find_partition(&p.topic, p.partition).map(|e| e.offset()) {
                p.committed = Some(c);
            }
        }
        view.partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(view)
    }

    fn wanted(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| match t.strip_prefix('^') {
            // librdkafka's subscription regexes are anchored at the start.
            Some(_) => regex::Regex::new(t).is_ok_and(|r| r.is_match(topic)),
            None => t == topic,
        })
    }

    /// The end offset (the next offset to be written) of every non-empty
    /// partition of the topics.
    pub fn ends(&self, timeout: Duration) -> Result<Vec<(Partition, i64)>, KafkaError> {
        let metadata = self.client.fetch_metadata(None, timeout)?;
        let mut out = Vec::new();
        for t in metadata.topics().iter().filter(|t| self.wanted(t.name())) {
            for p in t.partitions() {
                let (low, high) = self.client.fetch_watermarks(t.name(), p.id(), timeout)?;
                if high > low {
                    out.push(((Arc::from(t.name()), p.id()), high));
                }
            }
        }
        Ok(out)
    }

    /// Whether the group has committed every partition up to `ends`.
    pub fn reached(&self, ends: &[(Partition, i64)], timeout: Duration) -> Result<bool, KafkaError> {
        if ends.is_empty() {
            return Ok(true);
        }
        let mut tpl = TopicPartitionList::new();
        for ((t, p), _) in ends {
            tpl.add_partition(t, *p);
        }
        let committed = self.client.committed_offsets(tpl, timeout)?;
        Ok(ends
            .iter()
            .all(|((t, p), end)| matches!(committed.find_partition(t, *p).map(|e| e.offset()), Some(Offset::Offset(c)) if c >= *end)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_members_assignment_reads_as_topic_partitions() {
        // version 3, two topics: items [0, 2], b [1], then 4 bytes of user data.
        let mut b = vec![0, 3, 0, 0, 0, 2];
        b.extend([0, 5]);
        b.extend(b"items");
        b.extend([0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2]);
        b.extend([0, 1, b'b', 0, 0, 0, 1, 0, 0, 0, 1]);
        b.extend([0, 0, 0, 0]);
        assert_eq!(member_assignment(&b).unwrap(), ["items/0", "items/2", "b/1"]);
        assert_eq!(member_assignment(&b[..b.len() - 9]), None, "truncated");
        assert_eq!(member_assignment(&[0, 3, 0, 0, 0, 0]).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn lag_counts_from_the_committed_offset_or_the_log_start() {
        let p = |committed, low, end| PartitionLag { topic: "t".into(), partition: 0, committed, low, end };
        assert_eq!(p(Some(7), 0, 10).lag(), 3);
        assert_eq!(p(None, 4, 10).lag(), 6);
        assert_eq!(p(Some(2), 4, 10).lag(), 6, "records before the log start are gone");
        assert_eq!(p(Some(10), 0, 10).lag(), 0);
    }

    fn parse(yaml: serde_json::Value) -> KafkaSourceConfig {
        serde_json::from_value(yaml).expect("parses")
    }

    #[test]
    fn the_settings_the_ack_rule_depends_on_cannot_be_overridden() {
        let cfg = parse(serde_json::json!({
            "brokers": "k:9092", "topics": ["cdc.items", "^cdc\\..*", "bad topic"],
            "format": "debezium",
            "properties": { "enable.auto.commit": "true", "fetch.min.bytes": "1" }
        }));
        let problems: Vec<String> = cfg.validate().into_iter().map(|(f, m)| format!("{f}: {m}")).collect();
        assert!(problems.iter().any(|p| p.starts_with("topics[2]:")), "{problems:?}");
        assert!(!problems.iter().any(|p| p.starts_with("topics[1]")), "a ^regex is not a topic name: {problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("properties.enable.auto.commit:")), "{problems:?}");
        assert_eq!(problems.len(), 2, "{problems:?}");
        let good =
            parse(serde_json::json!({ "brokers": "k:9092", "topics": ["cdc.items"], "properties": { "enable.auto.commit": "true" } }));
        let cc = good.client_config("g");
        assert_eq!(cc.get("enable.auto.commit"), Some("false"), "the applier's own settings win");
        assert_eq!(cc.get("partition.assignment.strategy"), Some("cooperative-sticky"));
        assert_eq!(cc.get("isolation.level"), Some("read_committed"));
        assert_eq!(cc.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(cc.get("group.id"), Some("g"));
    }
}
