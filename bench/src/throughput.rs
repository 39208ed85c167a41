//! Throughput workloads: the same changes drained by pgfanout (into a sink)
//! and by pg_recvlogical (to /dev/null), run after run.
//!
//! Each run: empty the table, create one fresh slot per tool, run the load,
//! take the end LSN, then drain each slot in turn (the order alternates
//! between runs so neither tool always gets the warmer cache), each drain
//! preceded by `CHECKPOINT` and advancing any other slot.

use std::path::{Path, PathBuf};
use testkit::Server;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::db::{Db, PUBLICATION};
use crate::load::Shape;
use crate::report::{Better, Figure, Goal};
use crate::resp::{self, Reply};
use crate::tools::{self, Drain, FanoutConfig};

/// What every workload needs to know.
pub struct Ctx {
    pub bin: crate::tools::Program,
    pub dir: PathBuf,
    pub rows: u64,
    pub runs: usize,
    pub latency_seconds: u64,
    /// `--pg-set` settings, for every workload's PostgreSQL.
    pub pg_settings: Vec<(String, String)>,
    pub redis: Option<testkit::RedisServer>,
    pub kafka: Option<testkit::KafkaBroker>,
    /// `--cpu-hog`: a competing load runs (the goals differ).
    pub cpu_hog: bool,
}

impl Ctx {
    /// A workload's own PostgreSQL settings, then the `--pg-set` ones.
    pub fn pg<'a>(&'a self, own: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        own.iter().copied().chain(self.pg_settings.iter().map(|(k, v)| (k.as_str(), v.as_str()))).collect()
    }
}

/// Where pgfanout writes in a throughput workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    File,
    Redis,
    /// `exactly_once`: `delivery: exactly_once` (transactions).
    Kafka {
        exactly_once: bool,
    },
}

/// A throughput workload.
pub struct Spec {
    pub name: &'static str,
    pub shape: Shape,
    pub sink: SinkKind,
}

/// Goals from the hot-path issue: stream ≥ 1.3× pg_recvlogical's
/// throughput at ≤ 0.6× its CPU per row, ≥ 1.0× under the CPU hog (no CPU
/// goal there); sinks ≥ 0.5×; peak RSS ≤ 32 MB.
fn goals(spec: &Spec, cpu_hog: bool) -> (Option<Goal>, Option<Goal>) {
    match (spec.sink, spec.shape) {
        (SinkKind::File, Shape::Big | Shape::Small) if cpu_hog => (Some(Goal::RatioAtLeast(1.0)), None),
        (SinkKind::File, Shape::Big | Shape::Small) => (Some(Goal::RatioAtLeast(1.3)), Some(Goal::RatioAtMost(0.6))),
        (SinkKind::File, Shape::Mixed) => (None, None),
        _ => (Some(Goal::RatioAtLeast(0.5)), None),
    }
}

/// Runs one throughput workload `ctx.runs` times and returns its figures:
/// rows/s, CPU µs per row and peak RSS, each for pgfanout and pg_recvlogical.
pub async fn run(ctx: &Ctx, spec: &Spec) -> Result<Vec<Figure>> {
    let (rate_goal, cpu_goal) = goals(spec, ctx.cpu_hog);
    let mut rate = Figure::new(spec.name, "throughput", "rows/s", Better::Higher).with_baseline("pg_recvlogical");
    let mut cpu = Figure::new(spec.name, "CPU per row", "µs", Better::Lower).with_baseline("pg_recvlogical");
    let mut rss = Figure::new(spec.name, "peak RSS", "MB", Better::Lower).with_baseline("pg_recvlogical").with_goal(Goal::AtMost(32.0));
    // The database server's share: what the walsender spent per row while
    // each consumer read (pg_recvlogical's sampled every 50 ms).
    let mut walsender = Figure::new(spec.name, "walsender CPU per row", "µs", Better::Lower).with_baseline("pg_recvlogical");
    if let Some(g) = rate_goal {
        rate = rate.with_goal(g);
    }
    if let Some(g) = cpu_goal {
        cpu = cpu.with_goal(g);
    }
    // Kafka and Redis: the store's own ceiling for the same records (issue 16)
    let mut ceiling = match spec.sink {
        SinkKind::Kafka { .. } => Some(
            Figure::new(&format!("{} vs the broker's ceiling", spec.name), "throughput", "rows/s", Better::Higher)
                .with_baseline("kafka-producer-perf-test")
                .with_goal(Goal::RatioAtLeast(0.8)),
        ),
        SinkKind::Redis => Some(
            Figure::new(&format!("{} vs the server's ceiling", spec.name), "throughput", "rows/s", Better::Higher)
                .with_baseline("pipelined EVALSHA loader")
                .with_goal(Goal::RatioAtLeast(0.8)),
        ),
        SinkKind::File => None,
    };
    // Kafka: where the CPU goes in each pipeline, per row: the broker's
    // share, and the whole machine's (walsender + pgfanout + broker against
    // perf-test's producer + broker). On a saturated machine the rate is
    // cores ÷ machine CPU per row, so these bound what any producer could do.
    let measure_kafka_cpu = matches!(spec.sink, SinkKind::Kafka { .. });
    let mut broker_cpu =
        Figure::new(&format!("{} broker", spec.name), "CPU per row", "µs", Better::Lower).with_baseline("kafka-producer-perf-test");
    let mut machine_cpu =
        Figure::new(&format!("{} whole machine", spec.name), "CPU per row", "µs", Better::Lower).with_baseline("kafka-producer-perf-test");

    // Debezium (stream-big, stream-small, kafka): the same changes through
    // the tool most users would otherwise run, into the same place.
    let debezium_target = match spec.sink {
        _ if !crate::debezium::installed() => None,
        SinkKind::File if matches!(spec.shape, Shape::Big | Shape::Small) => Some(None),
        SinkKind::Kafka { exactly_once: false } => Some(Some(ctx.kafka.as_ref().context("the Kafka broker is not running")?.bootstrap())),
        _ => None,
    };
    let vs_debezium = format!("{} vs Debezium", spec.name);
    let mut dbz_rate = Figure::new(&vs_debezium, "throughput", "rows/s", Better::Higher).with_baseline("Debezium 3.6.1");
    let mut dbz_cpu = Figure::new(&vs_debezium, "CPU per row", "µs", Better::Lower).with_baseline("Debezium 3.6.1");
    let mut dbz_rss = Figure::new(&vs_debezium, "peak RSS", "MB", Better::Lower).with_baseline("Debezium 3.6.1");

    let db = Db::start(&ctx.pg(&[])).await?;
    let table = spec.shape.table();
    db.exec(&spec.shape.ddl()).await?;
    db.exec(&format!("CREATE PUBLICATION {PUBLICATION} FOR TABLE {table}")).await?;
    let changes = spec.shape.changes(ctx.rows);
    let timeout = Duration::from_secs(300.max(changes / 2_000));

    for run in 0..ctx.runs {
        db.exec(&spec.shape.reset_sql(ctx.rows)).await?;
        db.exec(&format!("VACUUM ANALYZE {table}")).await?;
        reset_sink(ctx, spec.sink)?;
        db.prepare_drain(&[]).await?;
        let (pgf_slot, rl_slot, dbz_slot) = (format!("pgf_{run}"), format!("rl_{run}"), format!("dbz_{run}"));
        db.create_slot(&pgf_slot).await?;
        db.create_slot(&rl_slot).await?;
        if debezium_target.is_some() {
            db.create_slot(&dbz_slot).await?;
        }
        let started = Instant::now();
        db.exec(&spec.shape.load_sql(ctx.rows)).await?;
        let end = db.end_lsn().await?;
        eprintln!(
            "  {} run {}/{}: loaded {changes} changes in {:.1} s, end LSN {}",
            spec.name,
            run + 1,
            ctx.runs,
            started.elapsed().as_secs_f64(),
            crate::db::fmt_lsn(end)
        );

        let keep: Vec<&str> = [pgf_slot.as_str(), rl_slot.as_str(), dbz_slot.as_str()]
            .into_iter()
            .take(if debezium_target.is_some() { 3 } else { 2 })
            .collect();
        let mut fanout: Option<Drain> = None;
        let mut recv: Option<Drain> = None;
        let mut dbz: Option<Drain> = None;
        for turn in 0..keep.len() {
            db.prepare_drain(&keep).await?;
            if (turn + run) % keep.len() == 2 {
                let target = match &debezium_target {
                    Some(Some(bootstrap)) => crate::debezium::Target::Kafka(bootstrap),
                    _ => crate::debezium::Target::File,
                };
                let d = crate::debezium::drain(&db, &ctx.dir, &dbz_slot, &format!("dbz-run{run}"), target, changes, timeout).await?;
                eprintln!(
                    "    Debezium {:.2} s ({:.0} rows/s, {:.2} µs CPU/row, {} MB)",
                    d.seconds,
                    changes as f64 / d.seconds,
                    d.usage.cpu_seconds * 1e6 / changes as f64,
                    d.usage.peak_rss_kib / 1024
                );
                dbz = Some(d);
            } else if (turn + run) % keep.len() == 0 {
                let cfg = fanout_config(ctx, spec, &pgf_slot, run)?;
                let before = measure_kafka_cpu.then(|| cpu_now(ctx));
                let d = tools::drain_pgfanout(&ctx.bin, &ctx.dir, &db, &cfg, end, timeout).await?;
                if let Some(spent) = before.and_then(|b| cpu_now(ctx).since(b)) {
                    spent.report("pgfanout", changes, &mut broker_cpu.pgfanout, &mut machine_cpu.pgfanout);
                }
                check_sink(ctx, spec.sink, &ctx.dir, &pgf_slot, changes)?;
                fanout = Some(d);
            } else {
                recv = Some(tools::drain_recvlogical(&db, &ctx.dir, &rl_slot, end, timeout).await?);
            }
        }
        let (Some(f), Some(r)) = (fanout, recv) else { bail!("a drain did not run") };
        if let Some(fig) = ceiling.as_mut() {
            let rate = if matches!(spec.sink, SinkKind::Kafka { .. }) {
                tools::quiet_before("kafka-producer-perf-test").await;
                let (rate, spent) = kafka_ceiling(ctx, &format!("bench-run{run}"), &format!("ceiling-run{run}"), changes)?;
                eprintln!("    kafka-producer-perf-test: {rate:.0} rows/s with the same values (acks=all, idempotence on)");
                if let Some(spent) = spent {
                    spent.report("perf-test", changes, &mut broker_cpu.baseline, &mut machine_cpu.baseline);
                }
                rate
            } else {
                let r = ctx.redis.as_ref().context("redis-server is not running")?;
                let calls = redis_ceiling_calls(r.port, changes)?;
                tools::quiet_before("the plain Redis loader").await;
                let rate = redis_ceiling(r.port, calls, changes)?;
                eprintln!("    plain Redis loader: {rate:.0} rows/s with the same EVALSHA calls");
                rate
            };
            eprintln!("    pgfanout {:.3}x the store's ceiling", changes as f64 / f.seconds / rate);
            fig.pgfanout.push(changes as f64 / f.seconds);
            fig.baseline.push(rate);
        }
        eprintln!(
            "    pgfanout {:.2} s ({:.0} rows/s, {:.2} µs CPU/row, {} MB), pg_recvlogical {:.2} s ({:.0} rows/s, {:.2} µs CPU/row, {} MB)",
            f.seconds,
            changes as f64 / f.seconds,
            f.usage.cpu_seconds * 1e6 / changes as f64,
            f.usage.peak_rss_kib / 1024,
            r.seconds,
            changes as f64 / r.seconds,
            r.usage.cpu_seconds * 1e6 / changes as f64,
            r.usage.peak_rss_kib / 1024,
        );
        for (fig_vals, d) in [(&mut rate.pgfanout, f), (&mut rate.baseline, r)] {
            fig_vals.push(changes as f64 / d.seconds);
        }
        cpu.pgfanout.push(f.usage.cpu_seconds * 1e6 / changes as f64);
        cpu.baseline.push(r.usage.cpu_seconds * 1e6 / changes as f64);
        rss.pgfanout.push(f.usage.peak_rss_kib as f64 / 1024.0);
        rss.baseline.push(r.usage.peak_rss_kib as f64 / 1024.0);
        if let (Some(fw), Some(rw)) = (f.walsender_cpu_seconds, r.walsender_cpu_seconds) {
            eprintln!(
                "    walsender CPU per row: {:.2} µs while pgfanout read, {:.2} µs while pg_recvlogical read",
                fw * 1e6 / changes as f64,
                rw * 1e6 / changes as f64
            );
            walsender.pgfanout.push(fw * 1e6 / changes as f64);
            walsender.baseline.push(rw * 1e6 / changes as f64);
        }
        if let Some(d) = dbz {
            dbz_rate.pgfanout.push(changes as f64 / f.seconds);
            dbz_rate.baseline.push(changes as f64 / d.seconds);
            dbz_cpu.pgfanout.push(f.usage.cpu_seconds * 1e6 / changes as f64);
            dbz_cpu.baseline.push(d.usage.cpu_seconds * 1e6 / changes as f64);
            dbz_rss.pgfanout.push(f.usage.peak_rss_kib as f64 / 1024.0);
            dbz_rss.baseline.push(d.usage.peak_rss_kib as f64 / 1024.0);
            db.drop_slot(&dbz_slot).await?;
        }
        db.drop_slot(&pgf_slot).await?;
        db.drop_slot(&rl_slot).await?;
    }
    let vs_debezium = [dbz_rate, dbz_cpu, dbz_rss].into_iter().filter(|f| !f.baseline.is_empty());
    let walsender = (!walsender.pgfanout.is_empty()).then_some(walsender);
    let kafka_cpu = [broker_cpu, machine_cpu].into_iter().filter(|f| !f.pgfanout.is_empty() && f.pgfanout.len() == f.baseline.len());
    Ok([rate, cpu, rss].into_iter().chain(walsender).chain(ceiling).chain(kafka_cpu).chain(vs_debezium).collect())
}

/// CPU seconds used so far by the Kafka broker and by the whole machine.
#[derive(Clone, Copy)]
struct CpuNow {
    broker: Option<f64>,
    machine: Option<f64>,
}

/// What a phase cost, from two [`CpuNow`] readings.
struct CpuSpent {
    broker: f64,
    machine: f64,
}

fn cpu_now(ctx: &Ctx) -> CpuNow {
    let broker = ctx.kafka.as_ref().and_then(|k| k.pid()).and_then(crate::procstat::cpu_seconds);
    CpuNow { broker, machine: crate::procstat::machine_cpu_seconds() }
}

impl CpuNow {
    fn since(self, before: CpuNow) -> Option<CpuSpent> {
        Some(CpuSpent { broker: self.broker? - before.broker?, machine: self.machine? - before.machine? })
    }
}

impl CpuSpent {
    /// Prints the phase's CPU per row (`who` wrote `rows`) and adds it to
    /// the broker's and the machine's figures.
    fn report(&self, who: &str, rows: u64, broker: &mut Vec<f64>, machine: &mut Vec<f64>) {
        let (b, m) = (self.broker * 1e6 / rows as f64, self.machine * 1e6 / rows as f64);
        eprintln!("    while {who} wrote: broker {b:.2} µs CPU/row, whole machine {m:.2} µs CPU/row");
        broker.push(b);
        machine.push(m);
    }
}

/// The broker's own ceiling for pgfanout's records: Kafka's
/// `kafka-producer-perf-test` (`ProducerPerformance`, Java client) sends
/// `records` values taken from what pgfanout wrote to `from` (a sample of
/// 1,000, cycled) into the new topic `to` (one partition, like pgfanout's),
/// acks=all, idempotence on, librdkafka's batching (1 MB batches, 5 ms
/// linger), as fast as it can. Returns its records/s. It
/// sends no keys or headers (pgfanout's records carry both), so the ceiling
/// is, if anything, generous.
/// Also returns the CPU the broker and the whole machine spent while it ran.
fn kafka_ceiling(ctx: &Ctx, from: &str, to: &str, records: u64) -> Result<(f64, Option<CpuSpent>)> {
    let broker = ctx.kafka.as_ref().context("the Kafka broker is not running")?;
    let dir = ctx.dir.as_path();
    let install = testkit::jvm::JvmInstall::find("kafka");
    let java = |class: &str, args: &[&str]| -> Result<String> {
        let out = std::process::Command::new(&install.java)
            .args(["-Xmx512m", "-cp", &install.classpath(), class])
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .with_context(|| format!("run {class}"))?;
        if !out.status.success() {
            bail!("{class} failed with {}: {}", out.status, String::from_utf8_lossy(&out.stdout));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let bootstrap = broker.bootstrap();
    let sample = java(
        "org.apache.kafka.tools.consumer.ConsoleConsumer",
        &["--bootstrap-server", &bootstrap, "--topic", from, "--from-beginning", "--max-messages", "1000", "--timeout-ms", "30000"],
    )?;
    let payloads = dir.join("kafka-payloads.txt");
    let lines: Vec<&str> = sample.lines().filter(|l| !l.is_empty()).collect();
    if lines.len() < 100 {
        bail!("read only {} records back from {from}", lines.len());
    }
    std::fs::write(&payloads, lines.join("\n"))?;
    let n = records.to_string();
    let before = cpu_now(ctx);
    let out = java(
        "org.apache.kafka.tools.ProducerPerformance",
        &[
            "--topic",
            to,
            "--num-records",
            &n,
            "--payload-file",
            &payloads.to_string_lossy(),
            "--throughput",
            "-1",
            "--producer-props",
            &format!("bootstrap.servers={bootstrap}"),
            "acks=all",
            "enable.idempotence=true",
            // librdkafka's defaults, which pgfanout runs with (the Java
            // client's own are 16 kB batches)
            "batch.size=1000000",
            "linger.ms=5",
        ],
    )?;
    // "1000000 records sent, 123456.7 records/sec (12.34 MB/sec), ..."
    let last = out.lines().rev().find(|l| l.contains("records sent")).with_context(|| format!("no summary in: {out}"))?;
    let rate = last
        .split(", ")
        .nth(1)
        .and_then(|p| p.strip_suffix(" records/sec").or_else(|| p.split(" records/sec").next()))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("cannot read the rate in {last:?}"))?;
    Ok((rate, cpu_now(ctx).since(before)))
}

/// The script pgfanout's Redis sink applies every record with.
const REDIS_APPLY_LUA: &str = include_str!("../../connectors/redis/src/apply.lua");
/// Records per `EVALSHA` call and connections: the Redis sink's defaults.
const REDIS_RECORDS_PER_CALL: usize = 500;
const REDIS_CONNECTIONS: usize = 2;
/// Calls each loader connection keeps in flight.
const REDIS_WINDOW: usize = 4;

/// The Redis sink's commands for the records pgfanout just wrote, pre-encoded
/// as RESP, per connection: each `bench:{id}` hash read back (fields and
/// values as pgfanout wrote them) with its version, written again as the
/// same `EVALSHA apply.lua` operation ("H", whole key, same version, same
/// arguments) to `ceiling:{id}`, 500 records per call. Built before the
/// clock starts.
fn redis_ceiling_calls(port: u16, records: u64) -> Result<Vec<Vec<Vec<u8>>>> {
    let mut c = resp::Conn::connect(port)?;
    let sha = match c.cmd(&["SCRIPT", "LOAD", REDIS_APPLY_LUA])? {
        resp::Reply::Bulk(Some(b)) => String::from_utf8(b)?,
        other => bail!("SCRIPT LOAD answered {other:?}"),
    };
    let mut ops: Vec<Vec<String>> = Vec::with_capacity(records as usize);
    const READ_AHEAD: u64 = 1_000;
    let mut id = 1;
    while id <= records {
        let last = (id + READ_AHEAD - 1).min(records);
        for i in id..=last {
            c.send(&["HGETALL", &format!("bench:{i}")])?;
            c.send(&["HGET", &format!("pgfanout:v:bench:{i}"), "_key"])?;
        }
        for i in id..=last {
            let fields = match c.read()? {
                resp::Reply::Array(items) => items,
                other => bail!("HGETALL bench:{i} answered {other:?}"),
            };
            let version = match c.read()? {
                resp::Reply::Bulk(Some(v)) => String::from_utf8(v)?,
                other => bail!("no version for bench:{i}: {other:?}"),
            };
            // code, key, sub, version, ttl, nargs, then the arguments: the
            // field/value pairs, as the sink sends a whole row (`H`).
            let n = fields.len();
            let mut op = vec!["H".to_string(), format!("ceiling:{i}"), "_key".into(), version, "0".into(), n.to_string()];
            for f in fields {
                match f {
                    resp::Reply::Bulk(Some(b)) => op.push(String::from_utf8(b)?),
                    other => bail!("HGETALL bench:{i} item {other:?}"),
                }
            }
            ops.push(op);
        }
        id = last + 1;
    }
    let mut lanes: Vec<Vec<Vec<u8>>> = vec![Vec::new(); REDIS_CONNECTIONS];
    for (n, call) in ops.chunks(REDIS_RECORDS_PER_CALL).enumerate() {
        let mut args: Vec<&str> = vec!["EVALSHA", &sha, "0", "pgfanout:v:", "86400"];
        for op in call {
            args.extend(op.iter().map(String::as_str));
        }
        lanes[n % REDIS_CONNECTIONS].push(resp::encode(&args));
    }
    Ok(lanes)
}

/// Sends the pre-encoded calls, one thread per connection with
/// `REDIS_WINDOW` calls in flight each; rows per second until every reply is
/// in (each must report every operation applied).
fn redis_ceiling(port: u16, lanes: Vec<Vec<Vec<u8>>>, records: u64) -> Result<f64> {
    let started = Instant::now();
    let handles: Vec<_> = lanes
        .into_iter()
        .map(|calls| {
            std::thread::spawn(move || -> Result<u64> {
                let mut c = resp::Conn::connect(port)?;
                let mut applied = 0u64;
                let mut sent = 0;
                let mut read = 0;
                while read < calls.len() {
                    while sent < calls.len() && sent - read < REDIS_WINDOW {
                        c.send_raw(&calls[sent])?;
                        sent += 1;
                    }
                    match c.read()? {
                        resp::Reply::Array(items) => applied += items.iter().filter(|r| **r == resp::Reply::Int(1)).count() as u64,
                        other => bail!("EVALSHA answered {other:?}"),
                    }
                    read += 1;
                }
                Ok(applied)
            })
        })
        .collect();
    let mut applied = 0;
    for h in handles {
        applied += h.join().map_err(|_| anyhow::anyhow!("a Redis loader thread panicked"))??;
    }
    let seconds = started.elapsed().as_secs_f64();
    if applied != records {
        bail!("the plain Redis loader applied {applied} of {records} records");
    }
    Ok(records as f64 / seconds)
}

fn fanout_config<'a>(ctx: &Ctx, spec: &Spec, slot: &'a str, run: usize) -> Result<FanoutConfig<'a>> {
    let table = spec.shape.table();
    let (sink, mapping) = match spec.sink {
        SinkKind::File => ("{ type: file, path: /dev/null }".to_string(), String::new()),
        SinkKind::Redis => {
            let r = ctx.redis.as_ref().context("redis-server is not running")?;
            (format!("{{ type: redis, url: \"{}\" }}", r.url()), "    redis: { type: hash, key: \"bench:{id}\" }\n".to_string())
        }
        SinkKind::Kafka { exactly_once } => {
            let k = ctx.kafka.as_ref().context("the Kafka broker is not running")?;
            let delivery = if exactly_once { ", delivery: exactly_once" } else { "" };
            (
                format!("{{ type: kafka, brokers: \"{}\"{delivery} }}", k.bootstrap()),
                format!("    kafka: {{ topic: \"bench-run{run}\", format: native }}\n"),
            )
        }
    };
    Ok(FanoutConfig { slot, table, sink, mapping, http_listen: None, batch_size: None })
}

/// Gives each run an empty sink: FLUSHALL for Redis. Kafka keeps its log
/// on disk, so each run appends to the topic; the broker is restarted
/// (stop, start on the same log) so that every run starts from an idle one.
fn reset_sink(ctx: &Ctx, sink: SinkKind) -> Result<()> {
    match sink {
        SinkKind::File => {}
        SinkKind::Redis => {
            let r = ctx.redis.as_ref().context("redis-server is not running")?;
            resp::Conn::connect(r.port)?.cmd(&["FLUSHALL"])?;
        }
        SinkKind::Kafka { .. } => {
            let k = ctx.kafka.as_ref().context("the Kafka broker is not running")?;
            k.stop();
            k.start_server();
        }
    }
    Ok(())
}

/// Refuses a run whose records did not all arrive: a dead-lettered record
/// or (for Redis) fewer keys than rows means the number is meaningless.
fn check_sink(ctx: &Ctx, sink: SinkKind, dir: &Path, slot: &str, changes: u64) -> Result<()> {
    let dlq = dir.join(format!("{slot}.dead.jsonl"));
    if std::fs::metadata(&dlq).map(|m| m.len() > 0).unwrap_or(false) {
        bail!("pgfanout dead-lettered records (see {}): {}", dlq.display(), tools::tail(&dlq));
    }
    if sink == SinkKind::Redis {
        let r = ctx.redis.as_ref().context("redis-server is not running")?;
        let mut c = resp::Conn::connect(r.port)?;
        let keys = match c.cmd(&["DBSIZE"])? {
            Reply::Int(n) => n as u64,
            other => bail!("unexpected reply to DBSIZE: {other:?}"),
        };
        let last = format!("bench:{changes}");
        let present = c.cmd(&["EXISTS", "bench:1", &last])?;
        if keys < changes || present != Reply::Int(2) {
            bail!("redis holds {keys} keys (bench:1 and {last} present: {present:?}), expected {changes} rows");
        }
    }
    Ok(())
}
