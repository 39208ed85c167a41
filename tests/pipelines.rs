//! End-to-end pipelines: fan-out to several sinks, filters, transforms,
//! dead letters, backpressure from a blocked sink, and `doctor`.

mod common;

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

/// The shared e2e config with small batches and queues, so a blocked sink
/// stalls the reader quickly.
fn config(pg: &PgCluster, db: &str, slot: &str, sinks: &str, pipelines: &str, dlq: &std::path::Path) -> String {
    daemon_config(pg, db, slot, sinks, pipelines, dlq).replace("runtime:\n", "runtime:\n  batch_size: 256\n  queue_batches: 4\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_filters_transforms_and_dead_letters() {
    let (pg, c) = cluster("pipes").await;
    c.batch_execute(
        "CREATE TABLE users (id int PRIMARY KEY, email text, name text, secret text, qty int);
         CREATE TABLE other (id int PRIMARY KEY, v int);",
    )
    .await
    .unwrap();
    let dir = scratch();
    let a = out_path(dir.path(), "a");
    let b = out_path(dir.path(), "b");
    let f = out_path(dir.path(), "f");
    let t = out_path(dir.path(), "t");
    let dlq = out_path(dir.path(), "dead");
    let sinks = format!(
        "  a: {{ type: file, path: \"{}\" }}\n  b: {{ type: file, path: \"{}\" }}\n  f: {{ type: file, path: \"{}\" }}\n  t: {{ type: file, path: \"{}\" }}",
        a.display(),
        b.display(),
        f.display(),
        t.display()
    );
    let pipelines = r#"
  - { name: copy-a, from: public.users, to: a }
  - { name: copy-b, from: [public.users, public.other], to: b }
  - name: positive
    from: public.users
    to: f
    ops: [insert, update, delete]
    filter: "op == 'delete' || after.qty > 0"
  - name: shaped
    from: "public.*"
    to: t
    ops: [insert, update]
    filter: "table == 'users'"
    transforms:
      - drop: [secret]
      - rename: { name: full_name }
      - hash: [email]
      - set: { qty2: "after.qty * 2" }
  - name: fragile
    from: public.users
    to: t
    transforms:
      - rename: { nosuch: other }
"#;
    let d = Daemon::start(bin(), dir.path(), "pipes", &config(&pg, "pipes", "pipes", &sinks, pipelines, &dlq));
    testkit::wait_for(Duration::from_secs(30), "slot", || async { confirmed_flush(&c, "pipes").await > 0 }).await;
    c.batch_execute(
        "INSERT INTO users VALUES (1, 'a@b.c', 'Ada', 's1', 5), (2, 'x@y.z', 'Bob', 's2', 0);
         INSERT INTO other VALUES (1, 1);
         UPDATE users SET qty = 0 WHERE id = 1;
         UPDATE users SET qty = 7 WHERE id = 2;
         DELETE FROM users WHERE id = 2;
         INSERT INTO users VALUES (3, 'late@x', 'Late', 's3', 1);",
    )
    .await
    .unwrap();
    // 6 user changes + 1 other.
    wait_lines(&b, 7, Duration::from_secs(30), &d);
    wait_lines(&a, 6, Duration::from_secs(30), &d);
    // Two pipelines on one table, two sinks: the same user changes, in order.
    let ra = records(&a);
    let rb: Vec<_> = records(&b).into_iter().filter(|r| r["table"] == "users").collect();
    assert_eq!(ra, rb, "both sinks get identical user changes in commit order");
    let ops: Vec<_> = ra.iter().map(|r| (r["op"].as_str().unwrap().to_string(), r["key"]["id"].as_i64().unwrap())).collect();
    assert_eq!(
        ops,
        vec![
            ("insert".into(), 1),
            ("insert".into(), 2),
            ("update".into(), 1),
            ("update".into(), 2),
            ("delete".into(), 2),
            ("insert".into(), 3)
        ]
    );
    // Filter: qty > 0 or deletes.
    wait_lines(&f, 4, Duration::from_secs(30), &d);
    let rf: Vec<_> = records(&f).iter().map(|r| (r["op"].as_str().unwrap().to_string(), r["key"]["id"].as_i64().unwrap())).collect();
    assert_eq!(rf, vec![("insert".into(), 1), ("update".into(), 2), ("delete".into(), 2), ("insert".into(), 3)]);
    // Transforms, in order.
    // `shaped` passes the 5 inserts/updates of users; `fragile` fails on
    // them (dead letters below) but passes the delete, which has no `after`.
    wait_lines(&t, 6, Duration::from_secs(30), &d);
    let rt = records(&t);
    assert_eq!(rt.len(), 6, "{rt:#?}");
    assert_eq!(rt.iter().filter(|r| r["op"] == "delete").count(), 1);
    let sha = |s: &str| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(s.as_bytes()))
    };
    assert_eq!(rt[0]["after"], json!({"id": 1, "email": sha("a@b.c"), "full_name": "Ada", "qty": 5, "qty2": 10}));
    assert!(rt.iter().all(|r| r["after"].get("secret").is_none()));
    // The failing pipeline: every user change dead-lettered with its error,
    // and the later changes still arrived everywhere else.
    wait_lines(&dlq, 5, Duration::from_secs(30), &d);
    let dead = records(&dlq);
    assert_eq!(dead.len(), 5);
    for l in &dead {
        assert_eq!(l["pipeline"], "fragile");
        assert!(l["error"].as_str().unwrap().contains("nosuch"), "{l}");
        assert!(l["change"]["table"] == "users");
        assert!(l["commit_lsn"].as_str().is_some());
    }
    assert_eq!(dead.last().unwrap()["change"]["key"]["id"], 3);
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_sink_holds_the_flush_lsn_with_bounded_memory() {
    let (pg, c) = cluster("block").await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, pad text)").await.unwrap();
    let dir = scratch();
    let fifo = dir.path().join("slow.pipe");
    let ok = out_path(dir.path(), "ok");
    let dlq = out_path(dir.path(), "dead");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    // A reader that holds the pipe open without reading: writes block once
    // the pipe buffer is full.
    let (start_reading_tx, start_reading_rx) = std::sync::mpsc::channel::<()>();
    let fifo_path = fifo.clone();
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::open(&fifo_path).unwrap();
        start_reading_rx.recv().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        loop {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    });
    let sinks = format!("  slow: {{ type: file, path: \"{}\" }}\n  ok: {{ type: file, path: \"{}\" }}", fifo.display(), ok.display());
    let pipelines = "  - { name: to-slow, from: public.t, to: slow }\n  - { name: to-ok, from: public.t, to: ok }\n";
    let d = Daemon::start(bin(), dir.path(), "block", &config(&pg, "block", "block", &sinks, pipelines, &dlq));
    testkit::wait_for(Duration::from_secs(30), "slot", || async { confirmed_flush(&c, "block").await > 0 }).await;
    let before = confirmed_flush(&c, "block").await;
    let before_lsn = insert_lsn(&c).await;
    let mut after_first = 0;
    for i in 0..20 {
        c.batch_execute(&format!(
            "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series({}, {}) g",
            i * 10_000 + 1,
            (i + 1) * 10_000
        ))
        .await
        .unwrap();
        if i == 0 {
            after_first = insert_lsn(&c).await;
        }
    }
    let end = insert_lsn(&c).await;
    // Wait until the daemon has demonstrably read the first transaction
    // (the healthy sink has some of it) and then stalled (the healthy sink
    // stops growing because the blocked one holds the reader back), so the
    // assertions below are about a stalled daemon, not one that has not
    // started yet.
    wait_lines(&ok, 1, Duration::from_secs(60), &d);
    let mut last = line_count(&ok);
    testkit::wait_for(Duration::from_secs(60), "the reader to stall behind the blocked sink", || {
        let now = line_count(&ok);
        let stalled = now == last;
        last = now;
        async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            stalled
        }
    })
    .await;
    let held = confirmed_flush(&c, "block").await;
    // The first 10,000-row transaction cannot fit in the pipe, so it is not
    // durable in the blocked sink and its end must not be confirmed. (A
    // keepalive may confirm a position inside it, before its commit: that
    // is safe, the whole transaction is sent again after a restart.)
    assert!(before_lsn >= before && after_first > before_lsn);
    assert!(held < after_first, "flush LSN must not pass what the blocked sink has: {held:X} >= {after_first:X}\n{}", d.log());
    let rss = d.peak_rss_kib().expect("the daemon's peak RSS must be readable from /proc");
    assert!(rss < 64 * 1024, "memory stays bounded while a sink blocks: {rss} KiB");
    assert!(line_count(&ok) < 200_000, "the reader is slowed down too (backpressure)");
    // Recovery: the reader drains the pipe; everything flows and is confirmed.
    start_reading_tx.send(()).unwrap();
    wait_lines(&ok, 200_000, Duration::from_secs(120), &d);
    testkit::wait_for(Duration::from_secs(60), "flush LSN to pass the workload", || async { confirmed_flush(&c, "block").await >= end })
        .await;
    drop(d);
    let bytes = reader.join().unwrap();
    assert!(bytes > 200_000 * 100, "the slow sink got the records too ({bytes} bytes)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_wal_level_and_missing_replica_identity() {
    let (pg, c) = cluster_with("doc", &[("wal_level", "replica")]).await;
    c.batch_execute("CREATE TABLE good (id int PRIMARY KEY); CREATE TABLE nokey (v int);").await.unwrap();
    let dir = scratch();
    let out = out_path(dir.path(), "doc");
    let cfg_path = dir.path().join("doctor.yaml");
    std::fs::write(&cfg_path, file_config(&pg, "doc", "doc", &["public.*"], &out)).unwrap();
    let output = Command::new(bin()).args(["doctor", "-c"]).arg(&cfg_path).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL  wal_level = replica"), "{text}");
    assert!(text.contains("wal_level = logical"), "names the fix: {text}");
    assert!(text.contains("nokey"), "{text}");
    assert!(text.contains("REPLICA IDENTITY FULL"), "names the fix: {text}");
    assert!(text.contains("ok    role postgres has REPLICATION"), "{text}");
    // A healthy setup passes every check.
    let (pg2, c2) = cluster("doc2").await;
    c2.batch_execute("CREATE TABLE good (id int PRIMARY KEY)").await.unwrap();
    std::fs::write(&cfg_path, file_config(&pg2, "doc2", "doc2", &["public.good"], &out)).unwrap();
    let output = Command::new(bin()).args(["doctor", "-c"]).arg(&cfg_path).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("all checks passed"), "{text}");
    // status: the slot does not exist yet.
    let output = Command::new(bin()).args(["status", "-c"]).arg(&cfg_path).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stdout).contains("does not exist"));
}
