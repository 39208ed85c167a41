//! Faulty links: Toxiproxy between pgfanout and its servers.
//!
//! Each test proxies one link — the PostgreSQL connections (replication and
//! SQL), the Redis sink's or the OpenSearch sink's — while a writer keeps changing rows over a
//! direct connection. The link then goes through, one after the other:
//!
//! - +2 s latency;
//! - 10 kB/s bandwidth;
//! - connections reset by the peer half a second into every connection;
//! - a silent link (data stops, the connection stays open: a half-open TCP
//!   connection behind a load balancer) for longer than every client
//!   timeout for 20 s (`source.postgres.receive_timeout` 4 s, the Redis sink's
//!   `response_timeout` 3 s), until `/readyz` says so;
//!
//! and is healed. After each fault: Redis equals the table (no change
//! lost), and the test prints the time to notice (the first sign in the
//! log: a retry or a reconnect) and the time to recover (from the healing
//! to the slot confirming everything written).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use testkit::{Link, OpenSearchNode, RedisServer, ToxicStream, Toxiproxy};

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

/// The store behind the sink `store`: Redis (a hash per row) or OpenSearch
/// (a document per row).
enum Store {
    Redis(RedisServer),
    Search(OpenSearchNode),
}

impl Store {
    fn port(&self) -> u16 {
        match self {
            Store::Redis(r) => r.port,
            Store::Search(s) => s.port,
        }
    }

    /// The sink's YAML with the store reached at `port` (the proxy's or
    /// its own), its client timeouts 3 s.
    fn sink(&self, port: u16) -> String {
        match self {
            Store::Redis(_) => format!(
                "  store: {{ type: redis, url: \"redis://127.0.0.1:{port}\", reconnect_max_delay: 1s, connect_timeout: 2s, response_timeout: 3s }}"
            ),
            Store::Search(_) => format!(
                "  store: {{ type: opensearch, urls: [\"http://127.0.0.1:{port}\"], request_timeout: 3s, retry: {{ max_backoff: 1s }} }}"
            ),
        }
    }

    fn mapping(&self) -> &'static str {
        match self {
            Store::Redis(_) => "redis: { type: hash, key: \"item:{id}\" }",
            Store::Search(_) => "elasticsearch: { index: items }",
        }
    }

    /// id -> (v, note) as the store holds them.
    async fn rows(&self) -> std::collections::BTreeMap<String, (Option<String>, Option<String>)> {
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

/// One fault on `link`: applied (by `apply`) while the writer runs for
/// `hold`, then healed (by `heal`); checks nothing was lost.
#[allow(clippy::too_many_arguments)]
async fn fault(
    name: &str,
    c: &tokio_postgres::Client,
    store: &Store,
    d: &Daemon,
    ctl: &Controls,
    http: u16,
    hold: Duration,
    signs: &[&str],
    apply: impl FnOnce(),
    heal: impl FnOnce(),
) -> Seen {
    let log_before = d.log().len();
    let started = Instant::now();
    tokio::task::block_in_place(apply);
    let (mut noticed, mut unready) = (None, None);
    while started.elapsed() < hold {
        if noticed.is_none() {
            let log = d.log();
            if signs.iter().any(|s| log.get(log_before..).unwrap_or("").contains(s)) {
                noticed = Some(started.elapsed());
            }
        }
        if unready.is_none() {
            let (code, body) = tokio::task::block_in_place(|| http_get(http, "/readyz"));
            if code != 200 {
                let said = body.split_once("\r\n\r\n").map_or(body.as_str(), |(_, b)| b).trim().to_string();
                unready = Some(format!("{code} {said}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::task::block_in_place(heal);
    let healed = Instant::now();
    // The writer rests while the slot catches up and Redis is compared.
    ctl.park().await;
    let target = insert_lsn(c).await;
    testkit::wait_for(Duration::from_secs(90), &format!("{name}: recovery"), || async { confirmed_flush(c, "links").await >= target })
        .await;
    let recovered = healed.elapsed();
    let rows = assert_store_equals_table(c, store, name).await;
    ctl.resume();
    eprintln!(
        "fault {name:<20} changes lost: 0 ({rows} rows equal)  noticed after: {:<6} recovered {:.1}s after healing  /readyz: {}",
        noticed.map_or("-".to_string(), |t| format!("{:.1}s", t.as_secs_f64())),
        recovered.as_secs_f64(),
        unready.as_deref().unwrap_or("ready throughout")
    );
    Seen { noticed, unready, recovered }
}

/// Which link the faults are put on.
#[derive(Clone, Copy, PartialEq)]
enum On {
    /// The PostgreSQL connections (replication and SQL); the sink is Redis.
    Source,
    Redis,
    Search,
}

/// The four faults on one link.
async fn faults_on(on: On) {
    let (pg, c) = cluster_with("links", SHORT_WAL_SENDER_TIMEOUT).await;
    c.batch_execute(SCHEMA).await.unwrap();
    let store = match on {
        On::Source | On::Redis => Store::Redis(RedisServer::start()),
        On::Search => Store::Search(tokio::task::spawn_blocking(OpenSearchNode::start).await.unwrap()),
    };
    let proxy = tokio::task::block_in_place(Toxiproxy::start);
    let link: Link = if on == On::Source { proxy.link("postgres", pg.port) } else { proxy.link("store", store.port()) };
    let dir = scratch();
    let pg_port = if on == On::Source { link.port } else { pg.port };
    let store_port = if on == On::Source { store.port() } else { link.port };
    let pipelines = format!("  - name: items\n    from: public.items\n    to: store\n    {}", store.mapping());
    let cfg = daemon_config(&pg, "links", "links", &store.sink(store_port), &pipelines, &dir.path().join("dead.jsonl"))
        .replace(&format!("127.0.0.1:{}/", pg.port), &format!("127.0.0.1:{pg_port}/"))
        .replace("    status_interval: 1s\n", "    status_interval: 1s\n    receive_timeout: 4s\n    heartbeat_interval: 1s\n");
    let http = testkit::free_port();
    let cfg = cfg.replace("http:\n  enabled: false\n", &format!("http:\n  listen: 127.0.0.1:{http}\n"));
    let d = Daemon::start(bin(), dir.path(), "links", &cfg);
    wait_slot(&c, "links", &d).await;
    let ctl = Arc::new(Controls::default());
    let w = writer(pg.client("links").await, ctl.clone());
    let signs: &[&str] = if on == On::Source {
        &["reconnect", "retrying", "taken as dead", "error"]
    } else {
        &["retrying", "failed", "error", "cannot be reached"]
    };
    let down = ToxicStream::Down;
    let secs = Duration::from_secs;
    fault(
        "latency +2s",
        &c,
        &store,
        &d,
        &ctl,
        http,
        secs(6),
        signs,
        || link.add("lat", "latency", down, r#"{"latency": 2000}"#),
        || link.remove("lat"),
    )
    .await;
    fault(
        "bandwidth 10 kB/s",
        &c,
        &store,
        &d,
        &ctl,
        http,
        secs(6),
        signs,
        || link.add("bw", "bandwidth", down, r#"{"rate": 10}"#),
        || link.remove("bw"),
    )
    .await;
    let reset = fault(
        "reset mid-response",
        &c,
        &store,
        &d,
        &ctl,
        http,
        secs(5),
        signs,
        || link.add("rst", "reset_peer", down, r#"{"timeout": 500}"#),
        || link.remove("rst"),
    )
    .await;
    // Long-lived connections see the resets; the HTTP client of the search
    // sink may just open new ones (nothing in the log, nothing lost).
    assert!(on == On::Search || reset.noticed.is_some(), "the resets were seen:\n{}", d.log());
    // Long enough for /readyz to call a failing sink out (10 s of failures).
    let silent = fault(
        "silent link 20 s",
        &c,
        &store,
        &d,
        &ctl,
        http,
        secs(20),
        signs,
        || {
            link.add("up", "timeout", ToxicStream::Up, r#"{"timeout": 0}"#);
            link.add("down", "timeout", down, r#"{"timeout": 0}"#);
        },
        || {
            link.remove("up");
            link.remove("down");
        },
    )
    .await;
    ctl.stop.store(true, Ordering::SeqCst);
    w.await.unwrap();
    let target = insert_lsn(&c).await;
    testkit::wait_for(Duration::from_secs(60), "the end", || async { confirmed_flush(&c, "links").await >= target }).await;
    assert_store_equals_table(&c, &store, "the end").await;
    let noticed = silent.noticed.unwrap_or_else(|| panic!("the silent link was never noticed:\n{}", d.log()));
    // The client timeouts are 3-4 s (the replication ping goes at half; the
    // search sink then asks the cluster whether the request still runs).
    assert!(noticed < Duration::from_secs(12), "the silent link was noticed after {noticed:?}");
    if on == On::Search {
        // Known gap: the search sink retries inside itself, so the runtime
        // (and /readyz) does not see its failures; the log does.
        eprintln!("/readyz during the silent link: {:?}", silent.unready);
    } else {
        let unready = silent.unready.unwrap_or_else(|| panic!("/readyz stayed ready through a silent link:\n{}", d.log()));
        let why = if on == On::Source { "not streaming" } else { "sink store failing" };
        assert!(unready.contains(why), "/readyz said {unready:?}");
    }
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
