//! The reader's settings, taken from `source.postgres` and `runtime` by
//! `runtime::run`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pgfanout_postgres::conn::PgConnectOptions;
use pgfanout_postgres::replication::ReceiveBuffer;

use crate::config::{OnDecodeError, OnTypeChange};
use crate::runtime::lease::Fence;

/// Settings of the reader.
pub struct SourceSettings {
    pub opts: PgConnectOptions,
    pub slot: String,
    pub publication: String,
    pub status_interval: Duration,
    /// Nothing received for this long: the link is dead (`None`: never).
    pub receive_timeout: Option<Duration>,
    pub batch_size: usize,
    /// A sink's chunk is handed over at this many bytes of records even
    /// below `batch_size` (a part of `runtime.queue_memory`).
    pub chunk_bytes: usize,
    pub shutdown_timeout: Duration,
    /// How long read changes may wait locally for more before they are
    /// handed to the sinks when the socket has nothing more buffered.
    pub linger: Duration,
    /// When set, a non-transactional logical message is emitted this often
    /// so the stream has something to confirm even without keepalives.
    pub heartbeat_interval: Option<Duration>,
    /// See `ReplicationStream::set_read_coalesce`.
    pub read_coalesce: Duration,
    /// The streaming connection's receive buffer (see `ReceiveBuffer`).
    pub receive_buffer: ReceiveBuffer,
    /// What a row that cannot be decoded does.
    pub on_decode_error: OnDecodeError,
    pub on_type_change: OnTypeChange,
    /// Ask servers that can (14+) to stream in-progress transactions.
    pub streaming: bool,
    /// Memory for streamed transactions not committed yet; the rest spills.
    pub streaming_memory: usize,
    /// Where they spill (the system's temporary directory if None).
    pub streaming_spill_dir: Option<PathBuf>,
    /// The reader connects only while it allows (`ha`: the lease is held).
    pub fence: Arc<Fence>,
    /// A failover that lost delivered changes is recovered (`on_slot_lost:
    /// recreate`, see `super::failover`) instead of stopping the reader.
    pub recover_lost_changes: bool,
    /// Where the positions handed to the sinks are remembered across
    /// restarts (`super::handed`; `None`: the default place).
    pub state_dir: Option<PathBuf>,
}
