//! Backfills while streaming (DBLog's watermark algorithm, as Debezium's
//! incremental snapshots and Sequin's backfills do it).
//!
//! A backfill copies one table into the sinks in primary-key order, a chunk
//! at a time, while the stream goes on. For each chunk the [`Driver`] (its
//! own SQL connection):
//!
//! 1. registers the chunk with the stream reader and writes a **low
//!    watermark** into the WAL (`pg_logical_emit_message(true,
//!    'pgfanout_backfill', 'L <token>')` in a transaction of its own);
//! 2. reads the chunk (`SELECT ... WHERE key > last ORDER BY key LIMIT n`,
//!    optionally `AND (where)`);
//! 3. writes a **high watermark** (`'H <token>'`) and hands the rows over.
//!
//! The stream reader ([`Windows`], driven by `runtime::source`) records
//! the key of every change of that table it streams after the low
//! watermark; once it has seen the high watermark and has the rows, it
//! drops every row whose key changed in between (the stream carries a newer
//! state of it) and routes the rest through the pipelines as `op: read`
//! records versioned at the high watermark's position: above every change
//! the chunk's read saw, below every change it did not. A row emitted after
//! the high watermark (rows arriving late) also drops keys changed after it.
//! So a backfilled row never overwrites a newer streamed one, in any sink.
//!
//! The rows are a barrier for the ack rule (durable before anything after
//! them is confirmed, confirming nothing themselves); once they are durable
//! in every sink the driver records the chunk's last key in
//! `pgfanout.backfills`, so a crash or restart resumes from the last
//! completed chunk (at-least-once: an interrupted chunk is read again).
//! Watermarks left in the WAL by a run that crashed carry another token and
//! are ignored.

pub mod shapes;
pub mod state;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfanout_postgres::catalog::TypeRegistry;
use pgfanout_postgres::conn::{connect_sql, PgConnectOptions};
use pgfanout_postgres::slot::TableName;
use pgfanout_postgres::snapshot::keyed::{KeyText, KeyedTable};
use pgfanout_postgres::SourceError;
use pgfanout_sdk::{Change, Lsn, Op, Row};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::metrics as m;
use state::{Backfill, BackfillStatus, SignalKind};

/// The prefix of the watermark messages.
pub const WATERMARK_PREFIX: &str = "pgfanout_backfill";

/// What the driver tells the stream reader.
#[derive(Debug)]
pub enum ToSource {
    /// A chunk of `table` is about to be read; its watermarks carry `token`.
    /// `key` are the key columns (to compare streamed changes with rows).
    Open { token: String, schema: Arc<str>, table: Arc<str>, key: Vec<Arc<str>>, ready: oneshot::Sender<()> },
    /// The chunk's rows; `durable` fires once they (or what is left of them)
    /// are durable in every sink, with the number of rows emitted.
    Rows { token: String, rows: Vec<Change>, durable: oneshot::Sender<usize> },
    /// The chunk was abandoned (the read failed): forget its window.
    Abort { token: String },
}

/// One chunk's window in the stream.
struct Window {
    schema: Arc<str>,
    table: Arc<str>,
    key: Vec<Arc<str>>,
    low_seen: bool,
    high: Option<Lsn>,
    /// Keys (as JSON text) of rows the stream changed since the low watermark.
    changed: HashSet<String>,
    truncated: bool,
    rows: Option<(Vec<Change>, oneshot::Sender<usize>)>,
}

/// The stream reader's side: open windows by token.
#[derive(Default)]
pub struct Windows {
    open: HashMap<String, Window>,
}

/// A row's key as text, for matching streamed changes with chunk rows.
fn key_text(row: &Row, key: &[Arc<str>]) -> Option<String> {
    let mut out = Vec::with_capacity(32);
    out.push(b'[');
    for (i, k) in key.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        row.get(k)?.write_json(&mut out);
    }
    out.push(b']');
    String::from_utf8(out).ok()
}

/// Rows ready to be routed, and where to report their durability.
pub struct Ready {
    pub rows: Vec<Change>,
    pub durable: oneshot::Sender<usize>,
    pub dropped: usize,
}

impl Windows {
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// A message from the driver; returns rows ready to route, if any.
    pub fn on_message(&mut self, msg: ToSource) -> Option<Ready> {
        match msg {
            ToSource::Open { token, schema, table, key, ready } => {
                self.open.insert(
                    token,
                    Window { schema, table, key, low_seen: false, high: None, changed: HashSet::new(), truncated: false, rows: None },
                );
                let _ = ready.send(());
                None
            }
            ToSource::Rows { token, rows, durable } => {
                let w = self.open.get_mut(&token)?;
                w.rows = Some((rows, durable));
                self.try_emit(&token)
            }
            ToSource::Abort { token } => {
                self.open.remove(&token);
                None
            }
        }
    }

    /// A watermark message from the stream at `lsn`.
    pub fn on_watermark(&mut self, content: &[u8], lsn: Lsn) -> Option<Ready> {
        let text = std::str::from_utf8(content).ok()?;
        let (kind, token) = text.split_once(' ')?;
        let w = self.open.get_mut(token)?;
        match kind {
            "L" => w.low_seen = true,
            "H" if w.low_seen => w.high = Some(lsn),
            _ => return None,
        }
        self.try_emit(token)
    }

    /// A streamed change: its keys are no longer the chunk's to write.
    pub fn on_change(&mut self, change: &Change) {
        for w in self.open.values_mut() {
            if !w.low_seen || *w.table != *change.table || *w.schema != *change.schema {
                continue;
            }
            if change.op == Op::Truncate {
                w.truncated = true;
                continue;
            }
            for row in [&change.key, &change.before, &change.after].into_iter().flatten() {
                if let Some(k) = key_text(row, &w.key) {
                    w.changed.insert(k);
                }
            }
        }
    }

    fn try_emit(&mut self, token: &str) -> Option<Ready> {
        let w = self.open.get(token)?;
        let (Some(high), true) = (w.high, w.rows.is_some()) else { return None };
        let mut w = self.open.remove(token)?;
        let (rows, durable) = w.rows.take()?;
        let total = rows.len();
        let kept: Vec<Change> = rows
            .into_iter()
            .filter(|r| !w.truncated && r.after.as_ref().and_then(|a| key_text(a, &w.key)).is_none_or(|k| !w.changed.contains(&k)))
            .map(|mut r| {
                r.lsn = high;
                r.commit_lsn = high;
                r
            })
            .collect();
        Some(Ready { dropped: total - kept.len(), rows: kept, durable })
    }
}

/// Defaults of a backfill request.
pub const DEFAULT_CHUNK_SIZE: i32 = 1000;

/// Whether some pipeline reads `(schema, table)`.
pub type TableFilter = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// Runs backfills of `slot` one at a time until shutdown: applies signals,
/// pages the active backfill's table through the stream reader.
pub struct Driver {
    pub opts: PgConnectOptions,
    pub slot: String,
    /// The stream's publication: backfilled rows have the columns it publishes.
    pub publication: String,
    pub to_source: mpsc::Sender<ToSource>,
    pub shutdown: watch::Receiver<bool>,
    /// `schema.table` names some pipeline reads (a backfill of another
    /// table would route nowhere).
    pub routed: TableFilter,
    /// A token prefix unique to this run of the daemon.
    pub run: String,
}

impl Driver {
    pub async fn run(mut self) {
        loop {
            if *self.shutdown.borrow() {
                return;
            }
            match self.run_once().await {
                Ok(()) => return,
                Err(e) => {
                    warn!(error = %e, "backfill driver failed; retrying in 2s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                        _ = self.shutdown.changed() => {}
                    }
                }
            }
        }
    }

    async fn run_once(&mut self) -> Result<(), SourceError> {
        let c = connect_sql(self.opts.writer()).await?;
        state::ensure(&c).await?;
        let mut chunk_no: u64 = 0;
        loop {
            if *self.shutdown.borrow() {
                return Ok(());
            }
            self.apply_signals(&c).await?;
            let Some(bf) = state::next_active(&c, &self.slot).await? else {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = self.shutdown.changed() => {}
                }
                continue;
            };
            self.backfill(&c, bf, &mut chunk_no).await?;
        }
    }

    /// Applies unprocessed signals meant for this slot (or for any).
    async fn apply_signals(&self, c: &tokio_postgres::Client) -> Result<(), SourceError> {
        for (id, kind, data) in state::pending_signals(c).await? {
            if data["slot"].as_str().is_some_and(|s| s != self.slot) {
                continue;
            }
            let result = match kind.parse::<SignalKind>() {
                Ok(SignalKind::Backfill) => match data["table"].as_str().map(parse_table) {
                    Some(Ok(t)) if (self.routed)(&t.schema, &t.name) => {
                        let chunk = data["chunk_size"].as_i64().map_or(DEFAULT_CHUNK_SIZE, |n| n.clamp(1, 1_000_000) as i32);
                        let rate = data["max_rows_per_second"].as_i64().map(|n| n.clamp(1, i32::MAX as i64) as i32);
                        let reason = data["reason"].as_str().unwrap_or("requested");
                        let bf = state::create(c, &self.slot, &t.to_string(), data["where"].as_str(), chunk, rate, reason).await?;
                        info!(backfill = bf, table = %t, "backfill requested");
                        format!("backfill {bf} created")
                    }
                    Some(Ok(t)) => format!("refused: no pipeline reads {t}"),
                    Some(Err(e)) => format!("refused: {e}"),
                    None => "refused: data.table is missing (e.g. {\"table\": \"public.orders\"})".into(),
                },
                Ok(signal @ (SignalKind::Pause | SignalKind::Resume | SignalKind::Cancel)) => match data["id"].as_i64() {
                    Some(bf) => {
                        let current = state::status(c, bf).await?;
                        let next = match (signal, current) {
                            (_, None) => None,
                            (SignalKind::Pause, Some(BackfillStatus::Pending | BackfillStatus::Running)) => Some(BackfillStatus::Paused),
                            (SignalKind::Resume, Some(BackfillStatus::Paused)) => Some(BackfillStatus::Running),
                            (SignalKind::Cancel, Some(s)) if s.is_active() => Some(BackfillStatus::Cancelled),
                            _ => None,
                        };
                        match next {
                            Some(status) => {
                                state::set_status(c, bf, status, None).await?;
                                info!(backfill = bf, status = %status, "backfill {status}");
                                format!("backfill {bf} {status}")
                            }
                            None => format!("ignored: backfill {bf} is {}", current.map_or("unknown", BackfillStatus::as_str)),
                        }
                    }
                    None => "refused: data.id is missing".into(),
                },
                Err(_) => format!("ignored: unknown signal type {kind:?}"),
            };
            state::signal_processed(c, id, &result).await?;
        }
        Ok(())
    }

    /// Works on `bf` until it is done, paused, cancelled or shutdown.
    async fn backfill(&mut self, c: &tokio_postgres::Client, bf: Backfill, chunk_no: &mut u64) -> Result<(), SourceError> {
        let table = parse_table(&bf.table).map_err(SourceError::permanent)?;
        let mut types = TypeRegistry::new();
        let parts = match KeyedTable::plan(c, &mut types, &table, Some(&self.publication)).await {
            Ok(p) => p,
            Err(e) if !e.is_retriable() => {
                state::set_status(c, bf.id, BackfillStatus::Failed, Some(&e.to_string())).await?;
                warn!(backfill = bf.id, table = %table, error = %e, "backfill failed");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if bf.status == BackfillStatus::Pending {
            state::set_status(c, bf.id, BackfillStatus::Running, None).await?;
        }
        let resumed = bf.last_key.is_some() || bf.part > 0;
        info!(backfill = bf.id, table = %table, rows_done = bf.rows, resume_key = ?bf.last_key, part = bf.part, "backfill {}", if resumed { "resuming from its last chunk" } else { "started" });
        let label = table.to_string();
        metrics::gauge!(m::BACKFILL_RUNNING, m::LABEL_TABLE => label.clone()).set(1.0);
        let started = Instant::now();
        let mut rows_here: u64 = 0;
        let mut last_log = Instant::now();
        let mut part = bf.part.max(0) as usize;
        let mut after: Option<KeyText> = bf.last_key.clone();
        let outcome = loop {
            if *self.shutdown.borrow() {
                break Stop::Shutdown;
            }
            // Signals (pause, cancel) apply between chunks.
            self.apply_signals(c).await?;
            match state::status(c, bf.id).await? {
                Some(BackfillStatus::Running) => {}
                Some(BackfillStatus::Paused) => break Stop::Paused,
                Some(_) | None => break Stop::Stopped,
            }
            let Some(keyed) = parts.get(part) else {
                state::set_status(c, bf.id, BackfillStatus::Done, None).await?;
                break Stop::Done;
            };
            *chunk_no += 1;
            let token = format!("{}-{}-{}", self.run, bf.id, chunk_no);
            let name = keyed.name();
            let (ready_tx, ready_rx) = oneshot::channel();
            let open = ToSource::Open {
                token: token.clone(),
                schema: Arc::from(name.schema.as_str()),
                table: Arc::from(name.name.as_str()),
                key: keyed.key_columns(),
                ready: ready_tx,
            };
            if self.to_source.send(open).await.is_err() || ready_rx.await.is_err() {
                break Stop::Shutdown;
            }
            let chunk = async {
                watermark(c, "L", &token).await?;
                let rows = keyed.chunk(c, after.as_ref(), bf.chunk_size.max(1) as usize, bf.filter.as_deref(), Lsn::ZERO).await?;
                if let Some(delay) = read_delay() {
                    // Fault injection for tests: widens the window in which
                    // the stream changes rows the chunk already read.
                    tokio::time::sleep(delay).await;
                }
                watermark(c, "H", &token).await?;
                Ok::<_, SourceError>(rows)
            }
            .await;
            let rows = match chunk {
                Ok(rows) => rows,
                Err(e) => {
                    let _ = self.to_source.send(ToSource::Abort { token }).await;
                    if !e.is_retriable() {
                        state::set_status(c, bf.id, BackfillStatus::Failed, Some(&e.to_string())).await?;
                        warn!(backfill = bf.id, table = %table, error = %e, "backfill failed");
                        break Stop::Failed;
                    }
                    return Err(e);
                }
            };
            let n = rows.len();
            let last = rows.last().map(|(_, k)| k.clone());
            let (durable_tx, durable_rx) = oneshot::channel();
            let changes: Vec<Change> = rows.into_iter().map(|(c, _)| c).collect();
            if self.to_source.send(ToSource::Rows { token, rows: changes, durable: durable_tx }).await.is_err() {
                break Stop::Shutdown;
            }
            let emitted = tokio::select! {
                r = durable_rx => match r { Ok(n) => n, Err(_) => break Stop::Shutdown },
                _ = self.shutdown.changed() => break Stop::Shutdown,
            };
            metrics::counter!(m::BACKFILL_ROWS_TOTAL, m::LABEL_TABLE => label.clone()).increment(emitted as u64);
            metrics::counter!(m::BACKFILL_CHUNKS_TOTAL, m::LABEL_TABLE => label.clone()).increment(1);
            rows_here += n as u64;
            if let Some(k) = last {
                state::chunk_done(c, bf.id, part as i32, &k, n as i64).await?;
                after = Some(k);
            }
            if n < bf.chunk_size.max(1) as usize {
                part += 1;
                after = None;
                if part < parts.len() {
                    state::next_part(c, bf.id, part as i32).await?;
                }
            }
            if last_log.elapsed() >= Duration::from_secs(5) {
                last_log = Instant::now();
                info!(backfill = bf.id, table = %table, rows = bf.rows + rows_here as i64, "backfill progress");
            }
            if let Some(rate) = bf.max_rows_per_second.filter(|r| *r > 0) {
                let due = Duration::from_secs_f64(rows_here as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.shutdown.changed() => {}
                    }
                }
            }
        };
        metrics::gauge!(m::BACKFILL_RUNNING, m::LABEL_TABLE => label).set(0.0);
        info!(backfill = bf.id, table = %table, rows = rows_here, seconds = started.elapsed().as_secs_f64(), outcome = outcome.as_str(), "backfill {}", outcome.as_str());
        if outcome == Stop::Paused {
            // Wait for a resume (or another backfill) without spinning.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.shutdown.changed() => {}
            }
        }
        Ok(())
    }
}

/// Writes a watermark: a transactional message in its own transaction,
/// committed with `synchronous_commit = on` so that the WAL is flushed and
/// the walsender sends it at once (an unflushed message would wait for the
/// WAL writer). It stands in the stream at its transaction's commit.
async fn watermark(c: &tokio_postgres::Client, kind: &str, token: &str) -> Result<(), SourceError> {
    let content = format!("{kind} {token}").replace('\'', "");
    c.batch_execute(&format!(
        "BEGIN; SET LOCAL synchronous_commit = on; SELECT pg_logical_emit_message(true, '{WATERMARK_PREFIX}', '{content}'); COMMIT"
    ))
    .await?;
    Ok(())
}

/// `PGFANOUT_BACKFILL_READ_DELAY_MS`: a pause between reading a chunk and
/// writing its high watermark (a test hook: it widens the race the
/// watermarks resolve).
fn read_delay() -> Option<Duration> {
    std::env::var("PGFANOUT_BACKFILL_READ_DELAY_MS").ok()?.parse().ok().map(Duration::from_millis)
}

/// `schema.table` or `table` (public).
pub fn parse_table(s: &str) -> Result<TableName, String> {
    let s = s.trim();
    let (schema, table) = s.split_once('.').unwrap_or(("public", s));
    if schema.is_empty() || table.is_empty() || table.contains('.') {
        return Err(format!("{s:?} is not a table name (schema.table)"));
    }
    Ok(TableName::new(schema, table))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfanout_sdk::Value;

    fn row(id: i64, v: &str) -> Row {
        Row(vec![(Arc::from("id"), Value::Number(id.to_string().into())), (Arc::from("v"), Value::String(v.into()))])
    }

    fn change(op: Op, id: i64) -> Change {
        Change {
            op,
            schema: Arc::from("public"),
            table: Arc::from("t"),
            key: Some(Row(vec![(Arc::from("id"), Value::Number(id.to_string().into()))])),
            before: None,
            after: (op != Op::Delete).then(|| row(id, "x")),
            unchanged_toast: Vec::new(),
            lsn: Lsn(1),
            commit_lsn: Lsn(1),
            ordinal: 0,
            xid: None,
            commit_ts: None,
        }
    }

    /// Windows with one open: run `token` of a backfill of `public.t` keyed by `id`.
    fn opened(token: &str) -> Windows {
        let mut w = Windows::default();
        let (ready, _r) = oneshot::channel();
        let key = vec![Arc::from("id")];
        w.on_message(ToSource::Open { token: token.into(), schema: Arc::from("public"), table: Arc::from("t"), key, ready });
        w
    }

    #[test]
    fn rows_changed_between_the_watermarks_are_dropped_and_the_rest_take_the_high_position() {
        let mut w = opened("a");
        // Before the low watermark: not the window's business.
        w.on_change(&change(Op::Update, 1));
        assert!(w.on_watermark(b"L a", Lsn(100)).is_none());
        w.on_change(&change(Op::Update, 2));
        w.on_change(&change(Op::Delete, 3));
        // A stale watermark of another run is ignored.
        assert!(w.on_watermark(b"H other", Lsn(150)).is_none());
        assert!(w.on_watermark(b"H a", Lsn(200)).is_none(), "rows not there yet");
        // Changes after the high watermark, before the rows arrive, count too.
        w.on_change(&change(Op::Update, 4));
        let (durable, _d) = oneshot::channel();
        let rows = (1..=5).map(|i| change(Op::Read, i)).collect();
        let ready = w.on_message(ToSource::Rows { token: "a".into(), rows, durable }).expect("ready");
        let ids: Vec<String> = ready.rows.iter().map(|r| r.key.as_ref().unwrap().0[0].1.to_json_string()).collect();
        assert_eq!(ids, vec!["1", "5"]);
        assert_eq!(ready.dropped, 3);
        assert!(ready.rows.iter().all(|r| r.commit_lsn == Lsn(200) && r.lsn == Lsn(200)));
        assert!(w.is_empty());
    }

    #[test]
    fn a_truncate_in_the_window_drops_the_chunk() {
        let mut w = opened("b");
        w.on_watermark(b"L b", Lsn(1));
        let mut t = change(Op::Truncate, 0);
        t.key = None;
        t.after = None;
        w.on_change(&t);
        w.on_watermark(b"H b", Lsn(2));
        let (durable, _d) = oneshot::channel();
        let ready = w.on_message(ToSource::Rows { token: "b".into(), rows: vec![change(Op::Read, 1)], durable }).unwrap();
        assert!(ready.rows.is_empty());
    }

    #[test]
    fn table_names() {
        assert_eq!(parse_table("orders").unwrap().to_string(), "public.orders");
        assert_eq!(parse_table("shop.orders").unwrap().name, "orders");
        assert!(parse_table("a.b.c").is_err());
    }
}

/// Why [`Driver::backfill`] stopped working on a backfill (logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Done,
    Failed,
    Paused,
    /// Cancelled, or gone from the table.
    Stopped,
    Shutdown,
}

impl Stop {
    fn as_str(self) -> &'static str {
        match self {
            Stop::Done => "done",
            Stop::Failed => "failed",
            Stop::Paused => "paused",
            Stop::Stopped => "stopped",
            Stop::Shutdown => "shutdown",
        }
    }
}
