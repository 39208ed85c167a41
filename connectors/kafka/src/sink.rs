//! The Kafka sink: one idempotent producer, a batch enqueued at once, and
//! `Ok` only once every delivery report is in.
//!
//! Why this is enough for the ack rule: with `enable.idempotence=true` and
//! `acks=all`, a delivery report without error means the record is in every
//! in-sync replica, and librdkafka keeps per-partition order within the
//! producer session (it retries internally without reordering or
//! duplicating). Records are partitioned by a hash of their key, so all
//! changes of one key land in one partition, in commit order.
//!
//! When a delivery fails with something transient (broker down, timeout,
//! queue full for too long) the whole batch is reported retriable; the
//! runtime sends it again, so a consumer may see a change twice (the
//! `pgfanout.commit_lsn` / `pgfanout.ordinal` headers let it drop the
//! repeat) but never loses one, and for each key the last copy it sees of
//! every change is in order. A record that cannot ever be written (too
//! large, bad rendered topic, template column missing) is rejected on its
//! own. After a failed batch the producer is rebuilt (a new idempotence
//! session), see `KafkaSink::rebuild_producer`.
//!
//! Pipelining (`in_flight_batches`, default 2): the next batch is encoded and
//! enqueued in the same producer while earlier ones wait for their delivery
//! reports; the runtime completes them in order. When a batch in flight
//! fails, every batch submitted before the failure and completing after it
//! reports itself retriable too, even if delivered, so the runtime writes
//! them again, in order, after the failed one (the producer is rebuilt
//! first). Without that, a delivered later change of a key could be
//! followed by a resent earlier one.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgfanout_sdk::connector::compile_routes;
use pgfanout_sdk::{BatchOutcome, InFlight, Rejected, Sink, SinkError, SinkRecord};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tracing::{debug, info, warn};

use crate::config::Delivery;
use crate::config::{DebeziumConfig, HeaderSet, KafkaMapping, KafkaSinkConfig, SaslConfig};
use crate::debezium::now_micros;
use crate::encode::{headers, moved_key, CompiledMapping, EncodeBuf};
use crate::eos::{Position, Transactions};
use crate::error::{delivery_is_permanent, KafkaSinkError};
use crate::topics::{TopicStatus, Topics};
use pgfanout_sdk::settings::TlsFiles;

/// A connected Kafka sink; see the crate docs for the mapping rules.
pub struct KafkaSink {
    producer: FutureProducer,
    client_config: ClientConfig,
    topics: Topics,
    routes: Vec<CompiledMapping>,
    debezium: DebeziumConfig,
    delivery_timeout: Duration,
    brokers: String,
    /// `in_flight_batches`.
    in_flight: usize,
    /// Shared with the batches in flight.
    failures: Arc<Failures>,
    /// `headers`: which `pgfanout.*` headers records carry.
    header_set: HeaderSet,
    /// Reused by every record's encoding and headers.
    encode_buf: EncodeBuf,
    header_buf: Vec<u8>,
    /// `delivery: exactly_once`.
    eos: Option<Transactions>,
}

/// Failed batches, shared by the sink and its batches in flight.
#[derive(Default)]
struct Failures {
    /// How many so far (in flight or written alone): a batch in flight that
    /// completes after a failure newer than its submission is sent again.
    count: AtomicU64,
    /// Set by a failed batch: rebuild the producer before the next one.
    rebuild: AtomicBool,
}

impl Failures {
    fn note(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.rebuild.store(true, Ordering::Release);
    }

    fn generation(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }
}

/// The librdkafka settings for `cfg`: the pass-through properties first,
/// then the ones the sink's guarantees depend on.
pub fn client_config(cfg: &KafkaSinkConfig) -> ClientConfig {
    let mut props: BTreeMap<&str, String> = BTreeMap::new();
    props.insert("allow.auto.create.topics", "false".into());
    // Sized for the sink's window (a few batches of at most a few thousand
    // records in flight) instead of librdkafka's 1 MB produce requests:
    // 256 kB requests still carry hundreds of records each, and up to five
    // of them are in flight per broker. Requests point at the queued
    // records' payloads instead of copying them (librdkafka copies records
    // under 64 kB by default), so each record is held once. Peak RSS
    // 37.3 -> 35.5 MB in the benchmark (the batch size; the copy setting
    // changed neither RSS nor throughput beyond noise). Both can be
    // overridden in `properties`.
    props.insert("batch.size", "262144".into());
    props.insert("message.copy.max.bytes", "0".into());
    for (k, v) in &cfg.properties {
        props.insert(k, v.clone());
    }
    props.insert("bootstrap.servers", cfg.brokers.clone());
    props.insert("client.id", cfg.client_id.clone().unwrap_or_else(|| "pgfanout".into()));
    props.insert("enable.idempotence", "true".into());
    props.insert("acks", "all".into());
    props.insert("message.timeout.ms", cfg.delivery_timeout.as_millis().to_string());
    if cfg.delivery == Delivery::ExactlyOnce {
        if let Some(id) = &cfg.transactional_id {
            props.insert("transactional.id", id.clone());
        }
        // librdkafka wants message.timeout.ms <= transaction.timeout.ms.
        let ms = (cfg.delivery_timeout + Duration::from_secs(10)).max(Duration::from_secs(60)).as_millis();
        props.entry("transaction.timeout.ms").or_insert_with(|| ms.to_string());
    }
    security(&mut props, cfg.sasl.as_ref(), cfg.tls.as_ref());
    let mut cc = ClientConfig::new();
    for (k, v) in props {
        cc.set(k, v);
    }
    cc
}

/// The `security.protocol`, SASL and TLS properties of a client (the sink's
/// producer, the source's consumer).
pub(crate) fn security(props: &mut BTreeMap<&str, String>, sasl: Option<&SaslConfig>, tls: Option<&TlsFiles>) {
    let protocol = match (sasl.is_some(), tls.is_some()) {
        (false, false) => "plaintext",
        (false, true) => "ssl",
        (true, false) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    props.insert("security.protocol", protocol.into());
    if let Some(sasl) = sasl {
        props.insert("sasl.mechanisms", sasl.mechanism.as_str().into());
        props.insert("sasl.username", sasl.username.clone());
        props.insert("sasl.password", sasl.password.expose().to_string());
    }
    if let Some(tls) = tls {
        for (key, path) in
            [("ssl.ca.location", &tls.ca_file), ("ssl.certificate.location", &tls.cert_file), ("ssl.key.location", &tls.key_file)]
        {
            if let Some(p) = path {
                props.insert(key, p.display().to_string());
            }
        }
        if let Some(pw) = &tls.key_password {
            props.insert("ssl.key.password", pw.expose().to_string());
        }
        if tls.insecure {
            props.insert("enable.ssl.certificate.verification", "false".into());
        }
    }
}

impl KafkaSink {
    /// Builds the producer, then checks (or creates) every topic whose
    /// template has no placeholder. `routes[i]` is the mapping of route `i`
    /// ([`SinkRecord::route`]). An invalid config or mapping, or a constant
    /// topic that is missing while `topics.create` is false, is
    /// permanent ([`KafkaSinkError::is_retriable`] false); unreachable brokers are
    /// retriable.
    pub async fn connect(cfg: &KafkaSinkConfig, routes: Vec<KafkaMapping>) -> Result<KafkaSink, KafkaSinkError> {
        let routes = compile_routes("kafka", cfg.validate(), &routes, CompiledMapping::compile).map_err(KafkaSinkError::Invalid)?;
        let delivery_timeout = cfg.delivery_timeout;
        let client_config = client_config(cfg);
        let producer: FutureProducer = client_config.create().map_err(KafkaSinkError::ClientConfig)?;
        let mut sink = KafkaSink {
            producer,
            topics: Topics::new(client_config.clone(), cfg.topics.clone(), delivery_timeout.min(Duration::from_secs(30))),
            client_config,
            routes,
            debezium: cfg.debezium.clone(),
            delivery_timeout,
            brokers: cfg.brokers.clone(),
            in_flight: cfg.in_flight_batches,
            failures: Arc::default(),
            header_set: cfg.headers,
            encode_buf: EncodeBuf::default(),
            header_buf: Vec::new(),
            eos: None,
        };
        if cfg.delivery == Delivery::ExactlyOnce {
            let id = cfg.transactional_id.clone().ok_or_else(|| KafkaSinkError::Invalid("transactional_id: missing".into()))?;
            let eos = Transactions::new(id, cfg.progress_topic.clone(), cfg.topics.replication_factor);
            eos.ensure_progress_topic(&sink.client_config, delivery_timeout.min(Duration::from_secs(30))).await?;
            sink.in_flight = 1;
            // `init_transactions` waits for the first write: a warm standby
            // (`ha`) connects its sinks long before it leads, and would
            // fence the leader's producer (same transactional id).
            sink.eos = Some(eos);
        }
        let constant: Vec<String> = sink.routes.iter().filter_map(|r| r.constant_topic().map(str::to_string)).collect();
        for topic in constant {
            if let TopicStatus::Unusable(why) = sink.topics.ensure(&sink.producer, &topic).await? {
                return Err(KafkaSinkError::Invalid(why));
            }
        }
        Ok(sink)
    }

    /// Replaces the producer with a fresh one (a new idempotence session)
    /// after a failed batch. The old producer's queue is purged as it is
    /// dropped, so none of its leftovers can be appended after the retried
    /// batch; its teardown blocks, so it runs off the async threads.
    ///
    /// Why always, not only after librdkafka's fatal errors: a broker that
    /// lost its state (a restart of a single in-memory broker, an expired
    /// producer id) answers `UnknownProducerId`, which librdkafka retries
    /// with the old session until every message times out.
    fn rebuild_producer(&mut self) {
        match self.client_config.create::<FutureProducer>() {
            Ok(fresh) => {
                let old = std::mem::replace(&mut self.producer, fresh);
                if let Some((code, reason)) = old.client().fatal_error() {
                    warn!(brokers = %self.brokers, %code, %reason, "kafka producer had a fatal error");
                }
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(e) => warn!(brokers = %self.brokers, error = %e, "kafka producer could not be rebuilt; keeping the old one"),
        }
    }

    /// After a failed batch (here or in flight): forget the topics' state and
    /// start a new producer before anything else is enqueued.
    fn recover_if_failed(&mut self) {
        if self.failures.rebuild.swap(false, Ordering::AcqRel) {
            self.topics.forget();
            self.rebuild_producer();
        }
    }

    /// `init_transactions` (fencing an older producer with the same id and
    /// aborting what it left open), then the position Kafka already holds.
    async fn ready_transactions(&mut self) -> Result<(), KafkaSinkError> {
        let Some(eos) = &self.eos else { return Ok(()) };
        if eos.ready {
            return Ok(());
        }
        let timeout = self.delivery_timeout;
        let producer = self.producer.clone();
        let what = |w: &'static str| move |source| KafkaSinkError::Transaction { what: w.to_string(), source };
        tokio::task::spawn_blocking(move || producer.init_transactions(timeout))
            .await
            .map_err(|source| KafkaSinkError::Task { context: "kafka: init_transactions".into(), source })?
            .map_err(what("init_transactions"))?;
        let config = self.client_config.clone();
        let reader = Transactions::new(eos.id.clone(), eos.progress_topic.clone(), 1);
        let committed = tokio::task::spawn_blocking(move || reader.read_committed(&config, timeout))
            .await
            .map_err(|source| KafkaSinkError::Task { context: "kafka: progress topic".into(), source })??;
        let eos = self.eos.as_mut().expect("checked");
        info!(
            transactional_id = %eos.id,
            committed = ?committed.map(|p| format!("{}/{}", p.commit_lsn, p.ordinal)),
            "kafka exactly-once producer ready; changes at or before the committed position are skipped"
        );
        eos.committed = committed;
        eos.ready = true;
        Ok(())
    }

    /// One batch as one Kafka transaction: the records Kafka does not hold
    /// yet, the progress record, the commit. Any failure aborts it.
    async fn write_transaction(&mut self, batch: &[SinkRecord]) -> BatchOutcome {
        if self.failures.rebuild.swap(false, Ordering::AcqRel) {
            self.topics.forget();
            self.rebuild_producer();
            if let Some(eos) = &mut self.eos {
                eos.ready = false;
            }
        }
        self.ready_transactions().await.inspect_err(|_| self.failures.note())?;
        let eos = self.eos.as_ref().expect("exactly-once");
        let kept: Vec<usize> = (0..batch.len()).filter(|&i| !eos.has(&batch[i])).collect();
        if kept.is_empty() {
            debug!(records = batch.len(), "kafka already holds the whole batch");
            return Ok(Vec::new());
        }
        let skipped = batch.len() - kept.len();
        if skipped > 0 {
            info!(skipped, "kafka already holds the start of this batch (committed before a restart)");
        }
        let records: Vec<SinkRecord> = kept.iter().map(|&i| batch[i].clone()).collect();
        let last = records.iter().filter_map(Position::of).max();
        match self.transaction(&records, last).await {
            Ok(rejected) => {
                if let (Some(eos), Some(p)) = (self.eos.as_mut(), last) {
                    eos.committed = Some(p);
                }
                Ok(rejected.into_iter().map(|r| Rejected { index: kept[r.index], error: r.error }).collect())
            }
            Err(e) => {
                self.abort().await;
                if e.is_retriable() {
                    self.failures.note();
                }
                Err(e.into())
            }
        }
    }

    async fn transaction(&mut self, records: &[SinkRecord], last: Option<Position>) -> Result<Vec<Rejected>, KafkaSinkError> {
        let what = |w: &'static str| move |source| KafkaSinkError::Transaction { what: w.to_string(), source };
        self.producer.begin_transaction().map_err(what("begin"))?;
        let sent = self.dispatch(records).await?;
        let refused_before = sent.rejected.len();
        let progress = match last {
            Some(p) => {
                let eos = self.eos.as_ref().expect("exactly-once");
                let value = p.to_json();
                let record: FutureRecord<'_, str, [u8]> =
                    FutureRecord::to(&eos.progress_topic).key(eos.id.as_str()).payload(value.as_slice());
                Some(self.producer.send_result(record).map_err(|(e, _)| what("progress record")(e))?)
            }
            None => None,
        };
        let rejected = sent.settle().await?;
        if let Some(fut) = progress {
            delivery_result(fut.await).map_err(what("progress record"))?;
        }
        if rejected.len() > refused_before {
            return Err(KafkaSinkError::RecordsRefused(format!("{} record(s) refused by the broker", rejected.len() - refused_before)));
        }
        let producer = self.producer.clone();
        let timeout = self.delivery_timeout;
        tokio::task::spawn_blocking(move || producer.commit_transaction(timeout))
            .await
            .map_err(|source| KafkaSinkError::Task { context: "kafka: commit_transaction".into(), source })?
            .map_err(what("commit"))?;
        debug!(records = records.len(), "kafka transaction committed");
        Ok(rejected)
    }

    /// Aborts the open transaction, if any; when that fails too the
    /// producer is rebuilt (and the position read again) before the next.
    async fn abort(&mut self) {
        let producer = self.producer.clone();
        let timeout = self.delivery_timeout;
        let aborted = tokio::task::spawn_blocking(move || producer.abort_transaction(timeout)).await;
        if !matches!(aborted, Ok(Ok(()))) {
            self.failures.rebuild.store(true, Ordering::Release);
        }
    }

    async fn write_batch(&mut self, batch: &[SinkRecord]) -> BatchOutcome {
        if self.eos.is_some() {
            return self.write_transaction(batch).await;
        }
        self.recover_if_failed();
        let sent = self.dispatch(batch).await?;
        let outcome = sent.settle().await.map_err(SinkError::from);
        if outcome.is_err() {
            self.failures.note();
        }
        outcome
    }

    /// Encodes the batch and enqueues every record in the producer, in
    /// order; what it returns awaits the delivery reports.
    async fn dispatch(&mut self, batch: &[SinkRecord]) -> Result<Dispatched, KafkaSinkError> {
        let now_us = now_micros();
        // Every topic the batch needs first, each once (changes come in runs
        // of one table), so that nothing is enqueued before they all exist
        // or are known to be unusable.
        let mut unusable: BTreeMap<String, String> = BTreeMap::new();
        let mut last: Option<Cow<'_, str>> = None;
        for record in batch {
            // A record without a route or topic is rejected below.
            let Some(Ok(topic)) = self.routes.get(record.route).map(|r| r.topic(&record.change)) else { continue };
            if last.as_deref() == Some(&*topic) || unusable.contains_key(&*topic) {
                continue;
            }
            if let TopicStatus::Unusable(why) = self.topics.ensure(&self.producer, &topic).await? {
                unusable.insert(topic.to_string(), why);
            }
            last = Some(topic);
        }

        // Encode and enqueue each record in order, through buffers reused
        // from record to record (librdkafka copies what it keeps); on a full
        // queue, wait for the oldest outstanding delivery and try the same
        // record again.
        let mut buf = std::mem::take(&mut self.encode_buf);
        let mut scratch = std::mem::take(&mut self.header_buf);
        let mut rejected: Vec<Rejected> = Vec::new();
        let mut pending: Vec<(usize, DeliveryFuture)> = Vec::with_capacity(batch.len());
        let mut results: Vec<(usize, Result<(), KafkaError>)> = Vec::new();
        let mut next_to_await = 0;
        for (index, SinkRecord { route, change, .. }) in batch.iter().enumerate() {
            let Some(route) = self.routes.get(*route) else {
                rejected.push(Rejected { index, error: format!("kafka sink has no mapping for route {route}") });
                continue;
            };
            if route.skips(change) {
                continue;
            }
            let event_headers = route.outbox_headers(change);
            let e = match route.encode_into(change, &self.debezium, now_us, &mut buf) {
                Ok(e) => e,
                Err(error) => {
                    rejected.push(Rejected { index, error });
                    continue;
                }
            };
            if let Some(why) = unusable.get(e.topic) {
                rejected.push(Rejected { index, error: why.clone() });
                continue;
            }
            // The record, then its tombstones (the old key's after a key
            // change, its own after a delete), only once the record itself
            // was enqueued. Different keys have no order between them.
            let parts = [
                Some((e.key, Some(e.value), false)),
                e.moved_from.map(|k| (Some(k), None, true)),
                e.tombstone.then_some((e.key, None, false)),
            ];
            'payloads: for (key, payload, moved) in parts.into_iter().flatten() {
                let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(e.topic);
                let mut h = headers(change, self.header_set, &mut scratch);
                // The old key's tombstone names the key columns it removes.
                if let (true, Some(old)) = (moved && h.is_some(), moved_key(change).as_deref()) {
                    h = h.map(|h| h.insert(rdkafka::message::Header { key: crate::encode::header::MOVED_KEY, value: Some(old) }));
                }
                for (name, v) in &event_headers {
                    h = Some(h.unwrap_or_default().insert(rdkafka::message::Header { key: name, value: Some(v.as_bytes()) }));
                }
                if let Some(h) = h {
                    record = record.headers(h);
                }
                if let Some(k) = key {
                    record = record.key(k);
                }
                if let Some(p) = payload {
                    record = record.payload(p);
                }
                loop {
                    match self.producer.send_result(record) {
                        Ok(fut) => {
                            pending.push((index, fut));
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            if next_to_await < pending.len() {
                                let (i, fut) = &mut pending[next_to_await];
                                results.push((*i, delivery_result(fut.await)));
                                next_to_await += 1;
                            } else {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        }
                        Err((err, _)) => {
                            results.push((index, Err(err)));
                            break 'payloads;
                        }
                    }
                }
            }
        }
        self.encode_buf = buf;
        self.header_buf = scratch;
        pending.drain(..next_to_await);
        Ok(Dispatched {
            pending,
            results,
            rejected,
            guard: self.delivery_timeout + Duration::from_secs(30),
            brokers: self.brokers.clone(),
            records: batch.len(),
        })
    }
}

/// A batch enqueued in the producer: its delivery reports still to come,
/// and what is already known.
struct Dispatched {
    pending: Vec<(usize, DeliveryFuture)>,
    results: Vec<(usize, Result<(), KafkaError>)>,
    rejected: Vec<Rejected>,
    /// How long to wait for one report beyond librdkafka's own timeout.
    guard: Duration,
    brokers: String,
    records: usize,
}

impl Dispatched {
    /// Awaits every delivery report: `Ok` with the records refused for good,
    /// or retriable when any delivery failed for another reason.
    async fn settle(self) -> Result<Vec<Rejected>, KafkaSinkError> {
        let Dispatched { pending, mut results, mut rejected, guard, brokers, records } = self;
        for (i, fut) in pending {
            let result = match tokio::time::timeout(guard, fut).await {
                Ok(r) => delivery_result(r),
                Err(_) => Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)),
            };
            results.push((i, result));
        }
        let mut retriable: Option<(usize, KafkaError)> = None;
        let mut failures = 0;
        for (index, result) in results {
            let Err(err) = result else { continue };
            if delivery_is_permanent(&err) {
                rejected.push(Rejected { index, error: format!("kafka refused the record: {err}") });
            } else {
                failures += 1;
                if retriable.is_none() {
                    retriable = Some((index, err));
                }
            }
        }
        if let Some((index, source)) = retriable {
            return Err(KafkaSinkError::Deliveries { brokers, failures, records, index, source: Box::new(source) });
        }
        rejected.sort_by_key(|r| r.index);
        rejected.dedup_by_key(|r| r.index);
        debug!(records, rejected = rejected.len(), "kafka batch acknowledged");
        Ok(rejected)
    }
}

/// A delivery report as a plain result; a dropped report (the producer went
/// away) counts as a failure, never as delivered.
fn delivery_result<E>(r: Result<OwnedDeliveryResult, E>) -> Result<(), KafkaError> {
    match r {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((err, _))) => Err(err),
        Err(_) => Err(KafkaError::Canceled),
    }
}

impl Sink for KafkaSink {
    fn write(&mut self, batch: &[SinkRecord]) -> impl std::future::Future<Output = BatchOutcome> + Send {
        self.write_batch(batch)
    }

    fn max_in_flight(&self) -> usize {
        self.in_flight
    }

    fn whole_transactions(&self) -> bool {
        self.eos.is_some()
    }

    /// Enqueues the batch behind the ones in flight (one producer keeps
    /// their per-partition order). A batch whose deliveries fail marks the
    /// sink failed; every batch submitted before that mark and completing
    /// after it reports itself retriable even if it was delivered, so the
    /// runtime writes them all again, in order, after the failed one: for
    /// every key the last copy a consumer sees of each change is in order.
    async fn submit(&mut self, batch: Arc<[SinkRecord]>) -> Result<InFlight, SinkError> {
        self.recover_if_failed();
        let generation = self.failures.generation();
        let sent = self.dispatch(&batch).await?;
        let failures = self.failures.clone();
        Ok(Box::pin(async move {
            let outcome = sent.settle().await;
            if failures.generation() != generation {
                // An earlier batch failed (this one's deliveries may have
                // been purged with its producer): the rewrite of that batch
                // has already rebuilt the producer.
                return Err(KafkaSinkError::EarlierBatchFailed.into());
            }
            if outcome.is_err() {
                failures.note();
            }
            Ok(outcome?)
        }))
    }

    /// Fetches cluster metadata: Ok when a broker answered.
    fn check(&mut self) -> impl std::future::Future<Output = Result<(), SinkError>> + Send {
        let producer = self.producer.clone();
        let brokers = self.brokers.clone();
        async move {
            tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, Duration::from_secs(10)))
                .await
                .map_err(|source| KafkaSinkError::Task { context: format!("kafka {brokers}: metadata"), source })?
                .map(|_| ())
                .map_err(|source| KafkaSinkError::Metadata { brokers, source }.into())
        }
    }

    /// Waits (up to the delivery timeout) for anything still queued.
    fn close(&mut self) -> impl std::future::Future<Output = Result<(), SinkError>> + Send {
        let producer = self.producer.clone();
        let timeout = self.delivery_timeout;
        async move {
            tokio::task::spawn_blocking(move || producer.flush(timeout))
                .await
                .map_err(|source| KafkaSinkError::Task { context: "kafka: flush".into(), source })?
                .map_err(|e| KafkaSinkError::Flush(e).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: serde_json::Value) -> KafkaSinkConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn guarantees_win_over_pass_through_properties() {
        let c = client_config(&cfg(serde_json::json!({
            "brokers": "a:9092,b:9092",
            "delivery_timeout": "2m",
            "properties": {"linger.ms": "20", "compression.type": "zstd", "allow.auto.create.topics": "true"}
        })));
        assert_eq!(c.get("bootstrap.servers"), Some("a:9092,b:9092"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("message.timeout.ms"), Some("120000"));
        assert_eq!(c.get("client.id"), Some("pgfanout"));
        assert_eq!(c.get("security.protocol"), Some("plaintext"));
        assert_eq!(c.get("linger.ms"), Some("20"));
        assert_eq!(c.get("batch.size"), Some("262144"), "sized for the window unless overridden");
        assert_eq!(c.get("compression.type"), Some("zstd"));
        assert_eq!(c.get("allow.auto.create.topics"), Some("true"), "operators may opt back in");
    }

    #[test]
    fn sasl_and_tls_map_to_librdkafka_settings() {
        let c = client_config(&cfg(serde_json::json!({
            "brokers": "a:9093", "client_id": "shop-cdc",
            "sasl": {"mechanism": "SCRAM-SHA-256", "username": "u", "password": "p"},
            "tls": {"ca_file": "/etc/ca.pem", "cert_file": "/etc/c.pem", "key_file": "/etc/k.pem", "key_password": "kp"}
        })));
        for (k, v) in [
            ("client.id", "shop-cdc"),
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanisms", "SCRAM-SHA-256"),
            ("sasl.username", "u"),
            ("sasl.password", "p"),
            ("ssl.ca.location", "/etc/ca.pem"),
            ("ssl.certificate.location", "/etc/c.pem"),
            ("ssl.key.location", "/etc/k.pem"),
            ("ssl.key.password", "kp"),
        ] {
            assert_eq!(c.get(k), Some(v), "{k}");
        }
        let plain = |v| client_config(&cfg(v)).get("security.protocol").map(str::to_string);
        assert_eq!(plain(serde_json::json!({"brokers": "a:1", "tls": {}})).as_deref(), Some("ssl"));
        let sasl = serde_json::json!({"brokers": "a:1", "sasl": {"mechanism": "PLAIN", "username": "u", "password": "p"}});
        assert_eq!(plain(sasl).as_deref(), Some("sasl_plaintext"));
        // librdkafka accepts the result (it has SSL and SCRAM compiled in).
        let producer: Result<FutureProducer, _> = client_config(&cfg(serde_json::json!({
            "brokers": "127.0.0.1:1", "sasl": {"mechanism": "SCRAM-SHA-512", "username": "u", "password": "p"}, "tls": {}
        })))
        .create();
        assert!(producer.is_ok(), "{:?}", producer.err());
        // Every codec a Kafka operator may pick is compiled in.
        for codec in ["gzip", "snappy", "lz4", "zstd"] {
            let p: Result<FutureProducer, _> =
                client_config(&cfg(serde_json::json!({"brokers": "127.0.0.1:1", "properties": {"compression.type": codec}}))).create();
            assert!(p.is_ok(), "compression {codec}: {:?}", p.err());
        }
    }
}
