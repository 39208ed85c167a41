//! End-to-end fault tests: SIGKILL and restart, walsender termination,
//! PostgreSQL restart, idle slots, permanent errors, a 1M-row transaction.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::*;

/// The events/counters schema in database `name`, streamed by a daemon
/// (slot `name`) into a file sink; the daemon may not be streaming yet.
async fn stream_events_to_file(name: &str) -> (PgCluster, tokio_postgres::Client, tempfile::TempDir, std::path::PathBuf, Daemon) {
    let (pg, c) = cluster_with(name, SHORT_WAL_SENDER_TIMEOUT).await;
    c.batch_execute(SCHEMA).await.unwrap();
    let dir = scratch();
    let out = out_path(dir.path(), name);
    let d = Daemon::start(bin(), dir.path(), name, &file_config(&pg, name, name, &["public.events", "public.counters"], &out));
    (pg, c, dir, out, d)
}

/// Workload: `txns` transactions, each appending one event and bumping a
/// counter on one of 20 keys. Returns nothing; the tables are the truth.
async fn workload(c: &tokio_postgres::Client, txns: usize, pause_every: usize) {
    for i in 0..txns {
        let k = (i % 20) as i32;
        c.batch_execute(&format!(
            "BEGIN; INSERT INTO events(k) VALUES ({k});
             INSERT INTO counters(id, v) VALUES ({k}, 1) ON CONFLICT (id) DO UPDATE SET v = counters.v + 1; COMMIT;"
        ))
        .await
        .unwrap();
        if pause_every > 0 && i % pause_every == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

const SCHEMA: &str = "CREATE TABLE events (id serial PRIMARY KEY, k int NOT NULL);
                      CREATE TABLE counters (id int PRIMARY KEY, v int NOT NULL);";

/// Terminates the walsender streaming `slot`, retrying (every 20 ms, up to
/// 30 s) while there is none: the slot is also active while the daemon
/// creates it, on a connection it then closes, and between reconnects.
/// Returns how many bytes of WAL the slot's confirmed position was behind
/// the server's at that moment.
async fn terminate_walsender(c: &tokio_postgres::Client, slot: &str) -> i64 {
    let started = std::time::Instant::now();
    loop {
        let row = c
            .query_one(
                "SELECT count(pg_terminate_backend(active_pid)), \
                 max(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn))::int8 \
                 FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[&slot],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) == 1 {
            return row.get::<_, Option<i64>>(1).unwrap_or(0);
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no walsender of slot {slot} to terminate");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The changes (commit LSN # LSN) that occur more than once in `recs`.
fn changes_seen_twice(recs: &[serde_json::Value]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    recs.iter()
        .filter_map(|r| {
            let pos = format!("{}#{}", r["commit_lsn"], r["lsn"]);
            (!seen.insert(pos.clone())).then_some(pos)
        })
        .collect()
}

/// Every committed change arrived at least once, and per key the values
/// first appear in commit order (1, 2, 3, ...), whatever was replayed.
async fn assert_complete(c: &tokio_postgres::Client, out: &std::path::Path, d: &Daemon) {
    let n_events: i64 = c.query_one("SELECT count(*) FROM events", &[]).await.unwrap().get(0);
    let total_changes = n_events as usize * 2;
    wait_lines(out, total_changes, Duration::from_secs(120), d);
    // Wait until the last event is in (lines may include replays).
    let max_id: i32 = c.query_one("SELECT max(id) FROM events", &[]).await.unwrap().get(0);
    testkit::wait_until(Duration::from_secs(60), "last event in the output", || {
        records(out).iter().any(|r| r["table"] == "events" && r["after"]["id"] == max_id)
    });
    let recs = records(out);
    let ids: std::collections::BTreeSet<i64> =
        recs.iter().filter(|r| r["table"] == "events").map(|r| r["after"]["id"].as_i64().unwrap()).collect();
    let missing: Vec<i64> = (1..=i64::from(max_id)).filter(|i| !ids.contains(i)).collect();
    assert!(missing.is_empty(), "events missing from the output: {missing:?}\n{}", d.log());
    let mut seen: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for r in recs.iter().filter(|r| r["table"] == "counters") {
        let k = r["after"]["id"].as_i64().unwrap();
        let v = r["after"]["v"].as_i64().unwrap();
        let list = seen.entry(k).or_default();
        if !list.contains(&v) {
            list.push(v);
        }
    }
    let truth: HashMap<i32, i32> = c.query("SELECT id, v FROM counters", &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    for (k, v) in truth {
        let got = seen.get(&i64::from(k)).cloned().unwrap_or_default();
        let want: Vec<i64> = (1..=i64::from(v)).collect();
        assert_eq!(got, want, "key {k}: every value once, first appearances in commit order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_loses_nothing() {
    let (pg, c) = cluster_with("kill", SHORT_WAL_SENDER_TIMEOUT).await;
    c.batch_execute(SCHEMA).await.unwrap();
    let dir = scratch();
    let out = out_path(dir.path(), "kill");
    let cfg = file_config(&pg, "kill", "kill", &["public.*"], &out);
    let mut d = Daemon::start(bin(), dir.path(), "kill", &cfg);
    testkit::wait_for(Duration::from_secs(30), "slot", || async { confirmed_flush(&c, "kill").await > 0 }).await;
    let writer = {
        let c2 = pg.client("kill").await;
        tokio::spawn(async move { workload(&c2, 1500, 10).await })
    };
    // Kill it twice while the workload runs, each time once it has written
    // more since the previous start (the second kill is not gated on output
    // the first run already produced).
    for _ in 0..2 {
        let base = line_count(&out);
        testkit::wait_for(Duration::from_secs(60), "new output since the last start", || {
            let n = line_count(&out);
            async move { n > base + 200 }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        d.kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        d.spawn(bin());
    }
    writer.await.unwrap();
    assert_complete(&c, &out, &d).await;
    // The final state per key equals the table.
    let recs = records(&out);
    assert_eq!(live(final_state(&recs, "counters")), live(table_state(&c, "counters").await));
    assert!(d.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_walsender_termination_and_server_restart() {
    let (pg, c, _dir, out, d) = stream_events_to_file("term").await;
    testkit::wait_for(Duration::from_secs(30), "slot active", || async {
        c.query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'term' AND active", &[]).await.unwrap().get::<_, i64>(0)
            == 1
    })
    .await;
    workload(&c, 200, 0).await;
    terminate_walsender(&c, "term").await;
    workload(&c, 200, 0).await;
    drop(c);
    pg.restart();
    let c = pg.client("term").await;
    workload(&c, 200, 0).await;
    assert_complete(&c, &out, &d).await;
    let log = d.log();
    assert!(log.contains("reconnecting"), "the daemon noticed the failures:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slot_confirms_while_other_tables_take_writes() {
    idle_slot_confirms(false).await;
}

/// Same, with the heartbeat on: the confirmed position also follows the
/// heartbeat messages, and the daemon stays healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_an_idle_slot_moving() {
    idle_slot_confirms(true).await;
}

async fn idle_slot_confirms(heartbeat: bool) {
    let (pg, c) = cluster_with("idle", SHORT_WAL_SENDER_TIMEOUT).await;
    c.batch_execute("CREATE TABLE watched (id int PRIMARY KEY); CREATE TABLE busy (id serial PRIMARY KEY, v int);").await.unwrap();
    let dir = scratch();
    let out = out_path(dir.path(), "idle");
    let mut cfg = file_config(&pg, "idle", "idle", &["public.watched"], &out);
    if heartbeat {
        cfg = cfg.replace("    status_interval: 1s\n", "    status_interval: 1s\n    heartbeat_interval: 500ms\n");
        assert!(cfg.contains("heartbeat_interval"));
    }
    let d = Daemon::start(bin(), dir.path(), "idle", &cfg);
    testkit::wait_for(Duration::from_secs(30), "slot", || async { confirmed_flush(&c, "idle").await > 0 }).await;
    let before = confirmed_flush(&c, "idle").await;
    for _ in 0..50 {
        c.batch_execute("INSERT INTO busy(v) SELECT g FROM generate_series(1, 100) g").await.unwrap();
    }
    let target: String = c.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    let target = lsn(&target);
    assert!(target > before);
    testkit::wait_for(Duration::from_secs(40), "confirmed_flush_lsn to pass the busy table's writes", || async {
        confirmed_flush(&c, "idle").await >= target
    })
    .await;
    assert_eq!(line_count(&out), 0, "nothing from the unwatched table");
    if heartbeat {
        assert!(!d.log().contains("heartbeat failed"), "{}", d.log());
    }
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_stop_with_exit_1_and_a_fix() {
    // wal_level = replica.
    let (pg, c) = cluster_with("perm", &[("wal_level", "replica")]).await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE nokey (v int);").await.unwrap();
    let dir = scratch();
    let out = out_path(dir.path(), "perm");
    let mut d = Daemon::start(bin(), dir.path(), "walrep", &file_config(&pg, "perm", "perm", &["public.t"], &out));
    let status = d.wait(Duration::from_secs(30)).expect("exits");
    assert_eq!(status.code(), Some(1), "{}", d.log());
    assert!(d.log().contains("wal_level"), "{}", d.log());
    drop(c);
    drop(pg);

    let (pg, c) = cluster_with("perm2", SHORT_WAL_SENDER_TIMEOUT).await;
    c.batch_execute("CREATE TABLE nokey (v int);").await.unwrap();
    let mut d = Daemon::start(bin(), dir.path(), "nokey", &file_config(&pg, "perm2", "perm2", &["public.nokey"], &out));
    let status = d.wait(Duration::from_secs(30)).expect("exits");
    assert_eq!(status.code(), Some(1), "{}", d.log());
    assert!(d.log().contains("REPLICA IDENTITY"), "{}", d.log());

    // Bad credentials: a password-protected role and the wrong password.
    c.batch_execute("SET password_encryption = 'scram-sha-256'; CREATE ROLE app LOGIN REPLICATION PASSWORD 'right';").await.unwrap();
    let hba = pg.data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("host all app 127.0.0.1/32 scram-sha-256\nhost replication app 127.0.0.1/32 scram-sha-256\n{old}"))
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let cfg = file_config(&pg, "perm2", "perm3", &["public.nokey"], &out).replace("postgres://postgres@", "postgres://app:wrong@");
    let mut d = Daemon::start(bin(), dir.path(), "badpw", &cfg);
    let status = d.wait(Duration::from_secs(30)).expect("exits");
    assert_eq!(status.code(), Some(1), "{}", d.log());
    let log = d.log();
    assert!(log.contains("password") || log.contains("authentication"), "{log}");
    assert!(!log.contains("wrong"), "the password never appears in logs:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn million_row_transaction_streams_with_bounded_memory() {
    let (pg, c) = cluster_with("big", SHORT_WAL_SENDER_TIMEOUT).await;
    c.batch_execute("CREATE TABLE big (id int PRIMARY KEY, a text, b int, c timestamptz)").await.unwrap();
    let dir = scratch();
    let out = out_path(dir.path(), "big");
    let d = Daemon::start(bin(), dir.path(), "big", &file_config(&pg, "big", "big", &["public.big"], &out));
    testkit::wait_for(Duration::from_secs(30), "slot", || async { confirmed_flush(&c, "big").await > 0 }).await;
    c.batch_execute("INSERT INTO big SELECT g, md5(g::text), g % 1000, now() FROM generate_series(1, 1000000) g").await.unwrap();
    wait_lines(&out, 1_000_000, Duration::from_secs(300), &d);
    let rss = d.peak_rss_kib().expect("the daemon's peak RSS must be readable from /proc");
    // The output alone is > 150 MB: a process that buffered the transaction
    // could not stay under this.
    assert!(rss < 64 * 1024, "peak RSS {rss} KiB");
    let end: String = c.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    let end = lsn(&end);
    testkit::wait_for(Duration::from_secs(60), "the big transaction to be confirmed", || async { confirmed_flush(&c, "big").await >= end })
        .await;
    assert_eq!(line_count(&out), 1_000_000);
}

/// A reconnect resumes after the last transaction received, not at the
/// slot's confirmed position: the walsender is terminated in the middle of
/// a stream of small transactions, while the slot's confirmed position
/// (sent at most every 200 ms) lags what the daemon has received; no change
/// may arrive twice (a sink would see it after its first copy was applied:
/// a partial change of a document that the first copy moved could not be
/// completed again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_resumes_after_what_was_received() {
    let (pg, c, _dir, out, d) = stream_events_to_file("resume").await;
    testkit::wait_for(Duration::from_secs(30), "slot", || async { confirmed_flush(&c, "resume").await > 0 }).await;
    let writer = {
        let c2 = pg.client("resume").await;
        tokio::spawn(async move { workload(&c2, 3000, 0).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lag = terminate_walsender(&c, "resume").await;
    writer.await.unwrap();
    assert_complete(&c, &out, &d).await;
    let recs = records(&out);
    let twice = changes_seen_twice(&recs);
    assert!(
        twice.is_empty(),
        "{} changes arrived twice after the reconnect, e.g. {:?}\n{}",
        twice.len(),
        &twice[..twice.len().min(5)],
        d.log()
    );
    assert!(d.log().contains("reconnecting"), "the daemon never reconnected: the test proves nothing\n{}", d.log());
    eprintln!("slot lagged {lag} bytes of WAL behind the server when its walsender was terminated; {} records, none twice", recs.len());
}

/// A transaction cut off by a reconnect after part of it reached the sink
/// is sent again in full by PostgreSQL; the part the sink already has is
/// skipped, so every change arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_cut_off_by_a_reconnect_arrives_once() {
    let (_pg, c, _dir, out, d) = stream_events_to_file("cutoff").await;
    testkit::wait_for(Duration::from_secs(30), "slot", || async { confirmed_flush(&c, "cutoff").await > 0 }).await;
    const ROWS: usize = 300_000;
    c.batch_execute(&format!("INSERT INTO events(k) SELECT g % 20 FROM generate_series(1, {ROWS}) g")).await.unwrap();
    // Part of the transaction is in the file: cut the stream.
    let start = std::time::Instant::now();
    while line_count(&out) < 20_000 {
        assert!(start.elapsed() < Duration::from_secs(60), "the transaction never started to arrive\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    terminate_walsender(&c, "cutoff").await;
    let lines_at_cut = line_count(&out);
    wait_lines(&out, ROWS, Duration::from_secs(120), &d);
    let end = insert_lsn(&c).await;
    testkit::wait_for(Duration::from_secs(60), "confirmed", || async { confirmed_flush(&c, "cutoff").await >= end }).await;
    let recs = records(&out);
    assert_eq!(changes_seen_twice(&recs).len(), 0, "changes written twice\n{}", d.log());
    assert_eq!(recs.len(), ROWS, "every change exactly once");
    let ids: std::collections::BTreeSet<i64> = recs.iter().filter_map(|r| r["after"]["id"].as_i64()).collect();
    assert_eq!(ids.len(), ROWS);
    if lines_at_cut < ROWS {
        assert!(
            d.log().contains("skipping the changes of a resent transaction"),
            "cut at {lines_at_cut} of {ROWS} lines, but no resent transaction was skipped\n{}",
            d.log()
        );
    }
    eprintln!("cut at {lines_at_cut} of {ROWS} lines; every change arrived once");
}
