//! End-to-end: PostgreSQL -> `pgfanout run` -> Kafka, against a real
//! PostgreSQL 15 cluster and an Apache Kafka 4 broker (testkit), read back with an
//! rdkafka consumer.
//!
//! The truth every test compares with is a history table that a trigger
//! fills in the writer's own transactions: one row per change with the
//! table, op, key, `to_jsonb(OLD)`, `to_jsonb(NEW)`, the transaction id and
//! the WAL insert position at the time of the change. Its order (a serial
//! writer) is commit order, so per key it is exactly the sequence of events a
//! topic must hold.
#![cfg(feature = "kafka")]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use common::kafka::read_topics as read_records;
use common::*;
use serde_json::{json, Value as Json};
use testkit::{KafkaBroker, Server};

const SCHEMA: &str = r#"
CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL, score numeric(10,2), prefs jsonb, active bool, seen_at timestamptz);
CREATE TABLE orders (id int PRIMARY KEY, user_id int NOT NULL, total numeric(12,2) NOT NULL, status text NOT NULL);
ALTER TABLE orders REPLICA IDENTITY FULL;
CREATE TABLE history (seq bigserial PRIMARY KEY, tbl text NOT NULL, op text NOT NULL, id int NOT NULL,
    old jsonb, new jsonb, xid bigint NOT NULL DEFAULT txid_current(), wal bigint NOT NULL);
CREATE FUNCTION record_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO history (tbl, op, id, old, new, wal) VALUES (
        TG_TABLE_NAME, lower(TG_OP),
        CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END,
        CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE to_jsonb(OLD) END,
        CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE to_jsonb(NEW) END,
        (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint);
    RETURN NULL;
END $$;
CREATE TRIGGER users_history AFTER INSERT OR UPDATE OR DELETE ON users FOR EACH ROW EXECUTE FUNCTION record_history();
CREATE TRIGGER orders_history AFTER INSERT OR UPDATE OR DELETE ON orders FOR EACH ROW EXECUTE FUNCTION record_history();
"#;

/// A cluster whose sessions use UTC (so `to_jsonb` of a timestamptz in the
/// trigger reads like the daemon's), a database `db` with [`SCHEMA`].
async fn history_cluster(db: &str) -> (PgCluster, tokio_postgres::Client) {
    let (pg, c) = cluster_with(db, &[("wal_sender_timeout", "4s"), ("timezone", "UTC")]).await;
    c.batch_execute(SCHEMA).await.unwrap();
    (pg, c)
}

/// A mixed workload on users and orders: inserts (including ids deleted
/// earlier), single-row updates (some to NULL), deletes and multi-row
/// updates, one to three statements per transaction.
struct Workload {
    rng: Rng,
    next_user: i32,
    next_order: i32,
    users: Vec<i32>,
    orders: Vec<i32>,
    gone_users: Vec<i32>,
}

impl Workload {
    fn new(seed: u64) -> Workload {
        Workload { rng: Rng(seed | 1), next_user: 1, next_order: 1, users: Vec::new(), orders: Vec::new(), gone_users: Vec::new() }
    }

    fn pick(&mut self, from_orders: bool) -> Option<i32> {
        let list = if from_orders { &self.orders } else { &self.users };
        if list.is_empty() {
            return None;
        }
        let i = self.rng.below(list.len() as u64) as usize;
        Some(list[i])
    }

    fn insert_user(&mut self) -> String {
        let id = if !self.gone_users.is_empty() && self.rng.below(3) == 0 {
            self.gone_users.remove(0)
        } else {
            self.next_user += 1;
            self.next_user - 1
        };
        self.users.push(id);
        let r = self.rng.below(100_000);
        format!(
            "INSERT INTO users VALUES ({id}, 'u{id}-{r}@shop.test', {}.{:02}, '{{\"theme\": \"dark\", \"n\": {r}, \"tags\": [\"a\", \"b\"]}}', {}, \
             '2026-01-02 03:04:05.123456+00'::timestamptz + interval '{r} seconds');",
            r % 1000,
            r % 100,
            r.is_multiple_of(2)
        )
    }

    fn statement(&mut self) -> String {
        let r = self.rng.below(100_000);
        match self.rng.below(10) {
            0 | 1 => self.insert_user(),
            2 | 3 => match self.pick(false) {
                Some(id) if r.is_multiple_of(4) => format!("UPDATE users SET score = NULL, prefs = NULL WHERE id = {id};"),
                Some(id) => format!(
                    "UPDATE users SET score = COALESCE(score, 0) + 1.25, prefs = COALESCE(prefs, '{{}}') || '{{\"n\": {r}}}', \
                     active = NOT COALESCE(active, false), seen_at = seen_at + interval '1.5 seconds' WHERE id = {id};"
                ),
                None => self.insert_user(),
            },
            4 if self.users.len() > 5 => {
                let id = self.pick(false).unwrap_or(0);
                self.users.retain(|&u| u != id);
                self.gone_users.push(id);
                format!("DELETE FROM users WHERE id = {id};")
            }
            4..=6 => {
                let id = self.next_order;
                self.next_order += 1;
                self.orders.push(id);
                let user = self.pick(false).unwrap_or(0);
                format!("INSERT INTO orders VALUES ({id}, {user}, {}.{:02}, 'new');", r % 500, r % 100)
            }
            7 => match self.pick(true) {
                Some(id) => format!("UPDATE orders SET total = total * 2, status = 'paid-{r}' WHERE id = {id};"),
                None => self.insert_user(),
            },
            8 if self.orders.len() > 5 => {
                let id = self.pick(true).unwrap_or(0);
                self.orders.retain(|&o| o != id);
                format!("DELETE FROM orders WHERE id = {id};")
            }
            _ => format!("UPDATE orders SET status = 'batch-{r}' WHERE id % 7 = {};", r % 7),
        }
    }

    /// The SQL of the next transaction.
    fn txn(&mut self) -> String {
        let n = 1 + self.rng.below(3);
        let mut sql = String::from("BEGIN;");
        for _ in 0..n {
            sql.push_str(&self.statement());
        }
        sql.push_str("COMMIT;");
        sql
    }
}

/// Runs `txns` transactions of `w`, pausing 5 ms every `pause_every`
/// transactions (0 = never); `done` counts the committed ones.
async fn run_workload(
    c: &tokio_postgres::Client,
    w: &mut Workload,
    txns: usize,
    pause_every: usize,
    done: &std::sync::atomic::AtomicUsize,
) {
    for i in 0..txns {
        c.batch_execute(&w.txn()).await.unwrap();
        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if pause_every > 0 && i % pause_every == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// One change as the history trigger recorded it.
#[derive(Debug, Clone)]
struct Hist {
    tbl: String,
    op: String,
    id: i32,
    old: Option<Json>,
    new: Option<Json>,
    xid: i64,
    wal: u64,
}

async fn history(c: &tokio_postgres::Client) -> Vec<Hist> {
    let parse = |s: Option<String>| s.map(|s| serde_json::from_str::<Json>(&s).expect("history json"));
    c.query("SELECT tbl, op, id, old::text, new::text, xid, wal FROM history ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| Hist {
            tbl: r.get(0),
            op: r.get(1),
            id: r.get(2),
            old: parse(r.get(3)),
            new: parse(r.get(4)),
            xid: r.get(5),
            wal: r.get::<_, i64>(6) as u64,
        })
        .collect()
}

/// One message as read back.
#[derive(Debug, Clone)]
struct Msg {
    topic: String,
    partition: i32,
    key: Option<String>,
    value: Option<Vec<u8>>,
    headers: HashMap<String, Option<String>>,
}

impl Msg {
    /// A header that must be present with a value.
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.as_deref()).unwrap_or_else(|| panic!("header {name} missing on {self:?}"))
    }
    fn lsn(&self) -> u64 {
        lsn(self.header("pgfanout.lsn"))
    }
    /// The version (commit_lsn, ordinal).
    fn version(&self) -> (u64, u32) {
        (lsn(self.header("pgfanout.commit_lsn")), self.header("pgfanout.ordinal").parse().expect("ordinal"))
    }
    fn json(&self) -> Json {
        serde_json::from_slice(self.value.as_deref().expect("a value")).expect("value is JSON")
    }
}

/// Reads every message of `topics` from the beginning (partition order
/// kept) until `distinct` different (topic, key, pgfanout.lsn) have been
/// read, then until none came for 500 ms to catch extra records, or until
/// `timeout`. Blocking (run inside `block_in_place`).
fn read_topics(bootstrap: &str, topics: &[String], timeout: Duration, distinct: usize) -> Vec<Msg> {
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut seen: HashSet<(String, Option<Vec<u8>>, u64)> = HashSet::new();
    let records = read_records(bootstrap, &topics, timeout, Duration::from_millis(500), |r| {
        seen.insert((
            r.topic.clone(),
            r.key.clone(),
            lsn(r.header("pgfanout.lsn").unwrap_or_else(|| panic!("header pgfanout.lsn missing on {r:?}"))),
        ));
        seen.len() >= distinct
    });
    records
        .into_iter()
        .map(|r| Msg { key: r.key_text(), topic: r.topic, partition: r.partition, value: r.value, headers: r.headers })
        .collect()
}

/// The messages of `topic` per key, in partition order; asserts that each
/// key stays in one partition (per-key order is only defined there).
fn per_key<'a>(msgs: &'a [Msg], topic: &str) -> BTreeMap<String, Vec<&'a Msg>> {
    let mut out: BTreeMap<String, Vec<&Msg>> = BTreeMap::new();
    for m in msgs.iter().filter(|m| m.topic == topic) {
        out.entry(m.key.clone().expect("every record has a key")).or_default().push(m);
    }
    for (k, list) in &out {
        assert!(list.windows(2).all(|w| w[0].partition == w[1].partition), "key {k} of {topic} spread over partitions");
    }
    out
}

/// Keeps the last copy of every (key, pgfanout.lsn), checking that each
/// copy carries the same bytes: what a deduplicating consumer does, and
/// what the sink promises (for each key, the last copy of every change is
/// in commit order; an earlier copy may precede a change that was resent
/// after it). Returns the kept records and the number dropped.
fn dedup<'a>(list: &[&'a Msg]) -> (Vec<&'a Msg>, usize) {
    let mut seen: HashMap<u64, &Msg> = HashMap::new();
    let mut kept = Vec::new();
    for m in list.iter().rev() {
        match seen.get(&m.lsn()) {
            Some(last) => assert_eq!(last.value, m.value, "a replayed record equals the other copy"),
            None => {
                seen.insert(m.lsn(), m);
                kept.push(*m);
            }
        }
    }
    kept.reverse();
    let dropped = list.len() - kept.len();
    (kept, dropped)
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Format {
    Native,
    Debezium,
}

/// Checks one record against the change the history recorded for it.
fn check_record(m: &Msg, h: &Hist, format: Format, db: &str, window_ms: (i64, i64)) {
    let ctx = || {
        let value = m.value.as_deref().map(String::from_utf8_lossy);
        format!("{format:?} record in {} key {:?} headers {:?} value {value:?}\nexpected {h:?}", m.topic, m.key, m.headers)
    };
    assert_eq!(m.header("pgfanout.op"), h.op, "{}", ctx());
    assert_eq!(m.header("pgfanout.schema"), "public");
    assert_eq!(m.header("pgfanout.table"), h.tbl);
    assert_eq!(m.header("pgfanout.xid"), h.xid.to_string(), "{}", ctx());
    let (commit, _) = m.version();
    assert!(m.lsn() <= commit, "a change's LSN is at most its commit's: {}", ctx());
    assert!(m.lsn() <= h.wal, "the change's LSN precedes the trigger's insert position: {}", ctx());
    let v = m.json();
    let null = Json::Null;
    let after = h.new.as_ref().unwrap_or(&null);
    // orders has REPLICA IDENTITY FULL: the whole old row; users the default.
    let full_before = h.tbl == "orders" && h.op != "insert";
    match format {
        Format::Native => {
            assert_eq!(m.key.as_deref(), Some(&*json!({"id": h.id}).to_string()), "{}", ctx());
            assert_eq!(v["op"], h.op, "{}", ctx());
            assert_eq!(v["schema"], "public");
            assert_eq!(v["table"], h.tbl);
            assert_eq!(v["key"], json!({"id": h.id}), "{}", ctx());
            assert_eq!(&v["after"], after, "{}", ctx());
            // Under the default identity PostgreSQL sends the key columns
            // of a deleted row (and nothing old for an update that keeps
            // the key).
            let before = match (h.op.as_str(), full_before) {
                (_, true) => h.old.clone().unwrap_or(Json::Null),
                ("delete", false) => json!({"id": h.id}),
                _ => Json::Null,
            };
            assert_eq!(v["before"], before, "{}", ctx());
            assert_eq!(v["lsn"], m.header("pgfanout.lsn"));
            assert_eq!(v["commit_lsn"], m.header("pgfanout.commit_lsn"));
            assert_eq!(v["xid"], h.xid);
            assert!(v.get("unchanged_toast").is_none(), "no TOAST here: {}", ctx());
        }
        Format::Debezium => {
            assert_eq!(m.key.as_deref(), Some(&*h.id.to_string()), "{}", ctx());
            let code = match h.op.as_str() {
                "insert" => "c",
                "update" => "u",
                _ => "d",
            };
            assert_eq!(v["op"], code, "{}", ctx());
            assert_eq!(&v["after"], after, "{}", ctx());
            let before = match (h.op.as_str(), full_before) {
                ("insert", _) => Json::Null,
                (_, true) => h.old.clone().unwrap_or(Json::Null),
                (_, false) => json!({"id": h.id}),
            };
            assert_eq!(v["before"], before, "{}", ctx());
            let s = &v["source"];
            assert_eq!(s["connector"], "postgresql");
            assert_eq!(s["name"], "shop");
            assert_eq!(s["db"], db);
            assert_eq!(s["schema"], "public");
            assert_eq!(s["table"], h.tbl);
            assert_eq!(s["snapshot"], "false");
            assert_eq!(s["txId"], h.xid, "{}", ctx());
            assert_eq!(s["lsn"], m.lsn(), "{}", ctx());
            assert_eq!(s["xmin"], Json::Null);
            assert!(s["version"].as_str().is_some_and(|v| !v.is_empty()));
            assert_eq!(s["sequence"], format!("[\"{commit}\",\"{}\"]", m.lsn()));
            let commit_ms = s["ts_ms"].as_i64().expect("source.ts_ms");
            assert!((window_ms.0..=window_ms.1).contains(&commit_ms), "commit time {commit_ms} within the workload {window_ms:?}");
            assert_eq!(s["ts_us"].as_i64().map(|us| us / 1000), Some(commit_ms));
            let ts = v["ts_ms"].as_i64().expect("ts_ms");
            assert!(ts >= commit_ms && ts <= window_ms.1 + 60_000, "processing time {ts} after the commit {commit_ms}");
            assert_eq!(v["transaction"], Json::Null);
        }
    }
}

/// For every key of `table` in the history: the records of `topic` for it,
/// deduplicated when `dedup_replays`, are exactly the history of the key
/// in commit order, each one right field by field. Returns the records
/// dropped as duplicates.
#[allow(clippy::too_many_arguments)]
fn check_topic_against_history(
    msgs: &[Msg],
    topic: &str,
    table: &str,
    hist: &[Hist],
    format: Format,
    dedup_replays: bool,
    db: &str,
    window_ms: (i64, i64),
) -> usize {
    let keyed = per_key(msgs, topic);
    let key_of = |id: i32| match format {
        Format::Native => json!({"id": id}).to_string(),
        Format::Debezium => id.to_string(),
    };
    let mut want: BTreeMap<String, Vec<&Hist>> = BTreeMap::new();
    for h in hist.iter().filter(|h| h.tbl == table) {
        want.entry(key_of(h.id)).or_default().push(h);
    }
    assert_eq!(keyed.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{topic}: the keys the history has");
    let mut dropped = 0;
    for (key, changes) in &want {
        let (got, d) = if dedup_replays { dedup(&keyed[key]) } else { (keyed[key].clone(), 0) };
        dropped += d;
        let ops = |g: &[&Msg]| g.iter().map(|m| m.header("pgfanout.op").to_string()).collect::<Vec<_>>();
        assert_eq!(
            got.len(),
            changes.len(),
            "{topic} key {key}: {:?}, history {:?}",
            ops(&got),
            changes.iter().map(|h| &h.op).collect::<Vec<_>>()
        );
        for (m, h) in got.iter().zip(changes) {
            check_record(m, h, format, db, window_ms);
        }
        let versions: Vec<(u64, u32)> = got.iter().map(|m| m.version()).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{topic} key {key}: versions in commit order {versions:?}");
    }
    dropped
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

const BOTH_FORMATS: &str = r#"  - name: native
    from: [public.users, public.orders]
    to: events
    kafka: { topic: "native.{table}", format: native }
  - name: debezium
    from: [public.users, public.orders]
    to: events
    kafka: { topic: "dbz.{table}", key: "{id}", format: debezium }"#;

/// A mixed workload on two tables, written by two pipelines of one sink in
/// both formats: each of the four topics holds exactly the history of its
/// table, per key in commit order, with the right key, headers and value
/// (native: docs/design.md section 3; debezium: op c/u/d, before/after against
/// the row's history under each table's replica identity, source fields).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_workload_in_native_and_debezium_formats() {
    let (pg, c) = history_cluster("kmix").await;
    let broker = tokio::task::spawn_blocking(KafkaBroker::start).await.unwrap();
    let dir = scratch();
    let cfg = kafka_config(
        &pg,
        "kmix",
        "kmix",
        &broker.bootstrap(),
        "topics: { partitions: 3 }, debezium: { server_name: shop, database: kmix }",
        BOTH_FORMATS,
        dir.path(),
    );
    let d = Daemon::start(bin(), dir.path(), "kmix", &cfg);
    testkit::wait_for(Duration::from_secs(30), "slot", || async { confirmed_flush(&c, "kmix").await > 0 }).await;
    let t0 = now_ms();
    let mut w = Workload::new(0x5eed_0001);
    run_workload(&c, &mut w, 300, 20, &Default::default()).await;
    let t1 = now_ms();
    wait_confirmed(&c, "kmix", &d, Duration::from_secs(60)).await;
    let hist = history(&c).await;
    let count = |t: &str| hist.iter().filter(|h| h.tbl == t).count();
    let (n_users, n_orders) = (count("users"), count("orders"));
    assert!(n_users > 200 && n_orders > 200, "a real workload: {n_users} user and {n_orders} order changes");
    for op in ["insert", "update", "delete"] {
        assert!(hist.iter().any(|h| h.op == op && h.tbl == "users") && hist.iter().any(|h| h.op == op && h.tbl == "orders"), "{op}s");
    }
    let topics: Vec<String> = ["native.users", "native.orders", "dbz.users", "dbz.orders"].map(String::from).to_vec();
    let want_total = 2 * (n_users + n_orders);
    let msgs = tokio::task::block_in_place(|| read_topics(&broker.bootstrap(), &topics, Duration::from_secs(60), want_total));
    assert_eq!(msgs.len(), want_total, "exactly one record per change per format (no duplicates without faults)");
    let window = (t0 - 1000, t1 + 1000);
    for (topic, table, format) in [
        ("native.users", "users", Format::Native),
        ("native.orders", "orders", Format::Native),
        ("dbz.users", "users", Format::Debezium),
        ("dbz.orders", "orders", Format::Debezium),
    ] {
        check_topic_against_history(&msgs, topic, table, &hist, format, false, "kmix", window);
    }
    // The two pipelines carry the same changes with the same positions.
    for table in ["users", "orders"] {
        let lsns = |topic: String| msgs.iter().filter(|m| m.topic == topic).map(Msg::lsn).collect::<HashSet<u64>>();
        assert_eq!(lsns(format!("native.{table}")), lsns(format!("dbz.{table}")));
    }
    let partitions: HashSet<i32> = msgs.iter().map(|m| m.partition).collect();
    assert_eq!(partitions.len(), 3, "keys spread over the 3 partitions");
    assert_eq!(line_count(&dir.path().join("kmix.dead.jsonl")), 0, "nothing dead-lettered");
}

/// SIGKILL twice while a workload runs, restart each time: after
/// deduplicating on (key, pgfanout.lsn) every topic holds exactly its
/// table's history; without deduplication every change is there at least
/// once (the same count check, on the deduplicated records).
/// [`history_cluster`] `db`, a broker, and a daemon streaming users and
/// orders to topics `<prefix>.<table>` of two partitions in the native
/// format, once its slot exists.
async fn native_stream(db: &str, prefix: &str) -> (PgCluster, tokio_postgres::Client, KafkaBroker, tempfile::TempDir, Daemon) {
    native_stream_with(db, prefix, "").await
}

/// [`native_stream`] with more sink settings (`extra`: YAML flow-map entries).
async fn native_stream_with(
    db: &str,
    prefix: &str,
    extra: &str,
) -> (PgCluster, tokio_postgres::Client, KafkaBroker, tempfile::TempDir, Daemon) {
    let (pg, c) = history_cluster(db).await;
    let broker = tokio::task::spawn_blocking(KafkaBroker::start).await.unwrap();
    let dir = scratch();
    let pipelines = format!(
        "  - name: native\n    from: [public.users, public.orders]\n    to: events\n    kafka: {{ topic: \"{prefix}.{{table}}\", format: native }}"
    );
    let cfg = kafka_config(&pg, db, db, &broker.bootstrap(), &format!("topics: {{ partitions: 2 }}{extra}"), &pipelines, dir.path());
    let d = Daemon::start(bin(), dir.path(), db, &cfg);
    testkit::wait_for(Duration::from_secs(30), "slot", || async { confirmed_flush(&c, db).await > 0 }).await;
    (pg, c, broker, dir, d)
}

/// Runs 1,500 workload transactions and SIGKILLs the daemon twice in the
/// middle (each time once it delivered and confirmed something since the
/// last kill), restarting it at once; returns when the slot confirmed the
/// whole workload, with the history and the records of both topics
/// `<prefix>.users` and `<prefix>.orders` (`want` distinct positions).
async fn kill_twice_mid_workload(
    pg: &PgCluster,
    c: &tokio_postgres::Client,
    broker: &KafkaBroker,
    db: &str,
    prefix: &str,
    d: &mut Daemon,
    seed: u64,
) -> (Vec<Hist>, Vec<Msg>) {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let c2 = pg.client(db).await;
        let done = done.clone();
        tokio::spawn(async move { run_workload(&c2, &mut Workload::new(seed), 1500, 1, &done).await })
    };
    let mut confirmed_before_kill = vec![confirmed_flush(c, db).await];
    for at in [300, 800] {
        let last = *confirmed_before_kill.last().unwrap_or(&0);
        testkit::wait_for(Duration::from_secs(60), "workload progress and deliveries", || {
            let n = done.load(std::sync::atomic::Ordering::Relaxed);
            async move { n >= at && confirmed_flush(c, db).await > last }
        })
        .await;
        assert!(done.load(std::sync::atomic::Ordering::Relaxed) < 1500, "killed mid-workload");
        confirmed_before_kill.push(confirmed_flush(c, db).await);
        d.kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        d.spawn(bin());
    }
    writer.await.unwrap();
    wait_confirmed(c, db, d, Duration::from_secs(60)).await;
    let hist = history(c).await;
    let topics = vec![format!("{prefix}.users"), format!("{prefix}.orders")];
    let want = hist.len();
    let msgs = tokio::task::block_in_place(|| read_topics(&broker.bootstrap(), &topics, Duration::from_secs(60), want));
    (hist, msgs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_workload_then_dedup_gives_the_history() {
    let (pg, c, broker, _dir, mut d) = native_stream("kkill", "kill").await;
    let t0 = now_ms();
    let (hist, msgs) = kill_twice_mid_workload(&pg, &c, &broker, "kkill", "kill", &mut d, 0x5eed_0002).await;
    let t1 = now_ms();
    let mut dropped = 0;
    for table in ["users", "orders"] {
        dropped += check_topic_against_history(
            &msgs,
            &format!("kill.{table}"),
            table,
            &hist,
            Format::Native,
            true,
            "kkill",
            (t0 - 1000, t1 + 1000),
        );
    }
    eprintln!("{} records, {} changes, {dropped} replayed duplicates dropped", msgs.len(), hist.len());
    assert_eq!(msgs.len(), hist.len() + dropped);
    assert!(d.is_running());
}

/// `delivery: exactly_once`, the same two SIGKILLs under load, then a
/// broker restart under load: a `read_committed` consumer (the reader's
/// default) sees every change exactly once, per key in commit order, right
/// field by field, without deduplicating; the progress topic holds the
/// position of the last transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_under_sigkill_delivers_every_change_once() {
    let (pg, c, broker, _dir, mut d) = native_stream_with("keos", "eos", ", delivery: exactly_once").await;
    let t0 = now_ms();
    let (hist, msgs) = kill_twice_mid_workload(&pg, &c, &broker, "keos", "eos", &mut d, 0x5eed_0003).await;
    let t1 = now_ms();
    for table in ["users", "orders"] {
        let dropped = check_topic_against_history(
            &msgs,
            &format!("eos.{table}"),
            table,
            &hist,
            Format::Native,
            false,
            "keos",
            (t0 - 1000, t1 + 1000),
        );
        assert_eq!(dropped, 0);
    }
    assert_eq!(msgs.len(), hist.len(), "every change once, no duplicate");
    // Each source transaction is in the topics whole: as many records per
    // xid as the history has.
    let mut per_xid: HashMap<String, usize> = HashMap::new();
    for m in &msgs {
        *per_xid.entry(m.header("pgfanout.xid").to_string()).or_default() += 1;
    }
    for h in &hist {
        assert!(per_xid.contains_key(&h.xid.to_string()), "transaction {} is in Kafka", h.xid);
    }
    let progress = tokio::task::block_in_place(|| {
        read_records(&broker.bootstrap(), &["pgfanout_progress"], Duration::from_secs(30), Duration::from_millis(500), |_| true)
    });
    let last = progress.iter().rev().find(|r| r.key_text().as_deref() == Some("pgfanout-keos-events")).expect("a progress record");
    let newest = msgs.iter().map(Msg::version).max().unwrap();
    let at = last.json();
    assert_eq!((lsn(at["commit_lsn"].as_str().unwrap()), at["ordinal"].as_u64().unwrap() as u32), newest, "{at}");
    let log = std::fs::read_to_string(&d.log_path).unwrap();
    assert_eq!(log.matches("kafka exactly-once producer ready").count(), 3, "three starts");
    eprintln!(
        "after two SIGKILLs: {} changes once each; {} starts skipped a committed start of a batch",
        hist.len(),
        log.matches("kafka already holds").count()
    );

    // Then the broker restarts under load: open transactions fail and are
    // aborted, and every change is still there once.
    let stop_writer = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let c2 = pg.client("keos").await;
        let stop = stop_writer.clone();
        tokio::spawn(async move {
            let mut w = Workload::new(0x5eed_0004);
            // New ids: the first workload's rows stay.
            (w.next_user, w.next_order) = (1_000_000, 1_000_000);
            let done = std::sync::atomic::AtomicUsize::new(0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                run_workload(&c2, &mut w, 5, 0, &done).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| broker.stop());
    tokio::time::sleep(Duration::from_secs(5)).await;
    tokio::task::block_in_place(|| broker.start_server());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_writer.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    wait_confirmed(&c, "keos", &d, Duration::from_secs(90)).await;
    let hist = history(&c).await;
    let topics = vec!["eos.users".to_string(), "eos.orders".to_string()];
    let msgs = tokio::task::block_in_place(|| read_topics(&broker.bootstrap(), &topics, Duration::from_secs(60), hist.len()));
    for table in ["users", "orders"] {
        check_topic_against_history(&msgs, &format!("eos.{table}"), table, &hist, Format::Native, false, "keos", (0, i64::MAX / 2));
    }
    assert_eq!(msgs.len(), hist.len(), "every change once after the broker restart too");
    eprintln!("after the broker restart: {} changes once each, 0 duplicates, 0 lost", hist.len());
    assert!(d.is_running());
}

/// The broker goes away for ~6 s in the middle of a workload and comes back.
///
/// What is checked: (1) while the broker is down, the slot's
/// confirmed_flush_lsn (sampled every 100 ms) never passes the WAL position
/// at which the broker was already gone, and after a 2.5 s grace (for status
/// updates of deliveries acknowledged before the outage) it does not move
/// at all until the broker is back; (2) the broker keeps its log on disk
/// (stopped gracefully, restarted on the same directory), so after the
/// restart every topic holds, per key and after deduplicating replays on
/// (key, pgfanout.lsn), exactly the key's history in commit order, right
/// field by field: the changes acknowledged (and confirmed to PostgreSQL)
/// before the outage are still readable, and the batch that failed during
/// it was retried with nothing after it skipped; (3) the slot then confirms
/// the whole workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_never_confirms_undelivered_changes() {
    let (pg, c, broker, dir, d) = native_stream("kbrk", "brk").await;
    let (stop_sampler, sampler) = sample_confirmed_flush(pg.client("kbrk").await, "kbrk", Duration::from_millis(100));
    let stop_writer = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let c2 = pg.client("kbrk").await;
        let stop = stop_writer.clone();
        tokio::spawn(async move {
            let mut w = Workload::new(0x5eed_0003);
            let done = std::sync::atomic::AtomicUsize::new(0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                run_workload(&c2, &mut w, 5, 0, &done).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // Deliveries work before the outage.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mark = insert_lsn(&c).await;
    testkit::wait_for(Duration::from_secs(30), "deliveries before the outage", || async { confirmed_flush(&c, "kbrk").await >= mark })
        .await;

    let confirmed_before_stop = confirmed_flush(&c, "kbrk").await;
    tokio::task::block_in_place(|| broker.stop());
    let stopped_at = Instant::now();
    let stop_lsn = insert_lsn(&c).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let outage_end = insert_lsn(&c).await;
    let restarted_at = Instant::now();
    tokio::task::block_in_place(|| broker.start_server());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_writer.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    wait_confirmed(&c, "kbrk", &d, Duration::from_secs(60)).await;
    stop_sampler.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler.await.unwrap();

    let down: Vec<(Instant, u64)> = samples.iter().copied().filter(|(t, _)| *t >= stopped_at && *t < restarted_at).collect();
    assert!(down.len() > 30, "sampled through the outage: {} samples", down.len());
    for (t, l) in &down {
        assert!(
            *l <= stop_lsn,
            "confirmed {l:X} passed {stop_lsn:X}, written after the broker was gone, {:?} into the outage",
            t.duration_since(stopped_at)
        );
    }
    let settled: Vec<u64> =
        down.iter().filter(|(t, _)| t.duration_since(stopped_at) > Duration::from_millis(2500)).map(|(_, l)| *l).collect();
    assert!(settled.windows(2).all(|w| w[0] == w[1]), "confirmed_flush_lsn moved while the broker was down: {settled:X?}");
    assert!(outage_end > stop_lsn, "the workload kept writing during the outage");

    let hist = history(&c).await;
    assert!(hist.iter().any(|h| h.wal > stop_lsn && h.wal < outage_end), "changes were committed during the outage");
    let confirmed_before = hist.iter().filter(|h| h.wal <= confirmed_before_stop).count();
    assert!(confirmed_before > 0, "changes were confirmed before the outage");
    let topics = vec!["brk.users".to_string(), "brk.orders".to_string()];
    let msgs = tokio::task::block_in_place(|| read_topics(&broker.bootstrap(), &topics, Duration::from_secs(60), hist.len()));
    let mut dropped = 0;
    for table in ["users", "orders"] {
        dropped +=
            check_topic_against_history(&msgs, &format!("brk.{table}"), table, &hist, Format::Native, true, "kbrk", (0, i64::MAX / 2));
    }
    assert_eq!(msgs.len(), hist.len() + dropped);
    assert_eq!(line_count(&dir.path().join("kbrk.dead.jsonl")), 0, "{}", d.log());
    eprintln!(
        "{} changes, {confirmed_before} of them confirmed before the broker stopped (all still readable after the restart), \
         {} written during the outage; {dropped} replayed duplicates dropped",
        hist.len(),
        hist.iter().filter(|h| h.wal > stop_lsn && h.wal < outage_end).count()
    );
}

/// `config/ecommerce.yaml` (its Kafka sink and pipelines only) on the
/// example schema and changes (`examples/ecommerce-changes.sql`): one topic
/// per table, users' e-mail hashed and name masked before they leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecommerce_example_writes_events() {
    let (pg, c) = ecommerce_cluster("shop").await;
    let broker = tokio::task::spawn_blocking(KafkaBroker::start).await.unwrap();
    let dir = scratch();
    let cfg = ecommerce_subset(&pg, &[("events", json!({"brokers": broker.bootstrap()}))], dir.path());
    let d = Daemon::start(bin(), dir.path(), "ecommerce", &cfg);
    testkit::wait_for(Duration::from_secs(30), "slot", || async { confirmed_flush(&c, "pgfanout").await > 0 }).await;
    let changes = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ecommerce-changes.sql")).unwrap();
    c.batch_execute(&changes).await.unwrap();
    wait_confirmed(&c, "pgfanout", &d, Duration::from_secs(60)).await;

    let tables = ["users", "products", "orders", "order_items", "cart_items"];
    let topics: Vec<String> = tables.iter().map(|t| format!("shop.public.{t}")).collect();
    let msgs = tokio::task::block_in_place(|| read_topics(&broker.bootstrap(), &topics, Duration::from_secs(30), 2 + 3 + 1 + 2 + 5));
    let summary = |t: &str| -> Vec<(String, String)> {
        msgs.iter()
            .filter(|m| m.topic == format!("shop.public.{t}"))
            .map(|m| (m.key.clone().unwrap_or_default(), m.header("pgfanout.op").to_string()))
            .collect()
    };
    let pairs = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    assert_eq!(summary("users"), pairs(&[("1", "insert"), ("2", "insert")]));
    assert_eq!(summary("orders"), pairs(&[(r#"{"id":100}"#, "insert")]));
    let mut items = summary("order_items");
    items.sort();
    assert_eq!(items, pairs(&[(r#"{"order_id":100,"product_id":10}"#, "insert"), (r#"{"order_id":100,"product_id":11}"#, "insert")]));
    assert_eq!(summary("products").len(), 3);
    assert_eq!(summary("cart_items").iter().filter(|(_, op)| op == "delete").count(), 2);
    // PII never leaves in clear.
    for m in msgs.iter().filter(|m| m.topic == "shop.public.users") {
        let after = &m.json()["after"];
        let (email, name) = (after["email"].as_str().unwrap_or_default(), after["name"].as_str().unwrap_or_default());
        assert!(!email.is_empty() && !email.contains('@'), "hashed e-mail: {email}");
        assert!(name != "Ada" && name != "Linus", "masked name: {name}");
    }
    let last = msgs.iter().rfind(|m| m.topic == "shop.public.products").and_then(|m| m.value.clone()).unwrap_or_default();
    let last = String::from_utf8_lossy(&last);
    assert!(last.contains(r#""price":84.90"#), "numeric digits kept: {last}");
    assert_eq!(line_count(&dir.path().join("ecommerce.dead.jsonl")), 0, "{}", d.log());
}

/// TLS with the CA's certificate checked and the host name verified, and
/// SASL (SCRAM-SHA-512, SCRAM-SHA-256, PLAIN), against a broker whose only
/// other listener is plaintext (used here to read back): changes arrive
/// through the secured listener; `pgfanout doctor` passes each mechanism and
/// fails a wrong password and a CA that did not sign the broker's
/// certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_sasl_against_a_secured_broker() {
    use testkit::kafka::{SASL_PASSWORD, SASL_USER};
    let broker = tokio::task::spawn_blocking(KafkaBroker::start_secured).await.unwrap();
    let secured = broker.secured.clone().expect("a secured listener");
    let (pg, c) = history_cluster("ksec").await;
    let dir = scratch();
    let config = |mechanism: &str, password: &str, ca: &std::path::Path| {
        let sink = format!(
            "  events: {{ type: kafka, brokers: \"{}\", delivery_timeout: 10s, sasl: {{ mechanism: {mechanism}, username: {SASL_USER}, password: \"{password}\" }}, tls: {{ ca_file: \"{}\" }} }}",
            broker.secured_bootstrap(),
            ca.display()
        );
        let pipelines = "  - name: native\n    from: [public.users]\n    to: events\n    kafka: { topic: \"sec.users\", format: native }";
        daemon_config(&pg, "ksec", "ksec", &sink, pipelines, &dir.path().join("ksec.dead.jsonl"))
    };
    let doctor = |name: &str, yaml: String| doctor_says(dir.path(), name, &yaml, "events");
    for mechanism in ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] {
        let said = doctor(mechanism, config(mechanism, SASL_PASSWORD, &secured.ca_file));
        assert!(said.contains("ok    sink events") && !said.contains("FAIL"), "{mechanism}:\n{said}");
    }
    let said = doctor("wrong-password", config("SCRAM-SHA-512", "not-the-password", &secured.ca_file));
    assert!(said.contains("FAIL  sink events"), "a wrong password fails:\n{said}");
    let said = doctor("other-ca", config("SCRAM-SHA-512", SASL_PASSWORD, &secured.other_ca_file));
    assert!(said.contains("FAIL  sink events"), "a certificate from another CA fails:\n{said}");

    let d = Daemon::start(bin(), dir.path(), "ksec", &config("SCRAM-SHA-512", SASL_PASSWORD, &secured.ca_file));
    testkit::wait_for(Duration::from_secs(60), "slot", || async { confirmed_flush(&c, "ksec").await > 0 }).await;
    c.batch_execute("INSERT INTO users (id, email) SELECT g, 'u' || g || '@example.com' FROM generate_series(1, 200) g").await.unwrap();
    wait_confirmed(&c, "ksec", &d, Duration::from_secs(60)).await;
    let msgs = tokio::task::block_in_place(|| read_topics(&broker.bootstrap(), &["sec.users".to_string()], Duration::from_secs(60), 200));
    assert_eq!(msgs.len(), 200, "every change through the TLS + SCRAM listener\n{}", d.log());
}

/// The outbox event router, exactly once: 300 transactions each insert an
/// order and its outbox event, pgfanout is SIGKILLed once in the middle, one
/// more transaction is rolled back, and the outbox rows are deleted at the
/// end (as a cleanup job would). Each committed event is in
/// `outbox.event.<aggregatetype>` once, keyed by its aggregate id, its value
/// the payload as PostgreSQL prints it, its id and type as headers; the
/// rolled-back event and the deletes publish nothing. Each transaction also
/// emits a logical message (`message:payments`, the same router) whose
/// JSON fields route it to `outbox.event.payment`, its payload verbatim; a
/// non-transactional message, one with a prefix no pipeline reads and the
/// rolled-back transaction's message publish nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_events_are_published_once_with_their_headers() {
    let (pg, c) = cluster_with("kobx", &[("wal_sender_timeout", "4s")]).await;
    c.batch_execute(
        "CREATE TABLE orders (id int PRIMARY KEY, total numeric(12,2) NOT NULL);
         CREATE TABLE outbox (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), aggregatetype text NOT NULL,
           aggregateid text NOT NULL, type text NOT NULL, payload jsonb NOT NULL);",
    )
    .await
    .unwrap();
    let broker = tokio::task::spawn_blocking(KafkaBroker::start).await.unwrap();
    let dir = scratch();
    let pipelines = "  - name: events\n    from: public.outbox\n    to: events\n    kafka: { topic: \"outbox.event.{aggregatetype}\", key: \"{aggregateid}\", format: outbox }\n  - name: payments\n    from: \"message:payments\"\n    to: events\n    kafka: { topic: \"outbox.event.{aggregatetype}\", key: \"{aggregateid}\", format: outbox }";
    let cfg = kafka_config(&pg, "kobx", "kobx", &broker.bootstrap(), "delivery: exactly_once", pipelines, dir.path());
    let mut d = Daemon::start(bin(), dir.path(), "kobx", &cfg);
    testkit::wait_for(Duration::from_secs(60), "slot", || async { confirmed_flush(&c, "kobx").await > 0 }).await;
    let writer = pg.client("kobx").await;
    let mut mark = 0;
    for i in 1..=300 {
        if i == 100 {
            mark = insert_lsn(&c).await;
        }
        if i == 150 {
            // Killed once the first 100 events are in Kafka and confirmed.
            testkit::wait_for(Duration::from_secs(60), "the first events confirmed", || async {
                confirmed_flush(&c, "kobx").await >= mark
            })
            .await;
            d.kill9();
            tokio::time::sleep(Duration::from_millis(300)).await;
            d.spawn(bin());
        }
        let kind = if i % 3 == 0 { "customer" } else { "order" };
        writer
            .batch_execute(&format!(
                "BEGIN; INSERT INTO orders VALUES ({i}, {i}.25);
                 INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('{kind}', '{kind}-{i}', '{kind}_placed',
                   jsonb_build_object('n', {i}, 'total', 123456789012345678901234.25::numeric, 'note', E'tab\\there'));
                 SELECT pg_logical_emit_message(true, 'payments', '{message}');
                 SELECT pg_logical_emit_message(true, 'unread', 'x');
                 COMMIT;",
                message = payment_message(i)
            ))
            .await
            .unwrap();
    }
    writer
        .batch_execute(
            "BEGIN; INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'rolled-back', 'x', '{}');
             SELECT pg_logical_emit_message(true, 'payments', '{\"id\": \"rolled-back\", \"aggregatetype\": \"payment\", \"payload\": 1}');
             ROLLBACK;
             SELECT pg_logical_emit_message(false, 'payments', '{\"id\": \"not-transactional\", \"aggregatetype\": \"payment\", \"payload\": 1}');",
        )
        .await
        .unwrap();
    let events: HashMap<String, (String, String, String, String)> = c
        .query("SELECT id::text, aggregatetype, aggregateid, type, payload::text FROM outbox", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
        .collect();
    assert_eq!(events.len(), 300);
    c.batch_execute("DELETE FROM outbox").await.unwrap();
    wait_confirmed(&c, "kobx", &d, Duration::from_secs(60)).await;
    let topics = vec!["outbox.event.order".to_string(), "outbox.event.customer".to_string(), "outbox.event.payment".to_string()];
    let msgs = tokio::task::block_in_place(|| read_topics(&broker.bootstrap(), &topics, Duration::from_secs(60), 600));
    assert_eq!(msgs.len(), 600, "each committed event and message once, nothing for the rollback or the deletes");
    let (payments, msgs): (Vec<&Msg>, Vec<&Msg>) = msgs.iter().partition(|m| m.topic == "outbox.event.payment");
    let mut seen = HashSet::new();
    for m in &payments {
        let id = m.header("id").to_string();
        let i: usize = id.strip_prefix("pay-").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("unexpected message {m:?}"));
        assert!((1..=300).contains(&i) && seen.insert(id.clone()), "message {id} twice or unknown");
        assert_eq!(m.key.as_deref(), Some(format!("p-{i}").as_str()));
        assert_eq!(m.header("eventType"), "payment_taken");
        let expected = payment_message(i);
        let payload = &expected[expected.find("\"payload\": ").unwrap() + 11..expected.len() - 1];
        assert_eq!(String::from_utf8_lossy(m.value.as_deref().unwrap()), payload, "the message's payload verbatim");
    }
    assert_eq!(seen.len(), 300);
    let mut seen = HashSet::new();
    for m in &msgs {
        let id = m.header("id").to_string();
        let (kind, aggregate, event_type, payload) = events.get(&id).unwrap_or_else(|| panic!("event {id} was not committed: {m:?}"));
        assert!(seen.insert(id.clone()), "event {id} twice");
        assert_eq!(&m.topic, &format!("outbox.event.{kind}"));
        assert_eq!(m.key.as_deref(), Some(aggregate.as_str()));
        assert_eq!(m.header("eventType"), event_type);
        assert_eq!(String::from_utf8_lossy(m.value.as_deref().unwrap()), payload.as_str(), "the payload as PostgreSQL prints it");
    }
    assert_eq!(d.log().matches("kafka exactly-once producer ready").count(), 2, "two starts");
}

/// The content of the logical message transaction `i` emits.
fn payment_message(i: usize) -> String {
    format!(
        r#"{{"id": "pay-{i}", "aggregatetype": "payment", "aggregateid": "p-{i}", "type": "payment_taken", "payload": {{"n": {i}, "amount": 123456789012345678901234.25, "ok": true}}}}"#
    )
}

/// `ha` with an exactly-once Kafka sink: a warm standby does not disturb
/// the leader's transactional producer (its own starts only when it leads),
/// and after a SIGKILL of the leader under load the standby takes over and
/// a `read_committed` consumer still sees every change exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_exactly_once_kafka_without_a_duplicate() {
    let (pg, c) = cluster("kha").await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)").await.unwrap();
    let broker = tokio::task::spawn_blocking(KafkaBroker::start).await.unwrap();
    let dir = scratch();
    let config = |name: &str| {
        kafka_config(
            &pg,
            "kha",
            "kha",
            &broker.bootstrap(),
            "delivery: exactly_once",
            "  - name: rows\n    from: public.t\n    to: events\n    kafka: { topic: \"ha.t\", format: native }",
            dir.path(),
        ) + &format!("ha:\n  enabled: true\n  lease: 3s\n  instance: {name}\n")
    };
    let mut a = Daemon::start(bin(), dir.path(), "a", &config("a"));
    wait_slot(&c, "kha", &a).await;
    let b = Daemon::start(bin(), dir.path(), "b", &config("b"));
    testkit::wait_until(Duration::from_secs(60), "b waits as a standby", || b.log().contains("standby: waiting for the lease"));
    let writer = pg.client("kha").await;
    let mut id = 0;
    for _ in 0..200 {
        id += 1;
        writer.batch_execute(&format!("INSERT INTO t VALUES ({id}, {id})")).await.unwrap();
    }
    wait_confirmed(&c, "kha", &a, Duration::from_secs(60)).await;
    assert!(!a.log().contains("sink write failed"), "the standby's start did not fence the leader's producer\n{}", a.log());
    let load = tokio::spawn(async move {
        for _ in 0..800 {
            id += 1;
            writer
                .batch_execute(&format!("INSERT INTO t VALUES ({id}, {id}); UPDATE t SET v = v + 1 WHERE id = {}", id / 2))
                .await
                .unwrap();
        }
        id
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill9();
    let last = load.await.unwrap();
    testkit::wait_for(Duration::from_secs(60), "b leads", || async { b.log().contains("took the lease: leading") }).await;
    wait_confirmed(&c, "kha", &b, Duration::from_secs(90)).await;
    let changes = 200 + 2 * (last as usize - 200);
    let recs = tokio::task::block_in_place(|| {
        read_records(&broker.bootstrap(), &["ha.t"], Duration::from_secs(60), Duration::from_millis(500), |_| true)
    });
    let positions: HashSet<(String, String)> = recs
        .iter()
        .map(|r| (r.header("pgfanout.commit_lsn").unwrap().to_string(), r.header("pgfanout.ordinal").unwrap().to_string()))
        .collect();
    println!("{} changes, {} records, {} distinct positions", changes, recs.len(), positions.len());
    assert_eq!(positions.len(), changes, "every change");
    assert_eq!(recs.len(), changes, "once");
}
