//! What the store workloads (search, feed, graph) share: the source
//! database, one run's slot and load, the unmeasured warm-up pass, the
//! measured pair of pgfanout's drain and the plain loader (on a quiet
//! machine, order alternating), the loader's clock, and the figures of one
//! transaction shape. Each workload's file keeps only its store: the sink's
//! config, the plain loader, the count.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::db::{Db, PUBLICATION};
use crate::load::Shape;
use crate::report::{Better, Figure, Goal};
use crate::throughput::Ctx;
use crate::tools::{self, Drain, FanoutConfig};

/// The source of a store workload: a new bench database with stream-big's
/// table, in the publication.
pub async fn source_db(ctx: &Ctx) -> Result<Db> {
    let db = Db::start(&ctx.pg(&[])).await?;
    db.exec(&Shape::Big.ddl()).await?;
    db.exec(&format!("CREATE PUBLICATION {PUBLICATION} FOR TABLE {}", Shape::Big.table())).await?;
    Ok(db)
}

/// One run's changes: the table reset for `shape`, the drain prepared, the
/// `slots` created (so each sees the load), then `rows` rows loaded in
/// `shape`'s transactions. Returns the end LSN to drain to.
pub async fn load_run(db: &Db, shape: Shape, rows: u64, slots: &[&str]) -> Result<u64> {
    db.exec(&shape.reset_sql(rows)).await?;
    db.prepare_drain(&[]).await?;
    for slot in slots {
        db.create_slot(slot).await?;
    }
    db.exec(&shape.load_sql(rows)).await?;
    db.end_lsn().await
}

/// An unmeasured pgfanout pass from the warm-up slot `slot` to `cfg`'s sink,
/// writing to `rename.1` where `cfg`'s mapping names `rename.0`; the slot is
/// dropped after.
pub async fn warm_up(
    ctx: &Ctx,
    db: &Db,
    cfg: &FanoutConfig<'_>,
    slot: &str,
    rename: (&str, &str),
    end: u64,
    timeout: Duration,
) -> Result<()> {
    let warm = FanoutConfig {
        slot,
        table: cfg.table,
        mapping: cfg.mapping.replace(rename.0, rename.1),
        sink: cfg.sink.clone(),
        http_listen: None,
        batch_size: cfg.batch_size,
    };
    tools::drain_pgfanout(&ctx.bin, &ctx.dir, db, &warm, end, timeout).await?;
    db.drop_slot(slot).await
}

/// One run's measured pair ([`measure_both`]): pgfanout draining to `end`
/// with `cfg` (within `timeout`), and `loader`. Returns pgfanout's drain and
/// the loader's (seconds, CPU seconds).
pub async fn measure_run<L>(
    ctx: &Ctx,
    db: &Db,
    cfg: &FanoutConfig<'_>,
    run: usize,
    end: u64,
    timeout: Duration,
    loader: L,
) -> Result<(Drain, (f64, f64))>
where
    L: Future<Output = Result<(f64, f64)>>,
{
    measure_both(run, tools::drain_pgfanout(&ctx.bin, &ctx.dir, db, cfg, end, timeout), loader).await
}

/// A plain loader's clock: runs `load` (its data already built) and returns
/// (seconds, CPU seconds of this process) it took.
pub async fn timed_load(load: impl Future<Output = Result<()>>) -> Result<(f64, f64)> {
    let cpu_before = crate::procstat::cpu_seconds(std::process::id()).unwrap_or(0.0);
    let started = Instant::now();
    load.await?;
    let plain = started.elapsed().as_secs_f64();
    let plain_cpu = crate::procstat::cpu_seconds(std::process::id()).unwrap_or(0.0) - cpu_before;
    Ok((plain, plain_cpu))
}

/// Runs a store workload's two measured phases, pgfanout's and the plain
/// loader's, each on a quiet machine ([`tools::quiet_before`]); pgfanout first in
/// even runs, the loader first in odd ones (the store's JIT warms up as it
/// goes).
pub async fn measure_both<F, L, P>(run: usize, pgfanout: F, loader: L) -> Result<(Drain, P)>
where
    F: std::future::Future<Output = Result<Drain>>,
    L: std::future::Future<Output = Result<P>>,
{
    if run.is_multiple_of(2) {
        tools::quiet_before("pgfanout").await;
        let f = pgfanout.await?;
        tools::quiet_before("the plain loader").await;
        Ok((f, loader.await?))
    } else {
        tools::quiet_before("the plain loader").await;
        let p = loader.await?;
        tools::quiet_before("pgfanout").await;
        Ok((pgfanout.await?, p))
    }
}

/// The transaction shapes the store workloads run: 100-row transactions,
/// and one transaction of all the rows (which PostgreSQL spills to disk
/// while decoding). Each comes numbered, with its empty figures (the
/// workload `label` against `loader`), its label printed as it starts.
pub fn store_shapes(label: &str, loader: &str) -> impl Iterator<Item = (usize, Shape, StoreFigures)> {
    let shapes = [(format!("{label}, 100-row txns"), Shape::Small), (format!("{label}, one txn"), Shape::Big)];
    let loader = loader.to_string();
    shapes.into_iter().enumerate().map(move |(shape_no, (label, shape))| {
        eprintln!("  {label}:");
        (shape_no, shape, StoreFigures::new(&label, &loader))
    })
}

/// A store workload's figures for one transaction shape: throughput and CPU
/// per row against the plain loader, the walsender's CPU per row (work the
/// loader does not pay), pgfanout's peak RSS.
pub struct StoreFigures {
    loader: String,
    rate: Figure,
    cpu: Figure,
    walsender: Figure,
    rss: Figure,
}

impl StoreFigures {
    pub fn new(label: &str, loader: &str) -> StoreFigures {
        StoreFigures {
            loader: loader.to_string(),
            rate: Figure::new(label, "throughput", "rows/s", Better::Higher).with_baseline(loader).with_goal(Goal::RatioAtLeast(0.8)),
            cpu: Figure::new(label, "CPU per row", "µs", Better::Lower).with_baseline(loader),
            walsender: Figure::new(label, "walsender CPU per row", "µs", Better::Lower),
            rss: Figure::new(label, "peak RSS", "MB", Better::Lower).with_goal(Goal::AtMost(32.0)),
        }
    }

    /// Prints and records one run: pgfanout's drain of `changes` rows, and
    /// the loader's seconds and CPU seconds.
    pub fn record(&mut self, changes: u64, f: &Drain, loader_seconds: f64, loader_cpu: f64) {
        let per_row = |seconds: f64| seconds * 1e6 / changes as f64;
        eprintln!(
            "    pgfanout {:.2} s ({:.0} rows/s, {:.2} µs CPU/row, {} MB); {} {:.2} s ({:.0} rows/s, {:.2} µs CPU/row)",
            f.seconds,
            changes as f64 / f.seconds,
            per_row(f.usage.cpu_seconds),
            f.usage.peak_rss_kib / 1024,
            self.loader,
            loader_seconds,
            changes as f64 / loader_seconds,
            per_row(loader_cpu),
        );
        self.rate.pgfanout.push(changes as f64 / f.seconds);
        self.rate.baseline.push(changes as f64 / loader_seconds);
        self.cpu.pgfanout.push(per_row(f.usage.cpu_seconds));
        self.cpu.baseline.push(per_row(loader_cpu));
        self.rss.pgfanout.push(f.usage.peak_rss_kib as f64 / 1024.0);
        if let Some(w) = f.walsender_cpu_seconds {
            self.walsender.pgfanout.push(per_row(w));
        }
    }

    pub fn into_figures(self) -> [Figure; 4] {
        [self.rate, self.cpu, self.walsender, self.rss]
    }
}
