//! Failover without a resync (PostgreSQL 17+: failover slots).
//!
//! A primary and a physical standby that keeps a copy of pgfanout's slot
//! (`sync_replication_slots = on`; the primary holds logical changes back
//! until the standby has them: `synchronized_standby_slots`). pgfanout is
//! given both hosts with `target_session_attrs=read-write`. Under a write
//! load the primary dies (immediate stop) and the standby is promoted:
//! pgfanout finds the new primary, resumes from the synchronized slot, and
//! the file sink and Redis end equal to the new primary's table, with no snapshot or
//! backfill. Servers before 17 have no failover slots: the test says so and
//! checks nothing there (scripts/test.sh runs it on 17 and 18).

mod common;

use std::time::{Duration, Instant};

use common::*;

/// A primary (database `db`, table `t`, `settings`) and a physical standby
/// of it streaming from slot `standby1` with `standby_settings` (slot
/// synchronization on), and a client of the primary; None before 17 (no
/// failover slots: the caller has nothing to test).
async fn primary_and_standby(
    db: &str,
    settings: &[(&str, &str)],
    standby_settings: &[(&str, &str)],
) -> Option<(testkit::PgCluster, testkit::PgCluster, tokio_postgres::Client)> {
    let (primary, c) = cluster_with(db, settings).await;
    let major = server_major(&c).await;
    if major < 17 {
        println!("PostgreSQL {major} has no failover slots: nothing to test here (the matrix runs this on 17 and 18)");
        return None;
    }
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL); SELECT pg_create_physical_replication_slot('standby1', true);")
        .await
        .unwrap();
    drop(c);
    // A cold copy of the primary's data directory: the primary restarts.
    let mut all = vec![("sync_replication_slots", "on")];
    all.extend_from_slice(standby_settings);
    let standby = testkit::PgCluster::standby_of(&primary, "standby1", &all);
    let c = primary.client(db).await;
    Some((primary, standby, c))
}

/// Waits until the standby holds a synchronized copy of `slot`.
async fn wait_synced(standby: &testkit::PgCluster, slot: &str) {
    let s = standby.client("postgres").await;
    testkit::wait_for(Duration::from_secs(90), "the slot to be synchronized to the standby", || async {
        s.query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND synced AND NOT temporary", &[&slot])
            .await
            .unwrap()
            .is_some()
    })
    .await;
}

/// After a failover that lost delivered changes (the ghosts: rows 101 to
/// 200 and updates of rows 1 to 10 only the old primary had), then the new
/// primary's writes (`v = -5` for row 5, row 50 deleted): Redis holds
/// exactly the new primary's table.
async fn assert_redis_is_the_new_primarys_table(n: &tokio_postgres::Client, redis: &testkit::RedisServer, log: &str) {
    let rows = n.query("SELECT id, v FROM t", &[]).await.unwrap();
    let want: std::collections::BTreeMap<String, String> =
        rows.iter().map(|r| (format!("t:{}", r.get::<_, i32>(0)), r.get::<_, i32>(1).to_string())).collect();
    let got: std::collections::BTreeMap<String, String> =
        redis.keys().into_iter().filter(|k| k.starts_with("t:")).map(|k| (k.clone(), redis.cmd(&["GET", &k]).text())).collect();
    assert_eq!(got.get("t:5").map(String::as_str), Some("-5"), "the new primary's update wins over the ghost's\n{log}");
    assert!(!got.contains_key("t:150") && !got.contains_key("t:50"), "rows the new primary lacks are gone\n{log}");
    assert_eq!(got, want, "Redis equals the new primary's table\n{log}");
}

/// `url` listing both hosts, primary first, for `db`.
fn both_hosts(primary: &testkit::PgCluster, standby: &testkit::PgCluster, db: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{db}?target_session_attrs=read-write", primary.port, standby.port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_takes_over_from_the_synchronized_slot() {
    let Some((primary, standby, c)) =
        primary_and_standby("fo", &[("synchronous_commit", "on"), ("wal_sender_timeout", "10s")], &[("synchronous_commit", "on")]).await
    else {
        return;
    };
    c.batch_execute("ALTER SYSTEM SET synchronized_standby_slots = 'standby1'").await.unwrap();
    c.batch_execute("SELECT pg_reload_conf()").await.unwrap();

    let dir = scratch();
    let out = out_path(dir.path(), "fo");
    let redis = tokio::task::spawn_blocking(testkit::RedisServer::start).await.unwrap();
    let url = both_hosts(&primary, &standby, "fo");
    let sinks = format!(
        "  out: {{ type: file, path: \"{}\" }}\n  cache: {{ type: redis, url: \"{}\", reconnect_max_delay: 1s }}",
        out.display(),
        redis.url()
    );
    let pipelines = "  - { name: all, from: public.t, to: out }\n  - name: rows\n    from: public.t\n    to: cache\n    redis: { type: string, key: \"t:{id}\" }";
    let config =
        daemon_config(&primary, "fo", "fo", &sinks, pipelines, &dir.path().join("fo.dead.jsonl")).replace(&primary.url("fo"), &url);
    assert!(config.contains("target_session_attrs"), "{config}");
    let d = Daemon::start(bin(), dir.path(), "fo", &config);
    wait_slot(&c, "fo", &d).await;
    let failover: bool = c.query_one("SELECT failover FROM pg_replication_slots WHERE slot_name = 'fo'", &[]).await.unwrap().get(0);
    assert!(failover, "the slot is a failover slot");

    // Some changes before, and the slot synchronized to the standby.
    c.batch_execute("INSERT INTO t SELECT g, g FROM generate_series(1, 1000) g").await.unwrap();
    wait_confirmed(&c, "fo", &d, Duration::from_secs(60)).await;
    wait_synced(&standby, "fo").await;

    // `doctor` sees a slot that survives a failover.
    let doctor = std::process::Command::new(bin()).args(["doctor", "-c"]).arg(&d.config_path).output().unwrap();
    let said = String::from_utf8_lossy(&doctor.stdout).to_string() + &String::from_utf8_lossy(&doctor.stderr);
    for line in [
        "ok    slot fo is a failover slot".to_string(),
        "ok    synchronized_standby_slots = standby1 on the primary".to_string(),
        format!("ok    standby 127.0.0.1:{}: sync_replication_slots = on", standby.port),
        format!("ok    standby 127.0.0.1:{}: hot_standby_feedback = on", standby.port),
        format!("ok    standby 127.0.0.1:{}: slot fo synchronized", standby.port),
    ] {
        assert!(said.contains(&line), "doctor says {line:?}:\n{said}");
    }
    for line in said.lines().filter(|l| l.contains("standby") || l.contains("failover")) {
        println!("doctor: {line}");
    }

    // A write load, then the primary dies under it.
    let writer = primary.client("fo").await;
    let load = tokio::spawn(async move {
        let mut id = 1000;
        loop {
            id += 1;
            let sql = format!("INSERT INTO t VALUES ({id}, {id}); UPDATE t SET v = v + 1 WHERE id = {};", id - 500);
            if writer.batch_execute(&sql).await.is_err() {
                return id;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    primary.stop("immediate");
    let last_tried = load.await.unwrap();
    standby.promote();
    let n = standby.client("fo").await;
    n.batch_execute("INSERT INTO t VALUES (-1, -1)").await.unwrap();
    // The first change made on the new primary reaches the sink.
    loop {
        let recs = tail_records(&out, 50);
        if recs.iter().any(|r| r["after"]["id"] == -1) {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(120), "nothing from the new primary after 120 s\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("from the primary's death to the first change from the promoted standby in the sink: {:.2} s", killed.elapsed().as_secs_f64());

    // More writes on the new primary; then the sink equals its table.
    n.batch_execute("UPDATE t SET v = -v WHERE id % 7 = 0; DELETE FROM t WHERE id % 11 = 0;").await.unwrap();
    wait_confirmed(&n, "fo", &d, Duration::from_secs(120)).await;
    let recs = records(&out);
    assert_replay_equals_tables(&n, &recs, &["t"]).await;
    // Redis holds exactly the new primary's rows, as to_jsonb has them.
    let table = rows_by_id(&n, "t").await;
    let testkit::Resp::Array(keys) = redis.cmd(&["KEYS", "t:*"]) else { panic!("KEYS did not answer an array") };
    assert_eq!(keys.len(), table.len(), "one key per row, none for deleted rows");
    for (id, row) in &table {
        let stored = redis.cmd(&["GET", &format!("t:{id}")]).opt_text().unwrap_or_else(|| panic!("no key t:{id}"));
        assert_eq!(&serde_json::from_str::<serde_json::Value>(&stored).unwrap(), row, "row {id}");
    }
    let rows: i64 = n.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert!(rows > 1000, "the load wrote before the failover ({rows} rows, {last_tried} tried)");
    let log = d.log();
    assert_eq!(log.matches("replication slot created").count(), 1, "the slot was not created again\n{log}");
    for recopy in ["snapshot started", "backfill requested", "backfill started", "table backfilled"] {
        assert!(!log.contains(recopy), "no re-copy ({recopy:?})\n{log}");
    }
}

/// A failover that loses changes pgfanout already delivered: the primary
/// does not wait for the standby (no `synchronized_standby_slots`), the
/// standby is stopped while the primary takes more writes, which pgfanout
/// delivers; then the primary dies and the lagging standby is promoted. Its
/// history forks before what pgfanout received, so pgfanout stops and says
/// so (streaming on would skip the new primary's next transactions, which
/// come at positions it has passed) instead of going on silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_standby_that_lags_behind_what_was_delivered_is_reported() {
    let Some((primary, standby, c)) = primary_and_standby("lag", &[("wal_sender_timeout", "10s")], &[]).await else {
        return;
    };
    let dir = scratch();
    let out = out_path(dir.path(), "lag");
    let url = both_hosts(&primary, &standby, "lag");
    let config = file_config(&primary, "lag", "lag", &["public.t"], &out).replace(&primary.url("lag"), &url);
    let mut d = Daemon::start(bin(), dir.path(), "lag", &config);
    wait_slot(&c, "lag", &d).await;
    c.batch_execute("INSERT INTO t SELECT g, g FROM generate_series(1, 100) g").await.unwrap();
    wait_confirmed(&c, "lag", &d, Duration::from_secs(60)).await;
    wait_synced(&standby, "lag").await;
    // The standby falls behind: pgfanout gets changes it will never have.
    standby.stop("fast");
    c.batch_execute("INSERT INTO t SELECT g, g FROM generate_series(101, 200) g").await.unwrap();
    wait_confirmed(&c, "lag", &d, Duration::from_secs(60)).await;
    assert_eq!(line_count(&out), 200, "pgfanout delivered the changes the standby lacks");
    primary.stop("immediate");
    standby.start_server();
    standby.promote();
    let n = standby.client("lag").await;
    let rows: i64 = n.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(rows, 100, "the promoted standby lacks the last 100 rows");
    n.batch_execute("INSERT INTO t VALUES (-1, -1)").await.unwrap();
    let status = d.wait(Duration::from_secs(120));
    let log = d.log();
    assert!(status.is_some_and(|s| !s.success()), "pgfanout stops\n{log}");
    assert!(log.contains("failover lost changes") && log.contains("synchronized_standby_slots"), "and says why\n{log}");
}

/// The same lost failover with `on_slot_lost: recreate`: pgfanout says so,
/// then recovers by itself. It pads the new primary's WAL past what it had
/// received, streams on, backfills the table and removes from Redis what
/// only the old primary had (`verify --repair`). Redis then equals the new
/// primary's table: the rows and updates the standby never had are gone,
/// and the new primary's own writes are there, including those committed
/// right after the promotion, at positions pgfanout had already passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_that_lost_delivered_changes_is_recovered_with_on_slot_lost_recreate() {
    let Some((primary, standby, c)) = primary_and_standby("lagr", &[("wal_sender_timeout", "10s")], &[]).await else {
        return;
    };
    let dir = scratch();
    let redis = tokio::task::spawn_blocking(testkit::RedisServer::start).await.unwrap();
    let url = both_hosts(&primary, &standby, "lagr");
    let pipelines = "  - name: rows\n    from: public.t\n    to: cache\n    redis: { type: string, key: \"t:{id}\", column: v }";
    let config = redis_config(&primary, "lagr", "lagr", &redis.url(), pipelines, dir.path())
        .replace(&primary.url("lagr"), &url)
        .replace("    snapshot: never\n", "    snapshot: never\n    on_slot_lost: recreate\n");
    assert!(config.contains("on_slot_lost: recreate") && config.contains("target_session_attrs"), "{config}");
    let mut d = Daemon::start(bin(), dir.path(), "lagr", &config);
    wait_slot(&c, "lagr", &d).await;
    c.batch_execute("INSERT INTO t SELECT g, g FROM generate_series(1, 100) g").await.unwrap();
    wait_confirmed(&c, "lagr", &d, Duration::from_secs(60)).await;
    wait_synced(&standby, "lagr").await;
    // The standby falls behind: pgfanout delivers rows and updates it will
    // never have (ghosts).
    standby.stop("fast");
    c.batch_execute("INSERT INTO t SELECT g, g FROM generate_series(101, 200) g; UPDATE t SET v = 1000 + id WHERE id <= 10").await.unwrap();
    wait_confirmed(&c, "lagr", &d, Duration::from_secs(60)).await;
    assert_eq!(redis.keys().iter().filter(|k| k.starts_with("t:")).count(), 200, "pgfanout delivered what the standby lacks");
    assert_eq!(redis.cmd(&["GET", "t:5"]).text(), "1005");
    primary.stop("immediate");
    standby.start_server();
    standby.promote();
    let n = standby.client("lagr").await;
    // Right after the promotion, at positions pgfanout had passed on the
    // old timeline.
    n.batch_execute("INSERT INTO t VALUES (-1, -1); UPDATE t SET v = -5 WHERE id = 5; DELETE FROM t WHERE id = 50").await.unwrap();
    testkit::wait_for(Duration::from_secs(120), "the failover's recovery", || async { d.log().contains("failover recovery") }).await;
    n.batch_execute("INSERT INTO t SELECT g, g FROM generate_series(300, 350) g; UPDATE t SET v = -7 WHERE id = 7").await.unwrap();
    testkit::wait_for(Duration::from_secs(180), "the reconciliation after the backfill", || async {
        d.log().contains("reconciliation after the recovery backfills finished")
    })
    .await;
    wait_confirmed(&n, "lagr", &d, Duration::from_secs(60)).await;
    let log = d.log();
    assert!(log.contains("failover lost changes") && log.contains("synchronized_standby_slots"), "it says what happened\n{log}");
    assert!(d.is_running(), "pgfanout keeps running\n{log}");
    assert_redis_is_the_new_primarys_table(&n, &redis, &log).await;
    d.signal("TERM");
    assert!(d.wait(Duration::from_secs(30)).is_some_and(|s| s.success()), "clean stop\n{}", d.log());
}

/// The lost failover again, but while pgfanout is down (SIGKILLed, the
/// worst moment: its state file holds a bound, not the exact position).
/// The next start reads the timeline it last streamed on from the state
/// file (`runtime.state_dir`): with `on_slot_lost: fail` it stops and says
/// so instead of resuming from the lagging copy of the slot; started again
/// with `recreate`, it recovers, and Redis equals the new primary's table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_while_pgfanout_was_stopped_is_checked_at_the_next_start() {
    let Some((primary, standby, c)) = primary_and_standby("lags", &[("wal_sender_timeout", "10s")], &[]).await else {
        return;
    };
    let dir = scratch();
    let redis = tokio::task::spawn_blocking(testkit::RedisServer::start).await.unwrap();
    let url = both_hosts(&primary, &standby, "lags");
    let pipelines = "  - name: rows\n    from: public.t\n    to: cache\n    redis: { type: string, key: \"t:{id}\", column: v }";
    let config = redis_config(&primary, "lags", "lags", &redis.url(), pipelines, dir.path()).replace(&primary.url("lags"), &url);
    let mut d = Daemon::start(bin(), dir.path(), "lags", &config);
    wait_slot(&c, "lags", &d).await;
    c.batch_execute("INSERT INTO t SELECT g, g FROM generate_series(1, 100) g").await.unwrap();
    wait_confirmed(&c, "lags", &d, Duration::from_secs(60)).await;
    wait_synced(&standby, "lags").await;
    standby.stop("fast");
    c.batch_execute("INSERT INTO t SELECT g, g FROM generate_series(101, 200) g; UPDATE t SET v = 1000 + id WHERE id <= 10").await.unwrap();
    wait_confirmed(&c, "lags", &d, Duration::from_secs(60)).await;
    assert_eq!(redis.keys().iter().filter(|k| k.starts_with("t:")).count(), 200, "pgfanout delivered what the standby lacks");
    // pgfanout dies, then the primary; the lagging standby is promoted.
    d.kill9();
    primary.stop("immediate");
    standby.start_server();
    standby.promote();
    let n = standby.client("lags").await;
    n.batch_execute("INSERT INTO t VALUES (-1, -1); UPDATE t SET v = -5 WHERE id = 5; DELETE FROM t WHERE id = 50").await.unwrap();

    // Started again (on_slot_lost: fail): it stops and says why.
    d.spawn(bin());
    let status = tokio::task::block_in_place(|| d.wait(Duration::from_secs(120)));
    let log = d.log();
    assert!(status.is_some_and(|s| !s.success()), "pgfanout stops\n{log}");
    assert!(log.contains("timeline changed while pgfanout was stopped") && log.contains("failover lost changes"), "and says why\n{log}");
    assert_eq!(redis.cmd(&["GET", "t:5"]).text(), "1005", "nothing was streamed from the new primary");
    // It keeps saying so at every start until told what to do.
    d.spawn(bin());
    let status = tokio::task::block_in_place(|| d.wait(Duration::from_secs(120)));
    assert!(status.is_some_and(|s| !s.success()), "pgfanout stops again\n{}", d.log());
    assert_eq!(d.log().matches("timeline changed while pgfanout was stopped").count(), 2, "{}", d.log());

    // With on_slot_lost: recreate it recovers.
    let recreate = config.replace("    snapshot: never\n", "    snapshot: never\n    on_slot_lost: recreate\n");
    assert!(recreate.contains("on_slot_lost: recreate"));
    std::fs::write(&d.config_path, recreate).unwrap();
    d.spawn(bin());
    testkit::wait_for(Duration::from_secs(180), "the reconciliation after the backfill", || async {
        d.log().contains("reconciliation after the recovery backfills finished")
    })
    .await;
    n.batch_execute("INSERT INTO t SELECT g, g FROM generate_series(300, 350) g; UPDATE t SET v = -7 WHERE id = 7").await.unwrap();
    wait_confirmed(&n, "lags", &d, Duration::from_secs(60)).await;
    let log = d.log();
    assert_redis_is_the_new_primarys_table(&n, &redis, &log).await;
}

/// Logical decoding on a physical standby (PostgreSQL 16+): `url` names the
/// standby and `primary_url` the primary. The slot, the stream and the
/// initial snapshot are the standby's; the primary holds no logical slot
/// and decodes nothing. Rows with 25-digit numerics and TOASTed text go
/// through the snapshot, the stream (partial updates that leave the
/// TOASTed column out), a SIGKILL and restart, and a backfill whose
/// watermarks are written on the primary and read back through the
/// standby. The file sink and Redis end equal to the primary's table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoding_on_a_standby_spares_the_primary() {
    let (primary, c) = cluster_with("sb", &[("wal_sender_timeout", "10s")]).await;
    let major = server_major(&c).await;
    if major < 16 {
        println!("PostgreSQL {major} cannot decode on a standby: nothing to test here (the matrix runs this on 16, 17 and 18)");
        return;
    }
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, n numeric NOT NULL, note text NOT NULL);
         INSERT INTO t SELECT g, 1234567890123456789012345 + g, 'snap-' || g FROM generate_series(1, 300) g;
         INSERT INTO t VALUES (0, -0.0000000000000000000000001, repeat('toast ', 20000));
         SELECT pg_create_physical_replication_slot('standby1', true);",
    )
    .await
    .unwrap();
    drop(c);
    let standby = testkit::PgCluster::standby_of(&primary, "standby1", &[]);
    let c = primary.client("sb").await;
    let s = standby.client("sb").await;

    let dir = scratch();
    let out = out_path(dir.path(), "sb");
    let redis = tokio::task::spawn_blocking(testkit::RedisServer::start).await.unwrap();
    let sinks = format!(
        "  out: {{ type: file, path: \"{}\" }}\n  cache: {{ type: redis, url: \"{}\", reconnect_max_delay: 1s }}",
        out.display(),
        redis.url()
    );
    let pipelines = "  - { name: all, from: public.t, to: out }\n  - name: rows\n    from: public.t\n    to: cache\n    redis: { type: string, key: \"t:{id}\" }";
    let on_standby = daemon_config(&primary, "sb", "sb", &sinks, pipelines, &dir.path().join("sb.dead.jsonl"))
        .replace(&primary.url("sb"), &standby.url("sb"))
        .replace("snapshot: never", "snapshot: initial");

    // Without primary_url, the standby is refused with the fix.
    let mut refused = Daemon::start(bin(), dir.path(), "refused", &on_standby);
    let status = tokio::task::block_in_place(|| refused.wait(Duration::from_secs(60))).expect("pgfanout stops");
    assert!(!status.success());
    assert!(refused.log().contains("set source.postgres.primary_url to the primary"), "{}", refused.log());

    let config = on_standby.replace("snapshot: initial", &format!("snapshot: initial\n    primary_url: {}", primary.url("sb")));
    let mut d = Daemon::start(bin(), dir.path(), "sb", &config);
    wait_slot(&s, "sb", &d).await;
    let logical: i64 = c.query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'", &[]).await.unwrap().get(0);
    assert_eq!(logical, 0, "the primary holds no logical slot");

    // `doctor` sees the standby and the primary.
    let doctor = std::process::Command::new(bin()).args(["doctor", "-c"]).arg(&d.config_path).output().unwrap();
    let said = String::from_utf8_lossy(&doctor.stdout).to_string() + &String::from_utf8_lossy(&doctor.stderr);
    for line in [
        "logical decoding on a standby (PostgreSQL 16+)".to_string(),
        "ok    standby: hot_standby_feedback = on".to_string(),
        "ok    standby: streams from a physical slot (primary_slot_name)".to_string(),
        format!("ok    primary 127.0.0.1:{}: takes writes, wal_level = logical", primary.port),
    ] {
        assert!(said.contains(&line), "doctor says {line:?}:\n{said}");
    }

    // `status` reads the slot on the standby (where pg_current_wal_lsn()
    // is an error).
    let status = std::process::Command::new(bin()).args(["status", "-c"]).arg(&d.config_path).output().unwrap();
    let shown = String::from_utf8_lossy(&status.stdout).to_string() + &String::from_utf8_lossy(&status.stderr);
    assert!(status.status.success() && shown.contains("slot              sb") && shown.contains("lag_bytes"), "status:\n{shown}");

    // Streamed changes, partial updates that leave the TOASTed note out.
    c.batch_execute(
        "INSERT INTO t SELECT g, -1234567890123456789012345 - g, 'new-' || g FROM generate_series(301, 600) g;
         UPDATE t SET n = n + 0.000000000000000000000001 WHERE id % 3 = 0;
         DELETE FROM t WHERE id % 10 = 5;",
    )
    .await
    .unwrap();
    wait_confirmed_on(&c, &s, "sb", &d).await;

    // A SIGKILL; more changes while pgfanout is down; the restart resumes
    // from the standby's slot.
    d.kill9();
    c.batch_execute(
        "UPDATE t SET n = 9999999999999999999999999.9 WHERE id IN (0, 7, 400);
         INSERT INTO t SELECT g, g, 'down-' || g FROM generate_series(601, 700) g;
         DELETE FROM t WHERE id % 10 = 6;",
    )
    .await
    .unwrap();
    d.spawn(bin());
    wait_confirmed_on(&c, &s, "sb", &d).await;

    // A backfill: watermarks on the primary, read back through the standby.
    let cli = tokio::task::block_in_place(|| {
        std::process::Command::new(bin()).args(["backfill", "-c"]).arg(&d.config_path).args(["--table", "public.t"]).output().unwrap()
    });
    assert_eq!(cli.status.code(), Some(0), "{}", String::from_utf8_lossy(&cli.stderr));
    testkit::wait_for(Duration::from_secs(120), "the backfill to finish", || async {
        c.query_opt("SELECT 1 FROM pgfanout.backfills WHERE slot = 'sb' AND status = 'done'", &[]).await.unwrap().is_some()
    })
    .await;
    c.batch_execute("UPDATE t SET note = note || '!' WHERE id % 50 = 1").await.unwrap();
    wait_confirmed_on(&c, &s, "sb", &d).await;

    let recs = records(&out);
    assert_replay_equals_tables(&c, &recs, &["t"]).await;
    let table = rows_by_id(&c, "t").await;
    let testkit::Resp::Array(keys) = redis.cmd(&["KEYS", "t:*"]) else { panic!("KEYS did not answer an array") };
    assert_eq!(keys.len(), table.len(), "one key per row, none for deleted rows");
    for (id, row) in &table {
        let stored = redis.cmd(&["GET", &format!("t:{id}")]).opt_text().unwrap_or_else(|| panic!("no key t:{id}"));
        assert_eq!(&serde_json::from_str::<serde_json::Value>(&stored).unwrap(), row, "row {id}");
    }
    // The snapshot read 301 rows; the backfill read every row there was.
    let reads = recs.iter().filter(|r| r["op"] == "read").count();
    assert!(reads >= 301 + table.len(), "{reads} reads: the snapshot's and the backfill's");
    println!("standby decoding: {} rows, {} records, {reads} of them snapshot and backfill reads", table.len(), recs.len());
    let logical: i64 = c.query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'", &[]).await.unwrap().get(0);
    assert_eq!(logical, 0, "the primary never held a logical slot");
}

/// Waits until the slot on the standby (`s`) confirmed everything written
/// on the primary (`c`) so far.
async fn wait_confirmed_on(c: &tokio_postgres::Client, s: &tokio_postgres::Client, slot: &str, d: &Daemon) {
    let end = insert_lsn(c).await;
    let start = Instant::now();
    while confirmed_flush(s, slot).await < end {
        assert!(start.elapsed() < Duration::from_secs(120), "the standby's slot did not confirm {end:X}\n--- daemon log ---\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
