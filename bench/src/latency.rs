//! Latency at steady rates: 5,000 and 20,000 changes/s (50- and 200-row
//! transactions every 10 ms) for `--latency-seconds` each, measured per change from its commit in
//! PostgreSQL to the moment it is durable in the sink, observed from outside
//! pgfanout:
//!
//! - file sink (a regular file): a reader tails the file; after each read it
//!   calls `fdatasync` on the file itself, then takes the time. Every line it
//!   read is durable at that moment whoever synced it, so the figure is an
//!   upper bound of commit→durable (never flattered by the page cache).
//!   Commit time is the record's `commit_ts` (PostgreSQL's commit timestamp).
//! - Redis (no persistence, so durable = applied): keyspace notifications
//!   (`hset` events) are taken by a subscriber as Redis applies each write;
//!   commit time is `pg_xact_commit_timestamp(xmin)` of the row
//!   (`track_commit_timestamp=on` in this cluster).
//!
//! This cluster runs with `synchronous_commit=on` (fsync still off): with it
//! off, committed WAL waits up to `wal_writer_delay` (200 ms) before a
//! walsender may send it, a delay of the server, not of any consumer.
//!
//! Both clocks are this machine's wall clock. pgfanout's own histogram
//! (`pgfanout_end_to_end_latency_seconds`) is not used: it holds one sample
//! per batch (its youngest record) in coarse buckets.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::db::{Db, PUBLICATION};
use crate::report::{Better, Figure, Goal};
use crate::resp;
use crate::throughput::Ctx;
use crate::tools::{Fanout, FanoutConfig};

/// Changes per second offered, one run set per rate.
const RATES: [u64; 2] = [5_000, 20_000];
const TICK_MS: u64 = 10;

/// The sinks latency is measured for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LatSink {
    File,
    Redis,
}

pub(crate) fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Runs the latency workload for the file sink and (when Redis runs) the
/// Redis sink; figures: p50/p99/max latency, offered rate, CPU per row, RSS.
pub async fn run(ctx: &Ctx) -> Result<Vec<Figure>> {
    // synchronous_commit=on: with it off (as in the throughput clusters) a
    // commit waits for the WAL writer (wal_writer_delay, 200 ms) before any
    // walsender may send it, which would dominate every latency figure.
    // fsync stays off, so commits remain cheap.
    let db = latency_db(ctx).await?;
    let mut sinks = vec![LatSink::File];
    if ctx.redis.is_some() {
        sinks.push(LatSink::Redis);
    }
    let mut figures = Vec::new();
    for (rate_offered, sink) in RATES.into_iter().flat_map(|r| sinks.iter().map(move |&s| (r, s))) {
        let name = format!(
            "latency {}k/s, {}",
            rate_offered / 1000,
            match sink {
                LatSink::File => "file",
                LatSink::Redis => "redis",
            }
        );
        let name = name.as_str();
        let mut p50 = Figure::new(name, "commit→durable p50", "ms", Better::Lower);
        let mut p99 = Figure::new(name, "commit→durable p99", "ms", Better::Lower).with_goal(Goal::AtMost(50.0));
        let mut max = Figure::new(name, "commit→durable max", "ms", Better::Lower);
        let mut rate = Figure::new(name, "offered rate", "rows/s", Better::Higher);
        let mut cpu = Figure::new(name, "CPU per row", "µs", Better::Lower);
        let mut rss = Figure::new(name, "peak RSS", "MB", Better::Lower).with_goal(Goal::AtMost(32.0));
        for run in 0..ctx.runs {
            let r = one_run(ctx, &db, sink, rate_offered, run, None).await?;
            eprintln!(
                "  {name} run {}/{}: {} samples at {:.0} rows/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {:.2} µs CPU/row, {} MB",
                run + 1,
                ctx.runs,
                r.samples,
                r.rate,
                r.p50,
                r.p99,
                r.max,
                r.cpu_us_per_row,
                r.rss_mb as u64
            );
            p50.pgfanout.push(r.p50);
            p99.pgfanout.push(r.p99);
            max.pgfanout.push(r.max);
            rate.pgfanout.push(r.rate);
            cpu.pgfanout.push(r.cpu_us_per_row);
            rss.pgfanout.push(r.rss_mb);
        }
        figures.extend([p50, p99, max, rate, cpu, rss]);
    }
    Ok(figures)
}

pub(crate) struct RunResult {
    pub samples: usize,
    pub rate: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub cpu_us_per_row: f64,
    pub rss_mb: f64,
}

/// The latency table and its publication, in a cluster with the settings
/// latency needs (commit timestamps, synchronous commit).
pub(crate) async fn latency_db(ctx: &Ctx) -> Result<Db> {
    let db = Db::start(&ctx.pg(&[("track_commit_timestamp", "on"), ("synchronous_commit", "on")])).await?;
    db.exec("CREATE TABLE bench_lat (id bigint PRIMARY KEY, v int NOT NULL, note text NOT NULL)").await?;
    db.exec(&format!("CREATE PUBLICATION {PUBLICATION} FOR TABLE bench_lat")).await?;
    Ok(db)
}

/// One run at `rate` changes/s. `via`: the changes go the long way, a
/// pgfanout reader writing them to a Kafka topic (`format: native`) and one
/// applier (`source.kafka`) writing them to the sink; the figures are then
/// commit to durable in the sink across both, CPU and RSS both processes'.
pub(crate) async fn one_run(
    ctx: &Ctx,
    db: &Db,
    sink: LatSink,
    rate: u64,
    run: usize,
    via: Option<&testkit::KafkaBroker>,
) -> Result<RunResult> {
    db.exec("TRUNCATE bench_lat").await?;
    let rows_per_tick = rate * TICK_MS / 1000;
    let slot =
        format!("lat_{}_{rate}_{run}{}", if sink == LatSink::File { "file" } else { "redis" }, if via.is_some() { "_kafka" } else { "" });
    db.prepare_drain(&[]).await?;
    db.create_slot(&slot).await?;
    let out = ctx.dir.join(format!("{slot}.jsonl"));
    let _ = std::fs::remove_file(&out);
    std::fs::write(&out, b"").context("create the file sink's output")?;

    let stop = Arc::new(AtomicBool::new(false));
    let (sink_yaml, mapping, collector) = match sink {
        LatSink::File => {
            let h = spawn_tailer(out.clone(), stop.clone());
            (format!("{{ type: file, path: \"{}\" }}", out.display()), String::new(), Collector::File(h))
        }
        LatSink::Redis => {
            let r = ctx.redis.as_ref().context("redis-server is not running")?;
            let mut c = resp::Conn::connect(r.port)?;
            c.cmd(&["FLUSHALL"])?;
            c.cmd(&["CONFIG", "SET", "notify-keyspace-events", "Eh"])?;
            let (h, unsub) = spawn_subscriber(r.port)?;
            (
                format!("{{ type: redis, url: \"{}\" }}", r.url()),
                "    redis: { type: hash, key: \"lat:{id}\" }\n".to_string(),
                Collector::Redis(h, unsub),
            )
        }
    };
    let cfg = FanoutConfig { slot: &slot, table: "bench_lat", sink: sink_yaml, mapping, http_listen: None, batch_size: None };
    let (mut fanout, mut applier) = match via {
        None => (Fanout::spawn(&ctx.bin, &ctx.dir, db, &cfg)?, None),
        Some(broker) => {
            let topic = format!("lat.{slot}");
            let reader = FanoutConfig {
                slot: &slot,
                table: "bench_lat",
                sink: format!("{{ type: kafka, brokers: \"{}\", topics: {{ partitions: 1 }} }}", broker.bootstrap()),
                mapping: format!("    kafka: {{ topic: {topic}, key: \"{{id}}\", format: native, tombstones: true }}\n"),
                http_listen: None,
                batch_size: None,
            };
            let yaml = cfg.yaml(db, &ctx.dir).replacen(
                "sinks:\n",
                &format!(
                    "  kafka:\n    brokers: \"{}\"\n    topics: [{topic}]\n    group: {slot}\n    commit_interval: 200ms\n    properties: {{ fetch.wait.max.ms: \"5\" }}\nsinks:\n",
                    broker.bootstrap()
                ),
                1,
            );
            let applier = Fanout::spawn_yaml(&ctx.bin, &ctx.dir, &format!("{slot}_applier"), &yaml, "warn")?;
            (Fanout::spawn(&ctx.bin, &ctx.dir, db, &reader)?, Some(applier))
        }
    };

    // Warm up: one row, wait until pgfanout has confirmed it (it is
    // streaming), and until the applier has written it.
    db.exec("INSERT INTO bench_lat VALUES (0, 0, 'warm-up')").await?;
    let end = db.end_lsn().await?;
    fanout.wait_confirmed(db, &slot, end, Duration::from_secs(60)).await?;
    if let Some(a) = applier.as_mut() {
        wait_sink_rows(ctx, sink, &out, 1, a).await?;
    }
    let before = fanout.usage()?;
    let applier_before = applier.as_ref().map(Fanout::usage).transpose()?;

    // Steady load: rows_per_tick rows in one transaction every TICK_MS.
    let insert = db
        .client
        .prepare("INSERT INTO bench_lat SELECT g, (g % 1000)::int, 'note ' || g FROM generate_series($1::bigint, $2::bigint) g")
        .await?;
    let ticks = ctx.latency_seconds * 1000 / TICK_MS;
    let mut interval = tokio::time::interval(Duration::from_millis(TICK_MS));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let load_start = Instant::now();
    let gen_start_us = now_us();
    for t in 0..ticks {
        interval.tick().await;
        let first = (t * rows_per_tick + 1) as i64;
        let last = first + rows_per_tick as i64 - 1;
        db.client.execute(&insert, &[&first, &last]).await?;
    }
    let load_secs = load_start.elapsed().as_secs_f64();
    let rows = ticks * rows_per_tick;
    let end = db.end_lsn().await?;
    fanout.wait_confirmed(db, &slot, end, Duration::from_secs(120)).await?;
    if let Some(a) = applier.as_mut() {
        wait_sink_rows(ctx, sink, &out, rows + 1, a).await?;
    }
    let mut after = fanout.usage()?;
    fanout.stop();
    if let (Some(mut a), Some(b)) = (applier.take(), applier_before) {
        let u = a.usage()?;
        after.cpu_seconds += u.cpu_seconds - b.cpu_seconds;
        after.peak_rss_kib = after.peak_rss_kib.max(u.peak_rss_kib);
        a.stop();
    }
    stop.store(true, Ordering::Release);

    let mut lat_us: Vec<i64> = match collector {
        Collector::File(h) => {
            let seen = h.join().map_err(|_| anyhow::anyhow!("file reader panicked"))??;
            seen.into_iter().filter(|(commit, _)| *commit >= gen_start_us).map(|(c, t)| t - c).collect()
        }
        Collector::Redis(h, mut unsub) => {
            unsub.send(&["UNSUBSCRIBE"])?;
            let arrivals = h.join().map_err(|_| anyhow::anyhow!("redis subscriber panicked"))??;
            let commits = db
                .client
                .query("SELECT id, (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000000)::bigint FROM bench_lat WHERE id > 0", &[])
                .await?;
            let mut v = Vec::with_capacity(commits.len());
            for r in commits {
                let id: i64 = r.get(0);
                let commit: Option<i64> = r.get(1);
                let commit = commit.context("no commit timestamp (track_commit_timestamp off?)")?;
                let t = arrivals.get(&id).with_context(|| format!("row {id} never reached redis"))?;
                v.push(t - commit);
            }
            v
        }
    };
    db.drop_slot(&slot).await?;
    if (lat_us.len() as u64) < rows {
        bail!("saw {} of {rows} changes in the sink", lat_us.len());
    }
    lat_us.sort_unstable();
    let pct = |p: f64| lat_us[((lat_us.len() as f64 - 1.0) * p).round() as usize].max(0) as f64 / 1000.0;
    Ok(RunResult {
        samples: lat_us.len(),
        rate: rows as f64 / load_secs,
        p50: pct(0.50),
        p99: pct(0.99),
        max: pct(1.0),
        cpu_us_per_row: (after.cpu_seconds - before.cpu_seconds) * 1e6 / rows as f64,
        rss_mb: after.peak_rss_kib as f64 / 1024.0,
    })
}

/// Waits (up to 120 s) until the applier's sink holds `rows` rows: the
/// file's lines, or the Redis key of row id `rows - 1` (the last one
/// written; the topic has one partition, so it comes last).
async fn wait_sink_rows(ctx: &Ctx, sink: LatSink, out: &std::path::Path, rows: u64, applier: &mut Fanout) -> Result<()> {
    let start = Instant::now();
    loop {
        let n = match sink {
            LatSink::Redis => {
                let r = ctx.redis.as_ref().context("redis-server is not running")?;
                match resp::Conn::connect(r.port)?.cmd(&["EXISTS", &format!("lat:{}", rows - 1)])? {
                    resp::Reply::Int(1) => rows,
                    resp::Reply::Int(_) => 0,
                    other => bail!("EXISTS: {other:?}"),
                }
            }
            LatSink::File => std::fs::read(out).map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64).unwrap_or(0),
        };
        if n >= rows {
            return Ok(());
        }
        applier.check_running()?;
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the applier wrote {n} of {rows} rows in 120 s; log:\n{}", crate::tools::tail(&applier.log_path));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Row id -> µs since the epoch when Redis applied it.
type Arrivals = std::thread::JoinHandle<Result<HashMap<i64, i64>>>;
/// (commit_ts, durable-seen time) in µs per line of the file.
pub(crate) type FileSeen = std::thread::JoinHandle<Result<Vec<(i64, i64)>>>;

enum Collector {
    File(FileSeen),
    Redis(Arrivals, resp::Conn),
}

/// Tails `path` until `stop` is set and no more data comes; returns
/// (commit_ts, durable-seen time) in µs for every complete line.
pub(crate) fn spawn_tailer(path: PathBuf, stop: Arc<AtomicBool>) -> FileSeen {
    std::thread::spawn(move || {
        let mut f = std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 1 << 20];
        let mut out = Vec::new();
        loop {
            let n = f.read(&mut chunk)?;
            if n == 0 {
                if stop.load(Ordering::Acquire) {
                    return Ok(out);
                }
                std::thread::sleep(Duration::from_micros(500));
                continue;
            }
            pending.extend_from_slice(&chunk[..n]);
            let Some(last_nl) = pending.iter().rposition(|&b| b == b'\n') else { continue };
            f.sync_data().with_context(|| format!("fdatasync {}", path.display()))?;
            let seen = now_us();
            for line in pending[..last_nl].split(|&b| b == b'\n') {
                out.push((commit_ts_us(line)?, seen));
            }
            pending.drain(..=last_nl);
        }
    })
}

/// `commit_ts` of a change record line, in µs since the epoch.
fn commit_ts_us(line: &[u8]) -> Result<i64> {
    let text = std::str::from_utf8(line).context("non-UTF-8 line")?;
    let key = "\"commit_ts\":\"";
    let start = text.find(key).with_context(|| format!("no commit_ts in {text:.200}"))? + key.len();
    let end = text[start..].find('"').context("unterminated commit_ts")? + start;
    let t = humantime::parse_rfc3339(&text[start..end]).with_context(|| format!("bad commit_ts {:?}", &text[start..end]))?;
    Ok(t.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0))
}

/// Subscribes to `hset` keyevents and records when each `lat:<id>` key was
/// written (first time only). Returns the thread and a second connection
/// handle on the same socket to send UNSUBSCRIBE, which ends the thread.
fn spawn_subscriber(port: u16) -> Result<(Arrivals, resp::Conn)> {
    let mut conn = resp::Conn::connect(port)?;
    conn.send(&["SUBSCRIBE", "__keyevent@0__:hset"])?;
    let _ = conn.read()?; // subscribe confirmation
    let writer = conn.try_clone()?;
    let h = std::thread::spawn(move || {
        let mut seen = HashMap::new();
        loop {
            let r = conn.read()?;
            let t = now_us();
            if let Some(key) = resp::message_payload(&r) {
                if let Some(id) = key.strip_prefix(b"lat:").and_then(|s| std::str::from_utf8(s).ok()).and_then(|s| s.parse::<i64>().ok()) {
                    seen.entry(id).or_insert(t);
                }
            } else if matches!(&r, resp::Reply::Array(items) if items.first() == Some(&resp::Reply::Bulk(Some(b"unsubscribe".to_vec())))) {
                return Ok(seen);
            }
        }
    });
    Ok((h, writer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_commit_ts() {
        let line = br#"{"op":"insert","commit_ts":"2026-01-02T03:04:05.123456Z","x":1}"#;
        let us = commit_ts_us(line).unwrap();
        assert_eq!(us % 1_000_000, 123_456);
        assert!(commit_ts_us(b"{}").is_err());
    }
}
