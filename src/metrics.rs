//! Metric names and label keys: the only place they are spelled. The
//! dashboards in `dashboards/` use only these names.

pub const LABEL_SINK: &str = "sink";
pub const LABEL_TABLE: &str = "table";
pub const LABEL_OP: &str = "op";
pub const LABEL_PIPELINE: &str = "pipeline";
pub const LABEL_OUTCOME: &str = "outcome";
pub const LABEL_TOPIC: &str = "topic";
pub const LABEL_PARTITION: &str = "partition";

/// Changes decoded from the stream, by `table` and `op`.
pub const CHANGES_READ_TOTAL: &str = "pgfanout_changes_read_total";
/// pgoutput bytes received.
pub const BYTES_READ_TOTAL: &str = "pgfanout_bytes_read_total";
/// Committed transactions received.
pub const TRANSACTIONS_TOTAL: &str = "pgfanout_transactions_total";
/// Server WAL end minus confirmed flush LSN.
pub const SOURCE_LAG_BYTES: &str = "pgfanout_source_lag_bytes";
/// WAL the slot retains (pg_current_wal_lsn - restart_lsn), sampled.
pub const SLOT_RETAINED_WAL_BYTES: &str = "pgfanout_slot_retained_wal_bytes";
/// The flush LSN last confirmed to PostgreSQL (as a number).
pub const CONFIRMED_FLUSH_LSN: &str = "pgfanout_confirmed_flush_lsn";
/// Reconnections of the replication stream.
pub const SOURCE_RECONNECTS_TOTAL: &str = "pgfanout_source_reconnects_total";
/// 1 while streaming, 0 otherwise.
pub const SOURCE_STREAMING: &str = "pgfanout_source_streaming";
pub const HA_LEADER: &str = "pgfanout_ha_leader";
pub const HA_EPOCH: &str = "pgfanout_ha_lease_epoch";
/// In-progress transactions the server streamed that have not ended.
pub const STREAMED_TRANSACTIONS_OPEN: &str = "pgfanout_streamed_transactions_open";
/// Bytes of streamed, uncommitted changes held in memory.
pub const STREAMED_MEMORY_BYTES: &str = "pgfanout_streamed_memory_bytes";
pub const QUEUE_MEMORY_BYTES: &str = "pgfanout_queue_memory_bytes";
/// Bytes of streamed, uncommitted changes written to spill files.
pub const STREAMED_SPILLED_BYTES_TOTAL: &str = "pgfanout_streamed_spilled_bytes_total";
/// Streamed transactions (or subtransactions) that aborted, their changes dropped.
pub const STREAMED_ABORTS_TOTAL: &str = "pgfanout_streamed_aborts_total";

/// Records written durably, by `sink`.
pub const SINK_WRITTEN_TOTAL: &str = "pgfanout_sink_written_total";
/// Records in failed (retried) write attempts, by `sink`.
pub const SINK_FAILED_TOTAL: &str = "pgfanout_sink_failed_total";
/// Records sent to the dead-letter file by a sink, by `sink`.
pub const SINK_DEAD_LETTERED_TOTAL: &str = "pgfanout_sink_dead_lettered_total";
/// End LSN up to which a sink is durable, by `sink`.
pub const SINK_DURABLE_LSN: &str = "pgfanout_sink_durable_lsn";
/// Duration of one sink write, by `sink`.
pub const SINK_BATCH_DURATION_SECONDS: &str = "pgfanout_sink_batch_duration_seconds";
/// Commit time to durable in the sink, by `sink`.
pub const END_TO_END_LATENCY_SECONDS: &str = "pgfanout_end_to_end_latency_seconds";

/// Records a pipeline's filter or transforms failed on, by `pipeline`.
pub const PIPELINE_DEAD_LETTERED_TOTAL: &str = "pgfanout_pipeline_dead_lettered_total";

/// Rows of the stream that could not be decoded and went to the dead-letter
/// file (`source.postgres.on_decode_error: dead_letter`), by `table`.
pub const DECODE_ERRORS_TOTAL: &str = "pgfanout_decode_errors_total";

/// Rows copied by the initial snapshot, by `table`.
pub const SNAPSHOT_ROWS_TOTAL: &str = "pgfanout_snapshot_rows_total";
/// Snapshot progress (0..1), by `table`.
pub const SNAPSHOT_PROGRESS_RATIO: &str = "pgfanout_snapshot_progress_ratio";

/// `/wait` requests, by `outcome` (done, timeout, bad_request).
pub const WAIT_REQUESTS_TOTAL: &str = "pgfanout_wait_requests_total";
/// How long `/wait` requests waited, by `outcome`.
pub const WAIT_SECONDS: &str = "pgfanout_wait_seconds";
/// Divergent entries (missing, different, extra) the last `pgfanout
/// verify` of a pipeline found, by `pipeline` (read from
/// `pgfanout.verify_results` in the source database).
pub const VERIFY_DIVERGENT_KEYS: &str = "pgfanout_verify_divergent_keys";
/// When the last `pgfanout verify` of a pipeline finished (Unix seconds), by `pipeline`.
pub const VERIFY_LAST_RUN_TIMESTAMP_SECONDS: &str = "pgfanout_verify_last_run_timestamp_seconds";

/// Rows a backfill routed to the pipelines, by `table`.
pub const BACKFILL_ROWS_TOTAL: &str = "pgfanout_backfill_rows_total";
/// Backfill chunks durable in every sink, by `table`.
pub const BACKFILL_CHUNKS_TOTAL: &str = "pgfanout_backfill_chunks_total";
/// Backfill rows dropped because the stream changed them while their chunk
/// was read (the stream carries the newer state).
pub const BACKFILL_SUPERSEDED_ROWS_TOTAL: &str = "pgfanout_backfill_superseded_rows_total";
/// 1 while a backfill of `table` runs.
pub const BACKFILL_RUNNING: &str = "pgfanout_backfill_running";

/// Replication slots created again after they were lost, and failovers
/// that lost delivered changes recovered
/// (`source.postgres.on_slot_lost: recreate`).
pub const SLOT_RECREATED_TOTAL: &str = "pgfanout_slot_recreated_total";

/// `source.kafka`: records read from Kafka, by `topic`.
pub const KAFKA_SOURCE_RECORDS_TOTAL: &str = "pgfanout_kafka_source_records_total";
/// `source.kafka`: records of a partition this applier holds and has not
/// read yet (the consumer lag), by `topic` and `partition`. Lag that grows
/// on every applier is the sign to add one (up to one per partition).
pub const KAFKA_SOURCE_LAG_RECORDS: &str = "pgfanout_kafka_source_lag_records";

/// Every metric name, for tests and dashboard checks.
pub const ALL: &[&str] = &[
    CHANGES_READ_TOTAL,
    BYTES_READ_TOTAL,
    TRANSACTIONS_TOTAL,
    SOURCE_LAG_BYTES,
    SLOT_RETAINED_WAL_BYTES,
    CONFIRMED_FLUSH_LSN,
    SOURCE_RECONNECTS_TOTAL,
    SOURCE_STREAMING,
    HA_LEADER,
    HA_EPOCH,
    SINK_WRITTEN_TOTAL,
    SINK_FAILED_TOTAL,
    SINK_DEAD_LETTERED_TOTAL,
    SINK_DURABLE_LSN,
    SINK_BATCH_DURATION_SECONDS,
    END_TO_END_LATENCY_SECONDS,
    PIPELINE_DEAD_LETTERED_TOTAL,
    DECODE_ERRORS_TOTAL,
    SNAPSHOT_ROWS_TOTAL,
    SNAPSHOT_PROGRESS_RATIO,
    WAIT_REQUESTS_TOTAL,
    WAIT_SECONDS,
    VERIFY_DIVERGENT_KEYS,
    VERIFY_LAST_RUN_TIMESTAMP_SECONDS,
    BACKFILL_ROWS_TOTAL,
    BACKFILL_CHUNKS_TOTAL,
    BACKFILL_SUPERSEDED_ROWS_TOTAL,
    BACKFILL_RUNNING,
    SLOT_RECREATED_TOTAL,
    KAFKA_SOURCE_RECORDS_TOTAL,
    KAFKA_SOURCE_LAG_RECORDS,
];

/// Declares help texts with the recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(CHANGES_READ_TOTAL, "Changes decoded from the replication stream");
    describe_counter!(BYTES_READ_TOTAL, Unit::Bytes, "pgoutput bytes received");
    describe_counter!(TRANSACTIONS_TOTAL, "Committed transactions received");
    describe_gauge!(SOURCE_LAG_BYTES, Unit::Bytes, "Server WAL end minus the confirmed flush LSN");
    describe_gauge!(SLOT_RETAINED_WAL_BYTES, Unit::Bytes, "WAL retained by the replication slot");
    describe_gauge!(CONFIRMED_FLUSH_LSN, "Flush LSN last confirmed to PostgreSQL");
    describe_counter!(SOURCE_RECONNECTS_TOTAL, "Reconnections of the replication stream");
    describe_gauge!(SOURCE_STREAMING, "1 while the replication stream is up");
    describe_gauge!(HA_LEADER, "With ha: 1 while this instance holds the lease (leads), 0 while it is a standby");
    describe_gauge!(HA_EPOCH, "With ha: the epoch of the lease this instance holds (one more at every change of leader)");
    describe_gauge!(STREAMED_TRANSACTIONS_OPEN, "Streamed in-progress transactions not yet committed or aborted");
    describe_gauge!(STREAMED_MEMORY_BYTES, Unit::Bytes, "Streamed uncommitted changes held in memory");
    describe_gauge!(
        QUEUE_MEMORY_BYTES,
        Unit::Bytes,
        "Records queued for the sinks or being written, counted per sink (runtime.queue_memory)"
    );
    describe_counter!(STREAMED_SPILLED_BYTES_TOTAL, Unit::Bytes, "Streamed uncommitted changes written to spill files");
    describe_counter!(STREAMED_ABORTS_TOTAL, "Streamed transactions or subtransactions that aborted (their changes dropped)");
    describe_counter!(SINK_WRITTEN_TOTAL, "Records written durably");
    describe_counter!(SINK_FAILED_TOTAL, "Records in failed write attempts (retried)");
    describe_counter!(SINK_DEAD_LETTERED_TOTAL, "Records a sink rejected, sent to the dead-letter file");
    describe_gauge!(SINK_DURABLE_LSN, "End LSN up to which the sink is durable");
    describe_histogram!(SINK_BATCH_DURATION_SECONDS, Unit::Seconds, "Duration of one sink write");
    describe_histogram!(END_TO_END_LATENCY_SECONDS, Unit::Seconds, "Commit time to durable in the sink");
    describe_counter!(PIPELINE_DEAD_LETTERED_TOTAL, "Records whose filter or transform failed");
    describe_counter!(DECODE_ERRORS_TOTAL, "Stream rows that could not be decoded (dead-lettered)");
    describe_counter!(SNAPSHOT_ROWS_TOTAL, "Rows copied by the initial snapshot");
    describe_gauge!(SNAPSHOT_PROGRESS_RATIO, "Snapshot progress of a table, 0 to 1");
    describe_counter!(WAIT_REQUESTS_TOTAL, "Read-your-writes /wait requests, by outcome");
    describe_histogram!(WAIT_SECONDS, Unit::Seconds, "How long /wait requests waited");
    describe_gauge!(VERIFY_DIVERGENT_KEYS, "Divergent entries found by the last pgfanout verify of the pipeline");
    describe_counter!(BACKFILL_ROWS_TOTAL, "Rows backfills routed to the pipelines");
    describe_counter!(BACKFILL_CHUNKS_TOTAL, "Backfill chunks durable in every sink");
    describe_counter!(BACKFILL_SUPERSEDED_ROWS_TOTAL, "Backfill rows dropped because the stream changed them meanwhile");
    describe_gauge!(BACKFILL_RUNNING, "1 while a backfill of the table runs");
    describe_counter!(SLOT_RECREATED_TOTAL, "Replication slots created again after they were lost");
    describe_counter!(KAFKA_SOURCE_RECORDS_TOTAL, "source.kafka: records read from Kafka");
    describe_gauge!(KAFKA_SOURCE_LAG_RECORDS, "source.kafka: records of a held partition not read yet (consumer lag)");
    describe_gauge!(VERIFY_LAST_RUN_TIMESTAMP_SECONDS, Unit::Seconds, "When the last pgfanout verify of the pipeline finished");
}
