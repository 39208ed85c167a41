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

/// One outbox event as the receiver got it.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    path: String,
    id: Option<String>,
    event_type: Option<String>,
    idempotency_key: String,
    body: String,
}

#[derive(Clone, Default)]
struct EventReceiver {
    requests: Arc<AtomicUsize>,
    kept: Arc<Mutex<Vec<Event>>>,
}

/// Answers 500 to one request in five (half after keeping it: a duplicate
/// follows) and 429 with `Retry-After: 1` to one in twenty.
async fn receive_event(State(r): State<EventReceiver>, uri: axum::http::Uri, headers: HeaderMap, body: Bytes) -> axum::response::Response {
    let n = r.requests.fetch_add(1, Ordering::Relaxed);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let event = Event {
        path: uri.path().to_string(),
        id: header("x-event-id"),
        event_type: header("x-event-type"),
        idempotency_key: header("idempotency-key").unwrap_or_default(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    match n % 20 {
        3 | 13 => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        8 | 18 => {
            r.kept.lock().unwrap().push(event);
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        6 => (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "slow down").into_response(),
        _ => {
            r.kept.lock().unwrap().push(event);
            StatusCode::OK.into_response()
        }
    }
}

/// The outbox event router into a webhook (`format: outbox`, a `path`
/// template per aggregate type), fed by an outbox table and by logical
/// messages, with a receiver that fails one request in five and throttles
/// one in twenty, and a SIGKILL. Every
/// committed event arrives at `/events/<aggregatetype>` with its id (also
/// its `Idempotency-Key`), its type and its payload as written (every copy
/// the same); rolled-back events, the outbox deletes, a non-transactional
/// message and messages with other prefixes send nothing; a plain-text
/// message reaches a native pipeline as a `message` record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_events_and_logical_messages_reach_the_webhook() {
    let (pg, c) = cluster("hookbox").await;
    c.batch_execute(
        "CREATE TABLE orders (id int PRIMARY KEY, total numeric(30,2) NOT NULL);
         CREATE TABLE outbox (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), aggregatetype text NOT NULL,
           aggregateid text NOT NULL, type text NOT NULL, payload jsonb NOT NULL);",
    )
    .await
    .unwrap();
    let receiver = EventReceiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(receive_event).with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = scratch();
    let sink = format!("  hook: {{ type: webhook, url: \"http://127.0.0.1:{port}\", timeout: 2s }}");
    let pipelines = "  - { name: outbox, from: public.outbox, to: hook, http: { format: outbox, path: \"/events/{aggregatetype}\" } }
  - { name: payments, from: \"message:payments\", to: hook, http: { format: outbox, path: \"/events/{aggregatetype}\" } }
  - { name: audit, from: \"message:audit\", to: hook, http: { path: /audit } }
  - { name: orders, from: public.orders, to: hook, http: { path: \"/orders/{id}\" } }";
    let config = daemon_config(&pg, "hookbox", "hookbox", &sink, pipelines, &dir.path().join("dead.jsonl"))
        .replace("runtime:\n", "runtime:\n  batch_size: 7\n");
    let mut d = Daemon::start(bin(), dir.path(), "hookbox", &config);
    wait_slot(&c, "hookbox", &d).await;

    let writer = pg.client("hookbox").await;
    for i in 1..=150 {
        if i == 75 {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while receiver.kept.lock().unwrap().len() <= 40 {
                assert!(std::time::Instant::now() < deadline, "no events at the receiver\n{}", d.log());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            d.kill9();
            tokio::time::sleep(Duration::from_millis(300)).await;
            d.spawn(bin());
        }
        let kind = if i % 3 == 0 { "customer" } else { "order" };
        let audit = if i % 10 == 0 { format!("SELECT pg_logical_emit_message(true, 'audit', 'order {i} placed');") } else { String::new() };
        writer
            .batch_execute(&format!(
                "BEGIN; INSERT INTO orders VALUES ({i}, 1234567890123456789012345678.25);
                 INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('{kind}', '{kind}-{i}', '{kind}_placed',
                   jsonb_build_object('n', {i}, 'total', 1234567890123456789012345678.25::numeric));
                 SELECT pg_logical_emit_message(true, 'payments', '{{\"id\": \"pay-{i}\", \"aggregatetype\": \"payment\", \"type\": \"payment_taken\", \"payload\": {{\"n\": {i},  \"amount\": 0.1000000000000000000001}}}}');
                 SELECT pg_logical_emit_message(true, 'other', 'x');
                 {audit}
                 COMMIT;"
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
    let outbox: HashMap<String, (String, String, String)> = c
        .query("SELECT id::text, aggregatetype, type, payload::text FROM outbox", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    c.batch_execute("DELETE FROM outbox; UPDATE orders SET total = total + 1 WHERE id = 1").await.unwrap();
    wait_confirmed(&c, "hookbox", &d, Duration::from_secs(120)).await;

    let kept = receiver.kept.lock().unwrap().clone();
    let mut events: HashMap<String, Event> = HashMap::new();
    let (mut audits, mut orders) = (Vec::new(), Vec::new());
    for e in kept {
        if e.path == "/audit" {
            audits.extend(serde_json::from_str::<Vec<Json>>(&e.body).expect("an array of records"));
            continue;
        }
        if e.path.starts_with("/orders/") {
            orders.push(e);
            continue;
        }
        let id = e.id.clone().unwrap_or_else(|| panic!("an event without X-Event-Id: {e:?}"));
        assert_eq!(e.idempotency_key, id, "the event id is the idempotency key");
        match events.get(&id) {
            Some(first) => assert_eq!(first, &e, "every copy of an event is the same"),
            None => {
                events.insert(id, e);
            }
        }
    }
    assert_eq!(events.len(), 300, "every committed event, nothing for rollbacks, deletes or other prefixes");
    for (id, (kind, event_type, payload)) in &outbox {
        let e = events.get(id).unwrap_or_else(|| panic!("outbox event {id} missing"));
        assert_eq!(e.path, format!("/events/{kind}"));
        assert_eq!(e.event_type.as_deref(), Some(event_type.as_str()));
        assert_eq!(&e.body, payload, "the payload as PostgreSQL prints it");
    }
    for i in 1..=150 {
        let e = events.get(&format!("pay-{i}")).unwrap_or_else(|| panic!("message pay-{i} missing"));
        assert_eq!(e.path, "/events/payment");
        assert_eq!(e.event_type.as_deref(), Some("payment_taken"));
        assert_eq!(e.body, format!("{{\"n\": {i},  \"amount\": 0.1000000000000000000001}}"), "the message's payload verbatim");
    }
    let audit_texts: HashSet<String> = audits
        .iter()
        .map(|r| {
            assert_eq!((r["op"].as_str(), r["schema"].as_str(), r["table"].as_str()), (Some("message"), Some("pg_message"), Some("audit")));
            r["after"]["content"].as_str().expect("text content").to_string()
        })
        .collect();
    assert_eq!(audit_texts, (1..=15).map(|i| format!("order {} placed", i * 10)).collect());
    // The orders' records went one URL per row; row 1's update last.
    let last_of_1 = orders.iter().rev().find(|e| e.path == "/orders/1").expect("order 1");
    assert!(last_of_1.body.contains("1234567890123456789012345679.25"), "{}", last_of_1.body);
    assert_eq!(orders.iter().map(|e| e.path.clone()).collect::<HashSet<_>>().len(), 150);
    assert_eq!(line_count(&dir.path().join("dead.jsonl")), 0, "nothing dead-lettered\n{}", d.log());
}
