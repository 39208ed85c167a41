//! End-to-end: PostgreSQL -> `pgfanout run` -> file sink, against a real
//! PostgreSQL 15 cluster started for each test.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_every_op_type() {
    let (pg, c) = cluster_with("ops", SHORT_WAL_SENDER_TIMEOUT).await;
    c.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text, qty int, big text);
         ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
         CREATE TABLE full_rows (id int PRIMARY KEY, v text);
         ALTER TABLE full_rows REPLICA IDENTITY FULL;
         CREATE TABLE other (id int PRIMARY KEY);",
    )
    .await
    .unwrap();
    let dir = scratch();
    let out = out_path(dir.path(), "ops");
    let mut d = Daemon::start(bin(), dir.path(), "ops", &file_config(&pg, "ops", "ops", &["public.items", "public.full_rows"], &out));
    // Wait for the slot, then write.
    testkit::wait_for(Duration::from_secs(30), "slot to exist", || async { confirmed_flush(&c, "ops").await > 0 }).await;
    let big: String = (0..5000).map(|i| char::from(b'a' + ((i * 7919) % 26) as u8)).collect::<String>() + &"x".repeat(10);
    // Uncompressible enough to be TOASTed out of line.
    let big: String = big.chars().enumerate().map(|(i, ch)| if i % 3 == 0 { char::from(b'A' + (i % 26) as u8) } else { ch }).collect();
    c.execute("INSERT INTO items VALUES (1, 'one', 1, $1)", &[&big]).await.unwrap();
    c.batch_execute(
        "INSERT INTO items VALUES (2, 'two', 2, NULL);
         UPDATE items SET qty = 10 WHERE id = 1;
         UPDATE items SET id = 3 WHERE id = 2;
         DELETE FROM items WHERE id = 3;
         INSERT INTO other VALUES (1);
         INSERT INTO full_rows VALUES (1, 'a');
         UPDATE full_rows SET v = 'b' WHERE id = 1;
         DELETE FROM full_rows WHERE id = 1;
         TRUNCATE items;",
    )
    .await
    .unwrap();
    wait_lines(&out, 9, Duration::from_secs(30), &d);
    let recs = records(&out);
    let ops: Vec<(&str, &str)> = recs.iter().map(|r| (r["table"].as_str().unwrap(), r["op"].as_str().unwrap())).collect();
    assert_eq!(
        ops,
        vec![
            ("items", "insert"),
            ("items", "insert"),
            ("items", "update"),
            ("items", "update"),
            ("items", "delete"),
            ("full_rows", "insert"),
            ("full_rows", "update"),
            ("full_rows", "delete"),
            ("items", "truncate"),
        ],
        "{recs:#?}"
    );
    // Insert: full row, key, no before.
    assert_eq!(recs[0]["after"], json!({"id": 1, "name": "one", "qty": 1, "big": big}));
    assert_eq!(recs[0]["key"], json!({"id": 1}));
    assert_eq!(recs[0]["before"], json!(null));
    assert_eq!(recs[0]["schema"], "public");
    // Update leaving the TOASTed column unchanged: absent from after, listed.
    assert_eq!(recs[2]["after"], json!({"id": 1, "name": "one", "qty": 10}));
    assert_eq!(recs[2]["unchanged_toast"], json!(["big"]));
    assert!(recs[1].get("unchanged_toast").is_none(), "omitted when empty");
    // Key change: before carries the old key, key is the new one.
    assert_eq!(recs[3]["before"], json!({"id": 2}));
    assert_eq!(recs[3]["key"], json!({"id": 3}));
    assert_eq!(recs[3]["after"], json!({"id": 3, "name": "two", "qty": 2, "big": null}));
    // Delete with the default identity: key only.
    assert_eq!(recs[4]["key"], json!({"id": 3}));
    assert_eq!(recs[4]["after"], json!(null));
    // REPLICA IDENTITY FULL: whole old row.
    assert_eq!(recs[6]["before"], json!({"id": 1, "v": "a"}));
    assert_eq!(recs[7]["before"], json!({"id": 1, "v": "b"}));
    // Truncate: no rows.
    assert_eq!(recs[8]["key"], json!(null));
    // Metadata: one transaction per statement here, so commit_lsn grows and
    // the change's own lsn is at most its commit's.
    for r in &recs {
        let l = lsn(r["lsn"].as_str().unwrap());
        let cl = lsn(r["commit_lsn"].as_str().unwrap());
        assert!(l <= cl, "{r}");
        assert!(r["xid"].as_u64().unwrap() > 0);
        let ts = r["commit_ts"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == 27, "{ts}");
    }
    let cls: Vec<u64> = recs.iter().map(|r| lsn(r["commit_lsn"].as_str().unwrap())).collect();
    assert!(cls.windows(2).all(|w| w[0] <= w[1]), "commit order");
    // SIGTERM: clean exit 0, everything confirmed.
    d.signal("TERM");
    let status = d.wait(Duration::from_secs(30)).expect("exit after SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", d.log());
    let confirmed = confirmed_flush(&c, "ops").await;
    assert!(confirmed > *cls.last().unwrap(), "final status update confirmed the last commit");
    assert!(d.log().contains("final status update"), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_match_to_jsonb_end_to_end() {
    let (pg, c) = cluster_with("vals", SHORT_WAL_SENDER_TIMEOUT).await;
    c.batch_execute(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE TABLE vals (id int PRIMARY KEY, n numeric, f float8, r real, b bool, t timestamptz, ts timestamp, d date,
            j jsonb, a int[], ta text[][], m mood, u uuid, by bytea, iv interval, ir int4range);",
    )
    .await
    .unwrap();
    let dir = scratch();
    let out = out_path(dir.path(), "vals");
    let d = Daemon::start(bin(), dir.path(), "vals", &file_config(&pg, "vals", "vals", &["public.vals"], &out));
    testkit::wait_for(Duration::from_secs(30), "slot", || async { confirmed_flush(&c, "vals").await > 0 }).await;
    c.batch_execute(
        "INSERT INTO vals VALUES
          (1, 123456789012345678901234567890.123456789000, 'NaN', 1.5, true, '2026-11-24 10:00:00.5+02', 'infinity', '0044-03-15 BC',
           '{\"a\": [1, 2.50, null], \"b\": {\"c\": \"x\\\"y\"}}', '{1,NULL,3}', '{{\"a b\",\"c\\\\d\"},{NULL,\"\"}}', 'happy',
           'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff10', '1 year 2 mons 3 days 04:05:06.7', '[1,5)'),
          (2, 'NaN', '-Infinity', 'Infinity', false, '-infinity', '2000-01-01 00:00:00', 'infinity', 'null', '{}', '{}', 'sad', NULL, '', '-1 days', 'empty'),
          (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
    )
    .await
    .unwrap();
    wait_lines(&out, 3, Duration::from_secs(30), &d);
    // Compare inside PostgreSQL, from our raw line: jsonb keeps numeric digits.
    let lines = testkit::daemon::read_json_lines(&out);
    for (line, r) in lines.iter().zip(records(&out)) {
        let id = r["after"]["id"].as_i64().unwrap() as i32;
        for col in r["after"].as_object().unwrap().keys() {
            let row = c
                .query_one(
                    &format!(
                        "SELECT ($1::text::jsonb -> 'after' -> $2::text)::text IS NOT DISTINCT FROM COALESCE(to_jsonb({col})::text, 'null'),
                                ($1::text::jsonb -> 'after' -> $2::text)::text, to_jsonb({col})::text FROM vals WHERE id = $3"
                    ),
                    &[line, col, &id],
                )
                .await
                .unwrap_or_else(|e| panic!("{col}: {e}"));
            let same: bool = row.get(0);
            let ours: Option<String> = row.get(1);
            let theirs: Option<String> = row.get(2);
            assert!(same, "row {id} column {col}: ours {ours:?}, PostgreSQL {theirs:?}");
        }
    }
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints() {
    let (pg, c) = cluster_with("metrics", SHORT_WAL_SENDER_TIMEOUT).await;
    c.batch_execute("CREATE TABLE m (id int PRIMARY KEY, v text)").await.unwrap();
    let dir = scratch();
    let out = out_path(dir.path(), "m");
    let port = testkit::free_port();
    let cfg = file_config(&pg, "metrics", "metrics", &["public.m"], &out)
        .replace("http:\n  enabled: false", &format!("http:\n  listen: 127.0.0.1:{port}"));
    let d = Daemon::start(bin(), dir.path(), "m", &cfg);
    testkit::wait_until(Duration::from_secs(30), "readyz", || http_get(port, "/readyz").0 == 200);
    assert_eq!(http_get(port, "/healthz").0, 200);
    // One simple-query string: one (implicit) transaction.
    c.batch_execute("INSERT INTO m SELECT g, 'x' FROM generate_series(1, 100) g; DELETE FROM m WHERE id <= 10;").await.unwrap();
    wait_lines(&out, 110, Duration::from_secs(30), &d);
    testkit::wait_until(Duration::from_secs(30), "metrics to show the changes", || {
        let (_, body) = http_get(port, "/metrics");
        body.contains("pgfanout_changes_read_total{table=\"public.m\",op=\"insert\"} 100")
            && body.contains("pgfanout_changes_read_total{table=\"public.m\",op=\"delete\"} 10")
    });
    let (_, body) = http_get(port, "/metrics");
    for name in [
        "pgfanout_sink_written_total{sink=\"out\"} 110",
        "pgfanout_transactions_total 1",
        "pgfanout_confirmed_flush_lsn",
        "pgfanout_sink_durable_lsn{sink=\"out\"}",
        "pgfanout_end_to_end_latency_seconds_bucket",
        "pgfanout_source_streaming 1",
        "pgfanout_slot_retained_wal_bytes",
    ] {
        assert!(body.contains(name), "{name} missing from\n{body}");
    }
    // A backfill of a table no pipeline reads is refused at once, as the
    // CLI refuses it (it used to be accepted and fail later).
    let (code, body) = http_request(port, "POST", "/backfills?table=public.nobody_reads_this");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("no pipeline of this config reads it"), "{body}");
    // pgfanout's own idempotent DDL notices are not logged at INFO, and a
    // log that is not a terminal has no colour codes.
    let log = d.log();
    assert!(!log.lines().any(|l| l.contains(" INFO ") && l.contains("already exists, skipping")), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI codes in a piped log:\n{log}");
    drop(d);
    testkit::wait_until(Duration::from_secs(10), "listener closed", || http_get(port, "/healthz").0 == 0);
}
