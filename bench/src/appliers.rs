//! The appliers workload (past one machine): a pgfanout reader writes
//! `--rows` inserts (transactions of 100) to a 6-partition Kafka topic in
//! `format: native`, once; then 1, 2 and 3 pgfanout appliers
//! (`source.kafka`, one consumer group per pass) drain the whole topic into
//! the file sink (one file per applier) and into Redis (hashes). Each
//! pass's time runs from the appliers' spawn (group join included) until
//! the group has committed every partition's end offset, which an applier
//! does only once its sinks have the records durable. Figures: rows/s per
//! applier count, as a ratio to one applier in the same run, and the CPU
//! per row of all appliers together.
//!
//! Then latency at 5,000 changes/s into Redis: the direct path (one
//! pgfanout on the slot) against the long way (reader → Kafka → one
//! applier), commit to applied in Redis, measured as the latency workload
//! does ([`crate::latency`]).
//!
//! Everything runs on this one machine: the appliers share its cores with
//! Kafka, Redis and each other, so the ratio to one applier says what one
//! more process buys here, not what more machines would.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::db::Db;
use crate::latency::{self, LatSink};
use crate::load::Shape;
use crate::report::{Better, Figure};
use crate::resp;
use crate::store;
use crate::throughput::Ctx;
use crate::tools::{Fanout, FanoutConfig};

const TOPIC: &str = "bench.appliers";
const PARTITIONS: i32 = 6;
const READER_SLOT: &str = "pgf_appliers_reader";
const MAX_APPLIERS: usize = 3;
const LATENCY_RATE: u64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    File,
    Redis,
}

impl Sink {
    fn name(self) -> &'static str {
        match self {
            Sink::File => "file",
            Sink::Redis => "redis",
        }
    }
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Figure>> {
    let broker = ctx.kafka.as_ref().context("Kafka is not running (scripts/install-jvm-servers.sh kafka)")?;
    let db = store::source_db(ctx).await?;
    let shape = Shape::Small;
    let changes = shape.changes(ctx.rows);
    let timeout = Duration::from_secs(900.max(changes / 500));

    // The reader fills the topic once; every pass reads all of it.
    let end = store::load_run(&db, shape, ctx.rows, &[READER_SLOT]).await?;
    let reader = FanoutConfig {
        slot: READER_SLOT,
        table: shape.table(),
        sink: format!("{{ type: kafka, brokers: \"{}\", topics: {{ partitions: {PARTITIONS} }} }}", broker.bootstrap()),
        mapping: format!("    kafka: {{ topic: {TOPIC}, key: \"{{id}}\", format: native, tombstones: true }}\n"),
        http_listen: None,
        batch_size: None,
    };
    let started = Instant::now();
    let mut fanout = Fanout::spawn(&ctx.bin, &ctx.dir, &db, &reader)?;
    fanout.wait_confirmed(&db, READER_SLOT, end, timeout).await?;
    fanout.stop();
    eprintln!("  reader: {changes} changes into {TOPIC} ({PARTITIONS} partitions) in {:.1} s", started.elapsed().as_secs_f64());
    let ends = end_offsets(&broker.bootstrap())?;
    let records: i64 = ends.values().sum();
    if (records as u64) < changes {
        bail!("{TOPIC} holds {records} records, expected at least {changes}");
    }

    let mut figures = Vec::new();
    let sinks: Vec<Sink> = [Sink::File].into_iter().chain(ctx.redis.is_some().then_some(Sink::Redis)).collect();
    for sink in sinks {
        let label = |k: usize| format!("appliers ×{k} ({})", sink.name());
        let mut rates: Vec<Figure> = (1..=MAX_APPLIERS)
            .map(|k| {
                let f = Figure::new(&label(k), "throughput", "rows/s", Better::Higher);
                if k > 1 {
                    f.with_baseline("1 applier")
                } else {
                    f
                }
            })
            .collect();
        let mut cpus: Vec<Figure> =
            (1..=MAX_APPLIERS).map(|k| Figure::new(&label(k), "CPU per row, all appliers", "µs", Better::Lower)).collect();
        for run in 0..ctx.runs {
            let mut one = 0.0;
            for k in 1..=MAX_APPLIERS {
                crate::tools::quiet_before(&label(k)).await;
                let (rate, cpu) = pass(ctx, &db, broker, sink, k, run, changes, &ends, timeout).await?;
                eprintln!("  {} run {}/{}: {rate:.0} rows/s, {cpu:.2} µs CPU/row", label(k), run + 1, ctx.runs);
                if k == 1 {
                    one = rate;
                } else {
                    rates[k - 1].baseline.push(one);
                }
                rates[k - 1].pgfanout.push(rate);
                cpus[k - 1].pgfanout.push(cpu);
            }
        }
        figures.extend(rates);
        figures.extend(cpus);
    }
    db.drop_slot(READER_SLOT).await?;

    if ctx.redis.is_some() {
        let db = latency::latency_db(ctx).await?;
        let name = "appliers latency 5k/s (redis, via kafka)";
        let mut p50 = Figure::new(name, "commit→durable p50", "ms", Better::Lower).with_baseline("direct");
        let mut p99 = Figure::new(name, "commit→durable p99", "ms", Better::Lower).with_baseline("direct");
        let mut cpu = Figure::new(name, "CPU per row, reader + applier", "µs", Better::Lower).with_baseline("direct");
        for run in 0..ctx.runs {
            let direct = latency::one_run(ctx, &db, LatSink::Redis, LATENCY_RATE, run, None).await?;
            let via = latency::one_run(ctx, &db, LatSink::Redis, LATENCY_RATE, run, Some(broker)).await?;
            eprintln!(
                "  latency run {}/{} at {:.0} rows/s: direct p50 {:.2} ms p99 {:.2} ms; via kafka p50 {:.2} ms p99 {:.2} ms",
                run + 1,
                ctx.runs,
                via.rate,
                direct.p50,
                direct.p99,
                via.p50,
                via.p99
            );
            p50.pgfanout.push(via.p50);
            p50.baseline.push(direct.p50);
            p99.pgfanout.push(via.p99);
            p99.baseline.push(direct.p99);
            cpu.pgfanout.push(via.cpu_us_per_row);
            cpu.baseline.push(direct.cpu_us_per_row);
        }
        figures.extend([p50, p99, cpu]);
    }
    Ok(figures)
}

/// One pass: `k` appliers in a new group drain the topic into `sink`.
/// Returns (rows/s, CPU µs per row of all appliers).
#[allow(clippy::too_many_arguments)]
async fn pass(
    ctx: &Ctx,
    db: &Db,
    broker: &testkit::KafkaBroker,
    sink: Sink,
    k: usize,
    run: usize,
    changes: u64,
    ends: &HashMap<i32, i64>,
    timeout: Duration,
) -> Result<(f64, f64)> {
    let group = format!("bench-{}-{k}-{run}", sink.name());
    let prefix = format!("a{k}r{run}");
    if sink == Sink::Redis {
        let r = ctx.redis.as_ref().context("redis-server is not running")?;
        resp::Conn::connect(r.port)?.cmd(&["FLUSHALL"])?;
    }
    let mut appliers = Vec::new();
    let mut files = Vec::new();
    let start = Instant::now();
    for i in 0..k {
        let (sink_yaml, mapping) = match sink {
            Sink::File => {
                let path = ctx.dir.join(format!("{group}-{i}.jsonl"));
                let _ = std::fs::remove_file(&path);
                files.push(path.clone());
                (format!("{{ type: file, path: \"{}\" }}", path.display()), String::new())
            }
            Sink::Redis => {
                let r = ctx.redis.as_ref().context("redis-server is not running")?;
                (format!("{{ type: redis, url: \"{}\" }}", r.url()), format!("    redis: {{ type: hash, key: \"{prefix}:{{id}}\" }}\n"))
            }
        };
        let cfg =
            FanoutConfig { slot: READER_SLOT, table: Shape::Small.table(), sink: sink_yaml, mapping, http_listen: None, batch_size: None };
        let yaml = cfg.yaml(db, &ctx.dir).replacen(
            "sinks:\n",
            &format!(
                "  kafka:\n    brokers: \"{}\"\n    topics: [{TOPIC}]\n    group: {group}\n    commit_interval: 100ms\n    properties: {{ session.timeout.ms: \"6000\", heartbeat.interval.ms: \"1000\" }}\nsinks:\n",
                broker.bootstrap()
            ),
            1,
        );
        appliers.push(Fanout::spawn_yaml(&ctx.bin, &ctx.dir, &format!("{group}-{i}"), &yaml, "warn")?);
    }
    let watch = group_client(&broker.bootstrap(), &group)?;
    loop {
        if reached(&watch, ends)? {
            break;
        }
        for a in appliers.iter_mut() {
            a.check_running()?;
        }
        if start.elapsed() > timeout {
            bail!("{k} appliers did not drain {TOPIC} within {timeout:?}; log:\n{}", crate::tools::tail(&appliers[0].log_path));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu: f64 = appliers.iter().map(|a| a.usage().map(|u| u.cpu_seconds)).sum::<Result<f64>>()?;
    for a in appliers.iter_mut() {
        a.stop();
    }
    // Everything arrived (at least once: a partition moved at a join may be
    // read twice from its last commit).
    match sink {
        Sink::File => {
            let lines: usize = files.iter().map(|f| std::fs::read(f).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0)).sum();
            if (lines as u64) < changes {
                bail!("the appliers' files hold {lines} records, expected at least {changes}");
            }
            for f in &files {
                let _ = std::fs::remove_file(f);
            }
        }
        Sink::Redis => {
            let r = ctx.redis.as_ref().context("redis-server is not running")?;
            let mut c = resp::Conn::connect(r.port)?;
            for id in [1, changes] {
                if c.cmd(&["EXISTS", &format!("{prefix}:{id}")])? != resp::Reply::Int(1) {
                    bail!("row {id} is not in Redis after the appliers' pass");
                }
            }
        }
    }
    Ok((changes as f64 / secs, cpu * 1e6 / changes as f64))
}

/// A client of `group` that never joins it: reads its committed offsets.
fn group_client(bootstrap: &str, group: &str) -> Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .context("a Kafka client for the group's offsets")
}

/// The topic's end offset per partition.
fn end_offsets(bootstrap: &str) -> Result<HashMap<i32, i64>> {
    let c = group_client(bootstrap, "bench-appliers-ends")?;
    (0..PARTITIONS).map(|p| Ok((p, c.fetch_watermarks(TOPIC, p, Duration::from_secs(10)).context("the topic's end offsets")?.1))).collect()
}

/// Whether the group has committed every partition's end offset.
fn reached(c: &BaseConsumer, ends: &HashMap<i32, i64>) -> Result<bool> {
    let mut tpl = TopicPartitionList::new();
    for &p in ends.keys() {
        tpl.add_partition(TOPIC, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).context("the group's committed offsets")?;
    Ok(ends.iter().all(|(&p, &end)| {
        matches!(committed.find_partition(TOPIC, p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= end) || end == 0
    }))
}
