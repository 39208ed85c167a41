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

use common::scylla::{select, select_one};
use common::*;
use pgfanout_scylla::driver::client::session::Session;
use pgfanout_scylla::driver::client::session_builder::SessionBuilder;
use pgfanout_scylla::driver::value::{CqlDate, CqlTimestamp, CqlValue, Row as CqlRow};
use testkit::{CassandraNode, Server};

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

/// Inserts (half with a TOASTed `big`), updates that leave `big` alone,
/// updates of it, key changes, a delete and insert again of one key, and
/// deletes; at least five rows before anything but inserts.
const ITEMS: Mix = Mix { statement: items_statement, max_statements: 4 };

fn big(w: &mut Workload) -> String {
    w.big("big", "abcdefghijklmnopqrstuvwxyz0123456789", 80)
}

fn items_statement(w: &mut Workload) -> String {
    let choice = if w.live() < 5 { 0 } else { w.rng.below(10) };
    let live = w.pick();
    match (choice, live) {
        (0..=2, _) | (_, None) => {
            let id = w.insert();
            let big = if w.rng.below(2) == 0 { big(w) } else { "NULL".into() };
            format!("INSERT INTO items VALUES ({id}, 'n{id}', {}, {big})", w.rng.below(100))
        }
        // Leaves `big` alone: its TOASTed value is not sent.
        (3..=5, Some(id)) => format!("UPDATE items SET qty = {}, name = name || '+' WHERE id = {id}", w.rng.below(100)),
        (6, Some(id)) => format!("UPDATE items SET big = {} WHERE id = {id}", big(w)),
        (7, Some(id)) => {
            let new = w.rekey(id);
            format!("UPDATE items SET id = {new} WHERE id = {id}")
        }
        (8, Some(id)) => {
            // Delete and insert again in one transaction.
            let big = big(w);
            format!("DELETE FROM items WHERE id = {id}; INSERT INTO items VALUES ({id}, 'again{id}', 1, {big})")
        }
        (_, Some(id)) => {
            w.delete(id);
            format!("DELETE FROM items WHERE id = {id}")
        }
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
    let mut got: Vec<ItemRow> = select::<ItemRow>(&session, format!("SELECT id, name, qty, big FROM {ks}.items")).await;
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
    let rows =
        select::<(i32, String, String, Option<i32>)>(&session, format!("SELECT item_id, position, op, qty FROM {ks}.item_feed")).await;
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
    let run = |args: &[&str]| run_verify(&path, "30s", args);
    let (code, report, text) = tokio::task::block_in_place(|| run(&[]));
    assert_eq!(code, 0, "{text}\n{}", d.log());
    let mirror = &report["pipelines"][0];
    assert_eq!(mirror["status"], "equal", "{text}");
    assert_eq!(report["pipelines"][1]["status"], "skipped", "append tables are logs: {text}");
    let ids: Vec<i32> = c.query("SELECT id FROM items ORDER BY id LIMIT 2", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let (a, b) = (ids[0], ids[1]);
    let session: Session = SessionBuilder::new().known_node(shared().await.contact_point()).build().await.unwrap();
    let mut wt = Vec::new();
    for id in [a, b] {
        wt.push(select_one::<(i64,)>(&session, format!("SELECT WRITETIME(name) FROM e2e_mixed.items WHERE id = {id}")).await.0);
    }
    for cql in [
        format!("DELETE FROM e2e_mixed.items USING TIMESTAMP {} WHERE id = {a}", wt[0]),
        format!("UPDATE e2e_mixed.items USING TIMESTAMP {} SET name = 'tampered' WHERE id = {b}", wt[1] + 1),
        "INSERT INTO e2e_mixed.items (id, name) VALUES (999999, 'stray') USING TIMESTAMP 1000".to_string(),
    ] {
        session.query_unpaged(cql, ()).await.unwrap();
    }
    let (code, report, text) = tokio::task::block_in_place(|| run(&[]));
    assert_eq!(code, 1, "{text}");
    let mirror = &report["pipelines"][0];
    assert_eq!(mirror["missing"], serde_json::json!([format!("e2e_mixed.items (id={a})")]), "{text}");
    assert_eq!(mirror["different"], serde_json::json!([{"id": format!("e2e_mixed.items (id={b})"), "fields": ["name"]}]), "{text}");
    assert_eq!(mirror["extra"], serde_json::json!(["e2e_mixed.items (id=999999)"]), "{text}");
    let (code, _, text) = tokio::task::block_in_place(|| run(&["--repair"]));
    assert_eq!(code, 1, "{text}");
    let (code, _, text) = tokio::task::block_in_place(|| run(&[]));
    assert_eq!(code, 0, "repaired: {text}");
}

async fn start(db: &str) -> (PgCluster, tokio_postgres::Client, tempfile::TempDir) {
    let (pg, c) = cluster_with(db, SHORT_WAL_SENDER_TIMEOUT).await;
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
        let mut w = Workload::new(ITEMS, seed);
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
    let mut w = Workload::new(ITEMS, 42);
    for _ in 0..300 {
        let sql = w.transaction();
        c.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{e}\n{sql}"));
    }
    wait_confirmed(&c, "scylla", &d, Duration::from_secs(60)).await;
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
    wait_confirmed(&c, "scylla", &d, Duration::from_secs(90)).await;
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
    wait_confirmed(&c, "scylla", &d, Duration::from_secs(120)).await;
    assert_matches(&c, "e2e_restart", &d, node).await;
    assert!(d.is_running());
    node.stop();
}

/// `config/ecommerce.yaml`'s `feed` pipeline as shipped, on the example
/// schema and changes: a user's latest events, newest first (the README query).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecommerce_example_feed() {
    let (pg, c) = ecommerce_cluster("shop").await;
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
    let rows: Vec<(String, String, String)> = select::<(String, String, String)>(
        &session,
        "SELECT action, position, details FROM shop_example.activity_feed WHERE user_id = 1 LIMIT 10".to_string(),
    )
    .await;
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

/// Values at PostgreSQL's edges, each in a typed CQL column and, where the
/// type mapping loses something, also in a text column (exact).
const ZOO_SCHEMA: &str = "
    CREATE TABLE zoo (id int PRIMARY KEY, d date, ts timestamp, tstz timestamptz, addr inet, net cidr,
                      ints int[], tags text[], n numeric, big numeric, f float8, toasted text);
    ALTER TABLE zoo ALTER COLUMN toasted SET STORAGE EXTERNAL;
    ALTER TABLE zoo REPLICA IDENTITY FULL;";

const ZOO_COLUMNS: &str =
    "id, d, d_text, ts, tstz, ts_text, addr, addr_text, net, ints, ints_frozen, tags, n, n_text, big, f, f_text, toasted";

fn zoo_config(pg: &PgCluster, dir: &std::path::Path, node: &CassandraNode) -> String {
    let sinks =
        format!("  zoo: {{ type: scylla, nodes: [\"{}\"], keyspace: e2e_zoo, create: true, consistency: one }}", node.contact_point());
    let pipelines = r#"
  - name: zoo
    from: public.zoo
    to: zoo
    scylla:
      table: zoo
      columns: { id: id, d: d, d_text: d, ts: ts, tstz: tstz, ts_text: ts, addr: addr, addr_text: addr, net: net,
                 ints: ints, ints_frozen: ints, tags: tags, n: n, n_text: n, big: big, f: f, f_text: f, toasted: toasted }
      partition_key: [id]
      types: { id: int, d: date, ts: timestamp, tstz: timestamp, addr: inet, ints: "list<int>", ints_frozen: "frozen<list<int>>",
               tags: "set<text>", n: decimal, big: varint, f: double }"#;
    daemon_config(pg, "zoo", "scylla", &sinks, pipelines, &dir.join("dead.jsonl"))
}

/// Signed big-endian two's complement to decimal digits (the test's own,
/// to read CQL varint and decimal without the driver's bignum features).
fn digits_of(bytes: &[u8]) -> String {
    let neg = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut mag: Vec<u32> = bytes.iter().map(|&b| u32::from(if neg { !b } else { b })).collect();
    let mut out = Vec::new();
    while mag.iter().any(|&b| b != 0) {
        let mut rem = 0;
        for b in mag.iter_mut() {
            let x = (rem << 8) | *b;
            *b = x / 10;
            rem = x % 10;
        }
        out.push(rem);
    }
    // |negative| = !bytes + 1: add the one in decimal.
    let mut digits: Vec<u32> = out;
    if neg {
        let mut i = 0;
        loop {
            if i == digits.len() {
                digits.push(0);
            }
            digits[i] += 1;
            if digits[i] < 10 {
                break;
            }
            digits[i] = 0;
            i += 1;
        }
    }
    let mut s: String = digits.iter().rev().map(|d| char::from(b'0' + *d as u8)).collect();
    if s.is_empty() {
        s.push('0');
    }
    if neg {
        s.insert(0, '-');
    }
    s
}

/// The source row as the type mapping (connectors/scylla/README.md) says
/// Cassandra holds it, computed by PostgreSQL where it can (days and
/// milliseconds since 1970, the host of an inet, text as `to_jsonb` writes it),
/// for the rows that can be held (101..=108 cannot).
const ZOO_EXPECTED: &str = "
    SELECT id,
      (d - '1970-01-01'::date)::bigint + 2147483648,
      to_jsonb(d) #>> '{}',
      ((ts::date - '1970-01-01'::date)::numeric * 86400000 + floor(extract(epoch FROM ts::time) * 1000))::text,
      (((tstz AT TIME ZONE 'UTC')::date - '1970-01-01'::date)::numeric * 86400000
        + floor(extract(epoch FROM (tstz AT TIME ZONE 'UTC')::time) * 1000))::text,
      to_jsonb(ts) #>> '{}',
      host(addr), to_jsonb(addr) #>> '{}', to_jsonb(net) #>> '{}',
      ints, tags, n::text, to_jsonb(n) #>> '{}', big::text, f::text, to_jsonb(f) #>> '{}', toasted
    FROM zoo WHERE id NOT BETWEEN 101 AND 108 ORDER BY id";

fn cql_text(v: &Option<CqlValue>) -> Option<String> {
    match v {
        None => None,
        Some(CqlValue::Text(s)) => Some(s.clone()),
        Some(CqlValue::Decimal(d)) => {
            let (bytes, scale) = d.as_signed_be_bytes_slice_and_exponent();
            let digits = digits_of(bytes);
            let (sign, d) = digits.strip_prefix('-').map_or(("", digits.as_str()), |d| ("-", d));
            let scale = usize::try_from(scale).expect("PostgreSQL numerics have no negative scale");
            let d = format!("{d:0>width$}", width = scale + 1);
            let (i, f) = d.split_at(d.len() - scale);
            Some(if scale == 0 { format!("{sign}{i}") } else { format!("{sign}{i}.{f}") })
        }
        Some(CqlValue::Varint(v)) => Some(digits_of(v.as_signed_bytes_be_slice())),
        Some(other) => panic!("not text: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_values_are_exact_or_dead_lettered_alone() {
    let (pg, c, dir) = start("zoo").await;
    c.batch_execute(ZOO_SCHEMA).await.unwrap();
    let node = shared().await;
    let yaml = zoo_config(&pg, dir.path(), node);
    let mut d = Daemon::start(bin(), dir.path(), "zoo", &yaml);
    testkit::wait_for(Duration::from_secs(60), "slot", || async { confirmed_flush(&c, "scylla").await > 0 }).await;
    let long = |n: usize| "123456789".repeat(n / 9 + 1)[..n].to_string();
    let toasted = format!("'{}'", "toast-".repeat(2000));
    // One transaction: rows that fit beside rows that cannot be held; the
    // latter must be dead-lettered alone.
    c.batch_execute(&format!(
        "BEGIN;
        INSERT INTO zoo VALUES (1, '2024-02-29', '2024-02-29 01:02:03.123456', '2024-02-29 01:02:03.123456+00', '10.0.0.1',
            '10.0.0.0/8', '{{1,2,3}}', '{{b,a,b}}', 12.50, 42, 1.5, {toasted});
        INSERT INTO zoo VALUES (2, '0044-03-15 BC', '0001-01-01 00:00:00 BC', '0044-03-15 12:34:56.789123+00 BC', '2001:db8::1',
            '2001:db8::/32', '{{}}', '{{}}', {n60}.{n60}, -{n60}, 'NaN', {toasted});
        INSERT INTO zoo VALUES (3, '4714-11-24 BC', '294276-12-31 23:59:59.999999', '294276-12-31 23:59:59.999999+00', '10.0.0.1/32',
            '10.1.2.3/32', NULL, '{{x}}', {n400}, {n400}, '-Infinity', {toasted});
        INSERT INTO zoo VALUES (4, '5874897-12-31', '4714-11-24 00:00:00 BC', '4714-11-24 00:00:00+00 BC', '2001:db8::2/128',
            NULL, '{{-2147483648}}', NULL, -0.{z399}1, 0, 0.1, NULL);
        INSERT INTO zoo (id, d) VALUES (101, 'infinity');
        INSERT INTO zoo (id, ts) VALUES (102, '-infinity');
        INSERT INTO zoo (id, tstz) VALUES (103, 'infinity');
        INSERT INTO zoo (id, addr) VALUES (104, '2001:db8::1/64');
        INSERT INTO zoo (id, ints) VALUES (105, '{{1,NULL}}');
        INSERT INTO zoo (id, n) VALUES (106, 'NaN');
        INSERT INTO zoo (id, n) VALUES (107, '-Infinity');
        INSERT INTO zoo (id, big) VALUES (108, 1.5);
        COMMIT;",
        n60 = long(60),
        n400 = long(400),
        z399 = "0".repeat(399),
    ))
    .await
    .unwrap();
    // Every path: a partial update (the TOASTed value unchanged), a key
    // change of a row with a TOASTed value, a delete, an update the column
    // cannot hold (dead letter; the stored row stays) then one it can.
    for sql in [
        format!("UPDATE zoo SET n = -{n}, d = '0001-01-01 BC' WHERE id = 2", n = long(399)),
        "UPDATE zoo SET id = 33 WHERE id = 3".to_string(),
        "DELETE FROM zoo WHERE id = 4".to_string(),
        "INSERT INTO zoo (id, d, tags) VALUES (4, '2000-01-01', '{}')".to_string(),
        "UPDATE zoo SET d = '-infinity' WHERE id = 1".to_string(),
        "UPDATE zoo SET d = '1999-12-31', big = 7 WHERE id = 1".to_string(),
    ] {
        c.batch_execute(&sql).await.unwrap();
    }
    let dead_path = dir.path().join("dead.jsonl");
    wait_lines(&dead_path, 9, Duration::from_secs(60), &d);
    // The sink and the slot keep moving: a later row arrives and is confirmed.
    c.batch_execute("INSERT INTO zoo (id, d) VALUES (200, '2026-12-01')").await.unwrap();
    wait_confirmed(&c, "scylla", &d, Duration::from_secs(60)).await;
    let session: Session = SessionBuilder::new().known_node(node.contact_point()).build().await.unwrap();
    let rows: Vec<CqlRow> = select::<CqlRow>(&session, format!("SELECT {ZOO_COLUMNS} FROM e2e_zoo.zoo")).await;
    let mut stored: BTreeMap<i32, Vec<Option<CqlValue>>> = BTreeMap::new();
    for r in rows {
        let Some(CqlValue::Int(id)) = r.columns[0] else { panic!("{r:?}") };
        stored.insert(id, r.columns);
    }
    let rejected = [101, 102, 103, 104, 105, 106, 107, 108];
    let source = c.query(ZOO_EXPECTED, &[]).await.unwrap();
    let want_ids: Vec<i32> = source.iter().map(|r| r.get::<_, i32>(0)).filter(|id| !rejected.contains(id)).collect();
    assert_eq!(stored.keys().copied().collect::<Vec<_>>(), want_ids, "{}", d.log());
    assert_eq!(want_ids, vec![1, 2, 4, 33, 200]);
    for r in source.iter().filter(|r| !rejected.contains(&r.get::<_, i32>(0))) {
        let id: i32 = r.get(0);
        let got = &stored[&id];
        let ctx = format!("row {id}: {got:?}");
        let date = r.get::<_, Option<i64>>(1).map(|days| CqlValue::Date(CqlDate(u32::try_from(days).unwrap())));
        assert_eq!(got[1], date, "d: every finite date, BC and up to 5874897, exactly: {ctx}");
        assert_eq!(cql_text(&got[2]), r.get::<_, Option<String>>(2), "d as text: {ctx}");
        let ms = |i: usize| r.get::<_, Option<String>>(i).map(|t| CqlValue::Timestamp(CqlTimestamp(t.parse().unwrap())));
        assert_eq!(got[3], ms(3), "ts: milliseconds (floored), BC and at 294276: {ctx}");
        assert_eq!(got[4], ms(4), "tstz: {ctx}");
        assert_eq!(cql_text(&got[5]), r.get::<_, Option<String>>(5), "ts as text keeps the microseconds: {ctx}");
        assert_eq!(got[6], r.get::<_, Option<String>>(6).map(|h| CqlValue::Inet(h.parse().unwrap())), "addr: {ctx}");
        assert_eq!(cql_text(&got[7]), r.get::<_, Option<String>>(7), "addr as text: {ctx}");
        assert_eq!(cql_text(&got[8]), r.get::<_, Option<String>>(8), "cidr as text keeps the prefix: {ctx}");
        let ints: Option<Vec<Option<i32>>> = r.get(9);
        let ints: Option<Vec<CqlValue>> = ints.map(|v| v.into_iter().map(|i| CqlValue::Int(i.unwrap())).collect());
        // An empty non-frozen collection is null in CQL; a frozen one is a value.
        assert_eq!(got[9], ints.clone().filter(|v| !v.is_empty()).map(CqlValue::List), "ints: {ctx}");
        assert_eq!(got[10], ints.map(CqlValue::List), "ints frozen: {ctx}");
        let tags: Option<Vec<Option<String>>> = r.get(10);
        let tags: Option<std::collections::BTreeSet<String>> = tags.map(|v| v.into_iter().map(|t| t.unwrap()).collect());
        let got_tags: Option<std::collections::BTreeSet<String>> = match &got[11] {
            None => None,
            Some(CqlValue::Set(items)) => Some(items.iter().map(|i| cql_text(&Some(i.clone())).unwrap()).collect()),
            other => panic!("tags {other:?}"),
        };
        assert_eq!(got_tags, tags.filter(|t| !t.is_empty()), "tags: a set, empty = null: {ctx}");
        assert_eq!(cql_text(&got[12]), r.get::<_, Option<String>>(11), "n: every digit: {ctx}");
        assert_eq!(cql_text(&got[13]), r.get::<_, Option<String>>(12), "n as text: {ctx}");
        assert_eq!(cql_text(&got[14]), r.get::<_, Option<String>>(13), "big: every digit: {ctx}");
        let f = r.get::<_, Option<String>>(14).map(|t| t.parse::<f64>().unwrap());
        match (&got[15], f) {
            (Some(CqlValue::Double(g)), Some(w)) => assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "f: {ctx}"),
            (None, None) => {}
            (g, w) => panic!("f: {g:?} != {w:?}: {ctx}"),
        }
        assert_eq!(cql_text(&got[16]), r.get::<_, Option<String>>(15), "f as text: {ctx}");
        assert_eq!(cql_text(&got[17]), r.get::<_, Option<String>>(16), "toasted (kept over partial updates and the key change): {ctx}");
    }
    assert!(stored[&2][17].is_some() && stored[&33][17].is_some(), "TOASTed values survived");
    // Dead letters: each unholdable record alone, with its reason.
    let dead = records(&dead_path);
    let mut reasons: Vec<(i64, String)> =
        dead.iter().map(|l| (l["change"]["after"]["id"].as_i64().unwrap(), l["error"].as_str().unwrap().to_string())).collect();
    reasons.sort();
    let want: [(i64, &str); 9] = [
        (1, "-infinity has no CQL value"),
        (101, "infinity has no CQL value"),
        (102, "-infinity has no CQL value"),
        (103, "infinity has no CQL value"),
        (104, "network prefix (/64)"),
        (105, "NULL element"),
        (106, "NaN has no CQL decimal"),
        (107, "-Infinity has no CQL decimal"),
        (108, "not an integer"),
    ];
    assert_eq!(reasons.len(), want.len(), "{dead:?}");
    for ((id, error), (want_id, want_error)) in reasons.iter().zip(want) {
        assert_eq!(*id, want_id, "{dead:?}");
        assert!(error.contains(want_error), "dead letter of {id}: {error:?} should say {want_error:?}");
    }
    // verify compares through the same mapping: equal, the dead-lettered
    // rows counted as not mappable.
    let path = dir.path().join("verify.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let report = dir.path().join("verify.json");
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(bin()).args(["verify", "-c"]).arg(&path).arg("--json").arg(&report).output().unwrap()
    });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap_or_default()).unwrap_or_default();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(json["pipelines"][0]["status"], "equal", "{text}");
    assert_eq!(json["pipelines"][0]["unmappable"], 8, "{text}");
    assert!(d.is_running());
}

/// TLS to Cassandra (a node with `client_encryption_options` and a
/// certificate from a test CA; the driver's OpenSSL backend checks the
/// chain and the node's IP address). `doctor` passes with that CA; with
/// another CA it fails and says what to fix. The daemon then streams
/// through TLS and the table (read over plaintext, which the node also
/// takes) equals PostgreSQL's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_test_ca_streams_and_a_wrong_ca_is_refused_with_the_fix() {
    let db = "ctls";
    let (pg, c) = cluster(db).await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)").await.unwrap();
    let node = tokio::task::spawn_blocking(CassandraNode::start_tls).await.unwrap();
    let tls = node.tls.clone().unwrap();
    let dir = scratch();
    let config = |ca: &std::path::Path| {
        let sink = format!(
            "  feed: {{ type: cassandra, nodes: [\"127.0.0.1:{}\"], keyspace: ctls, create: true, consistency: one, tls: {{ ca_file: \"{}\" }} }}",
            tls.port,
            ca.display()
        );
        let pipelines = "  - name: t\n    from: public.t\n    to: feed\n    scylla: { table: t, columns: { id: id, v: v }, partition_key: [id], types: { id: int } }";
        daemon_config(&pg, db, db, &sink, pipelines, &dir.path().join("dead.jsonl"))
    };
    let doctor = |name: &str, yaml: String| tokio::task::block_in_place(|| doctor_says(dir.path(), name, &yaml, "feed"));
    let said = doctor("other-ca", config(&tls.certs.other_ca_file));
    assert!(said.contains("FAIL  sink feed") && said.contains("set tls.ca_file"), "another CA is refused, with the fix:\n{said}");

    let d = Daemon::start(bin(), dir.path(), db, &config(&tls.certs.ca_file));
    wait_slot(&c, db, &d).await;
    c.batch_execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 200) g; UPDATE t SET v = v || '+' WHERE id % 3 = 0; DELETE FROM t WHERE id % 7 = 0")
        .await
        .unwrap();
    wait_confirmed(&c, db, &d, Duration::from_secs(90)).await;
    let rows = c.query("SELECT id, v FROM t", &[]).await.unwrap();
    let want: BTreeMap<i32, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let session: Session = SessionBuilder::new().known_node(node.contact_point()).build().await.unwrap();
    let got: BTreeMap<i32, String> = select::<(i32, String)>(&session, "SELECT id, v FROM ctls.t".into()).await.into_iter().collect();
    assert_eq!(got, want, "every change through TLS\n{}", d.log());
    // With the keyspace made (`create: true`), doctor passes with the right CA.
    let said = doctor("good", config(&tls.certs.ca_file));
    assert!(said.contains("ok    sink feed") && !said.contains("FAIL  sink feed"), "the right CA:\n{said}");
}
