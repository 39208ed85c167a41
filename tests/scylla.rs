//! End-to-end: PostgreSQL -> `pgfanout run` -> ScyllaDB sink, against a real
//! PostgreSQL cluster and a real Apache Cassandra 5.0 node (testkit).
//! ScyllaDB itself cannot run here; Cassandra speaks the same CQL.
//!
//! Oracles: the upsert table must equal the source table (with unchanged
//! TOAST values and key changes), and the append table must equal, per
//! partition and in commit order, the history a PostgreSQL trigger wrote.
//! SIGKILL of the daemon mid-workload must converge to the same, with no
//! duplicate feed row.
#![cfg(feature = "scylla")]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use pgfanout_scylla::driver::client::session::Session;
use pgfanout_scylla::driver::client::session_builder::SessionBuilder;
use testkit::CassandraNode;

const SCHEMA: &str = "
    CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int, big text);
    ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
    -- A key change of a row whose TOASTed value did not change needs the
    -- old row to complete the moved one.
    ALTER TABLE items REPLICA IDENTITY FULL;
    CREATE TABLE history (seq bigserial PRIMARY KEY, item_id int NOT NULL, op text NOT NULL, qty int);
    CREATE FUNCTION record_history() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP = 'DELETE' THEN
        INSERT INTO history (item_id, op, qty) VALUES (OLD.id, 'delete', OLD.qty);
      ELSE
        INSERT INTO history (item_id, op, qty) VALUES (NEW.id, lower(TG_OP), NEW.qty);
      END IF;
      RETURN NULL;
    END $$;
    CREATE TRIGGER items_history AFTER INSERT OR UPDATE OR DELETE ON items
      FOR EACH ROW EXECUTE FUNCTION record_history();";

fn config(pg: &PgCluster, db: &str, ks: &str, dir: &std::path::Path, node: &CassandraNode) -> String {
    let sinks = format!(
        "  feed: {{ type: scylla, nodes: [\"{}\"], keyspace: {ks}, create: true, consistency: one, concurrency: 4, request_timeout: 3s }}",
        node.contact_point()
    );
    let pipelines = r#"
  - name: mirror
    from: public.items
    to: feed
    scylla:
      table: items
      columns: { id: id, name: name, qty: qty, big: big }
      partition_key: [id]
      types: { id: int, qty: int }
  - name: feed
    from: public.items
    to: feed
    scylla:
      table: item_feed
      mode: append
      columns: { item_id: id, position: $position, op: $op, qty: qty }
      partition_key: [item_id]
      clustering_key: [position]
      types: { item_id: int, qty: int }"#;
    daemon_config(pg, db, "scylla", &sinks, pipelines, &dir.join("dead.jsonl"))
}

struct Workload {
    rng: Rng,
    live: Vec<i32>,
    next_id: i32,
    seq: u64,
}

impl Workload {
    fn new(seed: u64) -> Workload {
        Workload { rng: Rng(seed | 1), live: Vec::new(), next_id: 1, seq: 0 }
    }

    fn big(&mut self) -> String {
        self.seq += 1;
        format!("'big-{}-{}'", self.seq, "abcdefghijklmnopqrstuvwxyz0123456789".repeat(80))
    }

    fn pick(&mut self) -> Option<i32> {
        (!self.live.is_empty()).then(|| self.live[self.rng.below(self.live.len() as u64) as usize])
    }

    fn statement(&mut self) -> String {
        let choice = if self.live.len() < 5 { 0 } else { self.rng.below(10) };
        let live = self.pick();
        match (choice, live) {
            (0..=2, _) | (_, None) => {
                let id = self.next_id;
                self.next_id += 1;
                self.live.push(id);
                let big = if self.rng.below(2) == 0 { self.big() } else { "NULL".into() };
                format!("INSERT INTO items VALUES ({id}, 'n{id}', {}, {big});", self.rng.below(100))
            }
            // Leaves `big` alone: its TOASTed value is not sent.
            (3..=5, Some(id)) => format!("UPDATE items SET qty = {}, name = name || '+' WHERE id = {id};", self.rng.below(100)),
            (6, Some(id)) => format!("UPDATE items SET big = {} WHERE id = {id};", self.big()),
            (7, Some(id)) => {
                let new = self.next_id;
                self.next_id += 1;
                self.live.retain(|x| *x != id);
                self.live.push(new);
                format!("UPDATE items SET id = {new} WHERE id = {id};")
            }
            (8, Some(id)) => {
                // Delete and insert again in one transaction.
                let big = self.big();
                format!("DELETE FROM items WHERE id = {id}; INSERT INTO items VALUES ({id}, 'again{id}', 1, {big});")
            }
            (_, Some(id)) => {
                self.live.retain(|x| *x != id);
                format!("DELETE FROM items WHERE id = {id};")
            }
        }
    }

    fn transaction(&mut self) -> String {
        let n = 1 + self.rng.below(4);
        let body: String = (0..n).map(|_| self.statement()).collect::<Vec<_>>().join(" ");
        format!("BEGIN; {body} COMMIT;")
    }
}

async fn wait_confirmed(c: &tokio_postgres::Client, d: &Daemon, timeout: Duration) {
    let end = insert_lsn(c).await;
    let start = std::time::Instant::now();
    while confirmed_flush(c, "scylla").await < end {
        if start.elapsed() > timeout {
            panic!("confirmed_flush_lsn did not reach {end:X} in {timeout:?}\n--- daemon log ---\n{}", d.log());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type ItemRow = (i32, String, Option<i32>, Option<String>);

async fn assert_matches(c: &tokio_postgres::Client, ks: &str, d: &Daemon, node: &CassandraNode) {
    let session: Session = SessionBuilder::new().known_node(node.contact_point()).build().await.unwrap();
    // Upsert table == source table.
    let mut want: Vec<ItemRow> = c
        .query("SELECT id, name, qty, big FROM items ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    want.sort();
    let mut got: Vec<ItemRow> = session
        .query_unpaged(format!("SELECT id, name, qty, big FROM {ks}.items"), ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<ItemRow>()
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    got.sort();
    assert_eq!(got.len(), want.len(), "row count\n--- daemon log ---\n{}", d.log());
    assert!(got == want, "items differ: first difference {:?}", got.iter().zip(&want).find(|(a, b)| a != b));
    assert!(want.iter().filter(|r| r.3.is_some()).count() > 5, "the workload kept TOASTed values");
    // Append table == history, per partition, in commit order.
    let mut history: BTreeMap<i32, Vec<(String, Option<i32>)>> = BTreeMap::new();
    for r in c.query("SELECT item_id, op, qty FROM history ORDER BY seq", &[]).await.unwrap() {
        history.entry(r.get(0)).or_default().push((r.get(1), r.get(2)));
    }
    let mut feed: BTreeMap<i32, Vec<(String, String, Option<i32>)>> = BTreeMap::new();
    let rows = session
        .query_unpaged(format!("SELECT item_id, position, op, qty FROM {ks}.item_feed"), ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(i32, String, String, Option<i32>)>()
        .unwrap()
        .map(|r| r.unwrap())
        .collect::<Vec<_>>();
    for (id, pos, op, qty) in rows {
        feed.entry(id).or_default().push((pos, op, qty));
    }
    let feed: BTreeMap<i32, Vec<(String, Option<i32>)>> = feed
        .into_iter()
        .map(|(k, mut v)| {
            (k, {
                v.sort();
                v.into_iter().map(|(_, op, q)| (op, q)).collect()
            })
        })
        .collect();
    assert_eq!(feed.len(), history.len(), "feed partitions");
    for (id, h) in &history {
        assert_eq!(feed.get(id), Some(h), "feed of item {id}");
    }
}

/// `pgfanout verify` on the upsert table: clean after the workload; then a
/// lost row, a changed column and a stray row written straight into
/// Cassandra are reported exactly; `--repair` fixes them. (The injected
/// writes use timestamps at the row's own write time, as a store that lost
/// or changed data would have them: divergence written with wall-clock
/// timestamps would outrank every pgfanout write, see the connector docs.)
async fn verify_finds_and_repairs(c: &tokio_postgres::Client, d: &Daemon, dir: &tempfile::TempDir, yaml: &str) {
    let path = dir.path().join("verify.yaml");
    std::fs::write(&path, yaml).unwrap();
    let run = |args: &[&str]| {
        let report = dir.path().join("verify.json");
        let out = std::process::Command::new(bin())
            .args(["verify", "-c"])
            .arg(&path)
            .arg("--json")
            .arg(&report)
            .args(["--settle", "30s"])
            .args(args)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap_or_default()).unwrap_or_default();
        (out.status.code(), json, text)
    };
    let (code, report, text) = tokio::task::block_in_place(|| run(&[]));
    assert_eq!(code, Some(0), "{text}\n{}", d.log());
    let mirror = &report["pipelines"][0];
    assert_eq!(mirror["status"], "equal", "{text}");
    assert_eq!(report["pipelines"][1]["status"], "skipped", "append tables are logs: {text}");
    let ids: Vec<i32> = c.query("SELECT id FROM items ORDER BY id LIMIT 2", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let (a, b) = (ids[0], ids[1]);
    let session: Session = SessionBuilder::new().known_node(shared().await.contact_point()).build().await.unwrap();
    let mut wt = Vec::new();
    for id in [a, b] {
        let rows = session.query_unpaged(format!("SELECT WRITETIME(name) FROM e2e_mixed.items WHERE id = {id}"), ()).await.unwrap();
        wt.push(rows.into_rows_result().unwrap().single_row::<(i64,)>().unwrap().0);
    }
    for cql in [
        format!("DELETE FROM e2e_mixed.items USING TIMESTAMP {} WHERE id = {a}", wt[0]),
        format!("UPDATE e2e_mixed.items USING TIMESTAMP {} SET name = 'tampered' WHERE id = {b}", wt[1] + 1),
        "INSERT INTO e2e_mixed.items (id, name) VALUES (999999, 'stray') USING TIMESTAMP 1000".to_string(),
    ] {
        session.query_unpaged(cql, ()).await.unwrap();
    }
    let (code, report, text) = tokio::task::block_in_place(|| run(&[]));
    assert_eq!(code, Some(1), "{text}");
    let mirror = &report["pipelines"][0];
    assert_eq!(mirror["missing"], serde_json::json!([format!("e2e_mixed.items (id={a})")]), "{text}");
    assert_eq!(mirror["different"], serde_json::json!([{"id": format!("e2e_mixed.items (id={b})"), "fields": ["name"]}]), "{text}");
    assert_eq!(mirror["extra"], serde_json::json!(["e2e_mixed.items (id=999999)"]), "{text}");
    let (code, _, text) = tokio::task::block_in_place(|| run(&["--repair"]));
    assert_eq!(code, Some(1), "{text}");
    let (code, _, text) = tokio::task::block_in_place(|| run(&[]));
    assert_eq!(code, Some(0), "repaired: {text}");
}

async fn start(db: &str) -> (PgCluster, tokio_postgres::Client, tempfile::TempDir) {
    let pg = tokio::task::spawn_blocking(|| PgCluster::start_with(&[("wal_sender_timeout", "4s")])).await.unwrap();
    pg.create_database(db).await;
    let c = pg.client(db).await;
    c.batch_execute(SCHEMA).await.unwrap();
    (pg, c, scratch())
}

async fn shared() -> &'static CassandraNode {
    tokio::task::spawn_blocking(CassandraNode::shared).await.unwrap()
}

/// Runs `txns` workload transactions from a task, 5 ms apart.
async fn spawn_writer(pg: &PgCluster, db: &str, seed: u64, txns: usize) -> tokio::task::JoinHandle<()> {
    let writer_client = pg.client(db).await;
    tokio::spawn(async move {
        let mut w = Workload::new(seed);
        for _ in 0..txns {
            let sql = w.transaction();
            writer_client.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{e}\n{sql}"));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_workload_tables_equal_source_and_history() {
    let (pg, c, dir) = start("mixed").await;
    let mut d = Daemon::start(bin(), dir.path(), "mixed", &config(&pg, "mixed", "e2e_mixed", dir.path(), shared().await));
    testkit::wait_for(Duration::from_secs(60), "slot", || async { confirmed_flush(&c, "scylla").await > 0 }).await;
    let mut w = Workload::new(42);
    for _ in 0..300 {
        let sql = w.transaction();
        c.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{e}\n{sql}"));
    }
    wait_confirmed(&c, &d, Duration::from_secs(60)).await;
    assert_matches(&c, "e2e_mixed", &d, shared().await).await;
    assert!(d.is_running());
    verify_finds_and_repairs(&c, &d, &dir, &config(&pg, "mixed", "e2e_mixed", dir.path(), shared().await)).await;
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(20)).and_then(|s| s.code()), Some(0), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_workload_converges_without_duplicates() {
    let (pg, c, dir) = start("kill").await;
    let mut d = Daemon::start(bin(), dir.path(), "kill", &config(&pg, "kill", "e2e_kill", dir.path(), shared().await));
    testkit::wait_for(Duration::from_secs(60), "slot", || async { confirmed_flush(&c, "scylla").await > 0 }).await;
    let writer = spawn_writer(&pg, "kill", 7, 500).await;
    for round in 0..2 {
        let base = confirmed_flush(&c, "scylla").await;
        testkit::wait_for(Duration::from_secs(60), "progress before the kill", || async { confirmed_flush(&c, "scylla").await > base })
            .await;
        tokio::time::sleep(Duration::from_millis(500 + 300 * round)).await;
        d.kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        d.spawn(bin());
    }
    writer.await.unwrap();
    wait_confirmed(&c, &d, Duration::from_secs(90)).await;
    assert_matches(&c, "e2e_kill", &d, shared().await).await;
    assert!(d.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_restart_mid_workload_loses_nothing() {
    let (pg, c, dir) = start("restart").await;
    let node: &'static CassandraNode = Box::leak(Box::new(tokio::task::spawn_blocking(CassandraNode::start).await.unwrap()));
    let mut d = Daemon::start(bin(), dir.path(), "restart", &config(&pg, "restart", "e2e_restart", dir.path(), node));
    testkit::wait_for(Duration::from_secs(60), "slot", || async { confirmed_flush(&c, "scylla").await > 0 }).await;
    let writer = spawn_writer(&pg, "restart", 11, 400).await;
    let base = confirmed_flush(&c, "scylla").await;
    testkit::wait_for(Duration::from_secs(60), "progress before the restart", || async { confirmed_flush(&c, "scylla").await > base })
        .await;
    tokio::task::spawn_blocking(move || node.stop()).await.unwrap();
    // While the node is down nothing more is confirmed.
    let held = confirmed_flush(&c, "scylla").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(confirmed_flush(&c, "scylla").await, held, "confirmed past a write Cassandra could not take");
    tokio::task::spawn_blocking(move || node.start_server()).await.unwrap();
    writer.await.unwrap();
    wait_confirmed(&c, &d, Duration::from_secs(120)).await;
    assert_matches(&c, "e2e_restart", &d, node).await;
    assert!(d.is_running());
    node.stop();
}

/// `config/ecommerce.yaml`'s `feed` pipeline as shipped, on the example
/// schema and changes: a user's latest events, newest first (the README query).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecommerce_example_feed() {
    let pg = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let c = ecommerce_database(&pg, "shop").await;
    let node = shared().await;
    let session: Session = SessionBuilder::new().known_node(node.contact_point()).build().await.unwrap();
    for cql in [
        "CREATE KEYSPACE IF NOT EXISTS shop_example WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE IF NOT EXISTS shop_example.activity_feed (user_id bigint, event_time timestamp, position text, action text, \
         details text, PRIMARY KEY ((user_id), event_time, position)) WITH CLUSTERING ORDER BY (event_time DESC, position DESC)",
    ] {
        session.query_unpaged(cql, ()).await.unwrap();
    }
    session.await_schema_agreement().await.unwrap();
    let dir = scratch();
    let keep = serde_json::json!({ "nodes": [node.contact_point()], "keyspace": "shop_example", "consistency": "one" });
    let cfg = ecommerce_subset(&pg, &[("feed", keep)], dir.path());
    let d = Daemon::start(bin(), dir.path(), "ecommerce", &cfg);
    testkit::wait_for(Duration::from_secs(60), "slot", || async { confirmed_flush(&c, "pgfanout").await > 0 }).await;
    let root = env!("CARGO_MANIFEST_DIR");
    c.batch_execute(&std::fs::read_to_string(format!("{root}/examples/ecommerce-changes.sql")).unwrap()).await.unwrap();
    let end = insert_lsn(&c).await;
    testkit::wait_for(Duration::from_secs(60), "confirmed", || async { confirmed_flush(&c, "pgfanout").await >= end }).await;
    // The README's query: user 1's latest 10 events, newest first.
    let rows: Vec<(String, String, String)> = session
        .query_unpaged("SELECT action, position, details FROM shop_example.activity_feed WHERE user_id = 1 LIMIT 10", ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(String, String, String)>()
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let got: Vec<(&str, serde_json::Value)> = rows
        .iter()
        .map(|(a, _, d)| {
            let mut d: serde_json::Value = serde_json::from_str(d).unwrap();
            // Set by PostgreSQL's clock: present, not compared.
            let o = d.as_object_mut().unwrap();
            let stamps = ["created_at", "added_at"].iter().filter_map(|t| o.remove(*t)).filter(|v| v.is_string()).count();
            assert_eq!(stamps, 1, "a created_at or added_at timestamp in {rows:?}");
            (a.as_str(), d)
        })
        .collect();
    let want = vec![
        ("orders.insert", serde_json::json!({"id": 100, "user_id": 1, "status": "paid", "total": 149.87})),
        ("cart_items.update", serde_json::json!({"user_id": 1, "product_id": 11, "quantity": 3})),
        ("cart_items.insert", serde_json::json!({"user_id": 1, "product_id": 11, "quantity": 2})),
        ("cart_items.insert", serde_json::json!({"user_id": 1, "product_id": 10, "quantity": 1})),
    ];
    assert_eq!(got, want, "newest first, deletes left out (ops: [insert, update])\n{}", d.log());
    let positions: Vec<&str> = rows.iter().map(|(_, p, _)| p.as_str()).collect();
    let mut newest_first = positions.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(positions, newest_first, "newest first");
    let dead = std::fs::read_to_string(dir.path().join("ecommerce.dead.jsonl")).unwrap_or_default();
    assert!(dead.is_empty(), "dead letters: {dead}");
}
