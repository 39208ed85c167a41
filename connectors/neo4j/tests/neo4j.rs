//! The Neo4j sink against a real Neo4j 5 server (Community, started by
//! `testkit::Neo4jServer` on a free loopback port).
//!
//! Each test feeds hand-built changes for the e-commerce tables (users,
//! products, order_items) to `Neo4jSink::write`, keeps a model of what the
//! tables hold, and compares the graph read back with neo4rs against it: node
//! and relationship counts and properties per key, replays, and the
//! recommendation query.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use neo4rs::{query, Graph};
use pgfanout_neo4j::{Neo4jMapping, Neo4jSink, Neo4jSinkConfig};
use pgfanout_sdk::testing::{number as n, row_of as row, At, Table};
use pgfanout_sdk::{Change, Lsn, Op, Row, Sink, SinkRecord, Value};
use testkit::Neo4jServer;

const USERS: usize = 0;
const PRODUCTS: usize = 1;
const ORDER_ITEMS: usize = 2;

fn config(server: &Neo4jServer) -> Neo4jSinkConfig {
    serde_json::from_value(serde_json::json!({
        "uri": server.uri(), "user": server.user, "password": server.password, "database": server.database,
    }))
    .expect("sink config")
}

fn mappings() -> Vec<Neo4jMapping> {
    [
        serde_json::json!({"node": {"label": "User", "key": {"id": "id"}}}),
        serde_json::json!({"node": {"label": "Product", "key": {"id": "id"}, "properties": {"name": "name", "price": "price"}}}),
        serde_json::json!({"relationship": {"type": "BOUGHT",
            "from": {"label": "User", "key": {"id": "user_id"}},
            "to": {"label": "Product", "key": {"id": "product_id"}}}}),
    ]
    .into_iter()
    .map(|m| serde_json::from_value(m).expect("mapping"))
    .collect()
}

#[path = "../../../tests/common/neo4j.rs"]
mod bolt;

use bolt::graph as client;

/// A fresh server, a sink on it with [`mappings`], a client, and an empty
/// stream and model.
async fn start() -> (Neo4jServer, Neo4jSink, Graph, Stream, Model) {
    let server = Neo4jServer::start();
    let sink = Neo4jSink::connect(&config(&server), mappings()).await.expect("connect");
    let g = client(&server).await;
    (server, sink, g, Stream::new(), Model::default())
}

/// Builds changes with increasing positions (one transaction per `commit`).
struct Stream {
    commit: u64,
    ordinal: u32,
}

impl Stream {
    fn new() -> Stream {
        Stream { commit: 0x1000, ordinal: 0 }
    }

    fn commit(&mut self) {
        self.commit += 0x100;
        self.ordinal = 0;
    }

    fn change(&mut self, op: Op, table: &str, id: i64, after: Option<Row>) -> Arc<Change> {
        self.ordinal += 1;
        let at = At(self.commit, self.ordinal);
        Arc::new(Change {
            lsn: Lsn(self.commit - 8),
            commit_ts: None,
            ..Table(table).change(op, at, row(&[("id", n(id))]), None, after, &[])
        })
    }
}

fn rec(change: Arc<Change>, route: usize) -> SinkRecord {
    SinkRecord { change, route, source: None }
}

/// What the tables hold: users, products (name), order_items (user, product, qty).
#[derive(Default)]
struct Model {
    users: BTreeSet<i64>,
    products: BTreeMap<i64, String>,
    items: BTreeMap<i64, (i64, i64, i64)>,
}

impl Model {
    fn user(&mut self, s: &mut Stream, op: Op, id: i64) -> SinkRecord {
        if op == Op::Delete {
            self.users.remove(&id);
            return rec(s.change(op, "users", id, None), USERS);
        }
        self.users.insert(id);
        let after = row(&[("id", n(id)), ("email", Value::String(format!("u{id}@shop.test").into()))]);
        rec(s.change(op, "users", id, Some(after)), USERS)
    }

    fn product(&mut self, s: &mut Stream, op: Op, id: i64, name: &str) -> SinkRecord {
        if op == Op::Delete {
            self.products.remove(&id);
            return rec(s.change(op, "products", id, None), PRODUCTS);
        }
        self.products.insert(id, name.to_string());
        let after = row(&[("id", n(id)), ("name", Value::String(name.into())), ("price", Value::Number("9.90".into()))]);
        rec(s.change(op, "products", id, Some(after)), PRODUCTS)
    }

    fn item(&mut self, s: &mut Stream, op: Op, id: i64, user: i64, product: i64, qty: i64) -> SinkRecord {
        if op == Op::Delete {
            self.items.remove(&id);
            return rec(s.change(op, "order_items", id, None), ORDER_ITEMS);
        }
        self.items.insert(id, (user, product, qty));
        let after =
            row(&[("id", n(id)), ("order_id", n(1000 + id)), ("user_id", n(user)), ("product_id", n(product)), ("quantity", n(qty))]);
        rec(s.change(op, "order_items", id, Some(after)), ORDER_ITEMS)
    }
}

async fn ints(g: &Graph, q: &str) -> Vec<Vec<i64>> {
    let mut out = Vec::new();
    let mut rows = g.execute(query(q)).await.unwrap_or_else(|e| panic!("{q}: {e}"));
    while let Some(r) = rows.next().await.unwrap_or_else(|e| panic!("{q}: {e}")) {
        let mut cols = Vec::new();
        for k in ["a", "b", "c", "d"] {
            if let Ok(v) = r.get::<i64>(k) {
                cols.push(v);
            }
        }
        out.push(cols);
    }
    out.sort();
    out
}

/// Compares the graph with the model: one User per user row plus the
/// endpoint stubs the purchases need, one Product per product row, one
/// BOUGHT per order item with its endpoints and quantity.
async fn assert_graph_matches(g: &Graph, m: &Model) {
    let users: BTreeSet<i64> = m.users.iter().copied().chain(m.items.values().map(|(u, _, _)| *u)).collect();
    let got: Vec<Vec<i64>> = ints(g, "MATCH (u:User) RETURN u.id AS a").await;
    assert_eq!(got, users.iter().map(|u| vec![*u]).collect::<Vec<_>>(), "User nodes");
    // Every user row's node carries its email; stubs do not.
    let emails = ints(g, "MATCH (u:User) WHERE u.email IS NOT NULL RETURN u.id AS a").await;
    assert_eq!(emails, m.users.iter().map(|u| vec![*u]).collect::<Vec<_>>(), "User nodes with row properties");

    let products: BTreeSet<i64> = m.products.keys().copied().chain(m.items.values().map(|(_, p, _)| *p)).collect();
    let got = ints(g, "MATCH (p:Product) RETURN p.id AS a").await;
    assert_eq!(got, products.iter().map(|p| vec![*p]).collect::<Vec<_>>(), "Product nodes");

    let got = ints(g, "MATCH (u:User)-[r:BOUGHT]->(p:Product) RETURN r.id AS a, u.id AS b, p.id AS c, r.quantity AS d").await;
    let want: Vec<Vec<i64>> = m.items.iter().map(|(id, (u, p, q))| vec![*id, *u, *p, *q]).collect();
    assert_eq!(got, want, "BOUGHT relationships (id, user, product, quantity)");
}

/// "Users who bought X also bought": other products, by number of buyers.
async fn also_bought(g: &Graph, product: i64) -> Vec<Vec<i64>> {
    ints(
        g,
        &format!(
            "MATCH (p:Product {{id: {product}}})<-[:BOUGHT]-(u:User)-[:BOUGHT]->(o:Product) WHERE o.id <> {product} \
             RETURN o.id AS a, count(DISTINCT u) AS b"
        ),
    )
    .await
}

fn expected_also_bought(m: &Model, product: i64) -> Vec<Vec<i64>> {
    let buyers: BTreeSet<i64> = m.items.values().filter(|(_, p, _)| *p == product).map(|(u, _, _)| *u).collect();
    let mut counts: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
    for (u, p, _) in m.items.values() {
        if buyers.contains(u) && *p != product {
            counts.entry(*p).or_default().insert(*u);
        }
    }
    counts.into_iter().map(|(p, us)| vec![p, us.len() as i64]).collect()
}

async fn write_ok(sink: &mut Neo4jSink, batch: &[SinkRecord]) {
    let rejected = sink.write(batch).await.expect("batch written");
    assert!(rejected.is_empty(), "unexpected rejections: {rejected:?}");
}

#[tokio::test]
async fn mixed_workload_gives_the_graph_the_tables_imply() {
    let (_server, mut sink, g, mut s, mut m) = start().await;

    let mut batch = Vec::new();
    for u in 1..=6 {
        batch.push(m.user(&mut s, Op::Insert, u));
    }
    for p in 1..=5 {
        batch.push(m.product(&mut s, Op::Insert, p, &format!("product {p}")));
    }
    s.commit();
    // Purchases, including two of the same pair (must stay two relationships).
    let purchases = [(1, 1, 1, 1), (2, 1, 2, 1), (3, 2, 1, 2), (4, 2, 3, 1), (5, 3, 1, 1), (6, 3, 2, 3), (7, 3, 2, 1), (8, 4, 4, 1)];
    for (id, u, p, q) in purchases {
        batch.push(m.item(&mut s, Op::Insert, id, u, p, q));
    }
    write_ok(&mut sink, &batch).await;
    assert_graph_matches(&g, &m).await;

    // Updates: quantity change, an endpoint move, a product rename; deletes of
    // a purchase and of a product nobody bought.
    s.commit();
    let batch = vec![
        m.item(&mut s, Op::Update, 1, 1, 1, 5),
        m.item(&mut s, Op::Update, 4, 2, 5, 1),
        m.product(&mut s, Op::Update, 2, "product two"),
        m.item(&mut s, Op::Delete, 8, 0, 0, 0),
        m.item(&mut s, Op::Insert, 9, 5, 1, 1),
        m.item(&mut s, Op::Update, 9, 5, 3, 2),
        // The buyer changes (same product): found from the product's side.
        m.item(&mut s, Op::Update, 6, 4, 2, 3),
    ];
    write_ok(&mut sink, &batch).await;
    s.commit();
    let batch = vec![m.product(&mut s, Op::Delete, 4, ""), m.user(&mut s, Op::Delete, 6)];
    write_ok(&mut sink, &batch).await;
    assert_graph_matches(&g, &m).await;
    let names = ints(&g, "MATCH (p:Product) WHERE p.name = 'product two' RETURN p.id AS a").await;
    assert_eq!(names, vec![vec![2]]);

    for x in 1..=5 {
        assert_eq!(also_bought(&g, x).await, expected_also_bought(&m, x), "also bought for product {x}");
    }
    assert_eq!(also_bought(&g, 1).await, vec![vec![2, 2], vec![5, 1]], "users 1 and 3 also bought 2, user 2 also bought 5");
}

#[tokio::test]
async fn replays_converge_and_stale_writes_are_skipped() {
    let (_server, mut sink, g, mut s, mut m) = start().await;

    let first: Vec<SinkRecord> = vec![
        m.user(&mut s, Op::Insert, 1),
        m.user(&mut s, Op::Insert, 2),
        m.product(&mut s, Op::Insert, 1, "one"),
        m.product(&mut s, Op::Insert, 2, "two"),
        m.item(&mut s, Op::Insert, 1, 1, 1, 1),
        m.item(&mut s, Op::Insert, 2, 1, 1, 1),
        m.item(&mut s, Op::Insert, 3, 2, 2, 1),
    ];
    s.commit();
    let second: Vec<SinkRecord> = vec![
        m.item(&mut s, Op::Update, 1, 1, 1, 7),
        m.item(&mut s, Op::Update, 3, 2, 1, 4),
        m.product(&mut s, Op::Update, 1, "one v2"),
        m.item(&mut s, Op::Delete, 2, 0, 0, 0),
    ];
    write_ok(&mut sink, &first).await;
    write_ok(&mut sink, &second).await;
    assert_graph_matches(&g, &m).await;

    // Replaying the same batch twice creates nothing new.
    write_ok(&mut sink, &second).await;
    assert_graph_matches(&g, &m).await;

    // A stale replay of the first batch alone (older versions) changes
    // nothing that a newer change wrote: quantity, endpoint and name stay.
    // Item 2 was deleted, so it comes back until its delete is replayed.
    write_ok(&mut sink, &first).await;
    let got = ints(&g, "MATCH (u:User)-[r:BOUGHT]->(p:Product) RETURN r.id AS a, u.id AS b, p.id AS c, r.quantity AS d").await;
    assert_eq!(got, vec![vec![1, 1, 1, 7], vec![2, 1, 1, 1], vec![3, 2, 1, 4]]);
    let names = ints(&g, "MATCH (p:Product) WHERE p.name = 'one v2' RETURN p.id AS a").await;
    assert_eq!(names, vec![vec![1]], "stale product write skipped");
    write_ok(&mut sink, &second).await;
    assert_graph_matches(&g, &m).await;
    let dup = ints(&g, "MATCH ()-[r:BOUGHT]->() WITH r.id AS id, count(*) AS c WHERE c > 1 RETURN id AS a").await;
    assert!(dup.is_empty(), "duplicate relationships: {dup:?}");

    // A delete older than the stored version is skipped.
    let mut old = Stream::new();
    let stale_delete = rec(old.change(Op::Delete, "products", 1, None), PRODUCTS);
    write_ok(&mut sink, &[stale_delete]).await;
    assert_graph_matches(&g, &m).await;

    // Equal versions apply (snapshot rows share one version).
    let mut again = second.clone();
    let mut c = (*again[0].change).clone();
    let mut after = c.after.clone().expect("after");
    after.set("quantity".into(), n(8));
    c.after = Some(after);
    again[0].change = Arc::new(c);
    write_ok(&mut sink, &again[..1]).await;
    let got = ints(&g, "MATCH ()-[r:BOUGHT]->() WHERE r.id = 1 RETURN r.quantity AS a").await;
    assert_eq!(got, vec![vec![8]], "equal version applies");
}

#[tokio::test]
async fn unchanged_toast_columns_keep_their_value() {
    let (_server, mut sink, g, mut s, mut m) = start().await;
    write_ok(&mut sink, &[m.user(&mut s, Op::Insert, 1)]).await;
    s.commit();
    // An update whose `email` was not sent (unchanged TOAST).
    let mut c = (*s.change(Op::Update, "users", 1, Some(row(&[("id", n(1)), ("visits", n(3))])))).clone();
    c.unchanged_toast = vec!["email".into()];
    write_ok(&mut sink, &[rec(Arc::new(c), USERS)]).await;
    let got = ints(&g, "MATCH (u:User {id: 1}) WHERE u.email = 'u1@shop.test' RETURN u.visits AS a").await;
    assert_eq!(got, vec![vec![3]]);
}

#[tokio::test]
async fn both_endpoints_move_with_a_full_before_image() {
    let (_server, mut sink, g, mut s, mut m) = start().await;
    let first = m.item(&mut s, Op::Insert, 1, 1, 1, 2);
    let before = first.change.after.clone();
    write_ok(&mut sink, &[first]).await;
    s.commit();
    // REPLICA IDENTITY FULL: the old row comes with the update.
    let moved = m.item(&mut s, Op::Update, 1, 2, 2, 2);
    let mut c = (*moved.change).clone();
    c.before = before;
    write_ok(&mut sink, &[rec(Arc::new(c), ORDER_ITEMS)]).await;
    // One relationship, between the new endpoints, none left between the old
    // ones. (The old endpoint nodes stay, as key-only stubs.)
    let got = ints(&g, "MATCH (u:User)-[r:BOUGHT]->(p:Product) RETURN r.id AS a, u.id AS b, p.id AS c, r.order_id AS d").await;
    assert_eq!(got, vec![vec![1, 2, 2, 1001]]);
}

#[tokio::test]
async fn a_bad_record_is_rejected_alone() {
    let (_server, mut sink, g, mut s, mut m) = start().await;
    let good = m.item(&mut s, Op::Insert, 1, 1, 1, 1);
    // No user_id: the endpoint key is missing.
    let bad = rec(s.change(Op::Insert, "order_items", 2, Some(row(&[("id", n(2)), ("product_id", n(1))]))), ORDER_ITEMS);
    let also_good = m.item(&mut s, Op::Insert, 3, 2, 1, 1);
    let rejected = sink.write(&[good, bad, also_good]).await.expect("batch written");
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].index, 1);
    assert!(rejected[0].error.contains("user_id"), "{}", rejected[0].error);
    assert_graph_matches(&g, &m).await;
}

#[tokio::test]
async fn a_statement_the_server_refuses_is_isolated() {
    let server = Neo4jServer::start();
    let mut routes = mappings();
    routes.push(
        serde_json::from_value(serde_json::json!({"cypher": {
            "on_upsert": "MERGE (t:Tag {name: $after.name}) SET t.weight = 1 / $after.weight, t._v = $lsn",
            "on_delete": "MATCH (t:Tag {name: $key.name}) DELETE t"}}))
        .expect("cypher mapping"),
    );
    let mut sink = Neo4jSink::connect(&config(&server), routes).await.expect("connect");
    let g = client(&server).await;
    let mut s = Stream::new();
    let tag = |s: &mut Stream, name: &str, w: i64| {
        rec(s.change(Op::Insert, "tags", 1, Some(row(&[("name", Value::String(name.into())), ("weight", n(w))]))), 3)
    };
    let batch = [tag(&mut s, "a", 1), tag(&mut s, "b", 0), tag(&mut s, "c", 2)];
    // Integer division by zero is a ClientError (ArithmeticError) in Neo4j:
    // the batch's transaction fails as a whole, permanently, and nothing of
    // it is committed. Record isolation is the runtime's (it writes the
    // records one by one next, as here): that record alone fails.
    let err = sink.write(&batch).await.expect_err("the batch fails");
    assert!(!err.is_retriable() && err.to_string().contains("zero"), "{err}");
    assert_eq!(ints(&g, "MATCH (t:Tag) RETURN count(t) AS a").await, vec![vec![0]], "nothing of the failed batch is committed");
    let outcomes: Vec<bool> = {
        let mut v = Vec::new();
        for one in batch.chunks(1) {
            v.push(sink.write(one).await.is_ok());
        }
        v
    };
    assert_eq!(outcomes, vec![true, false, true]);
    let tags = ints(&g, "MATCH (t:Tag) RETURN count(t) AS a").await;
    assert_eq!(tags, vec![vec![2]]);
}

#[tokio::test]
async fn cypher_mapping_batches_with_rows() {
    let server = Neo4jServer::start();
    let routes: Vec<Neo4jMapping> = vec![serde_json::from_value(serde_json::json!({"cypher": {
        "on_upsert": "UNWIND $rows AS row MERGE (c:Category {id: row.after.id}) SET c.name = row.after.name, c.v = row.lsn",
        "on_delete": "MATCH (c:Category {id: $key.id}) DETACH DELETE c"}}))
    .expect("mapping")];
    let mut sink = Neo4jSink::connect(&config(&server), routes).await.expect("connect");
    let g = client(&server).await;
    let mut s = Stream::new();
    let mut batch = Vec::new();
    for id in 1..=4 {
        let after = row(&[("id", n(id)), ("name", Value::String(format!("cat {id}").into()))]);
        batch.push(rec(s.change(Op::Insert, "categories", id, Some(after)), 0));
    }
    batch.push(rec(s.change(Op::Delete, "categories", 2, None), 0));
    write_ok(&mut sink, &batch).await;
    assert_eq!(ints(&g, "MATCH (c:Category) RETURN c.id AS a").await, vec![vec![1], vec![3], vec![4]]);
}

/// Throughput of 100,000 order_items inserts (users and products created on
/// the fly by MERGE), in batches of 1000 records. Prints rows/s.
/// `cargo test -p pgfanout-neo4j --release --test neo4j -- --ignored --nocapture throughput`
#[tokio::test]
#[ignore]
async fn throughput_100k_order_items() {
    let (_server, mut sink, g, mut s, mut m) = start().await;
    let total: i64 = std::env::var("PGFANOUT_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let batches: Vec<Vec<SinkRecord>> = (0..total)
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(|ids| {
            s.commit();
            ids.iter().map(|&id| m.item(&mut s, Op::Insert, id, id % 5000, (id * 7919) % 2000, 1 + id % 3)).collect()
        })
        .collect();
    let start = Instant::now();
    for b in &batches {
        write_ok(&mut sink, b).await;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("neo4j sink (Neo4j 5.26): {total} order_items in {secs:.1} s = {:.0} rows/s", total as f64 / secs);
    let count = ints(&g, "MATCH ()-[r:BOUGHT]->() RETURN count(r) AS a").await;
    assert_eq!(count, vec![vec![total]]);
}

/// A user row change: `before` carries the old key (PostgreSQL sends it when
/// the key changes), `bio` is unchanged TOAST when `toast` is set.
fn user_change(s: &mut Stream, op: Op, id: i64, old: Option<i64>, email: &str, toast: bool) -> SinkRecord {
    let mut after = vec![("id", n(id)), ("email", Value::String(email.into()))];
    if !toast {
        after.push(("bio", Value::String(format!("bio of {email}").into())));
    }
    let mut change = (*s.change(op, "users", id, Some(row(&after)))).clone();
    change.before = old.map(|o| row(&[("id", n(o))]));
    if toast {
        change.unchanged_toast = vec!["bio".into()];
    }
    rec(Arc::new(change), USERS)
}

/// Key changes move the User node with its unchanged TOASTed `bio`: in place
/// when the new key is free, merged into the node at the new key (an
/// endpoint stub a purchase created) with its BOUGHT relationships when it
/// is not. All in one batch (a key change right after the insert it moves),
/// and again as a replay of the whole batch: the same graph.
#[tokio::test]
async fn key_changes_move_nodes_and_replays_converge() {
    let (_server, mut sink, g, mut s, mut m) = start().await;
    let mut batch = vec![user_change(&mut s, Op::Insert, 1, None, "a", false)];
    batch.push(m.product(&mut s, Op::Insert, 1, "p"));
    batch.push(m.item(&mut s, Op::Insert, 1, 1, 1, 1));
    s.commit();
    batch.push(m.item(&mut s, Op::Insert, 2, 7, 1, 2));
    s.commit();
    batch.push(user_change(&mut s, Op::Update, 2, Some(1), "b", true));
    s.commit();
    batch.push(user_change(&mut s, Op::Update, 7, Some(2), "c", true));
    for round in ["stream", "replay"] {
        write_ok(&mut sink, &batch).await;
        let users = ints(&g, "MATCH (u:User) RETURN u.id AS a").await;
        assert_eq!(users, vec![vec![7]], "{round}: one User, at the last key");
        let mut rows = g.execute(query("MATCH (u:User) RETURN u.email AS e, u.bio AS b")).await.expect("read");
        let r = rows.next().await.expect("read").expect("a row");
        assert_eq!((r.get::<String>("e").expect("email"), r.get::<String>("b").expect("bio")), ("c".into(), "bio of a".into()), "{round}");
        let rels = ints(&g, "MATCH (u:User)-[r:BOUGHT]->(p:Product) RETURN r.id AS a, u.id AS b, p.id AS c, r.quantity AS d").await;
        assert_eq!(rels, vec![vec![1, 7, 1, 1], vec![2, 7, 1, 2]], "{round}: both purchases on the moved node");
    }
}
