//! Faulty links: Toxiproxy between pgfanout and its servers.
//!
//! Each test proxies one link — the PostgreSQL connections (replication and
//! SQL), or one sink's: Redis, OpenSearch, MongoDB (FerretDB), Cassandra,
//! Neo4j (Bolt), Kafka (a broker listener that advertises the proxy) or a
//! webhook receiver — while a writer keeps changing rows over a direct
//! connection. The link then goes through, one after the other:
//!
//! - +2 s latency;
//! - 10 kB/s bandwidth;
//! - connections reset by the peer half a second into every connection;
//! - a silent link (data stops, the connection stays open: a half-open TCP
//!   connection behind a load balancer) for 20 s, longer than every client
//!   timeout (`source.postgres.receive_timeout` 4 s, each sink's 3 s) and
//!   long enough for `/readyz` to say so;
//!
//! and is healed. After each fault: the store equals the table (no change
//! lost), and the test prints the time to notice (the first sign in the
//! log: a retry or a reconnect) and the time to recover (from the healing
//! to the slot confirming everything written).
#![cfg(all(feature = "redis", feature = "elasticsearch", feature = "mongodb", feature = "scylla", feature = "neo4j", feature = "kafka"))]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kafka::read_topics;
use common::neo4j::graph;
use common::scylla::select;
use common::*;
use pgfanout_neo4j::neo4rs;
use pgfanout_scylla::driver::client::session_builder::SessionBuilder;
use serde_json::Value as Json;
use testkit::{CassandraNode, FerretDb, KafkaBroker, Link, Neo4jServer, OpenSearchNode, PgCluster, RedisServer, ToxicStream, Toxiproxy};

/// The Cassandra node is shared by the test binary: this test's keyspace.
const KEYSPACE: &str = "links";

const SCHEMA: &str = "CREATE TABLE items (id int PRIMARY KEY, v bigint NOT NULL, note text NOT NULL);";

/// The writer's controls: `stop` ends it; while `pause` is set it parks
/// (and says so in `parked`), so a check compares a table at rest.
#[derive(Default)]
struct Controls {
    stop: AtomicBool,
    pause: AtomicBool,
    parked: AtomicBool,
    done: AtomicU64,
}

impl Controls {
    /// Pauses the writer and waits until it is parked.
    async fn park(&self) {
        self.pause.store(true, Ordering::SeqCst);
        testkit::wait_for(Duration::from_secs(30), "the writer to park", || async { self.parked.load(Ordering::SeqCst) }).await;
    }

    fn resume(&self) {
        self.pause.store(false, Ordering::SeqCst);
    }
}

/// Keeps inserting and updating rows (over a direct connection) until
/// stopped.
fn writer(c: tokio_postgres::Client, ctl: Arc<Controls>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n: u64 = 0;
        while !ctl.stop.load(Ordering::SeqCst) {
            if ctl.pause.load(Ordering::SeqCst) {
                ctl.parked.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            ctl.parked.store(false, Ordering::SeqCst);
            n += 1;
            let sql = if n.is_multiple_of(3) {
                format!("UPDATE items SET v = {n}, note = note || '+' WHERE id = {}", 1 + (n * 7919) % (n / 3 + 1))
            } else {
                format!("INSERT INTO items VALUES ({n}, {n}, 'item {n} {}')", "x".repeat((n % 50) as usize))
            };
            c.batch_execute(&sql).await.unwrap();
            ctl.done.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// The store behind the sink `store`, each holding a row per `items` row.
enum Store {
    Redis(RedisServer),
    Search(OpenSearchNode),
    Mongo(FerretDb),
    Cassandra(&'static CassandraNode),
    Neo4j(Neo4jServer),
    /// The broker's proxied listener is the link ([`KafkaBroker::start_behind`]).
    Kafka(KafkaBroker),
    Webhook(Receiver),
}

/// A webhook receiver (axum, in this test) that keeps every record it gets.
#[derive(Clone, Default)]
struct Receiver {
    port: u16,
    kept: Arc<std::sync::Mutex<Vec<Json>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        async fn receive(axum::extract::State(r): axum::extract::State<Receiver>, body: axum::body::Bytes) -> &'static str {
            let records: Vec<Json> = serde_json::from_slice(&body).expect("a JSON array of records");
            r.kept.lock().unwrap().extend(records);
            "ok"
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Receiver { port: listener.local_addr().unwrap().port(), kept: Arc::default() };
        let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        receiver
    }
}

/// id -> (v, note) as a store holds them.
type Held = BTreeMap<String, (Option<String>, Option<String>)>;

/// The latest `after` per id of change records (native format; a record
/// sent again is a copy): the order is the commit's position, then the
/// change's own.
fn latest(records: impl IntoIterator<Item = Json>) -> Held {
    let mut last: BTreeMap<String, ((u64, u64), Json)> = BTreeMap::new();
    for r in records {
        let at = (lsn(r["commit_lsn"].as_str().expect("commit_lsn")), lsn(r["lsn"].as_str().expect("lsn")));
        let id = r["after"]["id"].to_string();
        if last.get(&id).is_none_or(|(seen, _)| *seen <= at) {
            last.insert(id, (at, r["after"].clone()));
        }
    }
    last.into_iter().map(|(id, (_, after))| (id, (Some(after["v"].to_string()), after["note"].as_str().map(str::to_string)))).collect()
}

impl Store {
    /// Starts the store `on` names (Kafka advertising `proxy_port`).
    async fn start(on: On, pg: &PgCluster, proxy_port: u16) -> Store {
        match on {
            On::Source | On::Redis => Store::Redis(RedisServer::start()),
            On::Search => Store::Search(tokio::task::spawn_blocking(OpenSearchNode::start).await.unwrap()),
            On::Mongo => Store::Mongo(FerretDb::start(pg)),
            On::Cassandra => Store::Cassandra(tokio::task::spawn_blocking(CassandraNode::shared).await.unwrap()),
            On::Neo4j => Store::Neo4j(tokio::task::spawn_blocking(Neo4jServer::start).await.unwrap()),
            On::Kafka => Store::Kafka(tokio::task::spawn_blocking(move || KafkaBroker::start_behind(proxy_port)).await.unwrap()),
            On::Webhook => Store::Webhook(Receiver::start().await),
        }
    }

    /// The port the link forwards to.
    fn port(&self) -> u16 {
        match self {
            Store::Redis(r) => r.port,
            Store::Search(s) => s.port,
            Store::Mongo(m) => m.port,
            Store::Cassandra(n) => n.port,
            Store::Neo4j(n) => n.bolt_port,
            Store::Kafka(k) => k.behind.expect("a broker behind a proxy").port,
            Store::Webhook(r) => r.port,
        }
    }

    /// The sink's YAML with the store reached at `port` (the proxy's or
    /// its own), its client timeouts 3 s.
    fn sink(&self, port: u16) -> String {
        let sink = match self {
            Store::Redis(_) => format!(
                "type: redis, url: \"redis://127.0.0.1:{port}\", reconnect_max_delay: 1s, connect_timeout: 2s, response_timeout: 3s"
            ),
            Store::Search(_) => {
                format!("type: opensearch, urls: [\"http://127.0.0.1:{port}\"], request_timeout: 3s, retry: {{ max_backoff: 1s }}")
            }
            Store::Mongo(_) => {
                format!("type: mongodb, uri: \"mongodb://127.0.0.1:{port}/\", database: links, timeout: 3s, request_timeout: 3s")
            }
            Store::Cassandra(_) => format!(
                "type: cassandra, nodes: [\"127.0.0.1:{port}\"], keyspace: {KEYSPACE}, create: true, consistency: one, request_timeout: 3s"
            ),
            Store::Neo4j(n) => format!(
                "type: neo4j, uri: \"bolt://127.0.0.1:{port}\", user: \"{}\", password: \"{}\", database: \"{}\", request_timeout: 3s",
                n.user, n.password, n.database
            ),
            Store::Kafka(_) => format!("type: kafka, brokers: \"127.0.0.1:{port}\", delivery_timeout: 3s"),
            Store::Webhook(_) => format!("type: http, url: \"http://127.0.0.1:{port}/hook\", timeout: 3s"),
        };
        format!("  store: {{ {sink} }}")
    }

    fn mapping(&self) -> &'static str {
        match self {
            Store::Redis(_) => "redis: { type: hash, key: \"item:{id}\" }",
            Store::Search(_) => "elasticsearch: { index: items }",
            Store::Mongo(_) => "mongodb: { collection: items }",
            Store::Cassandra(_) => {
                "scylla: { table: items, columns: { id: id, v: v, note: note }, partition_key: [id], types: { id: int, v: bigint } }"
            }
            Store::Neo4j(_) => "neo4j: { node: { label: Item, key: { id: id }, properties: { v: v, note: note } } }",
            Store::Kafka(_) => "kafka: { topic: links.items, format: native }",
            Store::Webhook(_) => "",
        }
    }

    /// id -> (v, note) as the store holds them.
    async fn rows(&self) -> Held {
        match self {
            Store::Redis(redis) => {
                let keys = redis.keys().into_iter().filter(|k| k.starts_with("item:"));
                keys.map(|k| {
                    let v = redis.cmd(&["HGET", &k, "v"]).opt_text();
                    let note = redis.cmd(&["HGET", &k, "note"]).opt_text();
                    (k["item:".len()..].to_string(), (v, note))
                })
                .collect()
            }
            Store::Search(node) => documents(&node.url(), "items")
                .await
                .into_iter()
                .map(|(id, doc)| (id, (Some(doc["v"].to_string()), doc["note"].as_str().map(str::to_string))))
                .collect(),
            Store::Mongo(m) => collection_documents(&m.uri(), "links", "items")
                .await
                .into_iter()
                .map(|(id, doc)| {
                    let v = doc.get("v").map(|v| v.clone().into_relaxed_extjson().to_string());
                    (id, (v, doc.get_str("note").ok().map(str::to_string)))
                })
                .collect(),
            Store::Cassandra(node) => {
                let session = SessionBuilder::new().known_node(node.contact_point()).build().await.unwrap();
                let rows: Vec<(i32, Option<i64>, Option<String>)> =
                    select(&session, format!("SELECT id, v, note FROM {KEYSPACE}.items")).await;
                rows.into_iter().map(|(id, v, note)| (id.to_string(), (v.map(|v| v.to_string()), note))).collect()
            }
            Store::Neo4j(server) => {
                let g = graph(server).await;
                let mut rows = g.execute(neo4rs::query("MATCH (n:Item) RETURN n.id AS id, n.v AS v, n.note AS note")).await.unwrap();
                let mut held = Held::new();
                while let Some(row) = rows.next().await.unwrap() {
                    let id: i64 = row.get("id").unwrap();
                    held.insert(id.to_string(), (row.get::<i64>("v").ok().map(|v| v.to_string()), row.get("note").ok()));
                }
                held
            }
            Store::Kafka(broker) => {
                let bootstrap = broker.bootstrap();
                let records = tokio::task::block_in_place(|| {
                    read_topics(&bootstrap, &["links.items"], Duration::from_secs(60), Duration::from_secs(2), |_| true)
                });
                latest(records.iter().map(|r| r.json()))
            }
            Store::Webhook(r) => latest(r.kept.lock().unwrap().clone()),
        }
    }
}

/// The rows the store holds must be exactly the table's.
async fn assert_store_equals_table(c: &tokio_postgres::Client, store: &Store, fault: &str) -> usize {
    let rows = c.query("SELECT id::text, v::text, note FROM items", &[]).await.unwrap();
    let held = store.rows().await;
    let lost: Vec<&str> = rows
        .iter()
        .map(|r| (r.get::<_, &str>(0), r.get::<_, &str>(1), r.get::<_, &str>(2)))
        .filter(|(id, v, note)| held.get(*id) != Some(&(Some(v.to_string()), Some(note.to_string()))))
        .map(|(id, _, _)| id)
        .collect();
    assert!(lost.is_empty(), "{fault}: {} changes lost or stale, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
    assert_eq!(held.len(), rows.len(), "{fault}: extra entries");
    rows.len()
}

/// What one fault showed: when the log first showed it (if it did), what
/// `/readyz` first said other than ready (if it did), and how long the
/// slot took to confirm everything after healing.
struct Seen {
    noticed: Option<Duration>,
    unready: Option<String>,
    recovered: Duration,
}

/// A toxic: its name, kind, direction and attributes (Toxiproxy's API).
type Toxic = (&'static str, &'static str, ToxicStream, &'static str);

/// The four faults, in order: a name, how long each is held while the
/// writer runs, its toxics. The silence is long enough for `/readyz` to call
/// a failing sink out (10 s of failures).
const FAULTS: [(&str, u64, &[Toxic]); 4] = [
    ("latency +2s", 6, &[("lat", "latency", ToxicStream::Down, r#"{"latency": 2000}"#)]),
    ("bandwidth 10 kB/s", 6, &[("bw", "bandwidth", ToxicStream::Down, r#"{"rate": 10}"#)]),
    ("reset mid-response", 5, &[("rst", "reset_peer", ToxicStream::Down, r#"{"timeout": 500}"#)]),
    (
        "silent link 20 s",
        20,
        &[("up", "timeout", ToxicStream::Up, r#"{"timeout": 0}"#), ("down", "timeout", ToxicStream::Down, r#"{"timeout": 0}"#)],
    ),
];

/// Where a test stands: its database, store, daemon, writer and link.
struct Bench<'a> {
    c: &'a tokio_postgres::Client,
    store: &'a Store,
    d: &'a Daemon,
    ctl: &'a Controls,
    http: u16,
    link: &'a Link,
    signs: &'a [&'a str],
}

/// One fault on the link: `toxics` added while the writer runs for `hold`,
/// then removed; checks nothing was lost.
async fn fault(b: &Bench<'_>, name: &str, hold: Duration, toxics: &[Toxic]) -> Seen {
    let log_before = b.d.log().len();
    let started = Instant::now();
    tokio::task::block_in_place(|| toxics.iter().for_each(|(t, kind, stream, attributes)| b.link.add(t, kind, *stream, attributes)));
    let (mut noticed, mut unready) = (None, None);
    while started.elapsed() < hold {
        if noticed.is_none() {
            let log = b.d.log();
            if b.signs.iter().any(|s| log.get(log_before..).unwrap_or("").contains(s)) {
                noticed = Some(started.elapsed());
            }
        }
        if unready.is_none() {
            let (code, body) = tokio::task::block_in_place(|| http_get(b.http, "/readyz"));
            if code != 200 {
                let said = body.split_once("\r\n\r\n").map_or(body.as_str(), |(_, b)| b).trim().to_string();
                unready = Some(format!("{code} {said}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::task::block_in_place(|| toxics.iter().for_each(|(t, ..)| b.link.remove(t)));
    let healed = Instant::now();
    // The writer rests while the slot catches up and the store is compared.
    b.ctl.park().await;
    let target = insert_lsn(b.c).await;
    testkit::wait_for(Duration::from_secs(90), &format!("{name}: recovery"), || async { confirmed_flush(b.c, "links").await >= target })
        .await;
    let recovered = healed.elapsed();
    let rows = assert_store_equals_table(b.c, b.store, name).await;
    b.ctl.resume();
    eprintln!(
        "fault {name:<20} changes lost: 0 ({rows} rows equal)  noticed after: {:<6} recovered {:.1}s after healing  /readyz: {}",
        noticed.map_or("-".to_string(), |t| format!("{:.1}s", t.as_secs_f64())),
        recovered.as_secs_f64(),
        unready.as_deref().unwrap_or("ready throughout")
    );
    Seen { noticed, unready, recovered }
}

/// Which link the faults are put on.
#[derive(Clone, Copy, PartialEq, Debug)]
enum On {
    /// The PostgreSQL connections (replication and SQL); the sink is Redis.
    Source,
    Redis,
    Search,
    Mongo,
    Cassandra,
    Neo4j,
    Kafka,
    Webhook,
}

/// The four faults on one link.
async fn faults_on(on: On) {
    let (pg, c) = cluster_with("links", SHORT_WAL_SENDER_TIMEOUT).await;
    c.batch_execute(SCHEMA).await.unwrap();
    let proxy = tokio::task::block_in_place(Toxiproxy::start);
    let proxy_port = testkit::free_port();
    let store = Store::start(on, &pg, proxy_port).await;
    let link: Link = match on {
        On::Source => proxy.link_on("postgres", proxy_port, pg.port),
        _ => proxy.link_on("store", proxy_port, store.port()),
    };
    let dir = scratch();
    let pg_port = if on == On::Source { link.port } else { pg.port };
    let store_port = if on == On::Source { store.port() } else { link.port };
    let mapping = store.mapping();
    let pipelines = format!("  - name: items\n    from: public.items\n    to: store\n    {mapping}").replace("\n    \n", "\n");
    let cfg = daemon_config(&pg, "links", "links", &store.sink(store_port), pipelines.trim_end(), &dir.path().join("dead.jsonl"))
        .replace(&format!("127.0.0.1:{}/", pg.port), &format!("127.0.0.1:{pg_port}/"))
        .replace("    status_interval: 1s\n", "    status_interval: 1s\n    receive_timeout: 4s\n    heartbeat_interval: 1s\n");
    let http = testkit::free_port();
    let cfg = cfg.replace("http:\n  enabled: false\n", &format!("http:\n  listen: 127.0.0.1:{http}\n"));
    let d = Daemon::start(bin(), dir.path(), "links", &cfg);
    wait_slot(&c, "links", &d).await;
    // Streaming, and every sink connected, before the first fault.
    testkit::wait_for(Duration::from_secs(60), "/readyz", || async { tokio::task::block_in_place(|| http_get(http, "/readyz")).0 == 200 })
        .await;
    let ctl = Arc::new(Controls::default());
    let w = writer(pg.client("links").await, ctl.clone());
    let signs: &[&str] = if on == On::Source {
        &["reconnect", "retrying", "taken as dead", "error"]
    } else {
        &["retrying", "failed", "error", "cannot be reached", "timed out"]
    };
    let bench = Bench { c: &c, store: &store, d: &d, ctl: &ctl, http, link: &link, signs };
    let mut seen = Vec::new();
    for (name, hold, toxics) in FAULTS {
        seen.push(fault(&bench, name, Duration::from_secs(hold), toxics).await);
    }
    let (reset, silent) = (&seen[2], &seen[3]);
    // Long-lived connections see the resets; HTTP clients may just open
    // new ones (nothing in the log, nothing lost).
    assert!(matches!(on, On::Search | On::Webhook) || reset.noticed.is_some(), "the resets were seen:\n{}", d.log());
    ctl.stop.store(true, Ordering::SeqCst);
    w.await.unwrap();
    let target = insert_lsn(&c).await;
    testkit::wait_for(Duration::from_secs(60), "the end", || async { confirmed_flush(&c, "links").await >= target }).await;
    assert_store_equals_table(&c, &store, "the end").await;
    let noticed = silent.noticed.unwrap_or_else(|| panic!("the silent link was never noticed:\n{}", d.log()));
    // The client timeouts are 3-4 s (the replication ping goes at half; the
    // search sink then asks the cluster whether the request still runs).
    assert!(noticed < Duration::from_secs(12), "the silent link was noticed after {noticed:?}");
    let unready = silent.unready.as_ref().unwrap_or_else(|| panic!("/readyz stayed ready through a silent link:\n{}", d.log()));
    let why = if on == On::Source { "not streaming" } else { "sink store failing" };
    assert!(unready.contains(why), "/readyz said {unready:?}");
    assert!(silent.recovered < Duration::from_secs(45), "recovered {:?} after healing", silent.recovered);
    assert!(ctl.done.load(Ordering::SeqCst) > 1000, "the writer ran all along");
    assert_eq!(line_count(&dir.path().join("dead.jsonl")), 0, "nothing dead-lettered");
    let mut d = d;
    assert!(d.is_running(), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replication_link_survives_latency_trickles_resets_and_silence() {
    faults_on(On::Source).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_link_survives_latency_trickles_resets_and_silence() {
    faults_on(On::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opensearch_link_survives_latency_trickles_resets_and_silence() {
    faults_on(On::Search).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mongodb_link_survives_latency_trickles_resets_and_silence() {
    faults_on(On::Mongo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cassandra_link_survives_latency_trickles_resets_and_silence() {
    faults_on(On::Cassandra).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_neo4j_link_survives_latency_trickles_resets_and_silence() {
    faults_on(On::Neo4j).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_link_survives_latency_trickles_resets_and_silence() {
    faults_on(On::Kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_link_survives_latency_trickles_resets_and_silence() {
    faults_on(On::Webhook).await;
}
