//! The `http` (webhook) sink against a receiver that misbehaves on
//! purpose: a real HTTP server in this test (axum) that answers 500 to one
//! request in five (half of them after keeping the body: the sender never
//! learns it arrived, so it sends it again), 429 with `Retry-After: 1` to one
//! in ten, and hangs past the sender's timeout on one in twenty-five (then
//! keeps the body: a late duplicate). pgfanout is SIGKILLed once under load.
//!
//! A receiver that keeps, per key, the latest change (highest `commit_lsn`,
//! then `lsn`, as the records carry) ends equal to the table,
//! every insert arrived, each request was signed and authorized, and each
//! key's changes arrived in commit order apart from the copies sent again.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use common::*;
use serde_json::Value as Json;

const SECRET: &str = "webhook-secret";
const TOKEN: &str = "t0ken";

#[derive(Clone, Default)]
struct Receiver {
    requests: Arc<AtomicUsize>,
    /// Every record kept, in the order the bodies were kept.
    kept: Arc<Mutex<Vec<Json>>>,
    /// Requests with a wrong signature or token.
    unauthorized: Arc<AtomicUsize>,
    statuses: Arc<Mutex<HashMap<u16, usize>>>,
}

impl Receiver {
    fn keep(&self, body: &[u8]) {
        let records: Vec<Json> = serde_json::from_slice(body).expect("a JSON array of records");
        self.kept.lock().unwrap().extend(records);
    }

    fn count(&self, status: u16) {
        *self.statuses.lock().unwrap().entry(status).or_default() += 1;
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> axum::response::Response {
    let n = r.requests.fetch_add(1, Ordering::Relaxed);
    let signed = headers.get(pgfanout_http::SIGNATURE_HEADER).and_then(|v| v.to_str().ok())
        == Some(pgfanout_http::signature(SECRET, &body).as_str());
    let authorized = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"));
    if !signed || !authorized || headers.get("idempotency-key").is_none() {
        r.unauthorized.fetch_add(1, Ordering::Relaxed);
        r.count(401);
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let status = if n % 25 == 12 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        r.keep(&body);
        200
    } else if n % 10 == 3 {
        500
    } else if n % 10 == 8 {
        r.keep(&body);
        500
    } else if n % 10 == 6 {
        r.count(429);
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "slow down").into_response();
    } else {
        r.keep(&body);
        200
    };
    r.count(status);
    StatusCode::from_u16(status).unwrap().into_response()
}

/// The order of a record's change: its commit, then its own LSN.
fn version(r: &Json) -> (u64, u64) {
    (lsn(r["commit_lsn"].as_str().expect("commit_lsn")), lsn(r["lsn"].as_str().expect("lsn")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_receiver_gets_every_change_through_retries_and_a_sigkill() {
    let (pg, c) = cluster("hook").await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)").await.unwrap();
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = scratch();
    let sink = format!(
        "  hook: {{ type: http, url: \"http://127.0.0.1:{port}/hook\", timeout: 1s, bearer_token: {TOKEN}, hmac_secret: {SECRET} }}"
    );
    let config =
        daemon_config(&pg, "hook", "hook", &sink, "  - { name: all, from: public.t, to: hook }", &dir.path().join("hook.dead.jsonl"))
            .replace("runtime:\n", "runtime:\n  batch_size: 10\n");
    assert!(config.contains("batch_size: 10"), "{config}");
    let mut d = Daemon::start(bin(), dir.path(), "hook", &config);
    wait_slot(&c, "hook", &d).await;

    let writer = pg.client("hook").await;
    let mut rng = Rng(0x5eed_4007);
    let mut inserted: u64 = 0;
    for i in 0..600 {
        if i == 300 {
            // Killed once the receiver holds some of what came before.
            testkit::wait_until(Duration::from_secs(60), "records at the receiver", || receiver.kept.lock().unwrap().len() > 100);
            d.kill9();
            tokio::time::sleep(Duration::from_millis(300)).await;
            d.spawn(bin());
        }
        let sql = match rng.below(10) {
            0..=4 => {
                inserted += 1;
                format!("INSERT INTO t VALUES ({inserted}, 0, 'n{inserted}')")
            }
            5..=8 if inserted > 0 => format!("UPDATE t SET v = v + 1, note = note || '+' WHERE id = {}", 1 + rng.below(inserted)),
            _ if inserted > 0 => format!("DELETE FROM t WHERE id = {}", 1 + rng.below(inserted)),
            _ => "SELECT 1".into(),
        };
        writer.batch_execute(&sql).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    wait_confirmed(&c, "hook", &d, Duration::from_secs(120)).await;

    let kept = receiver.kept.lock().unwrap().clone();
    let statuses = receiver.statuses.lock().unwrap().clone();
    println!("{} requests, statuses {statuses:?}, {} records kept", receiver.requests.load(Ordering::Relaxed), kept.len());
    assert_eq!(receiver.unauthorized.load(Ordering::Relaxed), 0, "every request signed, authorized and keyed");
    for status in [200, 429, 500] {
        assert!(statuses.get(&status).copied().unwrap_or(0) > 0, "some {status} answers: {statuses:?}");
    }
    // The receiver's state: per key, the change with the highest position.
    let mut state: HashMap<String, ((u64, u64), Option<Json>)> = HashMap::new();
    for r in kept.iter().filter(|r| r["table"] == "t") {
        let key = r["key"].to_string();
        let v = version(r);
        if state.get(&key).is_some_and(|(have, _)| *have >= v) {
            continue;
        }
        let row = if r["op"] == "delete" { None } else { Some(r["after"].clone()) };
        state.insert(key, (v, row));
    }
    let ours: HashMap<String, Json> = state.into_iter().filter_map(|(k, (_, row))| row.map(|r| (k, r))).collect();
    let theirs = live(table_state(&c, "t").await);
    assert_eq!(ours.len(), theirs.len(), "row count");
    for (k, v) in &theirs {
        assert_eq!(ours.get(k), Some(v), "row {k}");
    }
    let inserts: HashSet<String> = kept.iter().filter(|r| r["op"] == "insert").map(|r| r["key"].to_string()).collect();
    assert_eq!(inserts.len(), inserted as usize, "every insert arrived");
    assert_eq!(line_count(&dir.path().join("hook.dead.jsonl")), 0, "nothing dead-lettered\n{}", d.log());
}
