//! `pgfanout verify` and read-your-writes (`/wait`, `pgfanout wait`)
//! against real stores: Redis (`testkit::RedisServer`) and OpenSearch 2.19
//! (`testkit::OpenSearchNode`), with pgfanout streaming into both.
//!
//! - Divergence injected straight into the stores (a deleted key, a changed
//!   field, a stray key or document) is reported exactly, `--repair` fixes
//!   it, and a second verify exits 0.
//! - Under a concurrent write load on a correct deployment, verify reports
//!   nothing.
//! - After a 200 from `/wait` the store always holds the change; a position
//!   beyond the stream times out with 504.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value as Json};
use testkit::{OpenSearchNode, RedisServer};

const SCHEMA: &str = "
    CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2), tags text[], meta jsonb);
    CREATE TABLE cart_items (user_id int NOT NULL, product_id int NOT NULL, qty int NOT NULL, PRIMARY KEY (user_id, product_id));";

struct Setup {
    pg: PgCluster,
    c: tokio_postgres::Client,
    redis: RedisServer,
    index: String,
    listen: String,
    config: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn start(db: &str) -> Setup {
        let (pg, c) = cluster_with(db, &[]).await;
        c.batch_execute(SCHEMA).await.unwrap();
        let redis = tokio::task::spawn_blocking(RedisServer::start).await.unwrap();
        let index = format!("verify-{db}");
        let dir = scratch();
        let listen = format!("127.0.0.1:{}", testkit::free_port());
        let url = OpenSearchNode::shared().url();
        let sinks = format!(
            "  cache: {{ type: redis, url: \"{}\" }}\n  search: {{ type: opensearch, urls: [\"{url}\"], request_timeout: 10s }}",
            redis.url()
        );
        let pipelines = format!(
            r#"
  - name: product-cache
    from: public.products
    to: cache
    redis: {{ type: hash, key: "product:{{id}}" }}
  - name: carts
    from: public.cart_items
    to: cache
    redis: {{ type: hash, key: "cart:{{user_id}}", field: "{{product_id}}", value: "{{qty}}" }}
  - name: catalog
    from: public.products
    to: search
    opensearch: {{ index: {index}, id: "{{id}}" }}"#
        );
        let yaml = daemon_config(&pg, db, db, &sinks, &pipelines, &dir.path().join("dead.jsonl"))
            .replace("http:\n  enabled: false\n", &format!("http:\n  listen: \"{listen}\"\n"));
        let config = dir.path().join("verify.yaml");
        std::fs::write(&config, &yaml).unwrap();
        Setup { pg, c, redis, index, listen, config, dir }
    }

    fn daemon(&self) -> Daemon {
        let yaml = std::fs::read_to_string(&self.config).unwrap();
        let d = Daemon::start(bin(), self.dir.path(), "pgfanout", &yaml);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.log().contains("streaming started") {
            assert!(Instant::now() < deadline, "daemon did not start streaming:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    fn search(&self) -> String {
        OpenSearchNode::shared().url()
    }

    async fn lsn(&self) -> String {
        self.c.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0)
    }

    /// `GET /wait` on the daemon: (status, body).
    async fn wait(&self, query: &str) -> (u16, Json) {
        let resp = reqwest::get(format!("http://{}/wait?{query}", self.listen)).await.expect("GET /wait");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Json::Null))
    }

    /// Waits until everything committed so far is durable in every sink.
    async fn synced(&self) {
        let lsn = self.lsn().await;
        let (status, body) = self.wait(&format!("lsn={lsn}&timeout=60s")).await;
        assert_eq!(status, 200, "{body}");
    }

    /// Runs `pgfanout verify` with `args`; (exit code, JSON report, stdout).
    fn verify(&self, args: &[&str]) -> (i32, Json, String) {
        run_verify(&self.config, "60s", args)
    }

    async fn os(&self, method: reqwest::Method, path: &str, body: Option<Json>) -> Json {
        let url = format!("{}{path}", self.search());
        let mut req = reqwest::Client::new().request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.expect("search request").json().await.unwrap_or(Json::Null)
    }
}

fn pipeline<'a>(report: &'a Json, name: &str) -> &'a Json {
    report["pipelines"].as_array().unwrap().iter().find(|p| p["pipeline"] == name).unwrap_or_else(|| panic!("no {name} in {report}"))
}

fn ids(v: &Json) -> BTreeSet<String> {
    v.as_array().map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn load(c: &tokio_postgres::Client) {
    c.batch_execute(
        "INSERT INTO products SELECT g, 'product ' || g, g * 1.25, ARRAY['t' || (g % 5)], jsonb_build_object('n', g, 'ok', g % 2 = 0)
           FROM generate_series(1, 300) g;
         INSERT INTO cart_items SELECT u, p, u + p FROM generate_series(1, 20) u, generate_series(1, 10) p;",
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_exactly_the_injected_divergence_and_repair_fixes_it() {
    let s = Setup::start("verify_inject").await;
    let mut d = s.daemon();
    load(&s.c).await;
    s.synced().await;

    let (code, report, out) = tokio::task::block_in_place(|| s.verify(&[]));
    assert_eq!(code, 0, "a correct deployment verifies clean:\n{out}");
    assert_eq!(pipeline(&report, "product-cache")["entries"], 300, "{out}");
    assert_eq!(pipeline(&report, "carts")["entries"], 200, "{out}");
    assert_eq!(pipeline(&report, "catalog")["status"], "equal", "{out}");

    // Divergence, straight into the stores.
    s.redis.cmd(&["DEL", "product:5"]);
    s.redis.cmd(&["HSET", "product:7", "name", "tampered"]);
    s.redis.cmd(&["HSET", "product:100000", "name", "stray"]);
    s.redis.cmd(&["HDEL", "cart:3", "4"]);
    s.redis.cmd(&["HSET", "cart:2", "999", "5"]);
    s.redis.cmd(&["HSET", "cart:3", "5", "77"]);
    let idx = &s.index;
    s.os(reqwest::Method::DELETE, &format!("/{idx}/_doc/11"), None).await;
    s.os(reqwest::Method::POST, &format!("/{idx}/_update/12"), Some(json!({"doc": {"price": 1}}))).await;
    s.os(reqwest::Method::PUT, &format!("/{idx}/_doc/777777"), Some(json!({"id": 777777, "name": "stray"}))).await;
    s.os(reqwest::Method::POST, &format!("/{idx}/_refresh"), None).await;

    let (code, report, out) = tokio::task::block_in_place(|| s.verify(&[]));
    assert_eq!(code, 1, "divergence is exit 1:\n{out}");
    let cache = pipeline(&report, "product-cache");
    assert_eq!(ids(&cache["missing"]), set(&["product:5"]), "{out}");
    assert_eq!(cache["different"], json!([{"id": "product:7", "fields": ["name"]}]), "{out}");
    assert_eq!(ids(&cache["extra"]), set(&["product:100000"]), "{out}");
    let carts = pipeline(&report, "carts");
    assert_eq!(ids(&carts["missing"]), set(&["cart:3 [4]"]), "{out}");
    assert_eq!(carts["different"], json!([{"id": "cart:3 [5]", "fields": ["value"]}]), "{out}");
    assert_eq!(ids(&carts["extra"]), set(&["cart:2 [999]"]), "{out}");
    let catalog = pipeline(&report, "catalog");
    assert_eq!(ids(&catalog["missing"]), set(&[&format!("{idx}/11")]), "{out}");
    assert_eq!(catalog["different"], json!([{"id": format!("{idx}/12"), "fields": ["price"]}]), "{out}");
    assert_eq!(ids(&catalog["extra"]), set(&[&format!("{idx}/777777")]), "{out}");
    assert!(out.contains("DIVERGENT"), "{out}");

    // One pipeline alone, sampled: only what the sample covers, no extras.
    let (_, report, out) = tokio::task::block_in_place(|| s.verify(&["--pipeline", "catalog", "--sample", "0.5"]));
    assert_eq!(report["pipelines"].as_array().unwrap().len(), 1, "{out}");
    assert_eq!(pipeline(&report, "catalog")["extra"], Json::Null, "{out}");

    let (code, report, out) = tokio::task::block_in_place(|| s.verify(&["--repair"]));
    assert_eq!(code, 1, "what was found is still reported:\n{out}");
    assert_eq!(pipeline(&report, "product-cache")["repaired"], 3, "{out}");
    assert_eq!(pipeline(&report, "catalog")["repaired"], 3, "{out}");
    let (code, _, out) = tokio::task::block_in_place(|| s.verify(&[]));
    assert_eq!(code, 0, "repaired:\n{out}");
    assert_eq!(s.redis.cmd(&["HGET", "product:7", "name"]).text(), "product 7");
    assert_eq!(s.redis.cmd(&["HGET", "cart:3", "4"]).text(), "7");

    // The stream goes on after a repair: a later change still wins.
    s.c.batch_execute("UPDATE products SET name = 'renamed' WHERE id = 5; DELETE FROM products WHERE id = 7").await.unwrap();
    s.synced().await;
    assert_eq!(s.redis.cmd(&["HGET", "product:5", "name"]).text(), "renamed");
    assert_eq!(s.redis.cmd(&["EXISTS", "product:7"]).int(), 0);
    let (code, _, out) = tokio::task::block_in_place(|| s.verify(&[]));
    assert_eq!(code, 0, "{out}");
    d.signal("TERM");
    d.wait(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_under_a_concurrent_write_load_reports_no_divergence() {
    let s = Setup::start("verify_load").await;
    let _d = s.daemon();
    load(&s.c).await;
    s.synced().await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let c = s.pg.client("verify_load").await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut rng = Rng(0x5eed_1234);
            let mut next = 1000;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = 1 + rng.below(400) as i32;
                let sql = match rng.below(6) {
                    0 => {
                        next += 1;
                        format!("INSERT INTO products VALUES ({next}, 'new {next}', 1.5, ARRAY['x'], '{{}}')")
                    }
                    1 => format!("DELETE FROM products WHERE id = {id}"),
                    2 => format!(
                        "INSERT INTO products VALUES ({id}, 'back {id}', 2, NULL, NULL) ON CONFLICT (id) DO UPDATE SET name = 'upserted {n}'"
                    ),
                    3 => format!("UPDATE cart_items SET qty = qty + 1 WHERE user_id = {} ", 1 + id % 20),
                    4 => format!(
                        "INSERT INTO cart_items VALUES ({}, {}, 1) ON CONFLICT DO NOTHING; DELETE FROM cart_items WHERE user_id = {} AND product_id = {}",
                        1 + id % 20,
                        11 + id % 7,
                        1 + (id + 3) % 20,
                        1 + id % 10
                    ),
                    _ => format!("UPDATE products SET price = price + 1, meta = jsonb_build_object('n', {n}) WHERE id = {id}"),
                };
                c.batch_execute(&sql).await.unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    for round in 0..2 {
        let (code, report, out) = tokio::task::block_in_place(|| s.verify(&["--chunk-rows", "50"]));
        assert_eq!(code, 0, "round {round}: verify under load must not report divergence:\n{out}\n{report}");
        for p in report["pipelines"].as_array().unwrap() {
            assert!(p["entries"].as_u64().unwrap() > 100, "{p}");
            eprintln!("round {round}: {} entries, {} first-pass candidates rechecked away", p["entries"], p["first_pass_candidates"]);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(writes > 100, "the load ran ({writes} statements)");
    s.synced().await;
    let (code, _, out) = tokio::task::block_in_place(|| s.verify(&[]));
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_gives_read_your_writes() {
    let s = Setup::start("verify_wait").await;
    let _d = s.daemon();
    let http = reqwest::Client::new();
    for i in 1..=60 {
        let sql = if i % 3 == 0 {
            format!("UPDATE products SET name = 'v{i}' WHERE id = {}", i - 1)
        } else {
            format!("INSERT INTO products VALUES ({i}, 'v{i}', {i}, NULL, NULL)")
        };
        s.c.batch_execute(&sql).await.unwrap();
        let id = if i % 3 == 0 { i - 1 } else { i };
        let lsn = s.lsn().await;
        // Redis alone, then every sink.
        let (status, body) = s.wait(&format!("lsn={lsn}&sink=cache&timeout=30s")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(s.redis.cmd(&["HGET", &format!("product:{id}"), "name"]).text(), format!("v{i}"), "read after /wait {lsn}");
        let (status, body) = s.wait(&format!("lsn={lsn}&timeout=30s")).await;
        assert_eq!(status, 200, "{body}");
        let doc: Json = http.get(format!("{}/{}/_doc/{id}", s.search(), s.index)).send().await.unwrap().json().await.unwrap();
        assert_eq!(doc["_source"]["name"], format!("v{i}"), "read after /wait {lsn}: {doc}");
    }
    // Beyond the stream: 504 after the timeout.
    let far = format!("{:X}/0", 0x7000u32);
    let started = Instant::now();
    let (status, body) = s.wait(&format!("lsn={far}&timeout=1s")).await;
    assert_eq!(status, 504, "{body}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(body["outcome"], "timeout");
    // Bad requests.
    assert_eq!(s.wait("lsn=nonsense").await.0, 400);
    assert_eq!(s.wait("timeout=1s").await.0, 400);
    let (status, body) = s.wait("lsn=0/0&sink=nope").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("cache, search"), "{body}");
    // The command line does the same.
    let lsn = s.lsn().await;
    let cli = |args: &[&str]| Command::new(bin()).arg("wait").arg("-c").arg(&s.config).args(args).output().unwrap();
    let ok = tokio::task::block_in_place(|| cli(&["--lsn", &lsn, "--sink", "search"]));
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    let late = tokio::task::block_in_place(|| cli(&["--lsn", &far, "--timeout", "1s"]));
    assert_eq!(late.status.code(), Some(1));
    let bad = tokio::task::block_in_place(|| cli(&["--lsn", "x"]));
    assert_eq!(bad.status.code(), Some(2));
    // Outcomes are counted.
    let metrics = reqwest::get(format!("http://{}/metrics", s.listen)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("pgfanout_wait_requests_total{outcome=\"done\"}"), "{metrics}");
    assert!(metrics.contains("pgfanout_wait_requests_total{outcome=\"timeout\"}"), "{metrics}");
}
