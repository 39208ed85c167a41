//! Runs a snapshot plan: copies the tables (parallel COPY under one
//! snapshot), routes every row through the pipelines into the sinks with the
//! same backpressure as the stream, waits until every sink has made it
//! durable, then records the tables as done.
//!
//! The copied rows end with a barrier in the ack tracker: they must be
//! durable before anything streamed after them is confirmed, but the
//! snapshot's version never becomes the confirmed flush position (it is not
//! a stream position; see `runtime::ack`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgfanout_postgres::conn::connect_sql;
use pgfanout_postgres::snapshot::{self, SnapshotOptions, TableProgress};
use pgfanout_postgres::SourceError;
use pgfanout_sdk::Change;
use tokio::sync::mpsc;
use tracing::info;

use crate::metrics as m;
use crate::runtime::setup::SnapshotPlan;
use crate::runtime::source::SourceLoop;
use pgfanout_postgres::snapshot::SnapshotStatus;

/// When progress was last logged, and per table (rows, estimate).
type ProgressLog = (Instant, HashMap<String, (u64, u64)>);

/// How often a progress line is logged.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(5);

/// Copies `plan`'s tables into the sinks and waits until they are
/// durable. Returns `Ok(false)` when shutdown interrupted it (the state
/// stays "running", so the next start copies again).
pub async fn run(source: &mut SourceLoop, mut plan: SnapshotPlan, slot: &str, parallelism: usize) -> Result<bool, SourceError> {
    let started = Instant::now();
    let names = plan.tables.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
    info!(tables = %names, version = %plan.version, "snapshot started");
    // Four batches of a quarter of `batch_size` rows (at most 256 each):
    // the consumer routes one while the readers fill the next.
    let batch_rows = (source.settings().batch_size / 4).clamp(1, 256);
    let (tx, mut rx) = mpsc::channel::<Vec<Change>>(4);
    let options =
        SnapshotOptions { parallelism, batch_rows, publication: Some(source.settings().publication.clone()), ..SnapshotOptions::default() };
    let opts = source.settings().opts.clone();
    let tables = plan.tables.clone();
    let name = plan.snapshot_name.clone();
    let version = plan.version;
    let last_log: Arc<Mutex<ProgressLog>> = Arc::new(Mutex::new((Instant::now(), HashMap::new())));
    // On a terminal, a bar for all tables below the log lines.
    let bar = crate::progress::BARS_IN_LOGS.load(std::sync::atomic::Ordering::Acquire).then(|| {
        use tracing_indicatif::span_ext::IndicatifSpanExt;
        let span = tracing::info_span!("snapshot", indicatif.pb_show = tracing::field::Empty);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "snapshot [{bar:30}] {human_pos}/~{human_len} rows ({percent}%) · {per_sec} · ETA {eta}",
        ) {
            span.pb_set_style(&style.progress_chars("=> "));
        }
        span.pb_start();
        span
    });
    let progress = move |p: TableProgress| {
        let table = p.table.to_string();
        metrics::gauge!(m::SNAPSHOT_PROGRESS_RATIO, m::LABEL_TABLE => table.clone()).set(if p.done {
            1.0
        } else if p.estimate > 0 {
            (p.rows as f64 / p.estimate as f64).min(0.99)
        } else {
            0.0
        });
        let mut guard = last_log.lock().unwrap_or_else(|e| e.into_inner());
        let prev = guard.1.get(&table).map(|(rows, _)| *rows).unwrap_or(0);
        metrics::counter!(m::SNAPSHOT_ROWS_TOTAL, m::LABEL_TABLE => table.clone()).increment(p.rows.saturating_sub(prev));
        guard.1.insert(table.clone(), (p.rows, p.estimate));
        if let Some(span) = &bar {
            use tracing_indicatif::span_ext::IndicatifSpanExt;
            span.pb_set_length(guard.1.values().map(|(r, e)| (*e).max(*r)).sum());
            span.pb_set_position(guard.1.values().map(|(r, _)| *r).sum());
        }
        if p.done {
            info!(table = %table, rows = p.rows, "snapshot of table done");
        } else if guard.0.elapsed() >= PROGRESS_LOG_EVERY {
            guard.0 = Instant::now();
            for (t, (rows, estimate)) in &guard.1 {
                info!(table = %t, rows = *rows, estimate = *estimate, "snapshot progress");
            }
            // All tables: rows, the estimate (pg_class.reltuples), the rate
            // since the start and what it leaves to go.
            let rows: u64 = guard.1.values().map(|(r, _)| *r).sum();
            let estimate: u64 = guard.1.values().map(|(r, e)| (*e).max(*r)).sum();
            let secs = started.elapsed().as_secs_f64().max(0.001);
            let rate = rows as f64 / secs;
            let eta = (rate > 0.0 && estimate > rows).then(|| ((estimate - rows) as f64 / rate).round() as u64);
            info!(rows, estimate, rows_per_second = rate as u64, eta_seconds = ?eta, "snapshot progress: all tables");
        }
    };
    let copy = tokio::spawn(async move {
        let tables = tables;
        snapshot::copy_tables(&opts, &tables, name.as_deref(), version, &options, tx, progress).await
    });
    let mut shutdown = source.shutdown();
    loop {
        // The copy outruns the sinks, so their queues would always be
        // full: half of each is enough to keep its worker busy, and the
        // other half would only hold rows in memory.
        tokio::select! {
            _ = source.queues_half_free() => {}
            _ = shutdown.changed() => {
                copy.abort();
                return Ok(false);
            }
        }
        tokio::select! {
            batch = rx.recv() => match batch {
                Some(batch) => {
                    for change in batch {
                        source.route_copied(change).await?;
                    }
                }
                None => break,
            },
            _ = shutdown.changed() => {
                copy.abort();
                return Ok(false);
            }
        }
    }
    let rows = match copy.await {
        Ok(result) => result?,
        Err(e) => return Err(SourceError::transient(format!("snapshot task failed: {e}"))),
    };
    // The snapshot is read: the exporting connection may go.
    if let Some(exporter) = plan.exporter.take() {
        drop(exporter);
    }
    source.barrier().await?;
    // Wait until every sink has the copied rows durable: part of every
    // snapshot's duration.
    if !source.all_durable(&mut shutdown).await {
        return Ok(false);
    }
    let sql = connect_sql(source.settings().opts.writer()).await?;
    snapshot::mark_tables(&sql, slot, &plan.tables, SnapshotStatus::Done, plan.version).await?;
    let secs = started.elapsed().as_secs_f64();
    info!(
        rows,
        seconds = secs,
        rows_per_second = (rows as f64 / secs.max(1e-9)) as u64,
        running_state = %plan.running_state,
        "snapshot complete; streaming starts"
    );
    Ok(true)
}
