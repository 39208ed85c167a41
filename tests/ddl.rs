//! Schema changes while pgfanout streams or is down: no row may stop the
//! stream for good, and the sink ends equal to the table.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value as Json;

/// `{id -> to_jsonb(row)}` for `ids` of `table`.
async fn rows_now(c: &tokio_postgres::Client, table: &str, ids: &[i32]) -> HashMap<i64, Json> {
    let rows = c.query(&format!("SELECT id, to_jsonb(t)::text FROM {table} t WHERE id = ANY($1)"), &[&ids]).await.unwrap();
    rows.iter().map(|r| (i64::from(r.get::<_, i32>(0)), serde_json::from_str(&r.get::<_, String>(1)).unwrap())).collect()
}

/// The last `after` per id of `table` in the output.
fn last_after(out: &Path, table: &str) -> HashMap<i64, Json> {
    let mut m = HashMap::new();
    for r in records(out).into_iter().filter(|r| r["table"] == table) {
        if let Some(id) = r["after"]["id"].as_i64() {
            m.insert(id, r["after"].clone());
        }
    }
    m
}

/// Waits until the sink holds, for every id in `ids`, exactly what
/// PostgreSQL holds now (after the last write to those rows).
async fn assert_rows_arrive(c: &tokio_postgres::Client, out: &Path, table: &str, ids: &[i32], d: &Daemon, step: &str) {
    let want = rows_now(c, table, ids).await;
    assert_eq!(want.len(), ids.len(), "{step}: rows exist");
    let start = std::time::Instant::now();
    loop {
        let got = last_after(out, table);
        let diff: Vec<(i64, Option<&Json>, &Json)> =
            want.iter().filter(|(id, v)| got.get(id) != Some(v)).map(|(id, v)| (*id, got.get(id), v)).collect();
        if diff.is_empty() {
            return;
        }
        if start.elapsed() > Duration::from_secs(60) {
            panic!("{step}: sink differs from the table: {diff:?}\n--- daemon log ---\n{}", d.log());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_while_streaming_keeps_the_sink_equal_to_the_table() {
    let db = "ddl";
    let (pg, c) = cluster(db).await;
    c.batch_execute(
        "CREATE TYPE mood AS ENUM ('sad', 'ok');
         CREATE DOMAIN posint AS int CHECK (VALUE > 0);
         CREATE TABLE d (id int PRIMARY KEY, name text, m mood, p posint, amount int);",
    )
    .await
    .unwrap();
    let dir = scratch();
    let out = out_path(dir.path(), db);
    let d = Daemon::start(bin(), dir.path(), db, &file_config(&pg, db, db, &["public.d"], &out));
    testkit::wait_for(Duration::from_secs(30), "slot", || async { confirmed_flush(&c, db).await > 0 }).await;
    let ids = |a: i32, b: i32| (a..=b).collect::<Vec<i32>>();

    c.batch_execute("INSERT INTO d SELECT g, 'n' || g, 'ok', g, g * 10 FROM generate_series(1, 20) g").await.unwrap();
    assert_rows_arrive(&c, &out, "d", &ids(1, 20), &d, "initial rows").await;

    // Each DDL, then writes of the new shape (separate transactions: a new
    // enum label cannot be used in the transaction that adds it).
    let steps: [(&str, &str, &str, Vec<i32>); 5] = [
        (
            "ADD COLUMN with default",
            "ALTER TABLE d ADD COLUMN extra int DEFAULT 7",
            "UPDATE d SET name = name || '!' WHERE id <= 5; INSERT INTO d VALUES (21, 'x', 'sad', 3, 1, 8)",
            vec![1, 2, 3, 4, 5, 21],
        ),
        ("DROP COLUMN", "ALTER TABLE d DROP COLUMN name", "UPDATE d SET amount = amount + 1 WHERE id BETWEEN 6 AND 10", ids(6, 10)),
        (
            "RENAME COLUMN",
            "ALTER TABLE d RENAME COLUMN amount TO qty",
            "UPDATE d SET qty = qty + 1 WHERE id BETWEEN 11 AND 15",
            ids(11, 15),
        ),
        (
            "ALTER COLUMN TYPE",
            "ALTER TABLE d ALTER COLUMN qty TYPE numeric(12,2) USING qty * 1.5",
            "UPDATE d SET qty = qty + 0.25 WHERE id BETWEEN 16 AND 20",
            ids(16, 20),
        ),
        ("new enum label", "ALTER TYPE mood ADD VALUE 'happy'", "UPDATE d SET m = 'happy' WHERE id <= 3", ids(1, 3)),
    ];
    for (what, ddl, writes, rows) in &steps {
        c.batch_execute(ddl).await.unwrap();
        c.batch_execute(writes).await.unwrap();
        assert_rows_arrive(&c, &out, "d", rows, &d, what).await;
    }

    // Domain changes and writes in one transaction.
    c.batch_execute(
        "ALTER DOMAIN posint ADD CONSTRAINT small CHECK (VALUE < 1000000);
         ALTER DOMAIN posint SET DEFAULT 5;
         INSERT INTO d (id, m, qty) VALUES (22, 'happy', 2.5);
         UPDATE d SET p = 999999 WHERE id = 4;",
    )
    .await
    .unwrap();
    assert_rows_arrive(&c, &out, "d", &[4, 22], &d, "domain changes").await;

    // Every row, after a final touch (rows not written since a DDL keep their
    // older image in a change stream, as in any CDC tool), equals the table.
    c.batch_execute("UPDATE d SET extra = coalesce(extra, 0) + 1").await.unwrap();
    assert_rows_arrive(&c, &out, "d", &ids(1, 22), &d, "final").await;
    let dead = dir.path().join(format!("{db}.dead.jsonl"));
    assert_eq!(line_count(&dead), 0, "nothing dead-lettered:\n{}", std::fs::read_to_string(&dead).unwrap_or_default());
}

/// The reproduced poison row: a composite type gains an attribute while
/// rows of the old shape are still in the slot. Those rows now decode with
/// the new attribute as null (as PostgreSQL reads them); and a type that
/// lost an attribute makes its old rows undecodable, which go to the
/// dead-letter file while the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_types_changed_while_down_never_stop_the_stream() {
    let db = "poison";
    let (pg, c) = cluster(db).await;
    c.batch_execute(
        "CREATE TYPE addr AS (street text, zip text);
         CREATE TABLE t (id int PRIMARY KEY, a addr);
         CREATE TYPE pair AS (x int, y int, z int);
         CREATE TABLE u (id int PRIMARY KEY, p pair);",
    )
    .await
    .unwrap();
    let dir = scratch();
    let out = out_path(dir.path(), db);
    let cfg = file_config(&pg, db, db, &["public.t", "public.u"], &out);
    let mut d = Daemon::start(bin(), dir.path(), db, &cfg);
    testkit::wait_for(Duration::from_secs(30), "slot", || async { confirmed_flush(&c, db).await > 0 }).await;
    c.batch_execute("INSERT INTO t VALUES (1, ROW('first', 'a'))").await.unwrap();
    assert_rows_arrive(&c, &out, "t", &[1], &d, "before").await;
    d.signal("TERM");
    assert!(d.wait(Duration::from_secs(30)).expect("exit").success());

    // While pgfanout is down: rows of the old shapes, then the types change.
    c.batch_execute(
        "INSERT INTO t VALUES (2, ROW('old', 'z'));
         INSERT INTO u VALUES (1, ROW(1, 2, 3));",
    )
    .await
    .unwrap();
    c.batch_execute("ALTER TYPE addr ADD ATTRIBUTE city text").await.unwrap();
    c.batch_execute("ALTER TYPE pair DROP ATTRIBUTE z").await.unwrap();
    c.batch_execute(
        "INSERT INTO t VALUES (3, ROW('new', 'y', 'c'));
         INSERT INTO u VALUES (2, ROW(4, 5));",
    )
    .await
    .unwrap();

    d.spawn(bin());
    // The old-shape addr row decodes with city null, as PostgreSQL now reads it.
    assert_rows_arrive(&c, &out, "t", &[2, 3], &d, "after ADD ATTRIBUTE").await;
    assert_eq!(last_after(&out, "t")[&2]["a"], serde_json::json!({"street": "old", "zip": "z", "city": null}));
    // The row written before `DROP ATTRIBUTE z` has a field too many: it is
    // dead-lettered with its raw text and the error; later rows arrive.
    assert_rows_arrive(&c, &out, "u", &[2], &d, "after DROP ATTRIBUTE").await;
    c.batch_execute("INSERT INTO t VALUES (4, ROW('later', 'q', 'c'))").await.unwrap();
    assert_rows_arrive(&c, &out, "t", &[4], &d, "the stream goes on").await;
    let dead = testkit::daemon::read_json_lines(&dir.path().join(format!("{db}.dead.jsonl")));
    assert_eq!(dead.len(), 1, "one undecodable row: {dead:?}\n{}", d.log());
    let letter: Json = serde_json::from_str(&dead[0]).unwrap();
    assert_eq!(letter["change"]["table"], "u");
    assert_eq!(letter["change"]["after"]["p"], "(1,2,3)", "raw text value: {letter}");
    assert!(letter["error"].as_str().unwrap().contains("more fields than the type has attributes"), "{letter}");
    assert!(letter["commit_lsn"].as_str().is_some() && letter["ordinal"].is_u64(), "{letter}");
    assert!(d.is_running(), "{}", d.log());

    // The same kind of row with `on_decode_error: stop`: exit 1 naming the
    // setting, and the slot stays before the row: the next start (back to
    // dead_letter) receives it again.
    d.signal("TERM");
    assert!(d.wait(Duration::from_secs(30)).expect("exit").success());
    c.batch_execute("INSERT INTO u VALUES (3, ROW(7, 8)); ALTER TYPE pair ADD ATTRIBUTE w int; ALTER TYPE pair DROP ATTRIBUTE x;")
        .await
        .unwrap();
    c.batch_execute("ALTER TYPE pair DROP ATTRIBUTE w").await.unwrap();
    let stop_cfg = cfg.replace("    status_interval: 1s\n", "    status_interval: 1s\n    on_decode_error: stop\n");
    assert_ne!(stop_cfg, cfg);
    let mut d2 = Daemon::start(bin(), dir.path(), "poison-stop", &stop_cfg);
    let status = d2.wait(Duration::from_secs(60)).expect("pgfanout must stop on the undecodable row");
    assert_eq!(status.code(), Some(1), "{}", d2.log());
    assert!(d2.log().contains("on_decode_error: dead_letter"), "{}", d2.log());
    d.spawn(bin());
    let dead_path = dir.path().join(format!("{db}.dead.jsonl"));
    testkit::wait_until(Duration::from_secs(30), "the row again, now dead-lettered", || {
        testkit::daemon::read_json_lines(&dead_path).len() >= 2
    });
    let dead = testkit::daemon::read_json_lines(&dead_path);
    let letter: Json = serde_json::from_str(&dead[1]).unwrap();
    assert_eq!(letter["change"]["after"]["p"], "(7,8)", "{letter}");
    assert_eq!(dead.len(), 2, "{dead:?}");
}
