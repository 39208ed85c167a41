//! The configuration file's sections as typed structs: `source`, `sinks`,
//! `dead_letter`, `http`, `runtime`, `ha` (pipelines are in `pipeline`). Each
//! rejects unknown fields; defaults are the functions beside them.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;

use pgfanout_postgres::conn::{PgConnectOptions, TlsFiles};
use pgfanout_postgres::SourceError;

use super::pipeline::PipelineConfig;
use super::redact;
use pgfanout_sdk::settings as units;
use pgfanout_sdk::settings::ByteSize;

/// The whole configuration file, as [`load`] builds it: every section
/// deserialized and validated, every sink configured by its connector.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: SourceConfig,
    /// Named sinks, in file order (sink index = position here).
    pub sinks: IndexMap<String, SinkConfig>,
    pub pipelines: Vec<PipelineConfig>,
    pub dead_letter: DeadLetterConfig,
    pub http: HttpConfig,
    pub runtime: RuntimeConfig,
    pub ha: HaConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub postgres: PostgresSourceConfig,
    /// `source.kafka`: this pgfanout is an applier. It reads change records
    /// from Kafka topics as a member of a consumer group, instead of the
    /// slot (which it never creates or reads); `source.postgres` is still
    /// where `verify`, `wait` and the `postgres` dead-letter table look.
    #[serde(default)]
    pub kafka: Option<KafkaSource>,
}

#[cfg(feature = "kafka")]
impl SourceConfig {
    /// The appliers' consumer group: `source.kafka.group`, default
    /// `pgfanout-<slot>`; `None` without `source.kafka`.
    pub fn kafka_group(&self) -> Option<String> {
        let k = self.kafka.as_ref()?;
        Some(k.group.clone().unwrap_or_else(|| format!("pgfanout-{}", self.postgres.slot)))
    }
}

/// `source.kafka`'s settings.
#[cfg(feature = "kafka")]
pub type KafkaSource = pgfanout_kafka::source::KafkaSourceConfig;
/// `source.kafka`'s settings (this build has no Kafka: refused at validation).
#[cfg(not(feature = "kafka"))]
pub type KafkaSource = serde_json::Value;

/// `source.postgres`. Its `Debug` output hides the URL's password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// `postgres://user:password@host:port/db?sslmode=...`
    pub url: String,
    /// Set when `url` names a physical standby to decode from (PostgreSQL
    /// 16+; spares the primary the decoding): the primary's URL. The slot,
    /// the stream and the initial snapshot stay on the standby; what
    /// pgfanout writes (the publication, the `pgfanout` schema, heartbeats,
    /// backfill watermarks, the `ha` lease) goes here.
    #[serde(default)]
    pub primary_url: Option<String>,
    #[serde(default = "default_slot")]
    pub slot: String,
    #[serde(default = "default_slot")]
    pub publication: String,
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// TLS files (sslmode itself is in the URL).
    #[serde(default)]
    pub tls: TlsFiles,
    /// How often a standby status update is sent at least.
    #[serde(default = "default_status_interval", with = "units::duration")]
    pub status_interval: Duration,
    /// A replication connection that brings nothing (no change, no
    /// keepalive) for half of this is pinged (a status update asking for a
    /// reply); when nothing arrives for all of it, the link is taken as
    /// dead (a silent network: a half-open TCP connection behind a load
    /// balancer) and pgfanout reconnects. `0s` turns it off.
    #[serde(default = "default_receive_timeout", with = "units::duration")]
    pub receive_timeout: Duration,
    /// When set, a `pg_logical_emit_message` heartbeat is written this often
    /// so that a server sending no keepalives still lets the slot advance.
    #[serde(default, with = "units::option_duration")]
    pub heartbeat_interval: Option<Duration>,
    /// While changes stream in without pause (reads for 4 such intervals),
    /// read the replication connection at most once per this interval so
    /// that one read takes many changes (fewer wake-ups per change; a
    /// sustained stream waits at most about two intervals, a transaction now
    /// and then none). `0ms` reads as soon as anything arrives.
    #[serde(default = "default_read_coalesce", with = "units::duration")]
    pub read_coalesce: Duration,
    /// The replication socket's kernel receive buffer: `auto` (default:
    /// 16KiB on a connection to a loopback address whose reads are
    /// coalesced, which keeps the walsender's sends cheap; the kernel's
    /// autotuning otherwise), `kernel` (always the kernel's) or a size (any
    /// connection).
    #[serde(default)]
    pub receive_buffer: ReceiveBufferConfig,
    /// Connections the initial snapshot reads with (tables and ctid ranges in
    /// parallel); one more plans the copy and holds the snapshot open.
    #[serde(default = "default_snapshot_parallelism")]
    pub snapshot_parallelism: usize,
    /// What a row that cannot be decoded does: `dead_letter` (default: the
    /// row goes to the dead-letter file with its raw text values and the
    /// error, and streaming goes on) or `stop` (exit 1 and leave the slot
    /// where it is).
    #[serde(default)]
    pub on_decode_error: OnDecodeError,
    /// What an invalidated slot (`wal_status = lost`, the WAL it needed
    /// removed) or a slot dropped by someone does at start: `fail` (default:
    /// exit 1 with the fix) or `recreate` (a new slot, every table
    /// backfilled, then entries of rows deleted meanwhile removed from the
    /// stores that can be verified).
    #[serde(default)]
    pub on_slot_lost: OnSlotLost,
    /// What a column type change seen in the stream (`ALTER COLUMN ... TYPE
    /// ... USING` rewrites rows without streaming them) does: `backfill`
    /// (default: the table is backfilled) or `ignore`.
    #[serde(default)]
    pub on_type_change: OnTypeChange,
    /// Transactions that outgrow the server's `logical_decoding_work_mem`:
    /// `auto` (default: on PostgreSQL 14 and later the server streams them
    /// while they run, pgoutput protocol 2 to 4; pgfanout keeps each until it
    /// commits and drops it if it aborts, so sinks still get whole committed
    /// transactions in commit order) or `off` (protocol 1: the server spills
    /// them to its own disk and sends them after their commit).
    #[serde(default)]
    pub streaming: Streaming,
    /// On PostgreSQL 17 and later, create the slot as a failover slot
    /// (`FAILOVER`), and make an existing one so: a standby with
    /// `sync_replication_slots = on` keeps a copy of it, and pgfanout
    /// resumes from that copy after the standby is promoted (default true;
    /// ignored before 17).
    #[serde(default = "default_true")]
    pub failover_slot: bool,
    /// On PostgreSQL 18, publish stored generated columns
    /// (`publish_generated_columns = stored` on the publication, set when
    /// pgfanout creates it or altered when it exists); snapshots, backfills
    /// and `verify` then carry them too. Default false: generated columns
    /// are left out, as every server before 18 does. An error before 18.
    #[serde(default)]
    pub publish_generated_columns: bool,
    /// Memory for streamed transactions that have not committed yet, all
    /// together (default 4MiB); the rest spills to files in
    /// `streaming_spill_dir`.
    #[serde(default = "default_streaming_memory")]
    pub streaming_memory: ByteSize,
    /// Where streamed transactions spill (default: the system's temporary
    /// directory, `$TMPDIR` or `/tmp`). Files are deleted when their
    /// transaction ends; nothing there needs to survive a restart.
    pub streaming_spill_dir: Option<PathBuf>,
}

/// `source.postgres.streaming`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Streaming {
    #[default]
    Auto,
    Off,
}

fn default_streaming_memory() -> ByteSize {
    ByteSize(4 << 20)
}

/// `source.postgres.on_slot_lost`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnSlotLost {
    #[default]
    Fail,
    Recreate,
}

/// `source.postgres.on_type_change`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTypeChange {
    #[default]
    Backfill,
    Ignore,
}

/// `source.postgres.receive_buffer`: `auto`, `kernel` or a size (see
/// `pgfanout_postgres::replication::ReceiveBuffer`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiveBufferConfig(pub pgfanout_postgres::replication::ReceiveBuffer);

/// Smaller receive buffers starve the stream (the kernel's floor is about
/// 2 kB); below this, `receive_buffer` is refused.
const MIN_RECEIVE_BUFFER: u64 = 4096;

impl<'de> Deserialize<'de> for ReceiveBufferConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use pgfanout_postgres::replication::ReceiveBuffer;
        use serde::de::Error;
        let expected = "expected auto, kernel or a size of at least 4KiB, like 16KiB";
        let size = match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) if s.trim() == "auto" => return Ok(ReceiveBufferConfig(ReceiveBuffer::Auto)),
            serde_json::Value::String(s) if s.trim() == "kernel" => return Ok(ReceiveBufferConfig(ReceiveBuffer::Kernel)),
            serde_json::Value::String(s) => units::parse_size(&s).map_err(|e| D::Error::custom(format!("{e}; {expected}")))?,
            serde_json::Value::Number(n) => n.as_u64().ok_or_else(|| D::Error::custom(format!("invalid size {n}; {expected}")))?,
            other => return Err(D::Error::custom(format!("invalid receive buffer {other}; {expected}"))),
        };
        if size < MIN_RECEIVE_BUFFER {
            return Err(D::Error::custom(format!("receive buffer of {size} bytes is too small; {expected}")));
        }
        let size =
            usize::try_from(size).map_err(|_| D::Error::custom(format!("receive buffer of {size} bytes is too large; {expected}")))?;
        Ok(ReceiveBufferConfig(ReceiveBuffer::Bytes(size)))
    }
}

/// `source.postgres.on_decode_error`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDecodeError {
    #[default]
    DeadLetter,
    Stop,
}

fn default_snapshot_parallelism() -> usize {
    4
}

impl PostgresSourceConfig {
    /// The connection options of `url` with the `tls` files.
    pub fn connect_options(&self) -> Result<PgConnectOptions, SourceError> {
        let mut opts = PgConnectOptions::from_url(&self.url, self.tls.clone())?;
        if let Some(primary) = &self.primary_url {
            opts.primary = Some(Box::new(PgConnectOptions::from_url(primary, self.tls.clone())?));
        }
        Ok(opts)
    }
}

impl fmt::Debug for PostgresSourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSourceConfig")
            .field("url", &redact::redact_url(&self.url))
            .field("primary_url", &self.primary_url.as_deref().map(redact::redact_url))
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("snapshot", &self.snapshot)
            .field("tls", &self.tls)
            .field("status_interval", &self.status_interval)
            .field("receive_timeout", &self.receive_timeout)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("read_coalesce", &self.read_coalesce)
            .field("receive_buffer", &self.receive_buffer)
            .field("snapshot_parallelism", &self.snapshot_parallelism)
            .field("on_decode_error", &self.on_decode_error)
            .field("on_slot_lost", &self.on_slot_lost)
            .field("on_type_change", &self.on_type_change)
            .field("streaming", &self.streaming)
            .field("failover_slot", &self.failover_slot)
            .field("streaming_memory", &self.streaming_memory)
            .field("streaming_spill_dir", &self.streaming_spill_dir)
            .finish()
    }
}

fn default_slot() -> String {
    "pgfanout".into()
}

fn default_read_coalesce() -> Duration {
    Duration::from_millis(2)
}

fn default_status_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_receive_timeout() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    #[default]
    Initial,
    Never,
}

/// A named sink: its `type` and its settings, which only the connector of
/// that type parses (`crate::sinks`). `Debug` hides passwords and
/// secret-looking fields.
#[derive(Clone)]
pub struct SinkConfig {
    /// The `type` as written (`file`, `redis`, ...).
    pub kind: String,
    /// Everything but `type`.
    pub settings: serde_json::Value,
    /// The connector's typed, validated form of the settings and of the
    /// mappings of the pipelines writing to this sink; set by the loader
    /// once the whole file is valid.
    pub configured: Option<std::sync::Arc<dyn pgfanout_sdk::ConfiguredSink>>,
}

impl SinkConfig {
    /// The `type` as written.
    pub fn kind(&self) -> &str {
        &self.kind
    }
}

impl fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.kind, redact::redact_json(&self.settings))
    }
}

/// Where records that cannot be delivered go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// `file` (the default), `postgres` (table `pgfanout.dead_letters` in
    /// the source database) or `kafka` (a compacted topic).
    #[serde(default)]
    pub to: DeadLetterTo,
    /// With `to: file`: a JSON-lines file (`-` for stdout).
    #[serde(default = "default_dead_letter_path")]
    pub path: String,
    /// With `to: kafka`: the Kafka sink under `sinks:` whose cluster and
    /// credentials are used (it may have no pipelines).
    #[serde(default)]
    pub sink: Option<String>,
    /// With `to: kafka`: the topic (default `pgfanout.dead_letters.<slot>`).
    #[serde(default)]
    pub topic: Option<String>,
}

/// `dead_letter.to`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadLetterTo {
    #[default]
    File,
    Postgres,
    Kafka,
}

impl DeadLetterConfig {
    /// The topic of `to: kafka` for `slot`.
    pub fn kafka_topic(&self, slot: &str) -> String {
        self.topic.clone().unwrap_or_else(|| format!("pgfanout.dead_letters.{slot}"))
    }
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig { to: DeadLetterTo::File, path: default_dead_letter_path(), sink: None, topic: None }
    }
}

fn default_dead_letter_path() -> String {
    "pgfanout-dead-letters.jsonl".into()
}

/// The metrics and health listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port` (a socket address).
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `/readyz` fails while the source lag is above this.
    #[serde(default = "default_ready_max_lag")]
    pub ready_max_lag: ByteSize,
    /// The browser console at `/` (on by default).
    #[serde(default = "default_true")]
    pub console: bool,
    /// When set, the endpoints that change something (`POST /backfills`,
    /// pause, resume, cancel) and the console's buttons ask for it as
    /// `Authorization: Bearer <token>`; the console is read-only without it.
    #[serde(default)]
    pub admin_token: Option<pgfanout_sdk::settings::Secret>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: default_listen(), enabled: true, ready_max_lag: default_ready_max_lag(), console: true, admin_token: None }
    }
}

fn default_listen() -> String {
    "127.0.0.1:9187".into()
}

fn default_true() -> bool {
    true
}

/// 1 GiB of WAL behind is "not ready".
fn default_ready_max_lag() -> ByteSize {
    ByteSize(1 << 30)
}

/// Internal queue sizes and timings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Most records in one sink batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Batches queued per sink before the reader waits (backpressure),
    /// counting the batches a pipelining sink has in flight (at least one
    /// is always queued). Default 4: with 8, a sink slower than the stream
    /// held 3-5 MB more of queued records at no gain in throughput
    /// (README, Performance, fourth pass).
    #[serde(default = "default_queue_batches")]
    pub queue_batches: usize,
    /// Bytes of records queued for the sinks or being written, all sinks
    /// together (a record two sinks hold counts twice). The reader waits
    /// when it is used up; a single record larger than this goes alone.
    #[serde(default = "default_queue_memory")]
    pub queue_memory: ByteSize,
    /// How long shutdown waits for in-flight writes.
    #[serde(default = "default_shutdown_timeout", with = "units::duration")]
    pub shutdown_timeout: Duration,
    /// How long changes read may wait for more before they are handed to
    /// the sinks (batches small transactions; adds at most this latency).
    #[serde(default = "default_linger", with = "units::duration")]
    pub linger: Duration,
    /// Where pgfanout remembers, per slot, the server's timeline and how far
    /// it handed changes to the sinks, so that a failover while it was
    /// stopped is checked at the next start (docs/operating.md#failover).
    /// Default: `$STATE_DIRECTORY`, else `$HOME/.local/state/pgfanout`.
    #[serde(default)]
    pub state_dir: Option<std::path::PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            batch_size: default_batch_size(),
            queue_batches: default_queue_batches(),
            queue_memory: default_queue_memory(),
            shutdown_timeout: default_shutdown_timeout(),
            linger: default_linger(),
            state_dir: None,
        }
    }
}

fn default_linger() -> Duration {
    Duration::from_millis(5)
}

fn default_batch_size() -> usize {
    1024
}

fn default_queue_batches() -> usize {
    4
}

fn default_queue_memory() -> ByteSize {
    ByteSize(128 << 20)
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

/// High availability: several instances run with the same configuration;
/// the one holding the slot's lease (a row in `pgfanout.leases`) streams
/// and writes, the others wait warm and take over when it expires.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// Off by default: one instance, which takes the slot when it is free.
    #[serde(default)]
    pub enabled: bool,
    /// How long a lease lasts unless renewed (renewed every third of it). A
    /// leader that cannot renew stops writing at four fifths of it; a
    /// standby takes over once it has passed, or at once when the leader's
    /// lease connection is gone. Keep it under the server's
    /// `wal_sender_timeout` (60s by default).
    #[serde(default = "default_lease", with = "units::duration")]
    pub lease: Duration,
    /// This instance's name in the lease and the logs. Default: the host
    /// name and the process id.
    #[serde(default)]
    pub instance: Option<String>,
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig { enabled: false, lease: default_lease(), instance: None }
    }
}

fn default_lease() -> Duration {
    Duration::from_secs(10)
}

/// Errors from loading a configuration: one line each, already prefixed with
/// the file path, secrets scrubbed.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);
