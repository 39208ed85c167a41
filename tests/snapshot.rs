//! End-to-end initial snapshot: existing rows first, then the stream, with
//! nothing missed; crash during the snapshot; tables added later.

mod common;

use std::time::Duration;

use common::*;

fn snapshot_config(pg: &PgCluster, db: &str, slot: &str, tables: &[&str], out: &std::path::Path) -> String {
    file_config(pg, db, slot, tables, out).replace("snapshot: never", "snapshot: initial")
}

/// Writes while the snapshot runs: updates, inserts and deletes on `t1`.
async fn churn(c: &tokio_postgres::Client, rounds: usize) {
    for i in 0..rounds {
        let id = (i * 7919 % 100_000 + 1) as i32;
        c.batch_execute(&format!(
            "UPDATE t1 SET v = v + 1, note = 'churn {i}' WHERE id = {id};
             INSERT INTO t1 (id, v, note) VALUES ({}, 0, 'new') ON CONFLICT (id) DO NOTHING;
             DELETE FROM t2 WHERE id = {};",
            2_000_000 + i,
            id
        ))
        .await
        .unwrap();
    }
}

async fn assert_tables_equal(c: &tokio_postgres::Client, out: &std::path::Path, tables: &[&str]) {
    assert_replay_equals_tables(c, &records(out), tables).await;
}

/// Every key's records in `out` follow commit order: a key's `commit_lsn`
/// never goes down from one of its records to the next (a copied row newer
/// than a change streamed after it would).
fn assert_per_key_order(out: &std::path::Path) {
    let mut last: std::collections::HashMap<String, (u64, usize)> = std::collections::HashMap::new();
    let mut backwards = Vec::new();
    for (i, r) in records(out).iter().enumerate() {
        if r["op"] == "truncate" {
            continue;
        }
        let key = format!("{}:{}", r["table"], r["key"]);
        let at = lsn(r["commit_lsn"].as_str().expect("commit_lsn"));
        if let Some((prev, line)) = last.get(&key) {
            if at < *prev {
                backwards.push(format!("{key}: line {line} at {prev:X}, then line {i} at {at:X} ({})", r["op"]));
            }
        }
        last.insert(key, (at, i));
    }
    assert!(backwards.is_empty(), "{} keys went backwards, e.g. {:?}", backwards.len(), &backwards[..backwards.len().min(5)]);
}

fn backfills_done(d: &Daemon) -> usize {
    d.log().matches("backfill done").count()
}

async fn create_tables(c: &tokio_postgres::Client) {
    c.batch_execute(
        "CREATE TABLE t1 (id int PRIMARY KEY, v int NOT NULL, note text, at timestamptz DEFAULT '2026-01-01');
         CREATE TABLE t2 (id int PRIMARY KEY, payload jsonb, tags text[]);
         CREATE TABLE t3 (id int PRIMARY KEY, amount numeric(20,6));
         INSERT INTO t1 SELECT g, g % 100, 'row ' || g FROM generate_series(1, 600000) g;
         INSERT INTO t2 SELECT g, jsonb_build_object('g', g, 's', 'x\"y'), ARRAY['a', g::text] FROM generate_series(1, 300000) g;
         INSERT INTO t3 SELECT g, g / 7.0 FROM generate_series(1, 100000) g;
         ANALYZE;",
    )
    .await
    .unwrap();
}

/// A cluster with [`create_tables`] in `db` and a daemon taking the
/// initial snapshot of them into `<db>.jsonl`, once the output has more
/// than `lines` lines.
async fn snapshot_under_way(db: &str, lines: usize) -> (PgCluster, tokio_postgres::Client, tempfile::TempDir, std::path::PathBuf, Daemon) {
    let (pg, c) = cluster(db).await;
    create_tables(&c).await;
    let dir = scratch();
    let out = out_path(dir.path(), db);
    let d = Daemon::start(bin(), dir.path(), db, &snapshot_config(&pg, db, db, &["public.*"], &out));
    testkit::wait_for(Duration::from_secs(60), "snapshot under way", || {
        let n = line_count(&out);
        async move { n > lines }
    })
    .await;
    (pg, c, dir, out, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_stream_ends_equal_to_the_tables() {
    // Writes during the snapshot.
    let (_pg, c, _dir, out, d) = snapshot_under_way("snap", 1000).await;
    churn(&c, 300).await;
    let n: i64 =
        c.query_one("SELECT (SELECT count(*) FROM t1) + (SELECT count(*) FROM t2) + (SELECT count(*) FROM t3)", &[]).await.unwrap().get(0);
    wait_lines(&out, n as usize, Duration::from_secs(240), &d);
    testkit::wait_until(Duration::from_secs(60), "the churn to be streamed", || {
        tail_records(&out, 2000).iter().any(|r| r["after"]["note"] == "new" && r["after"]["id"] == 2_000_299)
    });
    let recs = records(&out);
    let reads = recs.iter().filter(|r| r["op"] == "read").count();
    assert!(reads >= 1_000_000 - 300, "snapshot rows: {reads}");
    let read = recs.iter().find(|r| r["op"] == "read").unwrap();
    assert_eq!(read["xid"], serde_json::Value::Null);
    assert_eq!(read["lsn"], read["commit_lsn"], "snapshot rows carry the consistent point");
    assert_tables_equal(&c, &out, &["t1", "t2", "t3"]).await;
    assert!(d.log().contains("snapshot complete"), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_snapshot_restarts_it_cleanly() {
    let (_pg, c, _dir, out, mut d) = snapshot_under_way("crash", 50_000).await;
    d.kill9();
    assert!(!d.log().contains("snapshot complete"), "the kill must land inside the copy");
    churn(&c, 100).await;
    d.spawn(bin());
    // The tables are copied again by backfills while the stream replays
    // what changed since the slot's consistent point.
    testkit::wait_until(Duration::from_secs(240), "the tables to be backfilled", || backfills_done(&d) >= 3);
    assert!(d.log().contains("the initial snapshot was interrupted"), "{}", d.log());
    churn(&c, 50).await;
    c.batch_execute("INSERT INTO t3 VALUES (9999999, 1)").await.unwrap();
    testkit::wait_until(Duration::from_secs(60), "the last change to be streamed", || {
        tail_records(&out, 500).iter().any(|r| r["table"] == "t3" && r["after"]["id"] == 9_999_999)
    });
    assert_tables_equal(&c, &out, &["t1", "t2", "t3"]).await;
    assert_per_key_order(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_added_later_is_snapshotted_alone() {
    let (pg, c) = cluster("added").await;
    c.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY, v int);
         CREATE TABLE b (id int PRIMARY KEY, v int);
         INSERT INTO a SELECT g, g FROM generate_series(1, 1000) g;
         INSERT INTO b SELECT g, g FROM generate_series(1, 500) g;",
    )
    .await
    .unwrap();
    let dir = scratch();
    let out = out_path(dir.path(), "added");
    let mut d = Daemon::start(bin(), dir.path(), "added", &snapshot_config(&pg, "added", "added", &["public.a"], &out));
    wait_lines(&out, 1000, Duration::from_secs(60), &d);
    testkit::wait_until(Duration::from_secs(30), "snapshot complete", || d.log().contains("snapshot complete"));
    c.batch_execute("UPDATE a SET v = -1 WHERE id = 1; UPDATE b SET v = -1 WHERE id = 1;").await.unwrap();
    wait_lines(&out, 1001, Duration::from_secs(30), &d);
    d.signal("TERM");
    assert!(d.wait(Duration::from_secs(30)).expect("exit").success());
    let before = records(&out).len();
    // b joins the config; more writes while pgfanout is down.
    c.batch_execute("UPDATE a SET v = -2 WHERE id = 2; UPDATE b SET v = -2 WHERE id = 2;").await.unwrap();
    let mut d = Daemon::start(bin(), dir.path(), "added", &snapshot_config(&pg, "added", "added", &["public.a", "public.b"], &out));
    testkit::wait_until(Duration::from_secs(60), "b to be snapshotted", || {
        records(&out).iter().filter(|r| r["table"] == "b").count() >= 500
    });
    c.batch_execute("UPDATE b SET v = -3 WHERE id = 3; UPDATE a SET v = -3 WHERE id = 3;").await.unwrap();
    testkit::wait_until(Duration::from_secs(30), "later changes of b", || {
        records(&out).iter().any(|r| r["table"] == "b" && r["op"] == "update" && r["after"]["id"] == 3)
    });
    let recs = records(&out);
    let second = &recs[before..];
    assert_eq!(second.iter().filter(|r| r["table"] == "a" && r["op"] == "read").count(), 0, "a is not copied again");
    assert_eq!(second.iter().filter(|r| r["table"] == "b" && r["op"] == "read").count(), 500, "b is copied once");
    assert!(second.iter().any(|r| r["table"] == "a" && r["after"]["v"] == -2), "a streamed on from the slot");
    // Wait for a's last change too, then compare both tables.
    testkit::wait_until(Duration::from_secs(30), "a's last change", || {
        records(&out).iter().any(|r| r["table"] == "a" && r["after"]["v"] == -3)
    });
    assert_tables_equal(&c, &out, &["a", "b"]).await;
    d.signal("TERM");
    assert!(d.wait(Duration::from_secs(30)).expect("exit").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_connection_lost_mid_copy_is_retried() {
    let (_pg, c, _dir, out, mut d) = snapshot_under_way("lost", 20_000).await;
    let killed: i64 = c
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query ILIKE 'COPY %' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1, "a COPY was running");
    churn(&c, 50).await;
    testkit::wait_until(Duration::from_secs(240), "the tables to be backfilled after the copy failed", || backfills_done(&d) >= 3);
    assert!(d.log().contains("snapshot interrupted; copying again"), "{}", d.log());
    assert!(d.is_running(), "a lost connection is not fatal");
    c.batch_execute("INSERT INTO t3 VALUES (9999999, 1)").await.unwrap();
    testkit::wait_until(Duration::from_secs(60), "the last change to be streamed", || {
        tail_records(&out, 500).iter().any(|r| r["table"] == "t3" && r["after"]["id"] == 9_999_999)
    });
    assert_tables_equal(&c, &out, &["t1", "t2", "t3"]).await;
    assert_per_key_order(&out);
    d.signal("TERM");
    assert!(d.wait(Duration::from_secs(30)).expect("exit").success());
}

/// The columns a copied row carries are the ones the stream carries: a
/// publication's column list (15+) and, on 18 with
/// `publish_generated_columns`, stored generated columns (left out on every
/// earlier server, which never streams them). Checked on the initial
/// snapshot, the stream and a backfill, against `to_jsonb` of the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_stream_and_backfill_carry_the_published_columns() {
    let (pg, c) = cluster("cols").await;
    let major = server_major(&c).await;
    c.batch_execute(
        "CREATE TABLE g (id int PRIMARY KEY, a int, b int GENERATED ALWAYS AS (a * 2) STORED, note text);
         CREATE TABLE h (id int PRIMARY KEY, a int, secret text);
         INSERT INTO g (id, a, note) SELECT i, i, 'n' || i FROM generate_series(1, 50) i;
         INSERT INTO h SELECT i, i, 's' || i FROM generate_series(1, 50) i;",
    )
    .await
    .unwrap();
    // 15+: a column list leaves h.secret out of the stream.
    let listed = major >= 15;
    let h_item = if listed { "h (id, a)" } else { "h" };
    c.batch_execute(&format!("CREATE PUBLICATION cols FOR TABLE g, {h_item}")).await.unwrap();
    let generated = major >= 18;
    let dir = scratch();
    let out = out_path(dir.path(), "cols");
    let mut config = snapshot_config(&pg, "cols", "cols", &["public.g", "public.h"], &out);
    if generated {
        config = config.replace("    snapshot: initial\n", "    snapshot: initial\n    publish_generated_columns: true\n");
        assert!(config.contains("publish_generated_columns"), "{config}");
    }
    let d = Daemon::start(bin(), dir.path(), "cols", &config);
    wait_lines(&out, 100, Duration::from_secs(60), &d);
    c.batch_execute("INSERT INTO g (id, a, note) VALUES (51, 51, 'new'); UPDATE g SET a = -a WHERE id <= 5; INSERT INTO h VALUES (51, 51, 'x'); UPDATE h SET a = -a WHERE id <= 5;")
        .await
        .unwrap();
    wait_confirmed(&c, "cols", &d, Duration::from_secs(60)).await;
    let status =
        std::process::Command::new(bin()).args(["backfill", "-c"]).arg(&d.config_path).args(["--table", "public.g"]).output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    testkit::wait_until(Duration::from_secs(60), "the backfill of g", || {
        records(&out).iter().filter(|r| r["table"] == "g" && r["op"] == "read").count() >= 51 + 50
    });
    let expected = |table: &str| -> Vec<&'static str> {
        match table {
            "g" if generated => vec!["a", "b", "id", "note"],
            "g" => vec!["a", "id", "note"],
            _ if listed => vec!["a", "id"],
            _ => vec!["a", "id", "secret"],
        }
    };
    let recs = records(&out);
    for (op, table) in [("read", "g"), ("insert", "g"), ("update", "g"), ("read", "h"), ("insert", "h"), ("update", "h")] {
        let mine: Vec<_> = recs.iter().filter(|r| r["op"] == op && r["table"] == table).collect();
        assert!(!mine.is_empty(), "some {op} of {table}");
        for r in mine {
            let mut cols: Vec<&str> = r["after"].as_object().unwrap().keys().map(String::as_str).collect();
            cols.sort();
            assert_eq!(cols, expected(table), "{op} of {table} on PostgreSQL {major}: {r}");
        }
    }
    // Every row's last record equals to_jsonb of the row, cut to those columns.
    for table in ["g", "h"] {
        let state = live(final_state(&recs, table));
        let rows = rows_by_id(&c, table).await;
        assert_eq!(state.len(), rows.len(), "{table}");
        for (id, row) in rows {
            let want: serde_json::Map<String, serde_json::Value> = row
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| expected(table).contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let key = serde_json::json!({ "id": id.parse::<i64>().unwrap() }).to_string();
            assert_eq!(state.get(&key), Some(&serde_json::Value::Object(want)), "{table} row {id}");
        }
    }
}
