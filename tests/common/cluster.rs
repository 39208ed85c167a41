//! A PostgreSQL cluster per test, and the replication slot positions every
//! end-to-end test waits on: the slot's confirmed flush position is the
//! daemon's claim that every change before it is durable in every sink.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::{Daemon, PgCluster};

pub const BIN: &str = env!("CARGO_BIN_EXE_pgfanout");

pub fn bin() -> &'static Path {
    Path::new(BIN)
}

/// A scratch directory for configs, outputs and logs.
pub fn scratch() -> tempfile::TempDir {
    testkit::scratch_dir("pgfanout-e2e-")
}

/// Server settings for tests that break connections: the server notices a
/// lost replication connection within seconds.
pub const SHORT_WAL_SENDER_TIMEOUT: &[(&str, &str)] = &[("wal_sender_timeout", "4s")];

/// A fresh cluster (`wal_sender_timeout` 10 s) with an empty database `db`,
/// and a client of it.
pub async fn cluster(db: &str) -> (PgCluster, tokio_postgres::Client) {
    cluster_with(db, &[("wal_sender_timeout", "10s")]).await
}

/// [`cluster`] with server `settings` of the test's own.
pub async fn cluster_with(db: &str, settings: &[(&str, &str)]) -> (PgCluster, tokio_postgres::Client) {
    let settings: Vec<(String, String)> = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let pg = tokio::task::spawn_blocking(move || {
        let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        PgCluster::start_with(&settings)
    })
    .await
    .unwrap();
    pg.create_database(db).await;
    let c = pg.client(db).await;
    (pg, c)
}

/// The slot's confirmed_flush_lsn as a number.
pub async fn confirmed_flush(c: &tokio_postgres::Client, slot: &str) -> u64 {
    let row =
        c.query_opt("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await.expect("query slot");
    row.and_then(|r| r.get::<_, Option<String>>(0)).map(|s| lsn(&s)).unwrap_or(0)
}

/// The server's major version (14, 15, ...): the tests run on every
/// supported one (`PGFANOUT_PG_BIN`, scripts/test.sh's matrix).
pub async fn server_major(c: &tokio_postgres::Client) -> u32 {
    let v: String = c.query_one("SHOW server_version_num", &[]).await.expect("server_version_num").get(0);
    v.parse::<u32>().expect("a number") / 10_000
}

pub fn lsn(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').expect("lsn");
    (u64::from_str_radix(hi, 16).expect("hi") << 32) | u64::from_str_radix(lo, 16).expect("lo")
}

/// `pg_current_wal_insert_lsn()` as a number: the end of everything written
/// so far (with synchronous_commit off, `pg_current_wal_lsn()` lags).
pub async fn insert_lsn(c: &tokio_postgres::Client) -> u64 {
    let s: String = c.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.expect("insert lsn").get(0);
    lsn(&s)
}

/// Waits until `slot` confirmed everything written so far: every change is
/// then durable in the sinks (the ack rule), so they can be compared with
/// the tables. Panics with the daemon log after `timeout`.
pub async fn wait_confirmed(c: &tokio_postgres::Client, slot: &str, d: &Daemon, timeout: Duration) {
    let end = insert_lsn(c).await;
    let start = Instant::now();
    while confirmed_flush(c, slot).await < end {
        if start.elapsed() > timeout {
            panic!("confirmed_flush_lsn did not reach {end:X} in {timeout:?}\n--- daemon log ---\n{}", d.log());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the daemon created its slot (it connected to every sink).
pub async fn wait_slot(c: &tokio_postgres::Client, slot: &str, d: &Daemon) {
    let start = Instant::now();
    while confirmed_flush(c, slot).await == 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "no slot after 60 s\n--- daemon log ---\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Samples the slot's confirmed_flush_lsn every `every` on client `c` (its
/// own connection) until the returned flag is set; the task's result is
/// every sample with the time it was taken.
pub fn sample_confirmed_flush(
    c: tokio_postgres::Client,
    slot: &str,
    every: Duration,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<(Instant, u64)>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let slot = slot.to_string();
    let handle = tokio::spawn(async move {
        let mut out = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            out.push((Instant::now(), confirmed_flush(&c, &slot).await));
            tokio::time::sleep(every).await;
        }
        out
    });
    (stop, handle)
}
