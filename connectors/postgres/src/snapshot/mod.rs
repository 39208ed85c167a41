//! The initial snapshot: every existing row of the configured tables, read
//! under one MVCC snapshot and emitted as `op: "read"` changes.
//!
//! Why it is built this way:
//! - One snapshot for everything. Each connection runs `BEGIN ISOLATION
//!   LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '<name>'` on
//!   the snapshot the slot exported (or one exported here), so all tables and
//!   all pieces show the database at the slot's consistent point and the
//!   stream continues exactly where the copy stops.
//! - Parallel and gentle. Large tables are cut into ctid block ranges
//!   ([`plan`]) that PostgreSQL 14+ reads as TID Range Scans; up to
//!   `parallelism` connections take pieces from one queue (largest tables
//!   first), so several tables and ranges are read at once. One more
//!   connection plans the pieces and holds the snapshot.
//! - `COPY (SELECT ...) TO STDOUT` in text format: the server's fastest
//!   output path, and its values, once unescaped ([`copy_text`]), are the
//!   same text pgoutput sends, decoded by the same
//!   [`TypeDecoder`](crate::types::TypeDecoder)s, so a snapshot row equals
//!   the streamed row and `to_jsonb()`.
//! - Bounded memory. Rows go to a bounded channel in batches
//!   ([`SnapshotOptions::batch_rows`], fewer when rows are large); a full
//!   channel stops the reader, which stops reading the socket, which makes
//!   the server wait. Nothing is buffered per table.
//! - Few allocations. The values of a batch are slices of one buffer
//!   ([`arena`]), within a budget of buffers kept alive ([`Pinned`]).
//!
//! [`state`] keeps which tables of a slot were copied, in the source database.

mod arena;
mod copy_text;
pub mod keyed;
mod plan;
mod state;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pgfanout_sdk::{Change, Lsn, Op, Row, Value};
use tokio::sync::mpsc::Sender;

use crate::catalog::TypeRegistry;
use crate::conn::{connect_sql, PgConnectOptions};
use crate::error::SourceError;
use crate::replication::copy_out::{CopyOutClient, Drained};
use crate::slot::TableName;
use arena::{column_count_error, decode_error, Names, Staged};
pub use arena::{Pinned, DEFAULT_BUDGET as DEFAULT_PINNED_BUDGET};
use copy_text::{for_each_field, LineSplitter};
use plan::{BlockRange, RelationPlan};

pub use state::{clear_state, ensure_state_table, mark_tables, snapshot_state, SnapshotStatus};

/// Rows a worker reads between two progress reports of a table.
const PROGRESS_EVERY: u64 = 4096;

/// How to copy.
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// Connections reading at once (each one a server backend). Default 4.
    pub parallelism: usize,
    /// Target rows per ctid range of a large table. Default 250,000.
    pub chunk_rows: u64,
    /// Most rows in one batch sent to the output (fewer when a batch's
    /// field bytes nearly fill a 32 KiB buffer first). Default 256.
    pub batch_rows: usize,
    /// The budget of buffers that sent rows' values may keep alive; shared
    /// by every copy given the same one. Default: a fresh 8 MiB budget.
    pub pinned: Arc<Pinned>,
    /// The publication the stream reads: rows are copied with the columns
    /// it publishes (its column lists; on 18, stored generated columns when
    /// it publishes them). None: every column that is not generated.
    pub publication: Option<String>,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            parallelism: 4,
            chunk_rows: 250_000,
            batch_rows: 256,
            pinned: Pinned::new(DEFAULT_PINNED_BUDGET),
            publication: None,
        }
    }
}

/// Progress of one of the tables given to [`copy_tables`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableProgress {
    pub table: TableName,
    /// Rows handed to the output so far.
    pub rows: u64,
    /// Rows expected: the planner statistics, or a count of sampled blocks
    /// when the table was never analyzed. Only a guess; `rows` may exceed it.
    pub estimate: u64,
    /// True once, in the last report of the table.
    pub done: bool,
}

struct TableState {
    name: TableName,
    rows: AtomicU64,
    remaining: AtomicUsize,
    estimate: u64,
}

struct Piece {
    rel: usize,
    range: BlockRange,
}

struct Shared {
    queue: Mutex<VecDeque<Piece>>,
    relations: Vec<Arc<RelationPlan>>,
    tables: Vec<TableState>,
    version: Lsn,
    out: Sender<Vec<Change>>,
    batch_rows: usize,
    pinned: Arc<Pinned>,
    progress: Box<dyn Fn(TableProgress) + Send + Sync>,
}

impl Shared {
    fn next_piece(&self) -> Option<Piece> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }

    fn report(&self, given: usize, rows: u64, done: bool) {
        let t = &self.tables[given];
        (self.progress)(TableProgress { table: t.name.clone(), rows, estimate: t.estimate, done });
    }

    /// Adds `n` rows to the table's count; returns the new count.
    fn add_rows(&self, given: usize, n: u64) -> u64 {
        self.tables[given].rows.fetch_add(n, Ordering::AcqRel) + n
    }

    /// A piece of the table is finished (its rows already added).
    fn finish_piece(&self, given: usize) {
        let t = &self.tables[given];
        if t.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.report(given, t.rows.load(Ordering::Acquire), true);
        }
    }
}

/// Copies every row of `tables` under one snapshot and sends each, as an
/// `op: read` [`Change`], to `out` (in batches of one piece's rows, in
/// order); returns the number of rows sent.
///
/// - `snapshot_name`: an exported snapshot (from `CREATE_REPLICATION_SLOT
///   ... EXPORT_SNAPSHOT` or `pg_export_snapshot()`); its exporter must keep
///   it alive (stay idle, transaction open) until this returns. `None`: a
///   fresh REPEATABLE READ snapshot is exported by the first connection and
///   imported by the others.
/// - Each row: `key` = the replica identity columns as pgoutput marks them
///   (primary key by default, the identity index under REPLICA IDENTITY
///   INDEX, the primary key under FULL; the whole row when there are none),
///   `after` = the row (generated columns excluded, as in the stream),
///   `before` = None, `lsn` = `commit_lsn` = `version`, ordinal 0, no xid or
///   commit time. Partitioned tables are read leaf by leaf and each row
///   carries the partitioned (root) table's name, as pgoutput streams them
///   with `publish_via_partition_root`.
/// - Rows of one ctid range arrive in physical order; ranges and tables
///   interleave. Each row is sent exactly once.
/// - `out` is never outrun: readers wait while it is full, holding at most
///   one batch of decoded rows each (`options.batch_rows` rows or about
///   32 KiB of field bytes, whichever comes first, plus the row that
///   crossed it).
/// - Values of sent rows keep at most `options.pinned`'s budget of read
///   buffers alive; past it they are copies.
/// - `progress` is called every few thousand rows of a table and once with
///   `done: true` when the table is complete (also for empty tables).
/// - Errors: Transient for connection problems and a closed `out`,
///   Permanent for a missing table, a snapshot that cannot be imported
///   (expired or unknown), or data that does not decode. Other workers stop
///   at the first error; rows already sent stay sent.
pub async fn copy_tables(
    opts: &PgConnectOptions,
    tables: &[TableName],
    snapshot_name: Option<&str>,
    version: Lsn,
    options: &SnapshotOptions,
    out: Sender<Vec<Change>>,
    progress: impl Fn(TableProgress) + Send + Sync + 'static,
) -> Result<u64, SourceError> {
    let started = Instant::now();
    let first = connect_sql(opts).await?;
    let name = match snapshot_name {
        Some(name) => {
            first.batch_execute(&import_sql(name)).await.map_err(|e| import_error(e.into(), name))?;
            name.to_string()
        }
        None => {
            first.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
            first.query_one("SELECT pg_export_snapshot()", &[]).await?.try_get(0)?
        }
    };
    let mut types = TypeRegistry::new();
    let planned = plan::plan_tables(&first, &mut types, tables, options.chunk_rows.max(1), options.publication.as_deref()).await?;

    let mut table_states: Vec<TableState> = tables
        .iter()
        .map(|t| TableState { name: t.clone(), rows: AtomicU64::new(0), remaining: AtomicUsize::new(0), estimate: 0 })
        .collect();
    // Largest relations first: their ranges spread over every worker, and the
    // small tables fill in at the end.
    let mut order: Vec<usize> = (0..planned.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(planned[i].0.blocks));
    let mut queue = VecDeque::new();
    for &i in &order {
        for range in &planned[i].1 {
            queue.push_back(Piece { rel: i, range: *range });
        }
    }
    let mut relations = Vec::with_capacity(planned.len());
    for (plan, ranges) in planned {
        let t = &mut table_states[plan.given];
        t.estimate += plan.estimate;
        *t.remaining.get_mut() += ranges.len();
        relations.push(Arc::new(plan));
    }
    let pieces = queue.len();
    let workers = options.parallelism.max(1).min(pieces.max(1));
    tracing::info!(
        tables = tables.len(),
        relations = relations.len(),
        pieces,
        workers,
        snapshot = %name,
        version = %version,
        "snapshot: copying tables"
    );
    let shared = Arc::new(Shared {
        queue: Mutex::new(queue),
        relations,
        tables: table_states,
        version,
        out,
        batch_rows: options.batch_rows.max(1),
        pinned: options.pinned.clone(),
        progress: Box::new(progress),
    });
    // Partitioned tables without partitions have nothing to read.
    for (i, t) in shared.tables.iter().enumerate() {
        if t.remaining.load(Ordering::Acquire) == 0 {
            shared.report(i, 0, true);
        }
    }

    // The readers are plain connections of our own (COPY rows are decoded
    // where they are read: [`CopyOutClient`]). Each imports the snapshot
    // before any work starts, so the first connection's transaction (the
    // exporter, when we exported) is still open while they do; it stays
    // open, idle, until they are done.
    let readers = futures_util::future::try_join_all((0..workers).map(|_| async {
        let mut c = CopyOutClient::connect(opts).await?;
        import_snapshot(&mut c, &name).await?;
        Ok::<_, SourceError>(c)
    }))
    .await?;
    let mut set = tokio::task::JoinSet::new();
    for reader in readers {
        set.spawn(worker(reader, shared.clone()));
    }
    let mut total = 0u64;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(n)) => total += n,
            Ok(Err(e)) => {
                set.abort_all();
                return Err(e);
            }
            Err(e) => {
                set.abort_all();
                return Err(SourceError::permanent(format!("snapshot worker failed: {e}")));
            }
        }
    }
    first.batch_execute("COMMIT").await?;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(rows = total, seconds = secs, rows_per_second = (total as f64 / secs.max(1e-9)) as u64, "snapshot: tables copied");
    Ok(total)
}

/// The statements that start a read-only REPEATABLE READ transaction on
/// snapshot `name`.
fn import_sql(name: &str) -> String {
    format!("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'", name.replace('\'', "''"))
}

/// What a failed [`import_sql`] means.
fn import_error(err: SourceError, name: &str) -> SourceError {
    match err.sqlstate() {
        // 22023 invalid_parameter_value: the exporter is gone or the name is wrong.
        Some("22023") => err
            .context(format!("cannot import snapshot {name:?}"))
            .definite_with_fix("its exporting transaction must stay open during the copy"),
        _ => err,
    }
}

/// Starts a read-only REPEATABLE READ transaction on snapshot `name`.
async fn import_snapshot(c: &mut CopyOutClient, name: &str) -> Result<(), SourceError> {
    c.execute(&import_sql(name)).await.map_err(|e| import_error(e, name))
}

/// Takes pieces until the queue is empty; returns the rows it sent.
async fn worker(mut conn: CopyOutClient, shared: Arc<Shared>) -> Result<u64, SourceError> {
    let mut total = 0;
    let mut scratch = Vec::new();
    let mut staged = Staged::default();
    while let Some(piece) = shared.next_piece() {
        let rel = shared.relations[piece.rel].clone();
        total += copy_piece(&mut conn, &shared, &rel, piece.range, &mut scratch, &mut staged).await?;
        shared.finish_piece(rel.given);
    }
    conn.execute("COMMIT").await?;
    Ok(total)
}

/// Copies one range of one relation to the output.
///
/// Rows are handed over in batches: one channel send and at most one
/// wake-up of the consumer per batch instead of per row (per-row
/// cross-thread wake-ups cost more than decoding). A batch is sent as soon
/// as it is full or nothing more has arrived from the server, so rows never
/// wait for the network.
async fn copy_piece(
    conn: &mut CopyOutClient,
    shared: &Shared,
    rel: &RelationPlan,
    range: BlockRange,
    scratch: &mut Vec<u8>,
    staged: &mut Staged,
) -> Result<u64, SourceError> {
    let sql = format!("COPY ({}{}) TO STDOUT", rel.select, range.condition());
    conn.start_copy(&sql).await?;
    let mut lines = LineSplitter::default();
    let names = Names::new(rel);
    let mut rows = 0u64; // sent
    let mut added = 0u64; // of which added to the table's count
    loop {
        let drained = conn.drain(|data| {
            lines.push(data, |line| staged.push_line(rel, line, scratch))?;
            Ok(staged.rows() < shared.batch_rows && !staged.is_full())
        })?;
        match drained {
            Drained::Done => break,
            Drained::Paused => rows += send_staged(shared, rel, &names, staged).await?,
            Drained::NeedMore => {
                if !conn.fill_now()? {
                    rows += send_staged(shared, rel, &names, staged).await?;
                    conn.fill().await?;
                }
            }
        }
        if rows - added >= PROGRESS_EVERY {
            let now = shared.add_rows(rel.given, rows - added);
            added = rows;
            shared.report(rel.given, now, false);
        }
    }
    if !lines.is_empty() {
        return Err(SourceError::transient(format!("COPY of {}.{} ended in the middle of a row", rel.schema, rel.table)));
    }
    rows += send_staged(shared, rel, &names, staged).await?;
    shared.add_rows(rel.given, rows - added);
    Ok(rows)
}

/// Decodes the staged rows and sends them as one batch; returns how many
/// rows it sent.
async fn send_staged(shared: &Shared, rel: &RelationPlan, names: &Names, staged: &mut Staged) -> Result<u64, SourceError> {
    if staged.rows() == 0 {
        return Ok(0);
    }
    let mut batch = Vec::new();
    staged.finish(rel, names, shared.version, &shared.pinned, &mut batch)?;
    let n = batch.len() as u64;
    shared.out.send(batch).await.map_err(|_| closed())?;
    Ok(n)
}

fn closed() -> SourceError {
    SourceError::transient("snapshot output closed: its consumer stopped")
}

/// One COPY text line of a keyed table to a read change (values copied:
/// the keyed reads of backfills and `verify`, not the bulk copy, which
/// goes through [`arena`]); the key columns' text, as PostgreSQL prints
/// them, is pushed to `key_text`.
fn decode_line(
    rel: &RelationPlan,
    line: &[u8],
    scratch: &mut Vec<u8>,
    version: Lsn,
    key_text: &mut Vec<String>,
) -> Result<Change, SourceError> {
    let mut row = Vec::with_capacity(rel.columns.len());
    let mut key = Vec::with_capacity(1);
    if !rel.columns.is_empty() || !line.is_empty() {
        let mut columns = rel.columns.iter();
        for_each_field(line, scratch, |field| {
            let col = columns.next().ok_or_else(|| column_count_error(rel))?;
            let value = match field {
                None => Value::Null,
                Some(text) => col.decoder.decode(text).map_err(|e| decode_error(rel, &col.name, e))?,
            };
            if col.is_key {
                key.push((col.name.clone(), value.clone()));
                if let Some(text) = field {
                    key_text.push(String::from_utf8_lossy(text).into_owned());
                }
            }
            row.push((col.name.clone(), value));
            Ok::<_, SourceError>(())
        })?;
        if row.len() != rel.columns.len() {
            return Err(column_count_error(rel));
        }
    }
    Ok(read_change(rel.schema.clone(), rel.table.clone(), Some(Row(key)), Row(row), version))
}

/// A copied row as an `op: read` change; without `key` columns the whole
/// row is the key.
fn read_change(schema: Arc<str>, table: Arc<str>, key: Option<Row>, row: Row, version: Lsn) -> Change {
    let key = key.unwrap_or_else(|| row.clone());
    Change {
        op: Op::Read,
        schema,
        table,
        key: Some(key),
        before: None,
        after: Some(row),
        unchanged_toast: Vec::new(),
        lsn: version,
        commit_lsn: version,
        ordinal: 0,
        xid: None,
        commit_ts: None,
    }
}
