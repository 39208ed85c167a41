//! Backfills while streaming, end to end against a real PostgreSQL and a
//! real Redis, with the file sink beside it.
//!
//! The main test: a 1,000,000-row table that existed before the slot is
//! backfilled while a writer keeps updating, deleting and inserting rows;
//! pgfanout is SIGKILLed about half way and restarted; the backfill must
//! resume from its last durable chunk (not from the start), Redis and the
//! file must end equal to the table, and a sampler of Redis's version
//! hashes must never see a version go backwards (a backfilled row never
//! overwrites a newer streamed one).

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use testkit::RedisServer;

const ROWS: i64 = 1_000_000;

fn config(pg: &PgCluster, db: &str, redis: &RedisServer, out: &std::path::Path, dir: &std::path::Path, listen: &str) -> String {
    let sinks = format!(
        "  cache: {{ type: redis, url: \"{}\", reconnect_max_delay: 1s }}\n  out: {{ type: file, path: \"{}\" }}",
        redis.url(),
        out.display()
    );
    let pipelines = r#"
  - name: rows
    from: public.big
    to: cache
    redis: { type: hash, key: "big:{id}" }
  - name: log
    from: public.big
    to: out"#;
    daemon_config(pg, db, db, &sinks, pipelines, &dir.join("dead.jsonl"))
        .replace("http:\n  enabled: false\n", &format!("http:\n  listen: \"{listen}\"\n"))
}

async fn backfill_row(c: &tokio_postgres::Client) -> Option<(i64, String, i64, Option<Vec<String>>)> {
    let row =
        c.query_opt("SELECT id, status, rows_done, last_key FROM pgfanout.backfills ORDER BY id DESC LIMIT 1", &[]).await.ok().flatten()?;
    Some((row.get(0), row.get(1), row.get(2), row.get(3)))
}

fn wait_streaming(d: &Daemon) {
    wait_streaming_after(d, 0);
}

/// Waits for the log's `before + 1`-th "streaming started" (a restarted
/// daemon appends to the same log).
fn wait_streaming_after(d: &Daemon, before: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.log().matches("streaming started").count() <= before {
        assert!(Instant::now() < deadline, "not streaming:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_backfill_under_writes_survives_sigkill_and_ends_equal() {
    let db = "backfill";
    let (pg, c) = cluster_with(db, &[]).await;
    c.batch_execute(&format!(
        "CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL, note text);
         INSERT INTO big SELECT g, 0, 'row ' || g FROM generate_series(1, {ROWS}) g;"
    ))
    .await
    .unwrap();
    let redis = tokio::task::spawn_blocking(RedisServer::start).await.unwrap();
    let dir = scratch();
    let out = dir.path().join("out.jsonl");
    let listen = format!("127.0.0.1:{}", testkit::free_port());
    let yaml = config(&pg, db, &redis, &out, dir.path(), &listen);
    let path = dir.path().join("backfill.yaml");
    std::fs::write(&path, &yaml).unwrap();
    // Each chunk waits 20 ms between its read and its high watermark, so
    // the writer's changes land in that window often.
    std::env::set_var("PGFANOUT_BACKFILL_READ_DELAY_MS", "20");
    let mut d = Daemon::start(bin(), dir.path(), "pgfanout", &yaml);
    tokio::task::block_in_place(|| wait_streaming(&d));

    // A writer: updates and deletes all over the table, inserts past its end.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let w = pg.client(db).await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut rng = Rng(0xbacf_0001);
            let mut next = ROWS as u64 + 1;
            let mut n = 0u64;
            let mut cursor = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if n.is_multiple_of(20) {
                    // Where the backfill reads now: half the writes go to the
                    // chunk being read, racing its watermarks.
                    if let Ok(Some(row)) = w
                        .query_opt(
                            "SELECT (last_key[1])::int8 FROM pgfanout.backfills WHERE status = 'running' ORDER BY id DESC LIMIT 1",
                            &[],
                        )
                        .await
                    {
                        cursor = row.get::<_, Option<i64>>(0).unwrap_or(0) as u64;
                    }
                }
                let id = if n.is_multiple_of(2) && cursor > 0 {
                    (cursor + 1 + rng.below(5000)).min(ROWS as u64)
                } else {
                    1 + rng.below(ROWS as u64)
                };
                let sql = match rng.below(10) {
                    0..=5 => format!("UPDATE big SET v = v + 1, note = 'upd {n}' WHERE id = {id}"),
                    6 | 7 => format!("DELETE FROM big WHERE id = {id}"),
                    8 => {
                        next += 1;
                        format!("INSERT INTO big VALUES ({next}, 1, 'new')")
                    }
                    _ => format!("INSERT INTO big VALUES ({id}, 7, 'again') ON CONFLICT (id) DO UPDATE SET v = big.v + 10"),
                };
                w.batch_execute(&sql).await.unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            n
        })
    };

    // A sampler of version hashes: a version never goes backwards.
    let sampled: Vec<u64> = {
        let mut rng = Rng(0x5a3_91e);
        (0..300).map(|_| 1 + rng.below(ROWS as u64)).collect()
    };
    let regressions = Arc::new(Mutex::new(Vec::<String>::new()));
    let samples = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let (stop, regressions, samples) = (stop.clone(), regressions.clone(), samples.clone());
        let port_url = redis.url();
        let port: u16 = port_url.rsplit(':').next().unwrap().split('/').next().unwrap().parse().unwrap();
        std::thread::spawn(move || {
            use std::io::{BufRead, BufReader, Write};
            let mut last: HashMap<u64, String> = HashMap::new();
            let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            while !stop.load(Ordering::Relaxed) {
                let mut cmd = Vec::new();
                for id in &sampled {
                    let key = format!("pgfanout:v:big:{id}");
                    cmd.extend_from_slice(format!("*3\r\n$4\r\nHGET\r\n${}\r\n{key}\r\n$4\r\n_key\r\n", key.len()).as_bytes());
                }
                writer.write_all(&cmd).unwrap();
                for id in &sampled {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let value = if line.starts_with("$-1") {
                        None
                    } else {
                        let mut v = String::new();
                        reader.read_line(&mut v).unwrap();
                        Some(v.trim_end().to_string())
                    };
                    if let Some(v) = value {
                        if let Some(prev) = last.get(id) {
                            if &v < prev {
                                regressions.lock().unwrap().push(format!("big:{id}: {prev} -> {v}"));
                            }
                        }
                        last.insert(*id, v);
                    }
                }
                samples.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // Start the backfill from the command line.
    let started = Instant::now();
    let cli = tokio::task::block_in_place(|| {
        Command::new(bin()).args(["backfill", "-c"]).arg(&path).args(["--table", "public.big", "--chunk-size", "5000"]).output().unwrap()
    });
    assert_eq!(cli.status.code(), Some(0), "{}", String::from_utf8_lossy(&cli.stderr));

    // SIGKILL about half way.
    let deadline = Instant::now() + Duration::from_secs(600);
    let before_kill = loop {
        if let Some((_, _, rows, _)) = backfill_row(&c).await {
            if rows >= ROWS / 2 {
                break rows;
            }
        }
        assert!(Instant::now() < deadline, "backfill too slow:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    d.kill9();
    let (id, status, at_kill, key_at_kill) = backfill_row(&c).await.unwrap();
    assert_eq!(status, "running");
    assert!(at_kill >= before_kill && key_at_kill.is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = d.log().matches("streaming started").count();
    d.spawn(bin());
    tokio::task::block_in_place(|| wait_streaming_after(&d, before));
    let done_by = Instant::now() + Duration::from_secs(600);
    loop {
        let (_, status, _, _) = backfill_row(&c).await.unwrap();
        if status == "done" {
            break;
        }
        assert!(Instant::now() < done_by, "backfill did not finish:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    let log = d.log();
    assert!(log.contains("backfill resuming from its last chunk"), "{log}");
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    sampler.join().unwrap();
    let (_, _, total, _) = backfill_row(&c).await.unwrap();
    // Resumed, not restarted: the rows read add up to about one pass.
    assert!(total < ROWS + ROWS / 5, "read {total} rows for a {ROWS}-row table: the backfill started over");
    eprintln!(
        "backfill {id}: {total} rows read in {took:?} ({at_kill} before the SIGKILL), {writes} concurrent writes, {} samples",
        samples.load(Ordering::Relaxed)
    );

    // Everything the table holds now, in both sinks.
    let lsn: String = c.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    let wait = reqwest::get(format!("http://{listen}/wait?lsn={lsn}&timeout=120s")).await.unwrap();
    assert_eq!(wait.status().as_u16(), 200);
    let regressions = regressions.lock().unwrap().clone();
    assert!(regressions.is_empty(), "versions went backwards: {:?}", &regressions[..regressions.len().min(10)]);
    assert!(samples.load(Ordering::Relaxed) > 20);
    let verify = tokio::task::block_in_place(|| {
        Command::new(bin()).args(["verify", "-c"]).arg(&path).args(["--pipeline", "rows", "--chunk-rows", "20000"]).output().unwrap()
    });
    assert_eq!(verify.status.code(), Some(0), "Redis equals the table: {}", String::from_utf8_lossy(&verify.stdout));
    let want = live(table_state(&c, "big").await);
    let got = live(final_state(&records(&out), "big"));
    assert_eq!(got.len(), want.len(), "file sink rows");
    let differ = want.iter().filter(|(k, v)| got.get(*k) != Some(v)).count();
    assert_eq!(differ, 0, "file sink rows that differ from the table");
}

/// A config for `db` with snapshots on (added tables are tracked), a file
/// sink `out` and Redis `cache`; `pipelines` under `pipelines:`.
fn config_with(pg: &PgCluster, db: &str, pipelines: &str, redis: &RedisServer, dir: &std::path::Path, listen: &str, extra: &str) -> String {
    let sinks = format!(
        "  cache: {{ type: redis, url: \"{}\", reconnect_max_delay: 1s }}\n  out: {{ type: file, path: \"{}\" }}",
        redis.url(),
        dir.join("out.jsonl").display()
    );
    daemon_config(pg, db, db, &sinks, pipelines, &dir.join("dead.jsonl"))
        .replace("    snapshot: never\n", &format!("    snapshot: initial\n{extra}"))
        .replace("http:\n  enabled: false\n", &format!("http:\n  listen: \"{listen}\"\n"))
}

async fn wait_status(c: &tokio_postgres::Client, table: &str, status: &str, d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        // The latest backfill's status; none while there is none (or no
        // backfills table yet).
        let latest = "SELECT (SELECT status FROM pgfanout.backfills WHERE table_name = $1 ORDER BY id DESC LIMIT 1)";
        let got: Option<String> = c.query_one(latest, &[&table]).await.ok().and_then(|r| r.get(0));
        if got.as_deref() == Some(status) {
            return;
        }
        assert!(Instant::now() < deadline, "backfill of {table} not {status} (is {got:?}):\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn verify_ok(path: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin()).args(["verify", "-c"]).arg(path).args(args).output().unwrap();
    (out.status.code() == Some(0), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A table added to the config is backfilled while another table streams:
/// the other table's changes keep their latency (commit to durable,
/// measured with `/wait`) while the backfill runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_added_to_the_config_is_backfilled_while_the_others_stream() {
    let db = "added";
    let (pg, c) = cluster_with(db, &[]).await;
    c.batch_execute(
        "CREATE TABLE hot (id serial PRIMARY KEY, v int NOT NULL);
         CREATE TABLE big2 (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO big2 SELECT g, repeat('x', 200) FROM generate_series(1, 300000) g;",
    )
    .await
    .unwrap();
    let redis = tokio::task::spawn_blocking(RedisServer::start).await.unwrap();
    let dir = scratch();
    let listen = format!("127.0.0.1:{}", testkit::free_port());
    let hot = "  - name: hot\n    from: public.hot\n    to: cache\n    redis: { type: hash, key: \"hot:{id}\" }";
    let both = format!("{hot}\n  - name: big\n    from: public.big2\n    to: cache\n    redis: {{ type: hash, key: \"big2:{{id}}\" }}");
    let yaml = config_with(&pg, db, hot, &redis, dir.path(), &listen, "");
    let mut d = Daemon::start(bin(), dir.path(), "pgfanout", &yaml);
    tokio::task::block_in_place(|| wait_streaming(&d));
    d.signal("TERM");
    d.wait(Duration::from_secs(30));
    // Restart with big2 added.
    let yaml = config_with(&pg, db, &both, &redis, dir.path(), &listen, "");
    let path = dir.path().join("added.yaml");
    std::fs::write(&path, &yaml).unwrap();
    std::env::set_var("PGFANOUT_BACKFILL_READ_DELAY_MS", "5");
    let d = Daemon::start(bin(), dir.path(), "pgfanout-2", &yaml);
    tokio::task::block_in_place(|| wait_streaming(&d));
    let http = reqwest::Client::new();
    let mut during = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let status: Option<String> = c
            .query_opt("SELECT status FROM pgfanout.backfills WHERE table_name = 'public.big2' ORDER BY id DESC LIMIT 1", &[])
            .await
            .unwrap()
            .map(|r| r.get(0));
        if status.as_deref() == Some("done") {
            break;
        }
        assert!(Instant::now() < deadline, "backfill did not finish:\n{}", d.log());
        c.batch_execute("INSERT INTO hot (v) VALUES (1)").await.unwrap();
        let lsn: String = c.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
        let t = Instant::now();
        let r = http.get(format!("http://{listen}/wait?lsn={lsn}&sink=cache&timeout=30s")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        if status.as_deref() == Some("running") {
            during.push(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    during.sort();
    assert!(during.len() >= 10, "the hot table was written while the backfill ran: {} samples", during.len());
    let p50 = during[during.len() / 2];
    let p99 = during[(during.len() * 99 / 100).min(during.len() - 1)];
    eprintln!("hot-table commit-to-durable while big2 (300,000 rows) was backfilled: p50 {p50:?}, p99 {p99:?}, {} samples", during.len());
    assert!(p50 < Duration::from_millis(500), "p50 {p50:?}: the stream waited for the backfill");
    let (ok, out) = tokio::task::block_in_place(|| verify_ok(&path, &["--chunk-rows", "20000"]));
    assert!(ok, "{out}");
}

/// A slot invalidated by max_slot_wal_keep_size while pgfanout is stopped:
/// `fail` exits 1 naming the setting and the recovery; `recreate` comes
/// back by itself and the stores end equal to the tables (deleted rows
/// removed too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_fails_clearly_or_is_recreated_and_backfilled() {
    let db = "lost";
    let (pg, c) = cluster_with(db, &[("max_slot_wal_keep_size", "1MB"), ("wal_keep_size", "0")]).await;
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, pad text);
         INSERT INTO t SELECT g, 0, 'p' FROM generate_series(1, 5000) g;",
    )
    .await
    .unwrap();
    let redis = tokio::task::spawn_blocking(RedisServer::start).await.unwrap();
    let dir = scratch();
    let listen = format!("127.0.0.1:{}", testkit::free_port());
    let pipeline = "  - name: t\n    from: public.t\n    to: cache\n    redis: { type: hash, key: \"t:{id}\" }";
    let yaml = config_with(&pg, db, pipeline, &redis, dir.path(), &listen, "");
    let mut d = Daemon::start(bin(), dir.path(), "pgfanout", &yaml);
    tokio::task::block_in_place(|| wait_streaming(&d));
    c.batch_execute("UPDATE t SET v = 1 WHERE id <= 100").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    d.signal("TERM");
    d.wait(Duration::from_secs(30));
    // While it is stopped: changes, deletes included, and enough WAL to
    // invalidate the slot.
    c.batch_execute("UPDATE t SET v = 2 WHERE id % 3 = 0; DELETE FROM t WHERE id % 7 = 0; INSERT INTO t VALUES (9001, 5, 'new')")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status: Option<String> =
            c.query_one("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", &[&db]).await.unwrap().get(0);
        if status.as_deref() == Some("lost") {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was not invalidated (wal_status {status:?})");
        c.batch_execute("UPDATE t SET pad = repeat(md5(random()::text), 20); SELECT pg_switch_wal(); CHECKPOINT;").await.unwrap();
    }
    // fail (the default): exit 1 with the setting and the recovery.
    let mut d = Daemon::start(bin(), dir.path(), "pgfanout-fail", &yaml);
    let status = tokio::task::block_in_place(|| d.wait(Duration::from_secs(60)));
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{}", d.log());
    let log = d.log();
    assert!(log.contains("on_slot_lost: recreate") && log.contains("pg_drop_replication_slot"), "{log}");
    // recreate: comes back by itself.
    let yaml = config_with(&pg, db, pipeline, &redis, dir.path(), &listen, "    on_slot_lost: recreate\n");
    let path = dir.path().join("lost.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let d = Daemon::start(bin(), dir.path(), "pgfanout-recreate", &yaml);
    tokio::task::block_in_place(|| wait_streaming(&d));
    wait_status(&c, "public.t", "done", &d).await;
    c.batch_execute("UPDATE t SET v = 3 WHERE id = 1").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !d.log().contains("reconciliation after the recovery backfills finished") {
        assert!(Instant::now() < deadline, "{}", d.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(d.log().contains("replication slot recreated"));
    let (ok, out) = tokio::task::block_in_place(|| verify_ok(&path, &[]));
    assert!(ok, "Redis equals the table after the recreated slot: {out}");
    assert_eq!(redis.cmd(&["EXISTS", "t:7"]).int(), 0, "a row deleted while the slot was lost is gone");
    for line in
        d.log().lines().filter(|l| l.contains("recreate") || l.contains("reconcil") || l.contains("repaired") || l.contains("DIVERGENT"))
    {
        eprintln!("{line}");
    }
}

/// PostgreSQL 14: waits until the reader connected again for a new
/// partition (its walsender publishes it only then); nothing on 15+.
async fn wait_reconnect_on_14(c: &tokio_postgres::Client, d: &Daemon) {
    if server_major(c).await < 15 {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.log().contains("reconnecting as asked") {
            assert!(Instant::now() < deadline, "PostgreSQL 14: the new partition is not noticed\n{}", d.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `events` as `{key json text -> to_jsonb(row)}`, keyed by (id, region).
async fn events_by_key(c: &tokio_postgres::Client) -> HashMap<String, serde_json::Value> {
    c.query("SELECT jsonb_build_object('id', id, 'region', region)::text, to_jsonb(e)::text FROM events e", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let k: serde_json::Value = serde_json::from_str(&r.get::<_, String>(0)).unwrap();
            (k.to_string(), serde_json::from_str(&r.get::<_, String>(1)).unwrap())
        })
        .collect()
}

/// Partitioned tables stream under the root's name (partitions created
/// later included), an attached partition's existing rows come with a
/// backfill of the root, and `ALTER COLUMN ... TYPE ... USING` (which
/// streams no rows) ends with the sinks equal to the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_stream_under_the_root_and_type_changes_are_backfilled() {
    let db = "parts";
    let (pg, c) = cluster_with(db, &[]).await;
    c.batch_execute(
        "CREATE TABLE events (id int NOT NULL, region text NOT NULL, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
         CREATE TABLE prices (id int PRIMARY KEY, price int NOT NULL);
         INSERT INTO prices SELECT g, g * 100 FROM generate_series(1, 2000) g;",
    )
    .await
    .unwrap();
    let redis = tokio::task::spawn_blocking(RedisServer::start).await.unwrap();
    let dir = scratch();
    let listen = format!("127.0.0.1:{}", testkit::free_port());
    let pipelines = "  - name: events\n    from: public.events\n    to: out\n  - name: ev\n    from: public.events\n    to: cache\n    redis: { type: hash, key: \"ev:{region}:{id}\" }\n  - name: prices\n    from: public.prices\n    to: cache\n    redis: { type: hash, key: \"price:{id}\" }";
    let yaml = config_with(&pg, db, pipelines, &redis, dir.path(), &listen, "");
    let path = dir.path().join("parts.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let d = Daemon::start(bin(), dir.path(), "pgfanout", &yaml);
    tokio::task::block_in_place(|| wait_streaming(&d));
    c.batch_execute(
        "INSERT INTO events SELECT g, 'eu', g FROM generate_series(1, 100) g;
         CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');
         INSERT INTO events SELECT g, 'us', g FROM generate_series(1, 100) g;
         UPDATE events SET v = -v WHERE id % 10 = 0;
         CREATE TABLE events_ap (id int NOT NULL, region text NOT NULL, v int, PRIMARY KEY (id, region));
         INSERT INTO events_ap SELECT g, 'ap', g FROM generate_series(1, 50) g;
         ALTER TABLE events ATTACH PARTITION events_ap FOR VALUES IN ('ap');
         INSERT INTO events SELECT g, 'ap', g FROM generate_series(51, 60) g;
         UPDATE events_ap SET v = 0 WHERE id = 55;",
    )
    .await
    .unwrap();
    // The attached partition's rows existed before: pgfanout notices the
    // partition and backfills the root by itself.
    wait_status(&c, "public.events", "done", &d).await;
    // Written to the attached partition in a transaction of its own (on 14,
    // once pgfanout has noticed the partition and connected again).
    wait_reconnect_on_14(&c, &d).await;
    c.batch_execute("INSERT INTO events VALUES (61, 'ap', 61)").await.unwrap();
    // A type change that rewrites every row, then any change of the table.
    c.batch_execute(
        "ALTER TABLE prices ALTER COLUMN price TYPE numeric(10,2) USING price / 100.0; UPDATE prices SET price = 0.5 WHERE id = 1",
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !d.log().contains("column type changed; the table is backfilled") {
        assert!(Instant::now() < deadline, "{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_status(&c, "public.prices", "done", &d).await;
    let lsn: String = c.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    let r = reqwest::get(format!("http://{listen}/wait?lsn={lsn}&timeout=60s")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Every record under the root's name; the file's final state is the table.
    let recs = records(&dir.path().join("out.jsonl"));
    assert!(recs.iter().all(|r| r["table"] == "events"), "records under a partition's name");
    // Rows written through the attached partition stream (not only backfilled).
    let streamed_ap = recs.iter().filter(|r| r["after"]["region"] == "ap" && (r["op"] == "insert" || r["op"] == "update")).count();
    if server_major(&c).await >= 15 {
        assert_eq!(streamed_ap, 12, "inserts and the update of the attached partition streamed under the root");
    } else {
        // PostgreSQL 14's walsender keeps a table it decoded before the
        // ATTACH unpublished for its whole life: what is written through the
        // partition in that transaction never streams. pgfanout notices the
        // partition, connects again (a new walsender publishes it) and
        // backfills the root: the later insert streams, and the final state
        // below is the table's all the same (src/runtime/partitions.rs).
        assert_eq!(streamed_ap, 1, "on 14 only the insert of a later transaction streams");
    }
    let want = events_by_key(&c).await;
    assert_eq!(want.len(), 261);
    assert_eq!(live(final_state(&recs, "events")), want);
    let (ok, out) = tokio::task::block_in_place(|| verify_ok(&path, &[]));
    assert!(ok, "{out}");
    assert_eq!(redis.cmd(&["HGET", "price:2", "price"]).text(), "2.00");
}

/// A partition attached while pgfanout was stopped (created, loaded, then
/// attached: its rows are in no WAL the slot reads): the next start
/// compares the published partitions with those it recorded
/// (`pgfanout.partition_leaves`) and backfills the root. The file's final
/// state and Redis then equal the table, the attached rows included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_attached_while_pgfanout_was_stopped_is_backfilled_at_the_next_start() {
    let db = "partstop";
    let (pg, c) = cluster_with(db, &[]).await;
    c.batch_execute(
        "CREATE TABLE events (id int NOT NULL, region text NOT NULL, v numeric, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
         INSERT INTO events SELECT g, 'eu', g FROM generate_series(1, 50) g;",
    )
    .await
    .unwrap();
    let redis = tokio::task::spawn_blocking(RedisServer::start).await.unwrap();
    let dir = scratch();
    let listen = format!("127.0.0.1:{}", testkit::free_port());
    let pipelines =
        "  - name: events\n    from: public.events\n    to: out\n  - name: ev\n    from: public.events\n    to: cache\n    redis: { type: string, key: \"ev:{region}:{id}\" }";
    let yaml = config_with(&pg, db, pipelines, &redis, dir.path(), &listen, "");
    let mut d = Daemon::start(bin(), dir.path(), "pgfanout", &yaml);
    tokio::task::block_in_place(|| wait_streaming(&d));
    // The partitions are recorded once listed (every 5 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c
        .query_opt("SELECT 1 FROM pgfanout.partition_leaves WHERE slot = 'partstop' AND root = 'public.events'", &[])
        .await
        .is_ok_and(|r| r.is_some())
    {
        assert!(Instant::now() < deadline, "the partitions are not recorded\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.batch_execute("UPDATE events SET v = v * 1.000000000000000000001 WHERE id <= 5").await.unwrap();
    d.signal("TERM");
    assert!(tokio::task::block_in_place(|| d.wait(Duration::from_secs(30))).is_some_and(|s| s.success()), "{}", d.log());
    c.batch_execute(
        "CREATE TABLE events_ap (id int NOT NULL, region text NOT NULL, v numeric, PRIMARY KEY (id, region));
         INSERT INTO events_ap SELECT g, 'ap', 1234567890123456789012345 + g FROM generate_series(1, 40) g;
         ALTER TABLE events ATTACH PARTITION events_ap FOR VALUES IN ('ap');
         CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');",
    )
    .await
    .unwrap();
    d.spawn(bin());
    wait_status(&c, "public.events", "done", &d).await;
    // On 14 the reader connects again once past the attach (see the test
    // above); writes through the partition stream from then on.
    wait_reconnect_on_14(&c, &d).await;
    c.batch_execute("INSERT INTO events VALUES (41, 'ap', 41), (1, 'us', 1); DELETE FROM events WHERE id = 2").await.unwrap();
    let lsn: String = c.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    let r = reqwest::get(format!("http://{listen}/wait?lsn={lsn}&timeout=60s")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let want = events_by_key(&c).await;
    assert_eq!(want.len(), 50 - 1 + 40 - 1 + 2);
    let recs = records(&dir.path().join("out.jsonl"));
    assert_eq!(live(final_state(&recs, "events")), want, "the file's final state is the table\n{}", d.log());
    for (key, row) in &want {
        let k: serde_json::Value = serde_json::from_str(key).unwrap();
        let stored = redis.cmd(&["GET", &format!("ev:{}:{}", k["region"].as_str().unwrap(), k["id"])]).opt_text();
        let stored: serde_json::Value = serde_json::from_str(&stored.unwrap_or_else(|| panic!("no key for {key}"))).unwrap();
        assert_eq!(&stored, row, "{key}");
    }
    assert!(d.log().contains("a partition with rows was attached"), "{}", d.log());
}
