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
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.log().contains("streaming started") {
        assert!(Instant::now() < deadline, "not streaming:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_backfill_under_writes_survives_sigkill_and_ends_equal() {
    let pg = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let db = "backfill";
    pg.create_database(db).await;
    let c = pg.client(db).await;
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
                if n % 20 == 0 {
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
                let id =
                    if n % 2 == 0 && cursor > 0 { (cursor + 1 + rng.below(5000)).min(ROWS as u64) } else { 1 + rng.below(ROWS as u64) };
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
    d.spawn(bin());
    tokio::task::block_in_place(|| wait_streaming(&d));
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
