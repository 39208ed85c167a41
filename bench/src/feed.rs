//! The feed workload: pgfanout streaming `bench_rows` inserts into a
//! Cassandra table (`type: scylla`, `mode: upsert`, `concurrency: 64`),
//! against the store's own ceiling on this machine: a plain loader with the
//! same `scylla` driver sending the same rows as the same prepared
//! `INSERT ... USING TIMESTAMP ?` statements (one per row: every row is its
//! own partition, so no batches), 64 in flight, values decoded before the
//! clock starts. ScyllaDB cannot run here; Apache Cassandra 5.0
//! (testkit::CassandraNode, 512 MB heap) is the store.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

use crate::db::Db;
use crate::load::Shape;
use crate::report::Figure;
use crate::store;
use crate::throughput::Ctx;
use crate::tools::FanoutConfig;

const LABEL: &str = "feed (cassandra)";
const IN_FLIGHT: usize = 64;
const KEYSPACE: &str = "bench";

pub async fn run(ctx: &Ctx) -> Result<Vec<Figure>> {
    let node = tokio::task::spawn_blocking(testkit::CassandraNode::start).await?;
    let contact = node.contact_point();
    let session: Session = SessionBuilder::new().known_node(&contact).build().await.context("connect to Cassandra")?;
    session
        .query_unpaged(
            format!("CREATE KEYSPACE IF NOT EXISTS {KEYSPACE} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
            (),
        )
        .await?;
    let db = store::source_db(ctx).await?;
    let mut figures = Vec::new();
    // Both transaction shapes (see `store::store_shapes`).
    for (shape_no, shape, mut figs) in store::store_shapes(LABEL, "plain prepared-insert loader") {
        let changes = shape.changes(ctx.rows);
        let timeout = Duration::from_secs(900.max(changes / 500));
        for run in 0..ctx.runs {
            let (fan_table, plain_table) = (format!("rows_pgfanout_{run}"), format!("rows_plain_{run}"));
            for t in [&fan_table, &plain_table] {
                create_rows_table(&session, t).await?;
            }
            let slot = format!("pgf_feed_{run}");
            let warm_up = run == 0 && shape_no == 0;
            let slots = if warm_up { vec![slot.as_str(), "pgf_feed_warmup"] } else { vec![slot.as_str()] };
            let end = store::load_run(&db, shape, ctx.rows, &slots).await?;
            let cfg = FanoutConfig {
            slot: &slot,
            table: shape.table(),
            sink: format!("{{ type: scylla, nodes: [\"{contact}\"], keyspace: {KEYSPACE}, consistency: one, concurrency: {IN_FLIGHT} }}"),
            mapping: format!(
                "    scylla: {{ table: {fan_table}, columns: {{ id: id, account: account, name: name, amount: amount, created_at: created_at, note: note }} }}\n"
            ),
            http_listen: None,
            batch_size: None,
        };
            // Order alternates between runs (Cassandra's JIT warms up as it
            // goes), after an unmeasured warm-up pass of each tool in the first
            // run (without pgfanout's own, its first measured pass ran at half
            // the rate of the next ones: Cassandra compiling the paths of its
            // requests while it ran).
            if warm_up {
                for t in ["warmup", "warmup_fan"] {
                    create_rows_table(&session, t).await?;
                }
                plain_load(&db, &session, shape, "warmup").await?;
                store::warm_up(ctx, &db, &cfg, "pgf_feed_warmup", (&fan_table, "warmup_fan"), end, timeout).await?;
            }
            let loader = plain_load(&db, &session, shape, &plain_table);
            let (f, (plain, plain_cpu)) = store::measure_run(ctx, &db, &cfg, run, end, timeout, loader).await?;
            let n = count(&session, &fan_table).await?;
            if n != changes {
                bail!("table {fan_table} holds {n} rows, expected {changes}");
            }
            figs.record(changes, &f, plain, plain_cpu);
            db.drop_slot(&slot).await?;
            for t in [fan_table.as_str(), plain_table.as_str(), "warmup", "warmup_fan"] {
                let _ = session.query_unpaged(format!("DROP TABLE IF EXISTS {KEYSPACE}.{t}"), ()).await;
            }
        }
        figures.extend(figs.into_figures());
    }
    drop(session);
    drop(node);
    Ok(figures)
}

/// The plain loader: the table's rows, typed before the clock starts, as
/// prepared inserts into `table`, IN_FLIGHT at a time. Returns (seconds, CPU
/// seconds of this process).
async fn plain_load(db: &Db, session: &Session, shape: Shape, table: &str) -> Result<(f64, f64)> {
    let plain_table = table;
    // The ceiling: the same rows, already typed, before the clock starts.
    let rows = db
        .client
        .query(
            &format!(
                "SELECT id, account, name, amount::text, (extract(epoch from created_at) * 1000)::bigint, note FROM {} ORDER BY id",
                shape.table()
            ),
            &[],
        )
        .await?;
    // The last value is the write timestamp, bound like pgfanout's (which
    // derives it from the change's position).
    type Row = (i64, i32, String, scylla::value::CqlDecimal, scylla::value::CqlTimestamp, String, i64);
    let values: Vec<Row> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let amount: String = r.get(3);
            (r.get(0), r.get(1), r.get(2), decimal(&amount), scylla::value::CqlTimestamp(r.get(4)), r.get(5), 1_000_000 + i as i64)
        })
        .collect();
    drop(rows);
    let insert = Arc::new(
        session
            .prepare(format!(
                "INSERT INTO {KEYSPACE}.{plain_table} (id, account, name, amount, created_at, note) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
    );
    store::timed_load(async {
        stream::iter(values.iter())
            .map(|v| {
                let (session, insert) = (&session, insert.clone());
                async move { session.execute_unpaged(&insert, v).await.map(|_| ()) }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<()>()
            .await
            .context("plain loader insert")
    })
    .await
}

/// A table for the bench rows (stream-big's shape) in the keyspace.
async fn create_rows_table(session: &Session, table: &str) -> Result<()> {
    session
        .query_unpaged(
            format!(
                "CREATE TABLE IF NOT EXISTS {KEYSPACE}.{table} (id bigint PRIMARY KEY, account int, name text, amount decimal, \
                 created_at timestamp, note text)"
            ),
            (),
        )
        .await?;
    Ok(())
}

async fn count(session: &Session, table: &str) -> Result<u64> {
    let mut q = scylla::statement::unprepared::Statement::new(format!("SELECT count(*) FROM {KEYSPACE}.{table}"));
    q.set_request_timeout(Some(Duration::from_secs(300)));
    let r = session.query_unpaged(q, ()).await?.into_rows_result()?;
    let (n,): (i64,) = r.single_row()?;
    Ok(n as u64)
}

/// `123.45` → CQL decimal (unscaled big-endian two's complement, scale).
fn decimal(s: &str) -> scylla::value::CqlDecimal {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let unscaled: i64 = format!("{int}{frac}").parse().expect("numeric(12,2) fits i64");
    scylla::value::CqlDecimal::from_signed_be_bytes_and_exponent(unscaled.to_be_bytes().to_vec(), frac.len() as i32)
}
