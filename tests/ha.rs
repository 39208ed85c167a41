//! High availability: two instances with the same configuration and one
//! lease (`ha.enabled`). Each instance writes to its own file (the path is
//! the only difference in their configs, with `ha.instance`) and all of them
//! to one Redis, under a steady write load:
//!
//! 1. The leader is SIGKILLed: the standby takes the lease (at once: the
//!    leader's lease connection is gone) and streams from the slot's
//!    confirmed position; the time from the kill to its first write is
//!    printed next to the lease's deadline.
//! 2. A new standby is started, and the leader is frozen (SIGSTOP) past its
//!    lease: the standby takes over (ending the frozen leader's walsender).
//!    Resumed (SIGCONT), the old leader writes nothing more (its file does
//!    not grow: its fence closed at four fifths of the lease) and exits,
//!    saying it lost the lease.
//!
//! At the end Redis equals the table, and the three files read one after
//! the other replay to the table: nothing was lost across both handovers.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const LEASE_SECS: f64 = 3.0;

fn ha_config(pg: &testkit::PgCluster, dir: &Path, redis_url: &str, name: &str) -> String {
    let out = out_path(dir, name);
    let sinks = format!(
        "  out: {{ type: file, path: \"{}\" }}\n  cache: {{ type: redis, url: \"{redis_url}\", reconnect_max_delay: 1s }}",
        out.display()
    );
    let pipelines = "  - { name: all, from: public.t, to: out }\n  - name: rows\n    from: public.t\n    to: cache\n    redis: { type: string, key: \"t:{id}\" }";
    daemon_config(pg, "ha", "ha", &sinks, pipelines, &dir.join(format!("{name}.dead.jsonl")))
        + &format!("ha:\n  enabled: true\n  lease: {LEASE_SECS}s\n  instance: {name}\n")
}

/// The lease holder and the seconds until its lease expires.
async fn lease(c: &tokio_postgres::Client) -> Option<(String, f64)> {
    c.query_opt("SELECT holder, extract(epoch FROM expires_at - clock_timestamp())::float8 FROM pgfanout.leases WHERE slot = 'ha'", &[])
        .await
        .ok()
        .flatten()
        .map(|r| (r.get(0), r.get(1)))
}

async fn wait_leader(c: &tokio_postgres::Client, name: &str, d: &testkit::Daemon) {
    let start = Instant::now();
    while lease(c).await.map(|(h, _)| h) != Some(name.to_string()) {
        assert!(start.elapsed() < Duration::from_secs(60), "{name} did not take the lease in 60 s\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_log(d: &testkit::Daemon, what: &str) {
    let start = Instant::now();
    while !d.log().contains(what) {
        assert!(start.elapsed() < Duration::from_secs(60), "no {what:?} in the log after 60 s\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_killed_leader_and_a_frozen_leader_writes_nothing_after_its_lease() {
    let (pg, c) = cluster("ha").await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)").await.unwrap();
    let redis = tokio::task::spawn_blocking(testkit::RedisServer::start).await.unwrap();
    let dir = scratch();

    let mut a = testkit::Daemon::start(bin(), dir.path(), "a", &ha_config(&pg, dir.path(), &redis.url(), "a"));
    wait_leader(&c, "a", &a).await;
    wait_slot(&c, "ha", &a).await;
    let mut b = testkit::Daemon::start(bin(), dir.path(), "b", &ha_config(&pg, dir.path(), &redis.url(), "b"));
    wait_log(&b, "standby: waiting for the lease").await;

    // A steady write load for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = pg.client("ha").await;
    let load = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut id = 0;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                let sql = format!("INSERT INTO t VALUES ({id}, {id}); UPDATE t SET v = v + 1 WHERE id = {};", (id / 2).max(1));
                writer.batch_execute(&sql).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            id
        }
    });
    wait_lines(&out_path(dir.path(), "a"), 200, Duration::from_secs(60), &a);

    // 1. SIGKILL the leader.
    let (_, expires_in) = lease(&c).await.expect("a lease");
    let killed = Instant::now();
    a.kill9();
    let b_out = out_path(dir.path(), "b");
    while line_count(&b_out) == 0 {
        assert!(killed.elapsed() < Duration::from_secs(60), "the standby wrote nothing 60 s after the kill\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = killed.elapsed().as_secs_f64();
    println!(
        "SIGKILL of the leader -> first write by the standby: {took:.2} s (its lease would have expired {expires_in:.2} s after the kill: {:+.2} s from the deadline)",
        took - expires_in
    );
    assert!(took <= expires_in + 5.0, "the standby streams within 5 s of the lease deadline ({took:.2} s, deadline {expires_in:.2} s)");
    assert!(b.log().contains("took the lease: leading"), "{}", b.log());

    // 2. A new standby (with its HTTP listener); then the leader frozen
    // past its lease.
    let port = testkit::free_port();
    let a2_config = ha_config(&pg, dir.path(), &redis.url(), "a2")
        .replace("http:\n  enabled: false\n", &format!("http:\n  listen: 127.0.0.1:{port}\n"));
    assert!(a2_config.contains(&format!("127.0.0.1:{port}")), "{a2_config}");
    let mut a2 = testkit::Daemon::start(bin(), dir.path(), "a2", &a2_config);
    wait_log(&a2, "standby: waiting for the lease").await;
    let (code, ready) = http_get(port, "/readyz");
    assert_eq!(code, 503, "a standby is not ready: {ready}");
    assert!(ready.contains("standby: b leads"), "{ready}");
    let (_, metrics) = http_get(port, "/metrics");
    assert!(metrics.lines().any(|l| l == "pgfanout_ha_leader 0"), "{metrics}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, expires_in) = lease(&c).await.expect("a lease");
    b.signal("STOP");
    let frozen = Instant::now();
    wait_leader(&c, "a2", &a2).await;
    let took_over = frozen.elapsed().as_secs_f64();
    let a2_out = out_path(dir.path(), "a2");
    while line_count(&a2_out) == 0 {
        assert!(frozen.elapsed() < Duration::from_secs(60), "the new leader wrote nothing\n{}", a2.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "SIGSTOP of the leader -> lease taken {took_over:.2} s later (deadline {expires_in:.2} s), first write {:.2} s later",
        frozen.elapsed().as_secs_f64()
    );
    assert!(took_over + 0.05 >= expires_in, "the lease of a frozen leader is taken only once it expired");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let frozen_len = file_len(&b_out);
    b.signal("CONT");
    let exited = b.wait(Duration::from_secs(20));
    assert!(exited.is_some_and(|s| !s.success()), "the deposed leader exits with an error\n{}", b.log());
    assert!(b.log().contains("lost the lease"), "{}", b.log());
    assert_eq!(file_len(&b_out), frozen_len, "the resumed leader wrote nothing after its deadline\n{}", b.log());

    // The load stops; everything reaches the new leader's stores.
    stop.store(true, Ordering::Relaxed);
    let last = load.await.unwrap();
    wait_confirmed(&c, "ha", &a2, Duration::from_secs(60)).await;
    let mut recs = records(&out_path(dir.path(), "a"));
    recs.extend(records(&b_out));
    recs.extend(records(&a2_out));
    assert_replay_equals_tables(&c, &recs, &["t"]).await;
    let table = rows_by_id(&c, "t").await;
    assert_eq!(table.len(), last as usize);
    let testkit::Resp::Array(keys) = redis.cmd(&["KEYS", "t:*"]) else { panic!("KEYS did not answer an array") };
    assert_eq!(keys.len(), table.len(), "one key per row");
    for (id, row) in &table {
        let stored = redis.cmd(&["GET", &format!("t:{id}")]).opt_text().unwrap_or_else(|| panic!("no key t:{id}"));
        assert_eq!(&serde_json::from_str::<serde_json::Value>(&stored).unwrap(), row, "row {id}");
    }
    // Who leads, as the operator sees it.
    let (_, status) = http_get(port, "/status");
    assert!(status.contains(r#""role":"leader""#) && status.contains(r#""instance":"a2""#), "{status}");
    let (_, metrics) = http_get(port, "/metrics");
    assert!(metrics.lines().any(|l| l == "pgfanout_ha_leader 1"), "{metrics}");
    let shown = std::process::Command::new(bin()).args(["status", "-c"]).arg(&a2.config_path).output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.lines().any(|l| l.starts_with("leader") && l.contains("a2 (lease epoch 3")), "{shown}");
    // A clean stop gives the lease up.
    a2.signal("TERM");
    assert!(a2.wait(Duration::from_secs(30)).is_some_and(|s| s.success()), "{}", a2.log());
    assert!(a2.log().contains("lease released"), "{}", a2.log());
}
