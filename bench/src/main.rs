//! `pgfanout-bench`: measures pgfanout on this machine next to what
//! PostgreSQL itself can stream (pg_recvlogical), so that claims about speed
//! are checked where they are made.
//!
//! It starts its own servers (PostgreSQL per workload, Redis and Apache
//! Kafka when installed), builds the release `pgfanout` binary,
//! runs each workload `--runs` times and prints one table: median and
//! min–max of each figure, the baseline from the same runs, the per-run
//! ratio's median, and whether the goal is met. `--json FILE` writes the same
//! data for tracking.
//!
//! Run: `cargo run --release -p pgfanout-bench -- [--quick] [--workloads ...]`.

mod appliers;
mod db;
mod debezium;
mod documents;
mod feed;
mod graph;
mod large;
mod latency;
mod load;
mod procstat;
mod report;
mod resp;
mod search;
mod snapshot;
mod store;
mod throughput;
mod tools;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::load::Shape;
use crate::report::{Better, Figure};
use crate::throughput::{Ctx, SinkKind, Spec};

const ALL_WORKLOADS: &[&str] = &[
    "stream-big",
    "stream-small",
    "mixed",
    "redis",
    "kafka",
    "kafka-eos",
    "search",
    "feed",
    "graph",
    "documents",
    "latency",
    "snapshot",
    "large-txn",
    "appliers",
];

/// Benchmark pgfanout against pg_recvlogical on this machine.
#[derive(Parser, Debug)]
#[command(name = "pgfanout-bench", version)]
struct Args {
    /// Comma-separated workloads: stream-big, stream-small, mixed, redis,
    /// kafka, kafka-eos, search, feed, graph, documents, latency, snapshot, large-txn,
    /// appliers (default: all).
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Row changes per throughput workload.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Runs of each workload (medians and spreads are over these).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds of steady load (5,000 and 20,000 changes/s) per latency run.
    #[arg(long, default_value_t = 60)]
    latency_seconds: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Smoke run: 20,000 rows, 1 run, 5 s latency (under a minute).
    #[arg(long)]
    quick: bool,
    /// Use this pgfanout binary instead of building the release one.
    #[arg(long)]
    pgfanout: Option<PathBuf>,
    /// Run pgfanout under this command, split on spaces (for profiling, e.g.
    /// "valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p"); its
    /// CPU and memory figures are then the wrapper's.
    #[arg(long)]
    wrap: Option<String>,
    /// A PostgreSQL setting for every workload's server, NAME=VALUE
    /// (repeatable), e.g. `--pg-set logical_decoding_work_mem=2GB`.
    #[arg(long = "pg-set", value_name = "NAME=VALUE")]
    pg_set: Vec<String>,
    /// Run a competing CPU load for the whole bench: a process spinning on
    /// one core (`sh -c 'while :; do :; done'`), like a busy neighbour on
    /// the machine. The waits for a quiet machine then allow one busy core.
    #[arg(long)]
    cpu_hog: bool,
}

/// The `--cpu-hog` process, killed when dropped.
struct CpuHog(std::process::Child);

impl CpuHog {
    fn start() -> Result<CpuHog> {
        let child = std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().context("start the CPU hog")?;
        tools::HOG_CORES.store(1, std::sync::atomic::Ordering::Relaxed);
        Ok(CpuHog(child))
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.rows = 20_000;
        args.runs = 1;
        args.latency_seconds = 5;
    }
    if args.runs == 0 || args.rows == 0 || args.latency_seconds == 0 {
        bail!("--runs, --rows and --latency-seconds must be positive");
    }
    if let Some(bad) = args.pg_set.iter().find(|s| !s.contains('=')) {
        bail!("--pg-set {bad:?}: expected NAME=VALUE, e.g. logical_decoding_work_mem=2GB");
    }
    let workloads: Vec<String> =
        if args.workloads.is_empty() { ALL_WORKLOADS.iter().map(|s| s.to_string()).collect() } else { args.workloads.clone() };
    for w in &workloads {
        if !ALL_WORKLOADS.contains(&w.as_str()) {
            bail!("unknown workload {w:?}; expected some of {}", ALL_WORKLOADS.join(", "));
        }
    }
    let bin = match &args.pgfanout {
        Some(p) => p.clone(),
        None => build_pgfanout()?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(args, workloads, bin))
}

async fn run(args: Args, workloads: Vec<String>, bin: PathBuf) -> Result<()> {
    let scratch = testkit::scratch_dir("pgfanout-bench-");
    let wants = |w: &str| workloads.iter().any(|x| x == w);
    let redis = if (wants("redis") || wants("latency") || wants("appliers")) && Path::new("/usr/bin/redis-server").exists() {
        Some(testkit::RedisServer::start())
    } else {
        None
    };
    let kafka = if (wants("kafka") || wants("kafka-eos") || wants("appliers")) && kafka_installed() {
        Some(testkit::KafkaBroker::start())
    } else {
        None
    };
    let ctx = Ctx {
        bin: tools::Program {
            bin: bin.clone(),
            wrapper: args.wrap.as_deref().map(|w| w.split_whitespace().map(String::from).collect()).unwrap_or_default(),
        },
        dir: scratch.path().to_path_buf(),
        rows: args.rows,
        runs: args.runs,
        latency_seconds: args.latency_seconds,
        pg_settings: args.pg_set.iter().filter_map(|s| s.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        redis,
        kafka,
        cpu_hog: args.cpu_hog,
    };
    let _hog = if args.cpu_hog { Some(CpuHog::start()?) } else { None };
    eprintln!(
        "pgfanout-bench: {} rows, {} runs, binary {}{}",
        args.rows,
        args.runs,
        bin.display(),
        if args.cpu_hog { ", with a CPU hog spinning on one core" } else { "" }
    );
    if !args.pg_set.is_empty() {
        eprintln!("PostgreSQL settings added: {}", args.pg_set.join(", "));
    }

    let mut figures: Vec<Figure> = Vec::new();
    for w in ALL_WORKLOADS.iter().filter(|w| wants(w)) {
        eprintln!("{w}:");
        let spec = |name, shape, sink| Spec { name, shape, sink };
        let result = match *w {
            "stream-big" => throughput::run(&ctx, &spec("stream-big", Shape::Big, SinkKind::File)).await,
            "stream-small" => throughput::run(&ctx, &spec("stream-small", Shape::Small, SinkKind::File)).await,
            "mixed" => throughput::run(&ctx, &spec("mixed", Shape::Mixed, SinkKind::File)).await,
            "redis" if ctx.redis.is_some() => throughput::run(&ctx, &spec("redis (hash)", Shape::Big, SinkKind::Redis)).await,
            "redis" => Ok(vec![not_available("redis (hash)", "n/a: redis-server not installed")]),
            "kafka" if ctx.kafka.is_some() => {
                throughput::run(&ctx, &spec("kafka (native)", Shape::Big, SinkKind::Kafka { exactly_once: false })).await
            }
            "kafka" => Ok(vec![not_available("kafka (native)", "n/a: Kafka not installed (scripts/install-jvm-servers.sh kafka)")]),
            "kafka-eos" if ctx.kafka.is_some() => {
                throughput::run(&ctx, &spec("kafka (exactly once)", Shape::Big, SinkKind::Kafka { exactly_once: true })).await
            }
            "kafka-eos" => {
                Ok(vec![not_available("kafka (exactly once)", "n/a: Kafka not installed (scripts/install-jvm-servers.sh kafka)")])
            }
            "search" => search::run(&ctx).await,
            "feed" => feed::run(&ctx).await,
            "documents" => documents::run(&ctx).await,
            "graph" if jvm_installed("neo4j") => graph::run(&ctx).await,
            "graph" => Ok(vec![not_available("graph (neo4j)", "n/a: Neo4j not installed (scripts/install-jvm-servers.sh neo4j)")]),
            "latency" => latency::run(&ctx).await,
            "snapshot" => snapshot::run(&ctx).await,
            "large-txn" => large::run(&ctx).await,
            "appliers" if ctx.kafka.is_some() => appliers::run(&ctx).await,
            "appliers" => Ok(vec![not_available("appliers", "n/a: Kafka not installed (scripts/install-jvm-servers.sh kafka)")]),
            _ => unreachable!("checked above"),
        };
        match result {
            Ok(f) => figures.extend(f),
            Err(e) => {
                eprintln!("  {w} failed: {e:#}");
                figures.push(not_available(w, &format!("failed: {}", first_line(&format!("{e:#}")))));
            }
        }
    }

    println!("\n{}", report::table(&figures, args.runs));
    println!(
        "rows per throughput workload: {}; runs: {}; latency: 5,000 and 20,000 rows/s for {} s per run{}",
        args.rows,
        args.runs,
        args.latency_seconds,
        if args.cpu_hog { "; a CPU hog spun on one core throughout" } else { "" }
    );
    if let Some(path) = &args.json {
        let settings = serde_json::json!({
            "rows": args.rows, "runs": args.runs, "latency_seconds": args.latency_seconds,
            "workloads": workloads, "pgfanout": bin, "status_interval": tools::STATUS_INTERVAL, "cpu_hog": args.cpu_hog,
        });
        let text = serde_json::to_string_pretty(&report::json(&figures, settings))?;
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn not_available(workload: &str, why: &str) -> Figure {
    let mut f = Figure::new(workload, "throughput", "rows/s", Better::Higher);
    f.note = Some(why.to_string());
    f
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().chars().take(100).collect()
}

/// Whether `scripts/install-jvm-servers.sh` installed Apache Kafka.
fn kafka_installed() -> bool {
    jvm_installed("kafka")
}

/// Whether `scripts/install-jvm-servers.sh` installed the server `name`.
fn jvm_installed(name: &str) -> bool {
    testkit::jvm::cache_root().join(name).join(".installed").exists()
}

/// Builds `pgfanout` in release mode (a no-op when up to date) and returns
/// its path under the cargo target directory.
fn build_pgfanout() -> Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?.to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building the release pgfanout binary (cargo build --release --bin pgfanout -p pgfanout)…");
    let status = Command::new(&cargo)
        .args(["build", "--release", "--bin", "pgfanout", "-p", "pgfanout"])
        .current_dir(&workspace)
        .status()
        .context("run cargo build --release --bin pgfanout -p pgfanout")?;
    if !status.success() {
        bail!("cargo build --release --bin pgfanout -p pgfanout failed ({status}); build it yourself or pass --pgfanout PATH");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace.join("target"));
    let target = if target.is_absolute() { target } else { workspace.join(target) };
    let bin = target.join("release/pgfanout");
    if !bin.exists() {
        bail!("{} not found after building; pass --pgfanout PATH", bin.display());
    }
    Ok(bin)
}
