//! The initial snapshot reader against a real PostgreSQL: every row exactly
//! once and equal to `to_jsonb()`, snapshot isolation, backpressure, the
//! per-slot state table, and (ignored) throughput against `psql \copy`.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgfanout_postgres::conn::{PgConnectOptions, TlsFiles};
use pgfanout_postgres::replication::{ReplicationClient, SnapshotAction};
use pgfanout_postgres::slot::{resolve_tables, TableName};
use pgfanout_postgres::snapshot::{
    clear_state, copy_tables, ensure_state_table, mark_tables, snapshot_state, Pinned, SnapshotOptions, SnapshotStatus, TableProgress,
};
use pgfanout_sdk::{Change, Lsn, Op, Value};
use testkit::PgCluster;
use tokio::sync::mpsc;

async fn setup(db: &str) -> (PgCluster, PgConnectOptions, tokio_postgres::Client) {
    let pg = PgCluster::start();
    pg.create_database(db).await;
    let opts = PgConnectOptions::from_url(&format!("{}?sslmode=disable", pg.url(db)), TlsFiles::default()).expect("options");
    let client = pg.client(db).await;
    (pg, opts, client)
}

fn t(name: &str) -> TableName {
    TableName::new("public", name)
}

type Progress = Arc<Mutex<Vec<TableProgress>>>;

/// Runs copy_tables and collects everything it sends and reports.
async fn copy_all(
    opts: &PgConnectOptions,
    tables: &[TableName],
    snapshot: Option<&str>,
    options: SnapshotOptions,
) -> (Vec<Change>, Vec<TableProgress>, u64) {
    let (tx, mut rx) = mpsc::channel(8);
    let collector = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(batch) = rx.recv().await {
            out.extend(batch);
        }
        out
    });
    let progress: Progress = Arc::default();
    let p = progress.clone();
    let n = copy_tables(opts, tables, snapshot, Lsn(0x1234_5678), &options, tx, move |tp| p.lock().unwrap().push(tp))
        .await
        .expect("copy_tables");
    let changes = collector.await.unwrap();
    let progress = progress.lock().unwrap().clone();
    (changes, progress, n)
}

fn json(row: &Option<pgfanout_sdk::Row>) -> String {
    let mut out = Vec::new();
    row.as_ref().expect("row").write_json(&mut out);
    String::from_utf8(out).unwrap()
}

fn done_rows(progress: &[TableProgress], table: &str) -> u64 {
    let done: Vec<_> = progress.iter().filter(|p| p.table.name == table && p.done).collect();
    assert_eq!(done.len(), 1, "exactly one done report for {table}: {progress:?}");
    done[0].rows
}

/// `to_jsonb` of every row of `table`, in `id` order.
async fn rows_by_id(c: &tokio_postgres::Client, table: &str) -> Vec<serde_json::Value> {
    let rows = c.query(&format!("SELECT to_jsonb(t)::text FROM {table} t ORDER BY id"), &[]).await.unwrap();
    rows.iter().map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap()).collect()
}

/// Bulk oracle: loads (id, json) pairs into a table and counts the rows of
/// `table` whose `to_jsonb` text equals ours (`jsonb::text` keeps numeric scale).
async fn count_equal_to_jsonb(c: &tokio_postgres::Client, table: &str, got: &[(i32, String)]) -> i64 {
    c.batch_execute("DROP TABLE IF EXISTS got; CREATE TABLE got (id int, j text)").await.unwrap();
    for batch in got.chunks(20_000) {
        let ids: Vec<i32> = batch.iter().map(|(i, _)| *i).collect();
        let js: Vec<&str> = batch.iter().map(|(_, j)| j.as_str()).collect();
        c.execute("INSERT INTO got SELECT * FROM unnest($1::int[], $2::text[])", &[&ids, &js]).await.unwrap();
    }
    let mismatch = c
        .query(
            &format!(
                "SELECT g.id, g.j, to_jsonb(src)::text FROM got g JOIN {table} src USING (id) \
                 WHERE g.j::jsonb::text IS DISTINCT FROM to_jsonb(src)::text LIMIT 3"
            ),
            &[],
        )
        .await
        .unwrap();
    for r in &mismatch {
        eprintln!("mismatch id {}:\n ours: {}\n  pg:  {}", r.get::<_, i32>(0), r.get::<_, String>(1), r.get::<_, String>(2));
    }
    c.query_one(&format!("SELECT count(*) FROM got g JOIN {table} src USING (id) WHERE g.j::jsonb::text = to_jsonb(src)::text"), &[])
        .await
        .unwrap()
        .get(0)
}

const TYPES_SCHEMA: &str = r#"
CREATE TABLE big (
    id int PRIMARY KEY, t text, n numeric, j jsonb, arr text[], ia int[], b bytea, ts timestamptz,
    f float8, ok bool, d date
);
INSERT INTO big SELECT i,
    CASE WHEN i % 7 = 0 THEN NULL
         ELSE 'row ' || i || E'\ttab\nnl\\bs\r' || chr(8) || chr(11) || chr(12) || E' é中🎉 "q" \\N \\x41 \\101' END,
    CASE WHEN i % 11 = 0 THEN NULL WHEN i % 17 = 0 THEN 'NaN'::numeric
         ELSE (i || '.' || lpad((i::int8 * 7919 % 1000000)::text, 6, '0') || '00000000000000000001')::numeric END,
    jsonb_build_object('i', i, 's', E'a\tb\\c"d\n', 'arr', jsonb_build_array(i, 1.50, null, true)),
    ARRAY['a' || i, E'x\\y', 'with "quote"', NULL, 'NULL', '', E'tab\there', '{}'],
    ARRAY[i, -i, NULL],
    CASE WHEN i % 5 = 0 THEN NULL ELSE decode(md5(i::text), 'hex') || '\x5c0009'::bytea END,
    timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second 123 microseconds',
    CASE WHEN i % 13 = 0 THEN 'NaN'::float8 ELSE i / 3.0 END,
    i % 2 = 0,
    date '2000-01-01' + i % 10000
FROM generate_series(1, 300000) i;

CREATE TABLE nokey (a int, b text);
INSERT INTO nokey SELECT i % 100, CASE WHEN i % 3 = 0 THEN NULL ELSE E'v\t' || (i % 50) END FROM generate_series(1, 5000) i;
ANALYZE nokey;

CREATE TABLE empty_t (id int PRIMARY KEY, v text);

CREATE TABLE ri (a int NOT NULL, b int NOT NULL, c text, id int);
CREATE UNIQUE INDEX ri_ab ON ri (a, b);
ALTER TABLE ri REPLICA IDENTITY USING INDEX ri_ab;
INSERT INTO ri SELECT i, -i, 'c' || i, i FROM generate_series(1, 100) i;

CREATE TABLE parted (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (1) TO (100);
CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM (100) TO (1000);
INSERT INTO parted SELECT i, 'p' || i FROM generate_series(1, 300) i;
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_once_and_equal_to_to_jsonb() {
    let (_pg, opts, c) = setup("snap").await;
    c.batch_execute(TYPES_SCHEMA).await.expect("schema");
    let tables = [t("big"), t("nokey"), t("empty_t"), t("ri"), t("parted")];
    let options = SnapshotOptions { parallelism: 4, chunk_rows: 20_000, ..SnapshotOptions::default() };
    let started = Instant::now();
    let (changes, progress, n) = copy_all(&opts, &tables, None, options).await;
    eprintln!("copied {n} rows in {:?}", started.elapsed());
    assert_eq!(n as usize, changes.len());

    let mut by_table: BTreeMap<String, Vec<&Change>> = BTreeMap::new();
    for ch in &changes {
        assert_eq!(ch.op, Op::Read);
        assert_eq!((ch.lsn, ch.commit_lsn, ch.ordinal, ch.xid, ch.commit_ts), (Lsn(0x1234_5678), Lsn(0x1234_5678), 0, None, None));
        assert!(ch.before.is_none() && ch.unchanged_toast.is_empty());
        assert_eq!(&*ch.schema, "public");
        by_table.entry(ch.table.to_string()).or_default().push(ch);
    }
    let counts: BTreeMap<&str, usize> = by_table.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
    assert_eq!(counts, BTreeMap::from([("big", 300_000), ("nokey", 5000), ("parted", 300), ("ri", 100)]));

    // big: each id once, key = {"id": n}, JSON = to_jsonb(t).
    let big = &by_table["big"];
    let mut ids = Vec::with_capacity(big.len());
    let mut got = Vec::with_capacity(big.len());
    for ch in big {
        let Some(Value::Number(id)) = ch.after.as_ref().unwrap().get("id") else { panic!("id") };
        let id: i32 = id.parse().unwrap();
        assert_eq!(json(&ch.key), format!("{{\"id\":{id}}}"));
        ids.push(id);
        got.push((id, json(&ch.after)));
    }
    let unique: HashSet<i32> = ids.iter().copied().collect();
    assert_eq!(unique.len(), 300_000, "every row exactly once");
    // Rows were inserted in id order, so one sequential reader would deliver
    // them sorted: interleaving shows the table was read as parallel ranges.
    assert!(ids.windows(2).any(|w| w[0] > w[1]), "big was not split into ranges read in parallel");
    assert_eq!(count_equal_to_jsonb(&c, "big", &got).await, 300_000);

    // nokey: the key is the whole row; the multiset of rows equals the table.
    let mut nokey_json = Vec::new();
    for ch in &by_table["nokey"] {
        assert_eq!(ch.key, ch.after);
        nokey_json.push(json(&ch.after));
    }
    c.batch_execute("DROP TABLE IF EXISTS got_nokey; CREATE TABLE got_nokey (j text)").await.unwrap();
    c.execute("INSERT INTO got_nokey SELECT unnest($1::text[])", &[&nokey_json]).await.unwrap();
    let diff: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM (SELECT j::jsonb::text FROM got_nokey EXCEPT ALL SELECT to_jsonb(t)::text FROM nokey t) a) \
                  + (SELECT count(*) FROM (SELECT to_jsonb(t)::text FROM nokey t EXCEPT ALL SELECT j::jsonb::text FROM got_nokey) b)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(diff, 0);

    // ri: the key is the replica identity index, not the whole row.
    let ri = &by_table["ri"][0];
    let key = json(&ri.key);
    assert!(key.starts_with("{\"a\":") && key.contains(",\"b\":-") && !key.contains("\"c\""), "{key}");

    // Progress: one final report per given table with its row count.
    assert_eq!(done_rows(&progress, "big"), 300_000);
    assert_eq!(done_rows(&progress, "nokey"), 5000);
    assert_eq!(done_rows(&progress, "empty_t"), 0);
    assert_eq!(done_rows(&progress, "parted"), 300);
    assert!(progress.iter().any(|p| p.table.name == "big" && !p.done && p.rows > 0 && p.rows < 300_000), "intermediate progress");
    let big_estimate = progress.iter().find(|p| p.table.name == "big").unwrap().estimate;
    assert!((150_000..600_000).contains(&big_estimate), "estimate {big_estimate}");
    assert_eq!(progress.iter().find(|p| p.table.name == "nokey").unwrap().estimate, 5000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_the_state_at_the_exported_snapshot() {
    let (pg, opts, c) = setup("iso").await;
    c.batch_execute(
        "CREATE TABLE iso (id int PRIMARY KEY, v text); \
         INSERT INTO iso SELECT i, 'v' || i FROM generate_series(1, 20000) i;",
    )
    .await
    .unwrap();
    let exporter = pg.client("iso").await;
    exporter.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ").await.unwrap();
    let name: String = exporter.query_one("SELECT pg_export_snapshot()", &[]).await.unwrap().get(0);
    let expected = rows_by_id(&exporter, "iso").await;
    c.batch_execute(
        "INSERT INTO iso SELECT i, 'new' FROM generate_series(20001, 20100) i; \
         UPDATE iso SET v = 'changed' WHERE id <= 10; DELETE FROM iso WHERE id BETWEEN 500 AND 509;",
    )
    .await
    .unwrap();

    let options = SnapshotOptions { parallelism: 3, chunk_rows: 2000, ..SnapshotOptions::default() };
    let (changes, _, _) = copy_all(&opts, &[t("iso")], Some(&name), options.clone()).await;
    let mut got: Vec<serde_json::Value> = changes.iter().map(|c| c.after.as_ref().unwrap().to_serde()).collect();
    got.sort_by_key(|v| v["id"].as_i64());
    assert_eq!(got.len(), 20_000);
    assert_eq!(got, expected, "the copy shows the table as of the exported snapshot");
    exporter.batch_execute("COMMIT").await.unwrap();

    // Without a snapshot name: a fresh snapshot, which sees the changes.
    let (changes, _, _) = copy_all(&opts, &[t("iso")], None, options.clone()).await;
    assert_eq!(changes.len(), 20_090);
    assert!(changes.iter().any(|c| c.after.as_ref().unwrap().get("v") == Some(&Value::String("changed".into()))));

    // The exporter is gone: the snapshot cannot be imported any more.
    let (tx, _rx) = mpsc::channel(10);
    let err = copy_tables(&opts, &[t("iso")], Some(&name), Lsn(1), &options, tx, |_| {}).await.unwrap_err();
    assert!(!err.is_retriable(), "{err}");
    assert!(err.to_string().contains("snapshot"), "{err}");

    // A missing table is a permanent error naming it.
    let (tx, _rx) = mpsc::channel(10);
    let err = copy_tables(&opts, &[t("nope")], None, Lsn(1), &options, tx, |_| {}).await.unwrap_err();
    assert!(!err.is_retriable() && err.to_string().contains("public.nope"), "{err}");
}

/// The daemon's path: the slot exports its snapshot, writes keep running,
/// and the copy shows exactly the slot's consistent point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_under_the_snapshot_a_new_slot_exports() {
    let (pg, opts, c) = setup("slotsnap").await;
    c.batch_execute("CREATE TABLE w (id int PRIMARY KEY, v int); INSERT INTO w SELECT i, 0 FROM generate_series(1, 30000) i;")
        .await
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, w) = (stop.clone(), pg.client("slotsnap").await);
        tokio::spawn(async move {
            let mut next = 30_001;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                w.batch_execute(&format!(
                    "UPDATE w SET v = v + 1 WHERE id = {}; INSERT INTO w VALUES ({next}, -1); DELETE FROM w WHERE id = {};",
                    next % 30_000 + 1,
                    next - 29_000
                ))
                .await
                .unwrap();
                next += 1;
            }
            next
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut rep = ReplicationClient::connect(&opts).await.expect("replication connection");
    let slot = rep.create_logical_slot("snapshot_test_slot", SnapshotAction::Export).await.expect("slot");
    let name = slot.snapshot_name.clone().expect("exported snapshot");
    // The oracle: PostgreSQL's own view of the table under that snapshot.
    let oracle = pg.client("slotsnap").await;
    oracle.batch_execute(&format!("BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{name}'")).await.unwrap();
    let expected = rows_by_id(&oracle, "w").await;
    let (changes, _, _) =
        copy_all(&opts, &[t("w")], Some(&name), SnapshotOptions { parallelism: 4, chunk_rows: 3000, ..SnapshotOptions::default() }).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let writes = writer.await.unwrap() - 30_001;
    assert!(writes > 10, "writes ran during the test ({writes})");
    rep.close().await.unwrap();
    let mut got: Vec<serde_json::Value> = changes.iter().map(|c| c.after.as_ref().unwrap().to_serde()).collect();
    got.sort_by_key(|v| v["id"].as_i64());
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "the copy differs from the slot's snapshot");
    let current: Vec<serde_json::Value> = c
        .query("SELECT to_jsonb(w)::text FROM w ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .collect();
    assert!(current != expected, "the table moved on after the snapshot, the copy did not follow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_holds_the_readers_back() {
    let (_pg, opts, c) = setup("bp").await;
    // ~40 MB: far more than socket and client buffers can hold.
    c.batch_execute(
        "CREATE TABLE bp (id int PRIMARY KEY, pad text); INSERT INTO bp SELECT i, repeat('x', 200) FROM generate_series(1, 200000) i;",
    )
    .await
    .unwrap();
    // Two batches of 8 rows in the channel.
    let (tx, mut rx) = mpsc::channel(2);
    let reported = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let r = reported.clone();
    let options = SnapshotOptions { parallelism: 2, chunk_rows: 50_000, batch_rows: 8, ..SnapshotOptions::default() };
    let copy = tokio::spawn(async move {
        copy_tables(&opts, &[t("bp")], None, Lsn(1), &options, tx, move |p| {
            r.fetch_max(p.rows, std::sync::atomic::Ordering::SeqCst);
        })
        .await
    });
    let mut consumed = 0u64;
    while consumed < 20_000 {
        consumed += rx.recv().await.expect("batch").len() as u64;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Rows counted as sent can exceed the consumed ones by the channel's
    // capacity (a reader counts a batch once the channel took it), no more.
    let sent = reported.load(std::sync::atomic::Ordering::SeqCst);
    assert!(sent <= consumed + 2 * 8, "reported {sent} rows sent with only {consumed} consumed");
    assert!(sent >= 4096, "progress was reported along the way ({sent})");
    assert!(!copy.is_finished(), "the copy must wait for the consumer");
    // The server itself is waiting to write: backpressure reaches PostgreSQL.
    let waiting: i64 = c
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY (SELECT%bp%' AND wait_event = 'ClientWrite'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(waiting >= 1, "no COPY backend is blocked writing to the client");
    while let Some(batch) = rx.recv().await {
        consumed += batch.len() as u64;
    }
    assert_eq!(copy.await.unwrap().expect("copy"), 200_000);
    assert_eq!(consumed, 200_000);
}

/// An error the server raises in the middle of a COPY (here its statement
/// timeout, which fires while the readers wait for a slow consumer) fails
/// the snapshot with the server's own reason and SQLSTATE, retriable, and
/// no row of the failed piece is reported as more than was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_in_the_middle_of_a_copy_fails_the_snapshot_with_the_servers_reason() {
    let (_pg, opts, c) = setup("mid").await;
    c.batch_execute(
        "CREATE TABLE mid (id int PRIMARY KEY, pad text); INSERT INTO mid SELECT i, repeat('x', 200) FROM generate_series(1, 200000) i;
         ALTER DATABASE mid SET statement_timeout = '1s';",
    )
    .await
    .unwrap();
    let (tx, mut rx) = mpsc::channel(2);
    let options = SnapshotOptions { parallelism: 2, chunk_rows: 50_000, batch_rows: 8, ..SnapshotOptions::default() };
    let copy = tokio::spawn(async move { copy_tables(&opts, &[t("mid")], None, Lsn(1), &options, tx, |_| {}).await });
    let mut consumed = rx.recv().await.expect("a first batch").len();
    // Stalled past the statement timeout: the backends are blocked writing
    // and raise the timeout once they can go on.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    while let Some(batch) = rx.recv().await {
        consumed += batch.len();
    }
    let err = copy.await.unwrap().expect_err("the copy must fail");
    assert!(consumed < 200_000, "every row arrived ({consumed}) although the COPY was cancelled");
    assert_eq!(err.sqlstate(), Some("57014"), "{err}");
    assert!(err.to_string().contains("statement timeout"), "{err}");
    assert_eq!(err.kind(), pgfanout_postgres::error::ErrorKind::Transient, "{err}");
}

/// Copies `pin` keeping one row in 50 (as a filter in front of a slow sink
/// would) until the copy ends; returns the kept rows as (id, JSON) and the
/// most arena bytes alive seen while they were kept.
async fn copy_keeping_few(opts: &PgConnectOptions, pinned: Arc<Pinned>) -> (Vec<(i32, String)>, usize) {
    let options = SnapshotOptions { parallelism: 2, chunk_rows: 20_000, pinned: pinned.clone(), ..SnapshotOptions::default() };
    let (tx, mut rx) = mpsc::channel::<Vec<Change>>(4);
    let p = pinned.clone();
    let keeper = tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut most = 0;
        while let Some(batch) = rx.recv().await {
            for ch in batch {
                let id = match ch.key.as_ref().and_then(|k| k.get("id")) {
                    Some(Value::Number(n)) => n.parse::<i32>().unwrap(),
                    other => panic!("key id {other:?}"),
                };
                if id % 50 == 0 {
                    kept.push((id, ch));
                }
            }
            most = most.max(p.live());
        }
        (kept, most)
    });
    assert_eq!(copy_tables(opts, &[t("pin")], None, Lsn(1), &options, tx, |_| {}).await.expect("copy"), 100_000);
    let (kept, most) = keeper.await.unwrap();
    assert_eq!(kept.len(), 2000);
    let kept = kept.into_iter().map(|(id, ch)| (id, json(&ch.after))).collect();
    assert_eq!(pinned.live(), 0, "every buffer is given back once the rows holding it are gone");
    (kept, most)
}

/// Values of snapshot rows are slices of shared buffers; rows kept sparsely
/// (every buffer holding a few kept rows among many dropped ones) may keep
/// at most the budget of buffers alive, the rows past it carry copies, and
/// both kinds equal `to_jsonb()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparsely_kept_rows_pin_at_most_the_budget() {
    let (_pg, opts, c) = setup("pin").await;
    // ~22 MB of field bytes.
    c.batch_execute(
        "CREATE TABLE pin (id int PRIMARY KEY, pad text, n numeric, at timestamptz); \
         INSERT INTO pin SELECT i, repeat(md5(i::text), 6) || E'\\t\\\\', i * 1.5, '2024-01-01'::timestamptz + i * interval '1 s' \
         FROM generate_series(1, 100000) i;",
    )
    .await
    .unwrap();
    // The control: without a budget the kept rows hold nearly the whole copy.
    let (_, unbounded) = copy_keeping_few(&opts, Pinned::new(usize::MAX)).await;
    assert!(unbounded > 8 << 20, "the workload pins far more than the budget when unbounded ({unbounded} bytes)");
    let budget = 1 << 20;
    let (kept, most) = copy_keeping_few(&opts, Pinned::new(budget)).await;
    assert!(most <= budget, "{most} bytes of buffers alive, budget {budget}");
    assert!(most > budget / 2, "rows shared buffers up to the budget ({most} bytes)");
    assert_eq!(count_equal_to_jsonb(&c, "pin", &kept).await, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_table_round_trip() {
    let (_pg, _opts, c) = setup("state").await;
    assert!(snapshot_state(&c, "s1").await.unwrap().is_empty(), "no table yet: empty");
    clear_state(&c, "s1").await.expect("clearing without a table is fine");
    ensure_state_table(&c).await.unwrap();
    ensure_state_table(&c).await.expect("idempotent");
    let (a, b) = (TableName::new("public", "a"), TableName::new("Sales", "Order Items"));
    let (l1, l2): (Lsn, Lsn) = ("0/16B3748".parse().unwrap(), "1/A0".parse().unwrap());
    let (running, done) = (SnapshotStatus::InitialRunning, SnapshotStatus::Done);
    mark_tables(&c, "s1", &[a.clone(), b.clone()], running, l1).await.unwrap();
    mark_tables(&c, "s2", std::slice::from_ref(&a), done, l2).await.unwrap();
    mark_tables(&c, "s1", std::slice::from_ref(&a), done, l2).await.unwrap();
    mark_tables(&c, "s1", &[], done, l2).await.unwrap();
    let s1 = snapshot_state(&c, "s1").await.unwrap();
    assert_eq!(s1, vec![(b.clone(), running, l1), (a.clone(), done, l2)]);
    clear_state(&c, "s1").await.unwrap();
    assert!(snapshot_state(&c, "s1").await.unwrap().is_empty());
    assert_eq!(snapshot_state(&c, "s2").await.unwrap(), vec![(a, done, l2)]);
    // A status this release does not know is an error naming the column,
    // not a table silently taken as copied or not.
    c.execute("ALTER TABLE pgfanout.snapshot_state DROP CONSTRAINT snapshot_state_status_known", &[]).await.unwrap();
    c.execute("UPDATE pgfanout.snapshot_state SET status = 'copied' WHERE slot = 's2'", &[]).await.unwrap();
    let e = snapshot_state(&c, "s2").await.unwrap_err().to_string();
    assert!(e.contains("pgfanout.snapshot_state.status") && e.contains("\"copied\""), "{e}");

    // Wildcards never pick up pgfanout's own table.
    c.batch_execute("CREATE TABLE public.x (id int PRIMARY KEY)").await.unwrap();
    let all = resolve_tables(&c, &["*.*".to_string()]).await.unwrap();
    assert_eq!(all, vec![TableName::new("public", "x")]);
}

/// Throughput against `psql \copy` of the same table on the same machine.
/// Run with `cargo test -p pgfanout-postgres --release --test snapshot -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn bench_snapshot_vs_psql_copy() {
    let (pg, opts, c) = setup("bench").await;
    c.batch_execute(
        "CREATE TABLE bench (id bigint PRIMARY KEY, name text, price numeric(12,2), created_at timestamptz, qty int, \
                             active bool, tags text[], attrs jsonb); \
         INSERT INTO bench SELECT i, 'customer name ' || i, (i % 100000) / 100.0, \
                timestamptz '2024-01-01' + i * interval '1 second', i % 1000, i % 2 = 0, \
                ARRAY['a', 'b' || (i % 10)], jsonb_build_object('k', i % 7, 's', 'x') \
         FROM generate_series(1, 1000000) i;",
    )
    .await
    .unwrap();
    c.batch_execute("VACUUM ANALYZE bench").await.unwrap();
    let psql = || {
        let start = Instant::now();
        pg.psql("bench", "\\copy (SELECT * FROM bench) TO '/dev/null'");
        start.elapsed()
    };
    psql(); // warm the cache
    let psql_time = psql().min(psql());
    let psql_rate = 1e6 / psql_time.as_secs_f64();
    println!("psql \\copy: {psql_time:?} = {psql_rate:.0} rows/s");
    for parallelism in [1, 2, 4] {
        let mut best = Duration::MAX;
        for _ in 0..2 {
            let (tx, mut rx) = mpsc::channel::<Vec<Change>>(4);
            let drain = tokio::spawn(async move {
                let mut n = 0u64;
                while let Some(batch) = rx.recv().await {
                    n += batch.iter().map(|ch| ch.after.as_ref().map_or(0, |r| r.len() as u64).min(1)).sum::<u64>();
                }
                n
            });
            let start = Instant::now();
            let options = SnapshotOptions { parallelism, chunk_rows: 250_000, ..SnapshotOptions::default() };
            let n = copy_tables(&opts, &[t("bench")], None, Lsn(1), &options, tx, |_| {}).await.unwrap();
            assert_eq!(drain.await.unwrap(), 1_000_000);
            assert_eq!(n, 1_000_000);
            best = best.min(start.elapsed());
        }
        let rate = 1e6 / best.as_secs_f64();
        println!("snapshot parallelism {parallelism}: {best:?} = {rate:.0} rows/s, ratio to psql {:.2}", rate / psql_rate);
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak = status.lines().find(|l| l.starts_with("VmHWM")).unwrap_or("VmHWM: ?");
    println!("peak RSS of the test process (channel of 4 batches): {}", peak.trim_start_matches("VmHWM:").trim());
}
