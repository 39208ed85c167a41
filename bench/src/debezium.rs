//! Debezium as the peer in the throughput workloads: Debezium 3.6.1's
//! PostgreSQL connector in its embedded engine (`testkit::Debezium`, the
//! test kit's launcher) drains the same changes from a slot of its own,
//! created like pgfanout's before the load, into what pgfanout writes to:
//! its events' JSON lines to /dev/null for the stream workloads (the
//! JsonConverter without schemas, flushed per batch), or a Kafka topic with
//! acks=all and idempotence for the Kafka workload.
//!
//! The JVM runs as Kafka's scripts run a Connect worker (2 GB heap, G1:
//! [`testkit::debezium::CONNECT_WORKER_JVM`]), not with the tests' options
//! (C1 only and a serial GC, for fast starts).
//!
//! The drain is timed from the JVM's spawn (as pgfanout's is from its own)
//! until the launcher has handed over as many events as the load made
//! changes (it writes the running count after each flushed batch); the
//! time until the engine streamed is printed beside it. CPU and peak RSS are
//! the JVM's own, from /proc.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use testkit::Server;

use crate::db::{Db, PUBLICATION};
use crate::tools::Drain;

/// Where Debezium writes.
pub enum Target<'a> {
    /// Event values as lines to /dev/null.
    File,
    /// Events to Kafka at this bootstrap address (topic
    /// `<prefix>.public.<table>`).
    Kafka(&'a str),
}

/// Whether the launcher is installed (`scripts/install-jvm-servers.sh debezium`).
pub fn installed() -> bool {
    testkit::jvm::cache_root().join("debezium").join(".installed").exists()
}

/// Debezium drains `slot` (created beforehand) until it has handed over
/// `changes` events. `prefix` names its topics.
pub async fn drain(db: &Db, dir: &Path, slot: &str, prefix: &str, target: Target<'_>, changes: u64, timeout: Duration) -> Result<Drain> {
    let count_file = dir.join(format!("{slot}.debezium-count"));
    let _ = std::fs::remove_file(&count_file);
    let count_path = count_file.display().to_string();
    let mut props: Vec<(&str, &str)> = vec![
        ("topic.prefix", prefix),
        ("slot.name", slot),
        ("publication.name", PUBLICATION),
        ("publication.autocreate.mode", "disabled"),
        ("snapshot.mode", "no_data"),
        ("tombstones.on.delete", "false"),
        ("converter.schemas.enable", "false"),
        ("count.file", &count_path),
    ];
    let bootstrap = match target {
        Target::File => {
            props.push(("sink.file", "/dev/null"));
            "127.0.0.1:9".to_string()
        }
        Target::Kafka(b) => b.to_string(),
    };
    let started = Instant::now();
    let engine = tokio::task::block_in_place(|| {
        testkit::Debezium::start_with_jvm(&db.pg, &db.name, &bootstrap, &props, Some(testkit::debezium::CONNECT_WORKER_JVM))
    });
    let streaming = started.elapsed();
    let pid = engine.slot().pid().context("Debezium is not running")?;
    let handed = || std::fs::read_to_string(&count_file).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
    let took = loop {
        if handed() >= changes {
            break started.elapsed();
        }
        if started.elapsed() > timeout {
            bail!(
                "Debezium handed over {} of {changes} events within {timeout:?}; log:\n{}",
                handed(),
                crate::tools::last_lines(&engine.slot().log(), 30)
            );
        }
        if engine.slot().pid().is_none() {
            bail!("Debezium exited; log:\n{}", crate::tools::last_lines(&engine.slot().log(), 30));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let usage = crate::procstat::usage(pid).context("read Debezium's /proc entry")?;
    let walsender = crate::tools::active_pid(db, slot).await.and_then(crate::procstat::cpu_seconds);
    eprintln!(
        "    Debezium streamed {:.1} s after its spawn (JVM start and connector setup, included in its time)",
        streaming.as_secs_f64()
    );
    tokio::task::block_in_place(|| engine.slot().stop());
    Ok(Drain { seconds: took.as_secs_f64(), usage, walsender_cpu_seconds: walsender })
}
