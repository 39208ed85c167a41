//! End-to-end: PostgreSQL -> `pgfanout run` -> Redis, against a real
//! PostgreSQL 15 cluster and a real redis-server started for each test.
//!
//! The oracle is always PostgreSQL: after a workload, what every mapping
//! implies is computed from the final table contents and compared with the
//! keys in Redis, exactly (no missing key, no extra key besides the sink's
//! own `pgfanout:v:*` version hashes). Faults (a Redis outage, SIGKILL of
//! the daemon) must not change that outcome, and the slot's
//! confirmed_flush_lsn must never pass a change Redis did not have.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value as Json;
use testkit::RedisServer;

const SCHEMA: &str = "
    CREATE TABLE products (id int PRIMARY KEY, category_id int NOT NULL, price numeric(10,2) NOT NULL,
                           name text NOT NULL, big text);
    ALTER TABLE products ALTER COLUMN big SET STORAGE EXTERNAL;
    -- Set and sorted-set members are keyed by category_id: deletes and
    -- category moves need the old row.
    ALTER TABLE products REPLICA IDENTITY FULL;
    CREATE TABLE cart_items (user_id int NOT NULL, product_id int NOT NULL, quantity int NOT NULL,
                             PRIMARY KEY (user_id, product_id));";

/// Maximum length of the change stream (approximate trimming).
const STREAM_MAXLEN: usize = 50;

/// Every mapping type that runs without modules, on the two tables.
fn pipelines() -> String {
    format!(
        r#"
  - name: product-hash
    from: public.products
    to: cache
    redis: {{ type: hash, key: "product:{{id}}" }}
  - name: product-json
    from: public.products
    to: cache
    redis: {{ type: string, key: "product:{{id}}:json" }}
  - name: product-price
    from: public.products
    to: cache
    redis: {{ type: string, key: "product:{{id}}:price", column: price }}
  - name: product-big
    from: public.products
    to: cache
    redis: {{ type: string, key: "product:{{id}}:big", column: big }}
  - name: category-set
    from: public.products
    to: cache
    redis: {{ type: set, key: "category:{{category_id}}:products", member: "{{id}}" }}
  - name: category-by-price
    from: public.products
    to: cache
    redis: {{ type: sorted_set, key: "category:{{category_id}}:by_price", member: "{{id}}", score: price }}
  - name: product-changes
    from: public.products
    to: cache
    redis: {{ type: stream, key: "products:changes", maxlen: {STREAM_MAXLEN} }}
  - name: carts
    from: public.cart_items
    to: cache
    redis: {{ type: hash, key: "cart:{{user_id}}", field: "{{product_id}}", value: "{{quantity}}", ttl: 7d }}"#
    )
}

/// The mixed workload: inserts, updates that leave the TOASTed `big` column
/// unchanged, updates of `big`, category moves, primary-key changes, deletes,
/// and cart lines added, changed, moved to another product and removed.
/// Most statements hit an existing product.
const PRODUCTS: Mix = Mix { statement: products_statement, max_statements: 3 };

/// A value stored out of line: STORAGE EXTERNAL and over 2 kB.
fn big(w: &mut Workload) -> String {
    w.big("big", "abcdefghijklmnopqrstuvwxyz0123456789", 80)
}

fn price(w: &mut Workload) -> String {
    format!("{}.{:02}", 1 + w.rng.below(500), w.rng.below(100))
}

fn products_statement(w: &mut Workload) -> String {
    let live = w.pick();
    match (w.rng.below(12), live) {
        (0..=2, _) | (_, None) => {
            let id = w.insert();
            let big = if w.rng.below(3) == 0 { "NULL".to_string() } else { big(w) };
            let (cat, price) = (1 + w.rng.below(5), price(w));
            format!("INSERT INTO products VALUES ({id}, {cat}, {price}, 'product {id}', {big})")
        }
        // Leaves `big` unchanged: sent as an unchanged TOAST column.
        (3 | 4, Some(id)) => format!("UPDATE products SET price = {}, name = name || '+' WHERE id = {id}", price(w)),
        (5, Some(id)) => {
            let big = if w.rng.below(4) == 0 { "NULL".to_string() } else { big(w) };
            format!("UPDATE products SET big = {big} WHERE id = {id}")
        }
        (6, Some(id)) => format!("UPDATE products SET category_id = {} WHERE id = {id}", 1 + w.rng.below(5)),
        (7, Some(id)) => {
            let new = w.rekey(id);
            format!("UPDATE products SET id = {new} WHERE id = {id}")
        }
        (8, Some(id)) => {
            w.delete(id);
            format!("DELETE FROM products WHERE id = {id}")
        }
        (9, _) => {
            let (u, p, q) = (1 + w.rng.below(8), 1 + w.rng.below(30), 1 + w.rng.below(5));
            format!("INSERT INTO cart_items VALUES ({u}, {p}, {q}) ON CONFLICT (user_id, product_id) DO UPDATE SET quantity = excluded.quantity")
        }
        (10, _) => {
            let (u, p, new) = (1 + w.rng.below(8), 1 + w.rng.below(30), 1 + w.rng.below(30));
            if w.rng.below(2) == 0 {
                format!("DELETE FROM cart_items WHERE user_id = {u} AND product_id = {p}")
            } else {
                // A primary-key change: the old field must go.
                format!(
                    "UPDATE cart_items SET product_id = {new} WHERE user_id = {u} AND product_id = {p}
                     AND NOT EXISTS (SELECT 1 FROM cart_items WHERE user_id = {u} AND product_id = {new})"
                )
            }
        }
        _ => format!("UPDATE cart_items SET quantity = quantity + 1 WHERE user_id = {}", 1 + w.rng.below(8)),
    }
}

/// What Redis holds for one key, in a comparable form.
#[derive(Debug, PartialEq)]
enum Stored {
    Hash(BTreeMap<String, String>),
    /// A string holding JSON, parsed.
    Json(Json),
    Set(BTreeSet<String>),
    /// member -> score.
    Zset(BTreeMap<String, f64>),
}

/// Reads one key of a type known from its name.
fn read_key(redis: &RedisServer, key: &str) -> Stored {
    let kind = redis.cmd(&["TYPE", key]).text();
    match kind.as_str() {
        "hash" => Stored::Hash(redis.cmd(&["HGETALL", key]).pairs().into_iter().collect()),
        "string" => {
            let text = redis.cmd(&["GET", key]).text();
            Stored::Json(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{key} holds no JSON ({e}): {text}")))
        }
        "set" => Stored::Set(redis.cmd(&["SMEMBERS", key]).array().iter().map(|m| m.text()).collect()),
        "zset" => Stored::Zset(
            redis.cmd(&["ZRANGE", key, "0", "-1", "WITHSCORES"]).pairs().into_iter().map(|(m, s)| (m, s.parse().expect("score"))).collect(),
        ),
        other => panic!("{key} has unexpected type {other}"),
    }
}

/// What the mappings of [`pipelines`] imply for the final table contents,
/// for every key but the stream.
async fn expected_keys(c: &tokio_postgres::Client) -> BTreeMap<String, Stored> {
    let mut want = BTreeMap::new();
    let rows = c.query("SELECT id, category_id, price::float8, to_jsonb(p)::text FROM products p", &[]).await.unwrap();
    for r in &rows {
        let (id, cat, price): (i32, i32, f64) = (r.get(0), r.get(1), r.get(2));
        let doc: Json = serde_json::from_str(r.get(3)).unwrap();
        want.insert(format!("product:{id}:json"), Stored::Json(doc.clone()));
        want.insert(format!("product:{id}:price"), Stored::Json(doc["price"].clone()));
        want.insert(format!("product:{id}:big"), Stored::Json(doc["big"].clone()));
        match want.entry(format!("category:{cat}:products")).or_insert_with(|| Stored::Set(BTreeSet::new())) {
            Stored::Set(s) => s.insert(id.to_string()),
            _ => unreachable!(),
        };
        match want.entry(format!("category:{cat}:by_price")).or_insert_with(|| Stored::Zset(BTreeMap::new())) {
            Stored::Zset(z) => z.insert(id.to_string(), price),
            _ => unreachable!(),
        };
    }
    // Hash of the whole row: one field per non-NULL column, scalars as text.
    let fields = c
        .query("SELECT p.id, e.key, e.value #>> '{}' FROM products p, jsonb_each(to_jsonb(p)) e WHERE e.value <> 'null'::jsonb", &[])
        .await
        .unwrap();
    for r in &fields {
        let id: i32 = r.get(0);
        match want.entry(format!("product:{id}")).or_insert_with(|| Stored::Hash(BTreeMap::new())) {
            Stored::Hash(h) => h.insert(r.get(1), r.get(2)),
            _ => unreachable!(),
        };
    }
    for r in &c.query("SELECT user_id, product_id, quantity FROM cart_items", &[]).await.unwrap() {
        let (u, p, q): (i32, i32, i32) = (r.get(0), r.get(1), r.get(2));
        match want.entry(format!("cart:{u}")).or_insert_with(|| Stored::Hash(BTreeMap::new())) {
            Stored::Hash(h) => h.insert(p.to_string(), q.to_string()),
            _ => unreachable!(),
        };
    }
    want
}

/// Asserts that Redis holds exactly what the mappings imply for the final
/// tables: the same keys (besides version hashes and the stream), the same
/// contents, and a change stream consistent with the tables.
async fn assert_redis_matches_tables(c: &tokio_postgres::Client, redis: &RedisServer, d: &Daemon) {
    let want = expected_keys(c).await;
    let keys: BTreeSet<String> =
        redis.keys().into_iter().filter(|k| !k.starts_with("pgfanout:v:") && k != "products:changes" && k != ALL_CHANGES).collect();
    let want_keys: BTreeSet<String> = want.keys().cloned().collect();
    let missing: Vec<_> = want_keys.difference(&keys).collect();
    let extra: Vec<_> = keys.difference(&want_keys).collect();
    let dead = std::fs::read_to_string(d.config_path.with_file_name("redis.dead.jsonl")).unwrap_or_default();
    assert!(missing.is_empty() && extra.is_empty(), "missing keys {missing:?}, extra keys {extra:?}\ndead letters: {dead}\n{}", d.log());
    let mut wrong = Vec::new();
    for (key, expected) in &want {
        let got = read_key(redis, key);
        if &got != expected {
            wrong.push(format!("{key}:\n  redis:    {got:?}\n  postgres: {expected:?}"));
        }
    }
    assert!(wrong.is_empty(), "{} keys differ from the tables:\n{}\ndead letters: {dead}", wrong.len(), wrong.join("\n"));
    assert!(dead.is_empty(), "nothing is dead-lettered:\n{dead}");
    // The cart mapping has a TTL, refreshed on every write.
    for key in want.keys().filter(|k| k.starts_with("cart:")) {
        let ttl = redis.cmd(&["TTL", key]).int();
        assert!(ttl > 6 * 86_400 && ttl <= 7 * 86_400, "{key}: TTL {ttl}");
    }
    assert_stream(c, redis).await;
}

/// The stream is a suffix of the change sequence: its entries are in
/// commit order without duplicates, it is trimmed near MAXLEN, and for every
/// product id it mentions, the last entry is the row's final state.
async fn assert_stream(c: &tokio_postgres::Client, redis: &RedisServer) {
    let entries = redis.cmd(&["XRANGE", "products:changes", "-", "+"]).array();
    assert!(entries.len() >= STREAM_MAXLEN && entries.len() <= STREAM_MAXLEN + 100, "stream length {}", entries.len());
    let mut last_pos = (0u64, 0u64);
    let mut seen = BTreeSet::new();
    let mut state: BTreeMap<i64, Option<Json>> = BTreeMap::new();
    for e in &entries {
        let fields: BTreeMap<String, String> = e.array()[1].pairs().into_iter().collect();
        let rec: Json = serde_json::from_str(&fields["change"]).expect("change JSON");
        assert_eq!(fields["op"], rec["op"].as_str().unwrap());
        assert_eq!(fields["table"], "public.products");
        let pos = (lsn(rec["commit_lsn"].as_str().unwrap()), lsn(rec["lsn"].as_str().unwrap()));
        assert!(pos.0 >= last_pos.0, "stream entries out of commit order: {rec}");
        assert!(seen.insert(pos), "duplicate stream entry: {rec}");
        last_pos = pos;
        match rec["op"].as_str().unwrap() {
            "delete" => {
                state.insert(rec["key"]["id"].as_i64().unwrap(), None);
            }
            _ => {
                let old = rec["before"]["id"].as_i64();
                let new = rec["after"]["id"].as_i64().unwrap();
                if let Some(old) = old.filter(|&o| o != new) {
                    state.insert(old, None);
                }
                state.insert(new, Some(rec.clone()));
            }
        }
    }
    let rows: BTreeMap<i64, Json> = c
        .query("SELECT id::int8, to_jsonb(p)::text FROM products p", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), serde_json::from_str(r.get::<_, &str>(1)).unwrap()))
        .collect();
    for (id, last) in state {
        match (last, rows.get(&id)) {
            (None, None) => {}
            (Some(rec), Some(row)) => {
                // Columns not sent (unchanged TOAST) are absent from `after`.
                let after = rec["after"].as_object().unwrap();
                for (col, v) in row.as_object().unwrap() {
                    let toast = rec["unchanged_toast"].as_array().is_some_and(|a| a.iter().any(|c| c == col));
                    if !toast {
                        assert_eq!(after.get(col), Some(v), "stream: product {id} column {col}: {rec}");
                    }
                }
            }
            (last, row) => panic!("stream: product {id} last entry {last:?} but table row {row:?}"),
        }
    }
}

async fn start(db: &str, persistent: bool) -> (PgCluster, tokio_postgres::Client, RedisServer, tempfile::TempDir) {
    let (pg, c) = cluster_with(db, SHORT_WAL_SENDER_TIMEOUT).await;
    c.batch_execute(SCHEMA).await.unwrap();
    let redis = if persistent { RedisServer::start_persistent() } else { RedisServer::start() };
    (pg, c, redis, scratch())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_workload_every_mapping_equals_tables() {
    let (pg, c, redis, dir) = start("mixed", false).await;
    let cfg = redis_config(&pg, "mixed", "redis", &redis.url(), &pipelines(), dir.path());
    let mut d = Daemon::start(bin(), dir.path(), "mixed", &cfg);
    testkit::wait_for(Duration::from_secs(30), "slot", || async { confirmed_flush(&c, "redis").await > 0 }).await;
    let mut w = Workload::new(PRODUCTS, 42);
    w.run(&c, 400).await;
    wait_confirmed(&c, "redis", &d, Duration::from_secs(40)).await;
    assert_redis_matches_tables(&c, &redis, &d).await;
    let n: i64 = c.query_one("SELECT count(*) FROM products WHERE big IS NOT NULL", &[]).await.unwrap().get(0);
    assert!(n > 10, "the workload kept TOASTed values ({n})");
    assert!(d.is_running());
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(20)).and_then(|s| s.code()), Some(0), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_mapping_without_redisjson_exits_1() {
    let (pg, c, redis, dir) = start("json", false).await;
    let pipelines = r#"
  - name: docs
    from: public.products
    to: cache
    redis: { type: json, key: "product:{id}" }"#;
    let mut d = Daemon::start(bin(), dir.path(), "json", &redis_config(&pg, "json", "json", &redis.url(), pipelines, dir.path()));
    let status = d.wait(Duration::from_secs(30)).expect("pgfanout exits");
    let log = d.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("RedisJSON"), "the error names the missing module:\n{log}");
    drop(c);
}

/// Runs the workload in a task that can be paused between transactions.
struct Writer {
    paused: Arc<AtomicBool>,
    idle: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<usize>,
}

impl Writer {
    async fn spawn(pg: &PgCluster, db: &str, seed: u64, txns: usize, pause: Duration) -> Writer {
        let c = pg.client(db).await;
        let paused = Arc::new(AtomicBool::new(false));
        let idle = Arc::new(AtomicBool::new(false));
        let (p, i) = (paused.clone(), idle.clone());
        let task = tokio::spawn(async move {
            let mut w = Workload::new(PRODUCTS, seed);
            let mut done = 0;
            while done < txns {
                if p.load(Ordering::SeqCst) {
                    i.store(true, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                i.store(false, Ordering::SeqCst);
                w.run(&c, 1).await;
                done += 1;
                tokio::time::sleep(pause).await;
            }
            done
        });
        Writer { paused, idle, task }
    }

    /// Stops between transactions; returns once no transaction is open.
    async fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        testkit::wait_for(Duration::from_secs(10), "the writer to pause", || {
            let idle = self.idle.load(Ordering::SeqCst);
            async move { idle }
        })
        .await;
    }

    fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_loses_nothing_and_holds_the_slot() {
    let (pg, c, redis, dir) = start("outage", true).await;
    let cfg = redis_config(&pg, "outage", "redis", &redis.url(), &pipelines(), dir.path());
    let d = Daemon::start(bin(), dir.path(), "outage", &cfg);
    testkit::wait_for(Duration::from_secs(30), "slot", || async { confirmed_flush(&c, "redis").await > 0 }).await;

    // confirmed_flush_lsn sampled every 100 ms, with the time the query started.
    let samples: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (c2, samples, sampling) = (pg.client("outage").await, samples.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::SeqCst) {
                let at = Instant::now();
                let flush = confirmed_flush(&c2, "redis").await;
                samples.lock().unwrap().push((at, flush));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let writer = Writer::spawn(&pg, "outage", 7, 700, Duration::from_millis(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Everything up to `before_stop` may reach Redis before it goes down;
    // nothing written after it can.
    writer.pause().await;
    let before_stop = insert_lsn(&c).await;
    tokio::task::block_in_place(|| redis.stop());
    let down_at = Instant::now();
    // The first change Redis cannot have: its commit ends before `first_lost`.
    // The confirmed position must stay below it. (It may pass `before_stop`:
    // a keepalive can confirm a position inside a transaction whose commit
    // has not been decoded yet, which is safe — the transaction is sent
    // whole after a restart.)
    c.batch_execute("UPDATE products SET price = price WHERE id = (SELECT min(id) FROM products)").await.unwrap();
    let first_lost = insert_lsn(&c).await;
    writer.resume();
    let written_before = c.query_one("SELECT count(*) FROM products", &[]).await.unwrap().get::<_, i64>(0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = insert_lsn(&c).await;
    let up_at = Instant::now();
    tokio::task::block_in_place(|| redis.start_server());
    assert!(during > before_stop, "the workload went on during the outage");
    let done = writer.task.await.unwrap();
    assert_eq!(done, 700);
    wait_confirmed(&c, "redis", &d, Duration::from_secs(40)).await;
    sampling.store(false, Ordering::SeqCst);
    sampler.await.unwrap();

    let samples = samples.lock().unwrap().clone();
    let down: Vec<u64> = samples.iter().filter(|(t, _)| *t >= down_at && *t < up_at).map(|s| s.1).collect();
    assert!(down.len() >= 30, "sampled during the outage: {}", down.len());
    let max_down = down.iter().copied().max().unwrap_or(0);
    assert!(max_down < first_lost, "confirmed_flush_lsn {max_down:X} reached {first_lost:X} while Redis was down\n{}", d.log());
    let after_up = samples.iter().filter(|(t, _)| *t >= up_at).map(|s| s.1).max().unwrap_or(0);
    assert!(after_up > before_stop, "confirmed_flush_lsn advanced after the restart ({after_up:X})");
    let flush_never_decreased = samples.windows(2).all(|w| w[0].1 <= w[1].1);
    assert!(flush_never_decreased, "confirmed_flush_lsn moved backwards");
    assert!(written_before > 0);
    assert_redis_matches_tables(&c, &redis, &d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_twice_mid_workload_converges() {
    let (pg, c, redis, dir) = start("kill", false).await;
    let cfg = redis_config(&pg, "kill", "redis", &redis.url(), &pipelines(), dir.path());
    let mut d = Daemon::start(bin(), dir.path(), "kill", &cfg);
    testkit::wait_for(Duration::from_secs(30), "slot", || async { confirmed_flush(&c, "redis").await > 0 }).await;
    let writer = Writer::spawn(&pg, "kill", 99, 900, Duration::from_millis(5)).await;
    for round in 0..2 {
        // Let some changes reach Redis (and some confirmations happen), then kill.
        let base = confirmed_flush(&c, "redis").await;
        testkit::wait_for(Duration::from_secs(30), "progress before the kill", || async { confirmed_flush(&c, "redis").await > base })
            .await;
        tokio::time::sleep(Duration::from_millis(700 + 300 * round)).await;
        d.kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        d.spawn(bin());
    }
    assert_eq!(writer.task.await.unwrap(), 900);
    wait_confirmed(&c, "redis", &d, Duration::from_secs(40)).await;
    assert_redis_matches_tables(&c, &redis, &d).await;
    assert!(d.is_running());
}

/// The stream of every products change (no MAXLEN) in
/// [`a_redis_kill_with_batches_in_flight_loses_no_stream_entry`].
const ALL_CHANGES: &str = "products:all";

/// Redis is SIGKILLed while the sink has batches in flight (pipelined lanes,
/// several pipelines sent and unanswered) and restarted from its append-only
/// file; later, the sink's connections are dropped twice while Redis runs
/// on (`CLIENT KILL`), so reconnected lanes race the failed batches' retry,
/// and Redis pauses writes past the sink's response timeout (`CLIENT PAUSE`).
/// Every change must be in Redis exactly once afterwards: a stream
/// skips an entry whose version is older than the stream's, so a batch
/// written again after a newer one reached Redis would lose its entries.
/// (The narrowest form of that race, a later batch sent on a connection
/// reopened before an earlier batch's failure is seen, is not provoked on
/// every run; the sink rules it out by construction: its pipelining
/// connections never reconnect on their own, see `connectors/redis/src/sink.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_kill_with_batches_in_flight_loses_no_stream_entry() {
    const BATCHES: i32 = 4;
    const ROWS: i32 = 5_000;
    let (pg, c, redis, dir) = start("inflight", true).await;
    let pipelines = format!(
        "{}\n  - name: all-changes\n    from: public.products\n    to: cache\n    redis: {{ type: stream, key: \"{ALL_CHANGES}\" }}",
        pipelines()
    );
    let cfg = redis_config(&pg, "inflight", "redis", &redis.url(), &pipelines, dir.path())
        .replace("response_timeout: 10s", "response_timeout: 1s");
    assert!(cfg.contains("response_timeout: 1s"));
    let d = Daemon::start(bin(), dir.path(), "inflight", &cfg);
    testkit::wait_for(Duration::from_secs(30), "slot", || async { confirmed_flush(&c, "redis").await > 0 }).await;
    let writer = {
        let c = pg.client("inflight").await;
        tokio::spawn(async move {
            for b in 0..BATCHES {
                let (lo, hi) = (b * ROWS + 1, (b + 1) * ROWS);
                let sql = format!("INSERT INTO products SELECT g, g % 7, g, 'p' || g, NULL FROM generate_series({lo}, {hi}) g");
                c.batch_execute(&sql).await.unwrap();
            }
            for b in 0..BATCHES {
                let (lo, hi) = (b * ROWS + 1, (b + 1) * ROWS);
                c.batch_execute(&format!(
                    "UPDATE products SET price = price + 1, category_id = (id + {b}) % 5 WHERE id BETWEEN {lo} AND {hi}"
                ))
                .await
                .unwrap();
            }
        })
    };
    let total = (2 * BATCHES * ROWS) as usize;
    // 0 while a restarted Redis is still loading its append-only file.
    let len = || match redis.cmd(&["XLEN", ALL_CHANGES]) {
        testkit::Resp::Int(n) => n as usize,
        _ => 0,
    };
    testkit::wait_for(Duration::from_secs(120), "a fifth of the changes in redis", || {
        let n = len();
        async move { n >= total / 5 }
    })
    .await;
    tokio::task::block_in_place(|| redis.kill());
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| redis.start_server());
    // Then connections dropped under a running server (a proxy or a
    // `timeout` closing them): the sink's connections die, Redis does not.
    let reach = |fifths: usize| {
        testkit::wait_for(Duration::from_secs(120), "more changes in redis", move || {
            let n = len();
            async move { n >= total * fifths / 5 }
        })
    };
    for fifths in [2, 3] {
        reach(fifths).await;
        let killed = redis.cmd(&["CLIENT", "KILL", "TYPE", "normal"]).int();
        assert!(killed > 0, "the sink's connections were dropped");
    }
    // And a Redis that stops answering writes for longer than the sink's
    // response timeout (1 s here), then runs everything queued: the batches
    // in flight fail on the sink's side although Redis applies them later.
    reach(4).await;
    assert_eq!(redis.cmd(&["CLIENT", "PAUSE", "2500", "WRITE"]).text(), "OK");
    writer.await.unwrap();
    wait_confirmed(&c, "redis", &d, Duration::from_secs(120)).await;
    assert_redis_matches_tables(&c, &redis, &d).await;

    // Every change once, in commit order.
    let mut positions = Vec::with_capacity(total);
    let mut from = "-".to_string();
    loop {
        let page = redis.cmd(&["XRANGE", ALL_CHANGES, &from, "+", "COUNT", "5000"]).array();
        let Some(last) = page.last() else { break };
        from = format!("({}", last.array()[0].text());
        for e in &page {
            let fields: BTreeMap<String, String> = e.array()[1].pairs().into_iter().collect();
            let rec: Json = serde_json::from_str(&fields["change"]).expect("change JSON");
            positions.push((lsn(rec["commit_lsn"].as_str().unwrap()), lsn(rec["lsn"].as_str().unwrap())));
        }
    }
    let out_of_order = positions.windows(2).filter(|w| w[0] >= w[1]).count();
    let log = d.log();
    assert_eq!((positions.len(), out_of_order), (total, 0), "stream entries (count, out of order or repeated)\n{log}");
    assert!(log.contains("retrying") || log.contains("writing it again"), "the outage was seen and retried:\n{log}");
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    eprintln!(
        "log: {} batches in flight failed, {} submits refused, {} write retries, {} timeouts",
        count("batch in flight failed"),
        count("batch refused"),
        count("sink write failed; retrying"),
        count("timed out"),
    );
}

/// `config/ecommerce.yaml` with what cannot run here taken out: only the
/// sinks this machine has a server for stay (the `cache` Redis and the
/// `audit` file), with the pipelines that write to them. The PostgreSQL URL
/// keeps its `${PGPASSWORD:-…}@${PGHOST:-…}` interpolation, only its port
/// changes; files go to `dir`. Returned as JSON (a YAML flow document).
fn ecommerce_config(pg: &PgCluster, redis: &RedisServer, dir: &std::path::Path) -> String {
    let keep = [
        ("cache", serde_json::json!({ "url": redis.url() })),
        ("audit", serde_json::json!({ "path": dir.join("audit.jsonl").display().to_string() })),
    ];
    ecommerce_subset(pg, &keep, dir)
}

/// `examples/ecommerce-changes.sql` cut into its transactions: one
/// statement each, or a BEGIN … COMMIT block.
fn transactions(sql: &str) -> Vec<String> {
    let (mut out, mut cur, mut in_txn) = (Vec::new(), String::new(), false);
    for line in sql.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("--")) {
        let upper = line.to_ascii_uppercase();
        in_txn = (in_txn || upper.starts_with("BEGIN")) && !upper.starts_with("COMMIT");
        cur.push_str(line);
        cur.push('\n');
        if line.ends_with(';') && !in_txn {
            out.push(std::mem::take(&mut cur));
        }
    }
    assert!(cur.trim().is_empty(), "unterminated statement: {cur}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecommerce_example_writes_carts() {
    let (pg, admin) = cluster_with("shop", SHORT_WAL_SENDER_TIMEOUT).await;
    // The example connects as `replicator` (trust authentication here, so
    // the default password is accepted); superuser so that it may create
    // the publication on tables it does not own.
    admin.batch_execute("CREATE ROLE replicator LOGIN SUPERUSER PASSWORD 'replicator'").await.unwrap();
    let c = pg.client("shop").await;
    let root = env!("CARGO_MANIFEST_DIR");
    c.batch_execute(&std::fs::read_to_string(format!("{root}/examples/ecommerce.sql")).unwrap()).await.unwrap();
    let redis = RedisServer::start();
    let dir = scratch();
    let d = Daemon::start(bin(), dir.path(), "ecommerce", &ecommerce_config(&pg, &redis, dir.path()));
    testkit::wait_for(Duration::from_secs(30), "slot", || async { confirmed_flush(&c, "pgfanout").await > 0 }).await;

    let changes = std::fs::read_to_string(format!("{root}/examples/ecommerce-changes.sql")).unwrap();
    let mut carts = Vec::new();
    for txn in transactions(&changes) {
        c.batch_execute(&txn).await.unwrap_or_else(|e| panic!("{txn}: {e}"));
        wait_confirmed(&c, "pgfanout", &d, Duration::from_secs(30)).await;
        let cart: BTreeMap<String, String> = redis.cmd(&["HGETALL", "cart:1"]).pairs().into_iter().collect();
        eprintln!("-- {}redis-cli HGETALL cart:1\n{}", txn, redis.cli(&["HGETALL", "cart:1"]));
        carts.push(cart);
    }
    let m = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
    assert_eq!(
        carts,
        vec![
            m(&[]),                         // users
            m(&[]),                         // addresses
            m(&[]),                         // products
            m(&[("10", "1"), ("11", "2")]), // two cart lines
            m(&[("10", "1"), ("11", "3")]), // quantity changed
            m(&[]),                         // ordered: the cart is emptied
            m(&[]),                         // price change: not a cart
            m(&[]),                         // address change: not a cart
        ],
        "{}",
        d.log()
    );
    // Only the version hash remains: a tombstone per removed line, expiring
    // (tombstone_ttl, 1 day by default) now that the cart is gone.
    assert_eq!(redis.keys(), vec!["pgfanout:v:cart:1".to_string()]);
    let versions: BTreeSet<String> = redis.cmd(&["HKEYS", "pgfanout:v:cart:1"]).array().iter().map(|f| f.text()).collect();
    assert_eq!(versions, ["10", "11"].map(String::from).into());
    let ttl = redis.cmd(&["TTL", "pgfanout:v:cart:1"]).int();
    assert!(ttl > 0 && ttl <= 86_400, "tombstone TTL {ttl}");
    // The audit pipeline of the same config: two users and one order.
    assert_eq!(line_count(&dir.path().join("audit.jsonl")), 3, "{}", d.log());
    assert_eq!(line_count(&dir.path().join("ecommerce.dead.jsonl")), 0);
}

/// Exact values through the JSON-document mappings (a string per row, a
/// hash field per row) and a hash per row: numerics of 25, 60 and 400
/// digits, `2.50`, jsonb with big numbers, and a TOASTed jsonb (> 2 kB,
/// STORAGE EXTERNAL) that later updates leave unchanged, so the sink
/// completes them from the stored document. After every step each document
/// equals `to_jsonb(row)` of PostgreSQL: both texts go through
/// `::jsonb::text`, which keeps every digit of a number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_updates_keep_every_digit_in_json_documents() {
    let (pg, c) = cluster_with("zoo", SHORT_WAL_SENDER_TIMEOUT).await;
    c.batch_execute(
        "CREATE TABLE zoo (id int PRIMARY KEY, n25 numeric, n60 numeric, n400 numeric, half numeric, j jsonb, doc jsonb, note text);
         ALTER TABLE zoo ALTER COLUMN doc SET STORAGE EXTERNAL;",
    )
    .await
    .unwrap();
    let redis = RedisServer::start();
    let dir = scratch();
    let pipelines = r#"
  - name: zoo-json
    from: public.zoo
    to: cache
    redis: { type: string, key: "zoo:{id}" }
  - name: zoo-fields
    from: public.zoo
    to: cache
    redis: { type: hash, key: "zoo-docs", field: "{id}" }
  - name: zoo-hash
    from: public.zoo
    to: cache
    redis: { type: hash, key: "zoo-row:{id}" }"#;
    let cfg = redis_config(&pg, "zoo", "zoo", &redis.url(), pipelines, dir.path());
    let d = Daemon::start(bin(), dir.path(), "zoo", &cfg);
    testkit::wait_for(Duration::from_secs(30), "slot", || async { confirmed_flush(&c, "zoo").await > 0 }).await;

    // 3,200 characters of md5s: incompressible, stored out of line.
    let pad = "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 100) i)";
    let doc = format!(
        "jsonb_build_object('big', 1234567890123456789012345678901234567890.50::numeric, 'half', 2.50::numeric,
                            'long', ('-' || repeat('9', 60) || '.' || repeat('1', 15))::numeric,
                            'list', jsonb_build_array(1e-30::numeric, 100000000000000000000000000001::numeric), 'pad', {pad})"
    );
    let steps = [
        format!(
            "INSERT INTO zoo VALUES (1, 1234567890123456789012345.5, ('9' || repeat('0', 59))::numeric,
                                    ('1' || repeat('7', 399))::numeric, 2.50,
                                    '{{\"x\": 12345678901234567890.123456789, \"y\": [2.50, 1e+40]}}', {doc}, 'a'),
                                   (2, 1, 2, 3, 4.000, '[]', {doc}, NULL)"
        ),
        // `doc` unchanged: sent as unchanged TOAST, completed from Redis.
        "UPDATE zoo SET half = 3.10, note = 'b', n25 = n25 + 1 WHERE id = 1".to_string(),
        "UPDATE zoo SET note = NULL, n400 = n400 * 10 WHERE id IN (1, 2)".to_string(),
        // Delete and insert again, then one more partial update.
        format!("DELETE FROM zoo WHERE id = 2; INSERT INTO zoo VALUES (2, 0.10, 0, 0, 2.50, 'null', {doc}, 'c')"),
        "UPDATE zoo SET n60 = -n60, half = 0.0000000000000000000000000001 WHERE id IN (1, 2)".to_string(),
    ];
    for (i, sql) in steps.iter().enumerate() {
        c.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        wait_confirmed(&c, "zoo", &d, Duration::from_secs(30)).await;
        let toast = c.query_one("SELECT pg_column_size(doc) > 2000 FROM zoo WHERE id = 1", &[]).await.unwrap();
        assert!(toast.get::<_, bool>(0), "doc is stored out of line");
        for row in c.query("SELECT id, to_jsonb(z)::text FROM zoo z ORDER BY id", &[]).await.unwrap() {
            let (id, want): (i32, String) = (row.get(0), row.get(1));
            let stored = [
                (format!("zoo:{id}"), redis.cmd(&["GET", &format!("zoo:{id}")]).text()),
                (format!("zoo-docs [{id}]"), redis.cmd(&["HGET", "zoo-docs", &id.to_string()]).text()),
            ];
            for (key, text) in stored {
                let got: String = c
                    .query_one("SELECT $1::text::jsonb::text", &[&text])
                    .await
                    .unwrap_or_else(|e| panic!("step {i}: {key} holds no JSON ({e}): {text}"))
                    .get(0);
                assert_eq!(got, want, "step {i}: {key} differs from to_jsonb\nredis: {text}\n{}", d.log());
            }
            // The hash: one field per non-NULL column, as its text (a jsonb
            // `null` is not SQL NULL: its field holds `null`).
            let fields: BTreeMap<String, String> = redis.cmd(&["HGETALL", &format!("zoo-row:{id}")]).pairs().into_iter().collect();
            let want_fields: BTreeMap<String, String> = c
                .query(
                    "SELECT e.key, coalesce(e.value #>> '{}', 'null') FROM zoo z, jsonb_each(to_jsonb(z)) e
                  WHERE z.id = $1 AND (e.value <> 'null' OR (e.key = 'j' AND z.j IS NOT NULL))",
                    &[&id],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            assert_eq!(fields.len(), want_fields.len(), "step {i}: zoo-row:{id} fields");
            for (col, want) in &want_fields {
                // Numbers compare as their text; jsonb columns as jsonb text.
                let got = &fields[col];
                let same: bool = c
                    .query_one(
                        "SELECT $1::text = $2::text OR (left($1::text, 1) IN ('{', '[') AND $1::text::jsonb::text = $2::text::jsonb::text)",
                        &[got, want],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert!(same, "step {i}: zoo-row:{id} field {col}\nredis: {got}\npostgres: {want}");
            }
        }
    }
    let dead = std::fs::read_to_string(dir.path().join("zoo.dead.jsonl")).unwrap_or_default();
    assert!(dead.is_empty(), "nothing is dead-lettered:\n{dead}");
    drop(d);
}

/// `verify` compares exactly and `--repair` makes each entry equal to its
/// row: a field no column maps to, written into a hash per row behind
/// pgfanout's back, is reported and removed; a number whose digits changed
/// in a string document (`2.50` -> `2.5`) is reported and rewritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_and_repair_removes_a_stray_hash_field() {
    let (pg, c) = cluster_with("stray", SHORT_WAL_SENDER_TIMEOUT).await;
    c.batch_execute("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric, note text)").await.unwrap();
    let redis = RedisServer::start();
    let dir = scratch();
    let pipelines = r#"
  - name: items
    from: public.items
    to: cache
    redis: { type: hash, key: "item:{id}" }
  - name: item-docs
    from: public.items
    to: cache
    redis: { type: string, key: "item-doc:{id}" }"#;
    let cfg = redis_config(&pg, "stray", "stray", &redis.url(), pipelines, dir.path());
    let config = dir.path().join("verify.yaml");
    std::fs::write(&config, &cfg).unwrap();
    let d = Daemon::start(bin(), dir.path(), "stray", &cfg);
    testkit::wait_for(Duration::from_secs(30), "slot", || async { confirmed_flush(&c, "stray").await > 0 }).await;
    c.batch_execute("INSERT INTO items SELECT g, 'item ' || g, 2.50 * g, CASE WHEN g % 2 = 0 THEN 'n' END FROM generate_series(1, 20) g")
        .await
        .unwrap();
    wait_confirmed(&c, "stray", &d, Duration::from_secs(30)).await;
    let verify = |args: &[&str]| run_verify(&config, "60s", args);
    let pipeline = pipeline_report;
    let (code, _, out) = tokio::task::block_in_place(|| verify(&[]));
    assert_eq!(code, 0, "a correct deployment verifies clean:\n{out}");

    assert_eq!(redis.cmd(&["HSET", "item:5", "junk", "1"]).int(), 1);
    let doc = redis.cmd(&["GET", "item-doc:1"]).text();
    assert!(doc.contains("\"price\":2.50"), "{doc}");
    redis.cmd(&["SET", "item-doc:1", &doc.replace("2.50", "2.5")]);
    let (code, report, out) = tokio::task::block_in_place(|| verify(&[]));
    assert_eq!(code, 1, "divergence is exit 1:\n{out}");
    assert_eq!(pipeline(&report, "items")["different"], serde_json::json!([{"id": "item:5", "fields": ["junk"]}]), "{out}");
    assert_eq!(pipeline(&report, "item-docs")["different"], serde_json::json!([{"id": "item-doc:1", "fields": ["price"]}]), "{out}");

    let (_, report, out) = tokio::task::block_in_place(|| verify(&["--repair"]));
    assert_eq!(pipeline(&report, "items")["repaired"], 1, "{out}");
    let fields: BTreeMap<String, String> = redis.cmd(&["HGETALL", "item:5"]).pairs().into_iter().collect();
    let want: BTreeMap<String, String> =
        [("id", "5"), ("name", "item 5"), ("price", "12.50")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(fields, want);
    assert_eq!(redis.cmd(&["GET", "item-doc:1"]).text(), doc);
    let (code, report, out) = tokio::task::block_in_place(|| verify(&[]));
    assert_eq!(code, 0, "repaired: verify finds nothing\n{out}");
    assert_eq!(report["divergent"], 0, "{out}");
    drop(d);
}

/// Every entry of the `moves` pipelines equals its row of `moves`, exactly,
/// and no other key is left (no entry under an old key): the string
/// document and the hash-field document equal `to_jsonb(row)` (both through
/// `::jsonb::text`, which keeps every digit), the hash per row holds each
/// column's text, the `big` column string holds `to_jsonb(big)`.
async fn assert_moves_match(c: &tokio_postgres::Client, redis: &RedisServer, step: &str, d: &Daemon) {
    let rows = c.query("SELECT id, to_jsonb(m)::text, to_jsonb(m.big)::text FROM moves m ORDER BY id", &[]).await.unwrap();
    let mut want_keys = BTreeSet::new();
    for row in &rows {
        let (id, want, want_big): (i32, String, String) = (row.get(0), row.get(1), row.get(2));
        for key in ["mv", "mv-row", "mv-big"] {
            want_keys.insert(format!("{key}:{id}"));
        }
        let docs = [
            (format!("mv:{id}"), redis.cmd(&["GET", &format!("mv:{id}")]).text()),
            (format!("mv-docs [{id}]"), redis.cmd(&["HGET", "mv-docs", &id.to_string()]).text()),
        ];
        for (key, text) in docs {
            let got: String = c
                .query_one("SELECT $1::text::jsonb::text", &[&text])
                .await
                .unwrap_or_else(|e| panic!("{step}: {key} holds no JSON ({e}): {text:.200}\n{}", d.log()))
                .get(0);
            assert_eq!(got, want, "{step}: {key} differs from to_jsonb\n{}", d.log());
        }
        assert_eq!(redis.cmd(&["GET", &format!("mv-big:{id}")]).text(), want_big, "{step}: mv-big:{id}");
        let fields: BTreeMap<String, String> = redis.cmd(&["HGETALL", &format!("mv-row:{id}")]).pairs().into_iter().collect();
        let want_fields: BTreeMap<String, String> = c
            .query("SELECT e.key, e.value #>> '{}' FROM moves m, jsonb_each(to_jsonb(m)) e WHERE m.id = $1 AND e.value <> 'null'", &[&id])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(fields, want_fields, "{step}: mv-row:{id}");
    }
    let keys: BTreeSet<String> = redis.keys().into_iter().filter(|k| !k.starts_with("pgfanout:v:") && k != "mv-docs").collect();
    assert_eq!(keys, want_keys, "{step}: exactly one entry per row, none under an old key");
    let fields: BTreeSet<String> = redis.cmd(&["HKEYS", "mv-docs"]).array().iter().map(|f| f.text()).collect();
    let ids: BTreeSet<String> = rows.iter().map(|r| r.get::<_, i32>(0).to_string()).collect();
    assert_eq!(fields, ids, "{step}: mv-docs fields");
}

/// Key changes (`id = id + 1000`) of rows whose TOASTed column (`big`,
/// STORAGE EXTERNAL, 3,200 characters) the update leaves unchanged, under
/// the default replica identity: PostgreSQL sends neither `big` nor the old
/// row, only the old key. Through a string document, a hash per row, a
/// hash field per row and a string of the `big` column, every moved row is
/// written whole under its new key, copied from its old entry; then partial
/// updates of the moved rows, a second move, a delete, and a new row taking
/// an old key. After each step every entry equals its row digit for digit,
/// no old key is left, nothing is dead-lettered. Then the whole history is
/// streamed again from a second slot created before it (a replay into the
/// same Redis): nothing changes, nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_changes_with_unchanged_toast_keep_whole_rows_and_replay_cleanly() {
    let db = "moves";
    let (pg, c) = cluster_with(db, SHORT_WAL_SENDER_TIMEOUT).await;
    c.batch_execute(
        "CREATE TABLE moves (id int PRIMARY KEY, name text NOT NULL, n numeric, half numeric, big text);
         ALTER TABLE moves ALTER COLUMN big SET STORAGE EXTERNAL;
         CREATE PUBLICATION again FOR TABLE moves;",
    )
    .await
    .unwrap();
    // The second slot exists before any change.
    c.batch_execute("SELECT pg_create_logical_replication_slot('again', 'pgoutput')").await.unwrap();
    let redis = RedisServer::start();
    let dir = scratch();
    let pipelines = r#"
  - name: mv-json
    from: public.moves
    to: cache
    redis: { type: string, key: "mv:{id}" }
  - name: mv-row
    from: public.moves
    to: cache
    redis: { type: hash, key: "mv-row:{id}" }
  - name: mv-docs
    from: public.moves
    to: cache
    redis: { type: hash, key: "mv-docs", field: "{id}" }
  - name: mv-big
    from: public.moves
    to: cache
    redis: { type: string, key: "mv-big:{id}", column: big }"#;
    let cfg = redis_config(&pg, db, db, &redis.url(), pipelines, dir.path());
    let d = Daemon::start(bin(), dir.path(), db, &cfg);
    testkit::wait_for(Duration::from_secs(30), "slot", || async { confirmed_flush(&c, db).await > 0 }).await;
    let steps = [
        "INSERT INTO moves SELECT g, 'a' || g, ('1234567890123456789012345.' || g)::numeric, 2.50, repeat(md5(g::text), 100)
           FROM generate_series(1, 40) g",
        // The key changes, `big` unchanged (TOAST, not sent).
        "UPDATE moves SET id = id + 1000 WHERE id <= 30",
        // Partial updates of the moved rows, completed from their new entries.
        "UPDATE moves SET name = name || '!', n = n * 10, half = 3.10 WHERE id > 1000",
        // A second move and a change of the moved row in one transaction, a
        // delete, and a new row taking an old key.
        "BEGIN; UPDATE moves SET id = id + 1000 WHERE id > 1000 AND id % 2 = 0;
                UPDATE moves SET name = 'again' WHERE id > 2000; COMMIT;
         DELETE FROM moves WHERE id = 1003;
         INSERT INTO moves VALUES (1, 'new', 0.000000000000000000000000001, 2.50, repeat(md5('x'), 100))",
        // A move and an update of the new key in one statement each, many rows.
        "UPDATE moves SET id = -id WHERE id > 1000; UPDATE moves SET half = 0.10 WHERE id < 0",
    ];
    for (i, sql) in steps.iter().enumerate() {
        c.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        wait_confirmed(&c, db, &d, Duration::from_secs(60)).await;
        let toast: bool = c.query_one("SELECT bool_and(pg_column_size(big) > 2000) FROM moves", &[]).await.unwrap().get(0);
        assert!(toast, "big is stored out of line");
        assert_moves_match(&c, &redis, &format!("step {i}"), &d).await;
    }
    let moved: i64 = c.query_one("SELECT count(*) FROM moves WHERE id < 0", &[]).await.unwrap().get(0);
    assert_eq!(moved, 29);
    drop(d);
    let dead = dir.path().join(format!("{db}.dead.jsonl"));
    assert_eq!(std::fs::read_to_string(&dead).unwrap_or_default(), "", "nothing is dead-lettered");

    // The same Redis, every change again from the start.
    let again = redis_config(&pg, db, "again", &redis.url(), pipelines, dir.path());
    let d = Daemon::start(bin(), dir.path(), "again", &again);
    wait_confirmed(&c, "again", &d, Duration::from_secs(120)).await;
    assert_moves_match(&c, &redis, "replay", &d).await;
    let dead = dir.path().join("again.dead.jsonl");
    assert_eq!(std::fs::read_to_string(&dead).unwrap_or_default(), "", "a replay dead-letters nothing\n{}", d.log());
    drop(d);
}

/// TLS to Redis (`rediss://`) against a redis-server with a TLS listener
/// and a certificate from a test CA, verification on. `doctor` passes with
/// that CA; with another CA, or with the right CA but a host name the
/// certificate does not list, it fails and says what to fix. The daemon
/// then streams through TLS and Redis (read over its plain port) equals
/// the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_test_ca_streams_and_a_wrong_ca_or_host_is_refused_with_the_fix() {
    let db = "rtls";
    let (pg, c) = cluster(db).await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)").await.unwrap();
    let redis = RedisServer::start_tls();
    let tls = redis.tls.clone().unwrap();
    let dir = scratch();
    let pipelines = "  - name: t\n    from: public.t\n    to: cache\n    redis: { type: hash, key: \"t:{id}\" }";
    let config = |host: &str, ca: &std::path::Path| {
        let url = format!("rediss://{host}:{}/0", tls.port);
        let plain = format!("url: \"{url}\",");
        let cfg = redis_config(&pg, db, db, &url, pipelines, dir.path());
        assert!(cfg.contains(&plain));
        cfg.replace(&plain, &format!("{plain} tls: {{ ca_file: \"{}\" }},", ca.display()))
    };
    let doctor = |name: &str, yaml: String| tokio::task::block_in_place(|| doctor_says(dir.path(), name, &yaml, "cache"));
    let said = doctor("good", config("localhost", &tls.certs.ca_file));
    assert!(said.contains("ok") && !said.contains("FAIL"), "the right CA:\n{said}");
    let said = doctor("other-ca", config("localhost", &tls.certs.other_ca_file));
    assert!(said.contains("FAIL") && said.contains("set tls.ca_file"), "a certificate from another CA is refused, with the fix:\n{said}");
    // 127.0.0.2 reaches the loopback too, but the certificate is for
    // localhost and 127.0.0.1 only.
    let said = doctor("other-host", config("127.0.0.2", &tls.certs.ca_file));
    assert!(said.contains("FAIL") && said.contains("subjectAltName"), "a host the certificate does not list is refused:\n{said}");

    let d = Daemon::start(bin(), dir.path(), db, &config("localhost", &tls.certs.ca_file));
    wait_slot(&c, db, &d).await;
    c.batch_execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 300) g; UPDATE t SET v = v || '+' WHERE id % 3 = 0; DELETE FROM t WHERE id % 7 = 0")
        .await
        .unwrap();
    wait_confirmed(&c, db, &d, Duration::from_secs(60)).await;
    let rows = c.query("SELECT id, v FROM t", &[]).await.unwrap();
    let want: BTreeMap<String, String> = rows.iter().map(|r| (format!("t:{}", r.get::<_, i32>(0)), r.get(1))).collect();
    let got: BTreeMap<String, String> =
        redis.keys().into_iter().filter(|k| k.starts_with("t:")).map(|k| (k.clone(), redis.cmd(&["HGET", &k, "v"]).text())).collect();
    assert_eq!(got, want, "every change through TLS\n{}", d.log());
}
