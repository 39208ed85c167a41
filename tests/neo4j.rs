//! End-to-end: PostgreSQL -> `pgfanout run` -> a Bolt graph database
//! (Neo4j 5 Community from testkit), read back with neo4rs.
//!
//! The e-commerce purchase graph: `users` and `products` rows become `User`
//! and `Product` nodes, `order_items` rows become `BOUGHT` relationships. The
//! truth is the tables themselves: once the slot has confirmed the whole
//! workload (the daemon's claim that every change is durable in the graph),
//! the graph must hold exactly the nodes and relationships the final tables
//! imply, and "users who bought X also bought" must answer what SQL answers.
#![cfg(feature = "neo4j")]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::neo4j::graph;
use common::*;
use pgfanout_neo4j::neo4rs::{query, BoltType, Graph};
use serde_json::{json, Value as Json};
use testkit::{Neo4jServer, Server};

const SCHEMA: &str = "
CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL, name text);
CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2) NOT NULL, cost_price numeric(10,2));
CREATE TABLE order_items (id int PRIMARY KEY, order_id int NOT NULL,
    user_id int NOT NULL REFERENCES users ON DELETE CASCADE,
    product_id int NOT NULL REFERENCES products ON DELETE CASCADE,
    quantity int NOT NULL);
";

/// The three pipelines of the purchase graph (products without their cost).
const PIPELINES: &str = r#"  - name: users
    from: public.users
    to: graph
    neo4j: { node: { label: User, key: { id: id } } }
  - name: products
    from: public.products
    to: graph
    neo4j: { node: { label: Product, key: { id: id }, properties: { name: name, price: price } } }
  - name: purchases
    from: public.order_items
    to: graph
    neo4j:
      relationship:
        type: BOUGHT
        from: { label: User, key: { id: user_id } }
        to: { label: Product, key: { id: product_id } }"#;

/// PostgreSQL with [`SCHEMA`] in `db`, Neo4j, and a daemon streaming
/// into it (started once the slot exists).
async fn setup(db: &str) -> (PgCluster, tokio_postgres::Client, Neo4jServer, tempfile::TempDir, Daemon) {
    let (pg, c, server, dir, d, _) = setup_with(db, SCHEMA, PIPELINES).await;
    (pg, c, server, dir, d)
}

/// The shop's activity: purchases mostly, quantity changes, purchases
/// moved to another product or buyer, cancelled purchases, renamed and
/// repriced products, renamed users (sometimes to NULL), new users and
/// products, and a few deleted users and products (their purchases go with
/// them, by cascade).
struct Shop {
    rng: Rng,
    users: Vec<i32>,
    products: Vec<i32>,
    /// order item id -> (user, product)
    items: BTreeMap<i32, (i32, i32)>,
    next_user: i32,
    next_product: i32,
    next_item: i32,
}

impl Shop {
    fn new(seed: u64) -> Shop {
        Shop {
            rng: Rng(seed | 1),
            users: Vec::new(),
            products: Vec::new(),
            items: BTreeMap::new(),
            next_user: 1,
            next_product: 1,
            next_item: 1,
        }
    }

    fn pick(&mut self, list: &[i32]) -> i32 {
        list[self.rng.below(list.len() as u64) as usize]
    }

    fn pick_item(&mut self) -> Option<i32> {
        let n = self.items.len() as u64;
        (n > 0).then(|| *self.items.keys().nth(self.rng.below(n) as usize).unwrap_or(&0))
    }

    fn new_user(&mut self) -> String {
        let id = self.next_user;
        self.next_user += 1;
        self.users.push(id);
        format!("INSERT INTO users VALUES ({id}, 'user{id}@shop.test', 'User {id}');")
    }

    fn new_product(&mut self) -> String {
        let id = self.next_product;
        self.next_product += 1;
        self.products.push(id);
        let r = self.rng.below(10_000);
        format!("INSERT INTO products VALUES ({id}, 'Product {id}', {}.{:02}, {}.50);", r % 200 + 1, r % 100, r % 100)
    }

    fn purchase(&mut self) -> String {
        let (user, product) = (self.pick(&self.users.clone()), self.pick(&self.products.clone()));
        let id = self.next_item;
        self.next_item += 1;
        self.items.insert(id, (user, product));
        format!("INSERT INTO order_items VALUES ({id}, {}, {user}, {product}, {});", 1000 + id / 3, 1 + self.rng.below(4))
    }

    /// The initial catalog and customers.
    fn seed(&mut self, users: usize, products: usize) -> String {
        let mut sql = String::from("BEGIN;");
        for _ in 0..users {
            sql += &self.new_user();
        }
        for _ in 0..products {
            sql += &self.new_product();
        }
        sql + "COMMIT;"
    }

    fn statement(&mut self) -> String {
        let r = self.rng.below(1000);
        match self.rng.below(40) {
            0..=17 => self.purchase(),
            18..=21 => match self.pick_item() {
                Some(id) => format!("UPDATE order_items SET quantity = quantity + 1 WHERE id = {id};"),
                None => self.purchase(),
            },
            22 | 23 => match self.pick_item() {
                Some(id) => {
                    let p = self.pick(&self.products.clone());
                    if let Some(item) = self.items.get_mut(&id) {
                        item.1 = p;
                    }
                    format!("UPDATE order_items SET product_id = {p} WHERE id = {id};")
                }
                None => self.purchase(),
            },
            24 => match self.pick_item() {
                Some(id) => {
                    let u = self.pick(&self.users.clone());
                    if let Some(item) = self.items.get_mut(&id) {
                        item.0 = u;
                    }
                    format!("UPDATE order_items SET user_id = {u}, quantity = 7 WHERE id = {id};")
                }
                None => self.purchase(),
            },
            25..=27 => match self.pick_item() {
                Some(id) => {
                    self.items.remove(&id);
                    format!("DELETE FROM order_items WHERE id = {id};")
                }
                None => self.purchase(),
            },
            28 | 29 => {
                let p = self.pick(&self.products.clone());
                format!("UPDATE products SET name = 'Product {p} v{r}', price = price + 0.25, cost_price = {r} WHERE id = {p};")
            }
            30 | 31 => {
                let u = self.pick(&self.users.clone());
                if r.is_multiple_of(3) {
                    format!("UPDATE users SET name = NULL WHERE id = {u};")
                } else {
                    format!("UPDATE users SET name = 'User {u} r{r}', email = 'u{u}-{r}@shop.test' WHERE id = {u};")
                }
            }
            32 => self.new_user(),
            33 => self.new_product(),
            34 if self.users.len() > 10 => {
                let u = self.pick(&self.users.clone());
                self.users.retain(|&x| x != u);
                self.items.retain(|_, (iu, _)| *iu != u);
                format!("DELETE FROM users WHERE id = {u};")
            }
            35 if self.products.len() > 8 => {
                let p = self.pick(&self.products.clone());
                self.products.retain(|&x| x != p);
                self.items.retain(|_, (_, ip)| *ip != p);
                format!("DELETE FROM products WHERE id = {p};")
            }
            _ => self.purchase(),
        }
    }

    fn txn(&mut self) -> String {
        let n = 1 + self.rng.below(3);
        let mut sql = String::from("BEGIN;");
        for _ in 0..n {
            sql += &self.statement();
        }
        sql + "COMMIT;"
    }
}

/// Runs `txns` transactions of `shop`, 5 ms apart every `pause_every`
/// (0 = never); `done` counts the committed ones.
async fn run_shop(c: &tokio_postgres::Client, shop: &mut Shop, txns: usize, pause_every: usize, done: &AtomicUsize) {
    for i in 0..txns {
        c.batch_execute(&shop.txn()).await.unwrap();
        done.fetch_add(1, Ordering::Relaxed);
        if pause_every > 0 && i % pause_every == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// How to read one returned column.
#[derive(Clone, Copy)]
enum Col {
    Int(&'static str),
    Text(&'static str),
    Float(&'static str),
}

/// Runs `q` and returns its rows as JSON values (null for a missing
/// property), sorted.
async fn cypher(g: &Graph, q: &str, cols: &[Col]) -> Vec<Vec<Json>> {
    let mut out = Vec::new();
    let mut rows = g.execute(query(q)).await.unwrap_or_else(|e| panic!("{q}: {e}"));
    while let Some(r) = rows.next().await.unwrap_or_else(|e| panic!("{q}: {e}")) {
        let row = cols
            .iter()
            .map(|col| match *col {
                Col::Int(k) => r.get::<Option<i64>>(k).unwrap_or_else(|e| panic!("{q}: {k}: {e}")).map_or(Json::Null, |v| json!(v)),
                Col::Text(k) => r.get::<Option<String>>(k).unwrap_or_else(|e| panic!("{q}: {k}: {e}")).map_or(Json::Null, |v| json!(v)),
                Col::Float(k) => r.get::<Option<f64>>(k).unwrap_or_else(|e| panic!("{q}: {k}: {e}")).map_or(Json::Null, |v| json!(v)),
            })
            .collect();
        out.push(row);
    }
    out.sort_by_key(|r: &Vec<Json>| r.iter().map(Json::to_string).collect::<Vec<_>>());
    out
}

/// Runs `q` (whose columns are in `cols`' order and types) and returns the
/// rows the same way as [`cypher`].
async fn sql(c: &tokio_postgres::Client, q: &str, cols: &[Col]) -> Vec<Vec<Json>> {
    let mut out: Vec<Vec<Json>> = c
        .query(q, &[])
        .await
        .unwrap_or_else(|e| panic!("{q}: {e}"))
        .iter()
        .map(|r| {
            cols.iter()
                .enumerate()
                .map(|(i, col)| match col {
                    Col::Int(_) => r.get::<_, Option<i64>>(i).map_or(Json::Null, |v| json!(v)),
                    Col::Text(_) => r.get::<_, Option<String>>(i).map_or(Json::Null, |v| json!(v)),
                    Col::Float(_) => r.get::<_, Option<f64>>(i).map_or(Json::Null, |v| json!(v)),
                })
                .collect()
        })
        .collect();
    out.sort_by_key(|r: &Vec<Json>| r.iter().map(Json::to_string).collect::<Vec<_>>());
    out
}

/// The graph holds exactly what the tables imply, compared per key: one
/// User per user row with its columns, one Product per product row with
/// name and price (and no cost_price), one BOUGHT per order item between
/// its user and product with its columns, and no other node or
/// relationship. Returns the number of order items compared.
async fn assert_graph_equals_tables(g: &Graph, c: &tokio_postgres::Client) -> usize {
    let (id, email, name, price) = (Col::Int("id"), Col::Text("email"), Col::Text("name"), Col::Float("price"));
    let users = sql(c, "SELECT id::int8, email, name FROM users", &[id, email, name]).await;
    let got = cypher(g, "MATCH (u:User) RETURN u.id AS id, u.email AS email, u.name AS name", &[id, email, name]).await;
    assert_eq!(got, users, "User nodes (id, email, name)");

    let products = sql(c, "SELECT id::int8, name, price::float8 FROM products", &[id, name, price]).await;
    let got = cypher(g, "MATCH (p:Product) RETURN p.id AS id, p.name AS name, p.price AS price", &[id, name, price]).await;
    assert_eq!(got, products, "Product nodes (id, name, price)");
    let leaked = cypher(g, "MATCH (p:Product) WHERE p.cost_price IS NOT NULL RETURN p.id AS id", &[id]).await;
    assert!(leaked.is_empty(), "cost_price is not mapped: {leaked:?}");

    let cols = [Col::Int("id"), Col::Int("u"), Col::Int("p"), Col::Int("q"), Col::Int("o")];
    let items = sql(c, "SELECT id::int8, user_id::int8, product_id::int8, quantity::int8, order_id::int8 FROM order_items", &cols).await;
    let got = cypher(
        g,
        "MATCH (u:User)-[r:BOUGHT]->(p:Product) RETURN r.id AS id, u.id AS u, p.id AS p, r.quantity AS q, r.order_id AS o",
        &cols,
    )
    .await;
    if got != items {
        let by_id = |rows: &[Vec<Json>]| rows.iter().map(|r| (r[0].to_string(), r.clone())).collect::<BTreeMap<_, _>>();
        let (want, have) = (by_id(&items), by_id(&got));
        let diff: Vec<String> = want
            .keys()
            .chain(have.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|k| want.get(*k) != have.get(*k))
            .map(|k| format!("item {k}: table {:?}, graph {:?}", want.get(k), have.get(k)))
            .collect();
        panic!("BOUGHT relationships differ from order_items ({} rows, {} relationships):\n{}", items.len(), got.len(), diff.join("\n"));
    }
    let n = Col::Int("n");
    let dups = cypher(g, "MATCH ()-[r:BOUGHT]->() WITH r.id AS id, count(r) AS n WHERE n > 1 RETURN id, n", &[id, n]).await;
    assert!(dups.is_empty(), "duplicate relationships: {dups:?}");
    let all_rels = cypher(g, "MATCH ()-[r]->() RETURN count(r) AS n", &[n]).await;
    assert_eq!(all_rels, vec![vec![json!(items.len())]], "no relationship beyond the order items");
    let all_nodes = cypher(g, "MATCH (x) RETURN count(x) AS n", &[n]).await;
    assert_eq!(all_nodes, vec![vec![json!(users.len() + products.len())]], "no node beyond users and products");
    items.len()
}

/// "Users who bought X also bought": for every product, the other products
/// its buyers bought and how many of them did, from the graph and from SQL.
async fn assert_recommendations(g: &Graph, c: &tokio_postgres::Client) {
    let products: Vec<i32> = c.query("SELECT id FROM products", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let cols = [Col::Int("id"), Col::Int("buyers")];
    let mut non_empty = 0;
    for x in products {
        let want = sql(
            c,
            &format!(
                "SELECT b.product_id::int8, count(DISTINCT b.user_id)::int8 FROM order_items a JOIN order_items b ON a.user_id = b.user_id \
                 WHERE a.product_id = {x} AND b.product_id <> {x} GROUP BY b.product_id"
            ),
            &cols,
        )
        .await;
        let got = cypher(
            g,
            &format!(
                "MATCH (:Product {{id: {x}}})<-[:BOUGHT]-(u:User)-[:BOUGHT]->(other:Product) WHERE other.id <> {x} \
                 RETURN other.id AS id, count(DISTINCT u) AS buyers"
            ),
            &cols,
        )
        .await;
        assert_eq!(got, want, "users who bought product {x} also bought");
        non_empty += usize::from(!want.is_empty());
    }
    assert!(non_empty > 5, "the workload gives recommendations to check ({non_empty} products have some)");
}

/// A mixed workload on users, products and order_items: the graph equals
/// the tables per key, and the recommendation query answers what SQL does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchase_graph_equals_the_tables() {
    let (pg, c, server, dir, d) = setup("gmix").await;
    let mut shop = Shop::new(0x9a9a_0001);
    c.batch_execute(&shop.seed(30, 20)).await.unwrap();
    run_shop(&c, &mut shop, 200, 10, &AtomicUsize::new(0)).await;
    wait_confirmed(&c, "gmix", &d, Duration::from_secs(60)).await;
    let g = graph(&server).await;
    let items = assert_graph_equals_tables(&g, &c).await;
    assert!(items > 100, "a real purchase graph: {items} order items");
    assert_recommendations(&g, &c).await;
    assert_eq!(line_count(&dir.path().join("gmix.dead.jsonl")), 0, "nothing dead-lettered");
    let cfg = neo4j_config(&pg, "gmix", "gmix", &server.uri(), &server.user, &server.password, &server.database, PIPELINES, dir.path());
    verify_finds_and_repairs(&g, &c, dir.path(), &cfg).await;
}

/// `pgfanout verify` on the graph: clean after the workload; a changed
/// property, a lost relationship and a stray node are reported exactly, and
/// `--repair` fixes them.
async fn verify_finds_and_repairs(g: &Graph, c: &tokio_postgres::Client, dir: &std::path::Path, cfg: &str) {
    let run = |args: &[&str]| verify_config(dir, cfg, args);
    let (code, _, text) = tokio::task::block_in_place(|| run(&[]));
    assert_eq!(code, 0, "{text}");
    let user: i32 = c.query_one("SELECT min(id) FROM users", &[]).await.unwrap().get(0);
    let item: i32 = c.query_one("SELECT min(id) FROM order_items", &[]).await.unwrap().get(0);
    g.run(query(&format!("MATCH (u:User {{id: {user}}}) SET u.email = 'tampered'"))).await.unwrap();
    g.run(query(&format!("MATCH ()-[r:BOUGHT]->() WHERE r._pgfanout_key = '{{\"id\":{item}}}' DELETE r"))).await.unwrap();
    g.run(query("CREATE (:Product {id: 999999, name: 'stray', price: 1.0})")).await.unwrap();
    let (code, report, text) = tokio::task::block_in_place(|| run(&[]));
    assert_eq!(code, 1, "{text}");
    let p = |name: &str| report["pipelines"].as_array().unwrap().iter().find(|p| p["pipeline"] == name).unwrap().clone();
    assert_eq!(p("users")["different"], json!([{"id": format!("(:User {{\"id\":{user}}})"), "fields": ["email"]}]), "{text}");
    assert_eq!(p("users")["missing"], json!([]), "{text}");
    assert_eq!(p("purchases")["missing"], json!([format!("[:BOUGHT {{\"id\":{item}}}]")]), "{text}");
    assert_eq!(p("products")["extra"], json!(["(:Product {\"id\":999999})"]), "{text}");
    let (code, _, text) = tokio::task::block_in_place(|| run(&["--repair"]));
    assert_eq!(code, 1, "{text}");
    let (code, _, text) = tokio::task::block_in_place(|| run(&[]));
    assert_eq!(code, 0, "repaired: {text}");
}

/// Runs the shop on its own connection to `db`, 10 transactions at a time
/// with `pause` between them, until the returned flag is set; the counter
/// holds the transactions done.
async fn shop_in_background(
    pg: &PgCluster,
    db: &str,
    mut shop: Shop,
    pause: Duration,
) -> (Arc<AtomicUsize>, Arc<std::sync::atomic::AtomicBool>, tokio::task::JoinHandle<()>) {
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let c = pg.client(db).await;
    let writer = tokio::spawn({
        let (done, stop) = (done.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                run_shop(&c, &mut shop, 10, 1, &done).await;
                tokio::time::sleep(pause).await;
            }
        }
    });
    (done, stop, writer)
}

/// Lets the shop run until the tables hold more than 100 order items (the
/// size `assert_converged` asks for; a slow machine gets there later), then
/// stops it.
async fn stop_shop_once_sized(c: &tokio_postgres::Client, stop: &std::sync::atomic::AtomicBool, writer: tokio::task::JoinHandle<()>) {
    testkit::wait_for(Duration::from_secs(120), "more than 100 order items", || async move {
        let n: i64 = c.query_one("SELECT count(*) FROM order_items", &[]).await.unwrap().get(0);
        n > 100
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
}

/// Once the slot `db` confirmed everything written: the graph equals the
/// tables (more than 100 order items), recommendations answer what SQL
/// does, nothing was dead-lettered, the daemon still runs. Returns the
/// order items.
async fn assert_converged(
    c: &tokio_postgres::Client,
    server: &Neo4jServer,
    dir: &std::path::Path,
    d: &mut Daemon,
    db: &str,
    timeout: Duration,
) -> usize {
    wait_confirmed(c, db, d, timeout).await;
    let g = graph(server).await;
    let items = assert_graph_equals_tables(&g, c).await;
    assert!(items > 100, "{items} order items");
    assert_recommendations(&g, c).await;
    assert_eq!(line_count(&dir.join(format!("{db}.dead.jsonl"))), 0, "nothing dead-lettered");
    assert!(d.is_running());
    items
}

/// SIGKILL twice while the shop runs, restart each time: replays converge
/// to the graph the tables imply, with no duplicate relationship.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_workload_converges_without_duplicates() {
    let (pg, c, server, dir, mut d) = setup("gkill").await;
    let mut shop = Shop::new(0x9a9a_0002);
    c.batch_execute(&shop.seed(30, 20)).await.unwrap();
    // The shop runs until the kills are over (a restarted daemon takes a
    // while to reconnect to the graph), then a little longer.
    let (done, stop, writer) = shop_in_background(&pg, "gkill", shop, Duration::from_millis(40)).await;
    let mut confirmed = vec![confirmed_flush(&c, "gkill").await];
    for at in [80, 180] {
        // Kill once the shop is that far and the daemon (restarted) has
        // written and confirmed something since the last kill.
        let last = *confirmed.last().unwrap_or(&0);
        testkit::wait_for(Duration::from_secs(60), "workload progress and deliveries", || {
            let n = done.load(Ordering::Relaxed);
            let c = &c;
            async move { n >= at && confirmed_flush(c, "gkill").await > last }
        })
        .await;
        confirmed.push(confirmed_flush(&c, "gkill").await);
        d.kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        d.spawn(bin());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_shop_once_sized(&c, &stop, writer).await;
    let items = assert_converged(&c, &server, dir.path(), &mut d, "gkill", Duration::from_secs(90)).await;
    eprintln!("{} transactions, {items} order items; confirmed at start and at the kills: {confirmed:X?}", done.load(Ordering::Relaxed));
}

/// The Bolt link goes silent while the shop runs (Toxiproxy drops
/// everything both ways and keeps the connections open: a half-open
/// connection behind a load balancer). Each stuck transaction times out
/// (`request_timeout` 5 s), the sink opens a new pool and retries; once the
/// link is back, the graph equals the tables with nothing dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_bolt_link_times_out_and_the_graph_converges() {
    let db = "gsilent";
    let (pg, c) = cluster_with(db, SHORT_WAL_SENDER_TIMEOUT).await;
    c.batch_execute(SCHEMA).await.unwrap();
    let server = tokio::task::spawn_blocking(Neo4jServer::start).await.unwrap();
    let proxy = tokio::task::block_in_place(testkit::Toxiproxy::start);
    let link = proxy.link("bolt", server.bolt_port);
    let dir = scratch();
    let uri = format!("bolt://127.0.0.1:{}", link.port);
    let cfg = neo4j_config(&pg, db, db, &uri, &server.user, &server.password, &server.database, PIPELINES, dir.path());
    let sink_end = format!("database: \"{}\" }}", server.database);
    assert!(cfg.contains(&sink_end));
    let cfg = cfg.replace(&sink_end, &format!("database: \"{}\", request_timeout: 5s }}", server.database));
    let mut d = Daemon::start(bin(), dir.path(), db, &cfg);
    testkit::wait_for(Duration::from_secs(60), "slot", || async { confirmed_flush(&c, db).await > 0 }).await;
    let mut shop = Shop::new(0x9a9a_0007);
    c.batch_execute(&shop.seed(30, 20)).await.unwrap();
    let (done, stop, writer) = shop_in_background(&pg, db, shop, Duration::from_millis(20)).await;
    let before = confirmed_flush(&c, db).await;
    // Under a loaded CI machine (two JVM servers starting beside the
    // fault suite) the first deliveries can take long.
    testkit::wait_for(Duration::from_secs(180), "workload progress and deliveries", || {
        let n = done.load(Ordering::Relaxed);
        let c = &c;
        async move { n >= 40 && confirmed_flush(c, db).await > before }
    })
    .await;
    tokio::task::block_in_place(|| {
        link.add("up", "timeout", testkit::ToxicStream::Up, r#"{"timeout": 0}"#);
        link.add("down", "timeout", testkit::ToxicStream::Down, r#"{"timeout": 0}"#);
    });
    tokio::time::sleep(Duration::from_secs(12)).await;
    let silent_at = confirmed_flush(&c, db).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(confirmed_flush(&c, db).await, silent_at, "nothing is confirmed while the graph cannot be written");
    tokio::task::block_in_place(|| {
        link.remove("up");
        link.remove("down");
    });
    stop_shop_once_sized(&c, &stop, writer).await;
    assert_converged(&c, &server, dir.path(), &mut d, db, Duration::from_secs(120)).await;
    let log = d.log();
    assert!(log.contains("request_timeout"), "the stuck transactions timed out:\n{log}");
    assert!(log.contains("new connection pool"), "a new pool after the timeout:\n{log}");
}

/// Neo4j killed (SIGKILL) while the shop runs and batches are in flight,
/// down for a few seconds, then restarted: the daemon retries until the
/// server is back, the batches written again keep their order (a delete is
/// never overtaken by the older upsert it follows), and the graph ends up
/// equal to the tables with nothing dead-lettered and no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_neo4j_outage_mid_workload_is_retried_in_order() {
    let (pg, c, server, dir, mut d) = setup("gdown").await;
    let mut shop = Shop::new(0x9a9a_0004);
    c.batch_execute(&shop.seed(30, 20)).await.unwrap();
    let (done, stop, writer) = shop_in_background(&pg, "gdown", shop, Duration::from_millis(20)).await;
    let before = confirmed_flush(&c, "gdown").await;
    testkit::wait_for(Duration::from_secs(60), "workload progress and deliveries", || {
        let n = done.load(Ordering::Relaxed);
        let c = &c;
        async move { n >= 60 && confirmed_flush(c, "gdown").await > before }
    })
    .await;
    tokio::task::block_in_place(|| server.kill());
    let at_kill = done.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let down = confirmed_flush(&c, "gdown").await;
    tokio::task::block_in_place(|| server.start_server());
    testkit::wait_for(Duration::from_secs(60), "more workload after the restart", || {
        let n = done.load(Ordering::Relaxed);
        async move { n >= at_kill + 60 }
    })
    .await;
    stop_shop_once_sized(&c, &stop, writer).await;
    let items = assert_converged(&c, &server, dir.path(), &mut d, "gdown", Duration::from_secs(240)).await;
    let log = d.log();
    assert!(log.contains("retrying") || log.contains("writing it again"), "the outage was seen and retried:\n{log}");
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    eprintln!(
        "{} transactions, {items} order items; confirmed while Neo4j was down: {down:X}; log: {} batches in flight failed, {} submits refused, {} write retries",
        done.load(Ordering::Relaxed),
        count("batch in flight failed"),
        count("batch refused"),
        count("sink write failed; retrying"),
    );
}

/// `config/ecommerce.yaml` (its graph sink and pipelines only) on the
/// example schema and changes (`examples/ecommerce-changes.sql`): the
/// purchase graph the README's recommendation query reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecommerce_example_writes_the_purchase_graph() {
    let (pg, c) = ecommerce_cluster("shop").await;
    let server = tokio::task::spawn_blocking(Neo4jServer::start).await.unwrap();
    let dir = scratch();
    let graph_sink = json!({"uri": server.uri(), "user": server.user, "password": server.password, "database": server.database});
    let d = Daemon::start(bin(), dir.path(), "ecommerce", &ecommerce_subset(&pg, &[("graph", graph_sink)], dir.path()));
    testkit::wait_for(Duration::from_secs(60), "slot", || async { confirmed_flush(&c, "pgfanout").await > 0 }).await;
    let changes = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ecommerce-changes.sql")).unwrap();
    c.batch_execute(&changes).await.unwrap();
    wait_confirmed(&c, "pgfanout", &d, Duration::from_secs(60)).await;

    let g = graph(&server).await;
    let (id, title, price) = (Col::Int("id"), Col::Text("title"), Col::Float("price"));
    let products = cypher(&g, "MATCH (p:Product) RETURN p.id AS id, p.title AS title, p.price AS price", &[id, title, price]).await;
    assert_eq!(products, vec![vec![json!(10), json!("Keyboard"), json!(84.9)], vec![json!(11), json!("Mouse"), json!(19.99)]]);
    let cols = [Col::Int("u"), Col::Int("p"), Col::Int("o"), Col::Int("q")];
    let bought =
        cypher(&g, "MATCH (u:User)-[r:BOUGHT]->(p:Product) RETURN u.id AS u, p.id AS p, r.order_id AS o, r.quantity AS q", &cols).await;
    assert_eq!(bought, vec![vec![json!(1), json!(10), json!(100), json!(1)], vec![json!(1), json!(11), json!(100), json!(3)]]);
    // The README's recommendation query.
    let q = "MATCH (:Product {id: 10})<-[:BOUGHT]-(u:User)-[:BOUGHT]->(other:Product) WHERE other.id <> 10 \
             RETURN other.id AS id, other.title AS title, count(DISTINCT u) AS buyers ORDER BY buyers DESC LIMIT 10";
    let recs = cypher(&g, q, &[id, title, Col::Int("buyers")]).await;
    assert_eq!(recs, vec![vec![json!(11), json!("Mouse"), json!(1)]]);
    assert_eq!(line_count(&dir.path().join("ecommerce.dead.jsonl")), 0, "{}", d.log());
}

/// A deadlock between the daemon and another writer, made on purpose: a
/// client takes the write locks of every User and of every Product but
/// product 2 in one open transaction; then one PostgreSQL transaction
/// updates product 2 and then product 1, so the daemon's `UNWIND` locks
/// product 2 and waits for product 1. Once Neo4j reports the daemon's
/// transaction as blocked, the client asks for product 2 and closes the
/// cycle. Neo4j's lock manager aborts the side holding fewer locks (the
/// daemon, one node against the client's thirteen) with
/// `Neo.TransientError.Transaction.DeadlockDetected`. That error is
/// retriable: the batch is retried, nothing is dead-lettered, and the graph
/// ends equal to the tables. (An earlier version of this test waited for
/// deadlocks by chance among random lockers; on a loaded machine it could
/// run four minutes without one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlocks_with_other_writers_are_retried_not_dead_lettered() {
    let (_pg, c, server, dir, mut d) = setup("gdead").await;
    let mut shop = Shop::new(0x9a9a_0003);
    c.batch_execute(&shop.seed(8, 6)).await.unwrap();
    wait_confirmed(&c, "gdead", &d, Duration::from_secs(60)).await;

    let probe = |label: &str| format!("MATCH (n:{label} {{id: $id}}) SET n._lock_probe = 1 REMOVE n._lock_probe");
    let locker = graph(&server).await;
    let mut txn = locker.start_txn().await.expect("begin");
    let held: Vec<(&str, i64)> = (1..=8).map(|i| ("User", i)).chain([1, 3, 4, 5, 6].map(|i| ("Product", i))).collect();
    for (label, id) in &held {
        txn.run(query(&probe(label)).param("id", *id)).await.expect("the locker takes its locks");
    }

    c.batch_execute(
        "BEGIN; UPDATE products SET name = name || ' (deadlock 2)' WHERE id = 2; \
         UPDATE products SET name = name || ' (deadlock 1)' WHERE id = 1; COMMIT;",
    )
    .await
    .unwrap();

    // the daemon's transaction shows up blocked (on product 1) in Neo4j
    let watcher = graph(&server).await;
    testkit::wait_for(Duration::from_secs(90), "the daemon's Neo4j transaction blocked on product 1", || async {
        let q = "SHOW TRANSACTIONS YIELD status, currentQuery RETURN status, currentQuery";
        let mut rows = watcher.execute(query(q)).await.unwrap_or_else(|e| panic!("{q}: {e}"));
        let mut blocked = false;
        while let Some(r) = rows.next().await.unwrap_or_else(|e| panic!("{q}: {e}")) {
            let status: String = r.get("status").unwrap_or_default();
            let text: String = r.get("currentQuery").unwrap_or_default();
            blocked |= status.starts_with("Blocked") && text.contains("UNWIND");
        }
        blocked
    })
    .await;

    // close the cycle: the locker now wants product 2, which the daemon holds
    txn.run(query(&probe("Product")).param("id", 2i64))
        .await
        .unwrap_or_else(|e| panic!("the locker (13 locks) was aborted instead of the daemon: {e}\n{}", d.log()));
    txn.commit().await.expect("commit");
    testkit::wait_for(Duration::from_secs(60), "the daemon's log reports the deadlock", || async { d.log().contains("DeadlockDetected") })
        .await;

    wait_confirmed(&c, "gdead", &d, Duration::from_secs(120)).await;
    let g = graph(&server).await;
    let names: Vec<String> = {
        let q = "MATCH (p:Product) WHERE p.id IN [1, 2] RETURN p.name AS name ORDER BY p.id";
        let mut rows = g.execute(query(q)).await.unwrap();
        let mut v = Vec::new();
        while let Some(r) = rows.next().await.unwrap() {
            v.push(r.get::<String>("name").unwrap());
        }
        v
    };
    assert!(
        names.len() == 2 && names[0].contains("(deadlock 1)") && names[1].contains("(deadlock 2)"),
        "both updates of the deadlocked batch arrived: {names:?}"
    );
    // the stream goes on: more of the shop's activity after the retry
    for _ in 0..5 {
        run_shop(&c, &mut shop, 40, 0, &AtomicUsize::new(0)).await;
    }
    wait_confirmed(&c, "gdead", &d, Duration::from_secs(120)).await;
    let items = assert_graph_equals_tables(&g, &c).await;
    assert_eq!(line_count(&dir.path().join("gdead.dead.jsonl")), 0, "nothing dead-lettered\n{}", d.log());
    assert!(d.is_running());
    eprintln!("{items} order items; daemon log lines with DeadlockDetected: {}", d.log().matches("DeadlockDetected").count());
}

/// A daemon streaming `schema`'s tables of `db` through `pipelines` into a
/// fresh Neo4j (once the slot exists), with the config it runs.
async fn setup_with(
    db: &str,
    schema: &str,
    pipelines: &str,
) -> (PgCluster, tokio_postgres::Client, Neo4jServer, tempfile::TempDir, Daemon, String) {
    let (pg, c) = cluster_with(db, SHORT_WAL_SENDER_TIMEOUT).await;
    c.batch_execute(schema).await.unwrap();
    let server = tokio::task::spawn_blocking(Neo4jServer::start).await.unwrap();
    let dir = scratch();
    let cfg = neo4j_config(&pg, db, db, &server.uri(), &server.user, &server.password, &server.database, pipelines, dir.path());
    let d = Daemon::start(bin(), dir.path(), db, &cfg);
    let slot = db.to_string();
    testkit::wait_for(Duration::from_secs(60), "slot", || async { confirmed_flush(&c, &slot).await > 0 }).await;
    (pg, c, server, dir, d, cfg)
}

/// Runs `pgfanout verify` (with `args`) on `cfg`: exit code, JSON report, output.
fn verify_config(dir: &std::path::Path, cfg: &str, args: &[&str]) -> (i32, Json, String) {
    let path = dir.join("verify.yaml");
    std::fs::write(&path, cfg).unwrap();
    run_verify(&path, "30s", args)
}

/// A property as the README's type mapping says it is stored.
#[derive(Debug, Clone, PartialEq)]
enum Prop {
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
    List(Vec<Prop>),
    /// JSON text equal (as jsonb) to PostgreSQL's `to_jsonb` of the value;
    /// the exact text when given.
    JsonText {
        jsonb: String,
        exact: bool,
    },
}

impl Prop {
    /// A stored Bolt value in the same terms (JSON text is left to compare).
    fn of(v: &BoltType) -> Prop {
        match v {
            BoltType::Integer(i) => Prop::Int(i.value),
            BoltType::Float(f) => Prop::Float(f.value),
            BoltType::String(s) => Prop::Text(s.value.clone()),
            BoltType::Boolean(b) => Prop::Bool(b.value),
            BoltType::List(l) => Prop::List(l.value.iter().map(Prop::of).collect()),
            other => panic!("a property of unexpected type: {other:?}"),
        }
    }
}

/// The property for a `to_jsonb` scalar of type `typ` ("number", "string",
/// "boolean") and text `text` (`value #>> '{}'`), by the README's table,
/// written independently of the sink: integers within i64 are integers;
/// other numbers floats when the float's full decimal expansion is the
/// number (trailing zeros of the scale aside), else their text.
fn scalar_prop(typ: &str, text: &str) -> Prop {
    match typ {
        "string" => Prop::Text(text.to_string()),
        "boolean" => Prop::Bool(text == "true"),
        "number" => {
            if let Ok(i) = text.parse::<i64>() {
                return Prop::Int(i);
            }
            let trimmed = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { text };
            match text.parse::<f64>() {
                Ok(f) if f.is_finite() && format!("{f}") == trimmed => Prop::Float(f),
                _ => Prop::Text(text.to_string()),
            }
        }
        other => panic!("not a scalar: {other}"),
    }
}

/// Every node of `label` keyed by its `id`, its properties without
/// pgfanout's version.
async fn nodes(g: &Graph, label: &str) -> BTreeMap<i64, BTreeMap<String, BoltType>> {
    let q = format!("MATCH (n:{label}) RETURN n.id AS id, properties(n) AS p");
    let mut rows = g.execute(query(&q)).await.unwrap_or_else(|e| panic!("{q}: {e}"));
    let mut out = BTreeMap::new();
    while let Some(r) = rows.next().await.unwrap() {
        let id: i64 = r.get("id").unwrap();
        let BoltType::Map(p) = r.get::<BoltType>("p").unwrap() else { panic!("properties are a map") };
        let props: BTreeMap<String, BoltType> =
            p.value.into_iter().map(|(k, v)| (k.value, v)).filter(|(k, _)| k != "_pgfanout_version").collect();
        assert!(out.insert(id, props).is_none(), "two {label} nodes with id {id}");
    }
    out
}

/// Each row of `table` against its node of `label` (keyed by `id`): the node's
/// properties are exactly the row's non-null columns, each as the type
/// mapping stores its `to_jsonb` value, and there is no other node.
async fn assert_nodes_are_the_rows(g: &Graph, c: &tokio_postgres::Client, table: &str, label: &str) -> usize {
    let got = nodes(g, label).await;
    let rows = c
        .query(
            &format!(
                "SELECT row_.id::int8, e.key, jsonb_typeof(e.value), e.value #>> '{{}}', e.value::text, \
                 (SELECT array_agg(jsonb_typeof(x) || ':' || (x #>> '{{}}')) FROM jsonb_array_elements(CASE WHEN jsonb_typeof(e.value) = 'array' THEN e.value ELSE '[]' END) x) \
                 , a.atttypid::regtype::text \
                 FROM {table} row_, jsonb_each(to_jsonb(row_)) e JOIN pg_attribute a ON a.attrelid = '{table}'::regclass AND a.attname = e.key \
                 ORDER BY 1, 2"
            ),
            &[],
        )
        .await
        .unwrap();
    let mut want: BTreeMap<i64, BTreeMap<String, Prop>> = BTreeMap::new();
    for r in &rows {
        let (id, col, typ, text, json): (i64, String, String, Option<String>, String) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let elems: Option<Vec<Option<String>>> = r.get(5);
        let coltype: String = r.get(6);
        let prop = match typ.as_str() {
            "null" => None,
            // json and jsonb columns: their JSON text, whatever it holds
            _ if coltype == "json" || coltype == "jsonb" => Some(Prop::JsonText { jsonb: json, exact: true }),
            "object" => Some(Prop::JsonText { jsonb: json, exact: true }),
            "array" => {
                let elems: Vec<String> = elems.unwrap_or_default().into_iter().map(|e| e.unwrap_or_else(|| "null:".into())).collect();
                let items: Option<Vec<Prop>> = elems
                    .iter()
                    .map(|e| {
                        let (t, v) = e.split_once(':').unwrap();
                        matches!(t, "number" | "string" | "boolean").then(|| scalar_prop(t, v))
                    })
                    .collect();
                let list = items.and_then(|items| {
                    let all = |f: fn(&Prop) -> bool| items.iter().all(f);
                    if all(|p| matches!(p, Prop::Int(_)))
                        || all(|p| matches!(p, Prop::Float(_)))
                        || all(|p| matches!(p, Prop::Text(_)))
                        || all(|p| matches!(p, Prop::Bool(_)))
                    {
                        return Some(Prop::List(items));
                    }
                    let floats: Option<Vec<Prop>> = items
                        .iter()
                        .map(|p| match p {
                            Prop::Float(f) => Some(Prop::Float(*f)),
                            Prop::Int(i) if i.unsigned_abs() <= 1 << 53 => Some(Prop::Float(*i as f64)),
                            _ => None,
                        })
                        .collect();
                    floats.map(Prop::List)
                });
                Some(list.unwrap_or(Prop::JsonText { jsonb: json, exact: false }))
            }
            t => Some(scalar_prop(t, &text.unwrap())),
        };
        if let Some(p) = prop {
            want.entry(id).or_default().insert(col, p);
        }
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "one {label} node per {table} row ({} column values)",
        rows.len()
    );
    for (id, props) in &want {
        let node = &got[id];
        assert_eq!(node.keys().collect::<Vec<_>>(), props.keys().collect::<Vec<_>>(), "{label} {id}: the row's non-null columns");
        for (col, p) in props {
            let stored = &node[col];
            match p {
                Prop::JsonText { jsonb, exact } => {
                    let BoltType::String(s) = stored else { panic!("{label} {id}.{col}: JSON text expected, got {stored:?}") };
                    let same: bool = c.query_one("SELECT $1::text::jsonb = $2::text::jsonb", &[&s.value, jsonb]).await.unwrap().get(0);
                    assert!(same, "{label} {id}.{col}: stored {:?}, to_jsonb {jsonb}", s.value);
                    if *exact {
                        assert_eq!(&s.value, jsonb, "{label} {id}.{col}: the jsonb text as PostgreSQL prints it");
                    }
                }
                Prop::Float(f) => assert_eq!(Prop::of(stored), Prop::Float(*f), "{label} {id}.{col}"),
                _ => assert_eq!(&Prop::of(stored), p, "{label} {id}.{col}"),
            }
        }
    }
    want.len()
}

const ZOO: &str = "
CREATE TABLE zoo (id int PRIMARY KEY,
    a_null int[], a_some_null int[], a_text text[], a_num numeric[], a_wide numeric[], a_empty int[], a_nested int[],
    n25 numeric, n60 numeric, n400 numeric, n_scale numeric, n_frac numeric, n_nan numeric, n_inf numeric,
    f8 float8, f_big float8, f_nan float8, f_inf float8, i8 int8,
    j jsonb, js json, d_bc date, d_inf date, d_far date, ts timestamp, ts_bc timestamp, tstz timestamptz,
    b bool, t text, by bytea);
";

const ZOO_PIPELINE: &str = r#"  - name: zoo
    from: public.zoo
    to: graph
    neo4j: { node: { label: Zoo, key: { id: id } } }"#;

/// Edge values through every path of a node mapping (insert, update,
/// partial update, key change, delete + re-insert): each node's properties
/// are the README's type mapping of its row's `to_jsonb`. No array loses a
/// NULL element, no numeric a digit. Then a property set behind pgfanout's
/// back: verify reports it, `--repair` removes it (keeping the version), and
/// verify reports zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_values_are_stored_as_the_type_mapping_says() {
    let (_pg, c, server, dir, d, cfg) = setup_with("gzoo", ZOO, ZOO_PIPELINE).await;
    c.batch_execute(
        "INSERT INTO zoo VALUES (1, ARRAY[NULL]::int[], ARRAY[1, NULL], ARRAY['a', 'b'], ARRAY[1, 2.5], ARRAY[1.5, 12345678901234567890.5], '{}', '{{1,2},{3,4}}',
            1234567890123456789012345, 123456789012345678901234567890.123456789012345678901234567890, 10::numeric ^ 399 + 1, 2.50, 0.1, 'NaN', 'Infinity',
            0.1, 1e300, 'NaN', '-Infinity', 9223372036854775807,
            '{\"big\": 123456789012345678901234567890, \"f\": 1.10, \"a\": [1, null], \"tiny\": 1e-30}', '{\"x\": 12345678901234567890123}',
            '0044-03-15 BC', 'infinity', '5874897-12-31', '294276-12-31 23:59:59.999999', '4713-01-01 00:00:00 BC', '2026-01-01 12:00:00.123456+02',
            true, 'text', '\\xdeadbeef');
         INSERT INTO zoo (id) VALUES (2);
         INSERT INTO zoo (id, n25, a_null, f8) VALUES (3, -0.0000000000000000000000001, ARRAY[NULL, NULL]::int[], 1.7976931348623157e308);",
    )
    .await
    .unwrap();
    // updates: a column to NULL, a numeric to 60 digits, arrays gaining a NULL
    c.batch_execute(
        "UPDATE zoo SET n60 = -999999999999999999999999999999.999999999999999999999999999999, a_text = ARRAY['x', NULL], t = NULL WHERE id = 1;
         UPDATE zoo SET a_num = ARRAY[NULL, 1.0], j = '[1.000000000000000000001]' WHERE id = 2;
         DELETE FROM zoo WHERE id = 3;
         INSERT INTO zoo (id, n400, a_null) VALUES (3, -(10::numeric ^ 399) - 0.5, ARRAY[NULL]::int[]);
         UPDATE zoo SET id = 4 WHERE id = 3;",
    )
    .await
    .unwrap();
    wait_confirmed(&c, "gzoo", &d, Duration::from_secs(60)).await;
    let g = graph(&server).await;
    assert_eq!(assert_nodes_are_the_rows(&g, &c, "zoo", "Zoo").await, 3);
    assert_eq!(line_count(&dir.path().join("gzoo.dead.jsonl")), 0, "nothing dead-lettered\n{}", d.log());

    // verify is clean; a stray property is found and removed by --repair
    let (code, _, text) = tokio::task::block_in_place(|| verify_config(dir.path(), &cfg, &[]));
    assert_eq!(code, 0, "{text}");
    g.run(query("MATCH (n:Zoo {id: 1}) SET n.junk = 1")).await.unwrap();
    // one less than i64::MAX: the same number as a float, not as an integer
    g.run(query("MATCH (n:Zoo {id: 1}) SET n.i8 = 9223372036854775806")).await.unwrap();
    let (code, report, text) = tokio::task::block_in_place(|| verify_config(dir.path(), &cfg, &[]));
    assert_eq!(code, 1, "{text}");
    let different = &report["pipelines"][0]["different"];
    assert_eq!(different, &json!([{"id": "(:Zoo {\"id\":1})", "fields": ["i8", "junk"]}]), "{text}");
    let (code, _, text) = tokio::task::block_in_place(|| verify_config(dir.path(), &cfg, &["--repair"]));
    assert_eq!(code, 1, "{text}");
    let (code, _, text) = tokio::task::block_in_place(|| verify_config(dir.path(), &cfg, &[]));
    assert_eq!(code, 0, "repaired: {text}");
    assert_nodes_are_the_rows(&g, &c, "zoo", "Zoo").await;
    let versions = cypher(&g, "MATCH (n:Zoo) WHERE n._pgfanout_version IS NULL RETURN n.id AS id", &[Col::Int("id")]).await;
    assert!(versions.is_empty(), "repair keeps pgfanout's version: {versions:?}");
}

const DOCS: &str = "
CREATE TABLE docs (id int PRIMARY KEY, title text, body text, n int);
ALTER TABLE docs ALTER body SET STORAGE EXTERNAL;
CREATE TABLE links (id int PRIMARY KEY, doc_id int NOT NULL REFERENCES docs ON UPDATE CASCADE ON DELETE CASCADE, tag text NOT NULL);
";

const DOCS_PIPELINES: &str = r#"  - name: docs
    from: public.docs
    to: graph
    neo4j: { node: { label: Doc, key: { id: id } } }
  - name: links
    from: public.links
    to: graph
    neo4j:
      relationship:
        type: TAGGED
        from: { label: Doc, key: { id: doc_id } }
        to: { label: Tag, key: { name: tag } }"#;

/// A change of primary key moves the node: exactly one node, at the new key,
/// with its unchanged TOASTed property (PostgreSQL does not send it), its
/// relationships (moved by the cascaded updates) and nothing left at the
/// old key; also when the key changes back, again in one transaction with
/// other updates, and after a delete and re-insert. Verify then reports zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_change_moves_the_node_with_its_toasted_property() {
    let (_pg, c, server, dir, d, cfg) = setup_with("gkey", DOCS, DOCS_PIPELINES).await;
    // > 2 kB of md5 hex: not compressible enough to stay inline
    let body = "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 250) i)";
    c.batch_execute(&format!(
        "INSERT INTO docs VALUES (1, 'one', {body}, 1), (2, 'two', {body} || 'x', 1);
         INSERT INTO links VALUES (1, 1, 'red'), (2, 1, 'blue'), (3, 2, 'red');"
    ))
    .await
    .unwrap();
    c.batch_execute(
        "UPDATE docs SET id = 100, n = 2 WHERE id = 1;
         BEGIN; UPDATE docs SET id = 200 WHERE id = 100; UPDATE docs SET title = 'moved twice' WHERE id = 200; COMMIT;
         UPDATE docs SET id = 1 WHERE id = 2;
         DELETE FROM docs WHERE id = 1;
         INSERT INTO docs VALUES (1, 'again', 'short', 3);
         UPDATE docs SET id = 300, n = 4 WHERE id = 1;",
    )
    .await
    .unwrap();
    wait_confirmed(&c, "gkey", &d, Duration::from_secs(60)).await;
    let g = graph(&server).await;
    let got = nodes(&g, "Doc").await;
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![200, 300], "one node per row, none left at an old key: {:?}", got.keys());
    assert_nodes_are_the_rows(&g, &c, "docs", "Doc").await;
    let body_len = |id: i64| match got[&id].get("body") {
        Some(BoltType::String(s)) => s.value.len(),
        other => panic!("Doc {id} body: {other:?}"),
    };
    assert_eq!(body_len(200), 8000, "the unchanged TOASTed body moved with the node");
    let rels = cypher(
        &g,
        "MATCH (d:Doc)-[r:TAGGED]->(t:Tag) RETURN d.id AS d, t.name AS t, r.id AS id",
        &[Col::Int("d"), Col::Text("t"), Col::Int("id")],
    )
    .await;
    assert_eq!(
        rels,
        vec![vec![json!(200), json!("blue"), json!(2)], vec![json!(200), json!("red"), json!(1)]],
        "the relationships followed the key"
    );
    let all = cypher(&g, "MATCH (n) RETURN count(n) AS n", &[Col::Int("n")]).await;
    assert_eq!(all, vec![vec![json!(4)]], "two docs and two tags, nothing else");
    assert_eq!(line_count(&dir.path().join("gkey.dead.jsonl")), 0, "nothing dead-lettered\n{}", d.log());
    let (code, _, text) = tokio::task::block_in_place(|| verify_config(dir.path(), &cfg, &[]));
    assert_eq!(code, 0, "{text}");
}

/// TLS to Neo4j (`bolt+s://`; the server's Bolt connector requires TLS with
/// a certificate from a test CA). `doctor` passes with that CA; with another
/// CA it fails and says what to fix. The daemon then streams through TLS
/// and the graph (read over TLS too) equals the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_test_ca_streams_and_a_wrong_ca_is_refused_with_the_fix() {
    let db = "gtls";
    let (pg, c) = cluster(db).await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)").await.unwrap();
    let server = tokio::task::spawn_blocking(Neo4jServer::start_tls).await.unwrap();
    let tls = server.tls.clone().unwrap();
    let dir = scratch();
    let uri = format!("bolt+s://localhost:{}", tls.port);
    let pipelines =
        "  - name: t\n    from: public.t\n    to: graph\n    neo4j: { node: { label: TlsItem, key: { id: id }, properties: { v: v } } }";
    let config = |ca: &std::path::Path| {
        let cfg = neo4j_config(&pg, db, db, &uri, &server.user, &server.password, &server.database, pipelines, dir.path());
        let end = format!("database: \"{}\" }}", server.database);
        assert!(cfg.contains(&end));
        cfg.replace(&end, &format!("database: \"{}\", tls: {{ ca_file: \"{}\" }} }}", server.database, ca.display()))
    };
    let doctor = |name: &str, yaml: String| tokio::task::block_in_place(|| doctor_says(dir.path(), name, &yaml, "graph"));
    let said = doctor("other-ca", config(&tls.certs.other_ca_file));
    assert!(said.contains("FAIL  sink graph") && said.contains("set tls.ca_file"), "another CA is refused, with the fix:\n{said}");
    let said = doctor("good", config(&tls.certs.ca_file));
    assert!(said.contains("ok    sink graph") && !said.contains("FAIL  sink graph"), "the right CA:\n{said}");

    let d = Daemon::start(bin(), dir.path(), db, &config(&tls.certs.ca_file));
    wait_slot(&c, db, &d).await;
    c.batch_execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 200) g; UPDATE t SET v = v || '+' WHERE id % 3 = 0; DELETE FROM t WHERE id % 7 = 0")
        .await
        .unwrap();
    wait_confirmed(&c, db, &d, Duration::from_secs(90)).await;
    let rows = c.query("SELECT id, v FROM t", &[]).await.unwrap();
    let want: BTreeMap<i64, String> = rows.iter().map(|r| (i64::from(r.get::<_, i32>(0)), r.get(1))).collect();
    let client = pgfanout_neo4j::neo4rs::ConfigBuilder::new()
        .uri(&uri)
        .user(server.user.as_str())
        .password(server.password.as_str())
        .db(server.database.as_str())
        .with_client_certificate(&tls.certs.ca_file)
        .build()
        .unwrap();
    let g = pgfanout_neo4j::neo4rs::Graph::connect(client).await.unwrap();
    let mut found = g.execute(pgfanout_neo4j::neo4rs::query("MATCH (n:TlsItem) RETURN n.id AS id, n.v AS v")).await.unwrap();
    let mut got = BTreeMap::new();
    while let Some(row) = found.next().await.unwrap() {
        got.insert(row.get::<i64>("id").unwrap(), row.get::<String>("v").unwrap());
    }
    assert_eq!(got, want, "every change through TLS\n{}", d.log());
}
