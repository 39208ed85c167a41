//! The Redis sink against a real redis-server (testkit, free loopback port).
//!
//! Each test feeds hand-built changes to `RedisSink::write` and reads the
//! resulting state back with a plain client.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgfanout_redis::{RedisMapping, RedisSink, RedisSinkConfig};
use pgfanout_sdk::testing::{records, row, row_of, At, Table};
use pgfanout_sdk::{Change, Op, Sink, SinkError, Value};
use redis::AsyncCommands;
use testkit::RedisServer;

fn sink_config(url: &str, extra: &str) -> RedisSinkConfig {
    serde_json::from_str(&format!(r#"{{"url":"{url}"{extra}}}"#)).expect("sink config")
}

fn mapping(json: &str) -> RedisMapping {
    serde_json::from_str(json).expect("mapping")
}

async fn connect(server: &RedisServer, routes: &[&str]) -> RedisSink {
    RedisSink::connect(&sink_config(&server.url(), ""), routes.iter().map(|m| mapping(m)).collect()).await.expect("connect")
}

async fn client(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// Every change here is of `public.t`.
const T: Table = Table("t");

async fn write_ok(sink: &mut RedisSink, changes: Vec<Change>, route: usize) {
    let rejected = sink.write(&records(changes, route)).await.expect("write");
    assert!(rejected.is_empty(), "unexpected rejections: {rejected:?}");
}

async fn hgetall(c: &mut redis::aio::MultiplexedConnection, key: &str) -> HashMap<String, String> {
    c.hgetall(key).await.unwrap()
}

async fn xlen(c: &mut redis::aio::MultiplexedConnection, key: &str) -> usize {
    redis::cmd("XLEN").arg(key).query_async(c).await.unwrap()
}

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn hash_row_versions_toast_and_tombstones() {
    let server = RedisServer::start();
    let mut sink = connect(&server, &[r#"{"type":"hash","key":"user:{id}"}"#]).await;
    let mut c = client(&server).await;

    write_ok(&mut sink, vec![T.insert(At(100, 0), &[("id", "1"), ("name", r#""a""#), ("bio", r#""long""#), ("note", "null")])], 0).await;
    assert_eq!(hgetall(&mut c, "user:1").await, map(&[("id", "1"), ("name", "a"), ("bio", "long")]));

    // Update without the unchanged TOAST column: the stored bio stays.
    write_ok(&mut sink, vec![T.update(At(200, 1), &[("id", "1"), ("name", r#""b""#), ("note", r#""n""#)], &["bio"])], 0).await;
    assert_eq!(hgetall(&mut c, "user:1").await, map(&[("id", "1"), ("name", "b"), ("bio", "long"), ("note", "n")]));

    // An older replay is skipped; an equal position applies.
    write_ok(&mut sink, vec![T.insert(At(100, 0), &[("id", "1"), ("name", r#""a""#), ("bio", r#""old""#)])], 0).await;
    assert_eq!(hgetall(&mut c, "user:1").await["name"], "b");
    write_ok(&mut sink, vec![T.update(At(200, 1), &[("id", "1"), ("name", r#""c""#)], &[])], 0).await;
    assert_eq!(hgetall(&mut c, "user:1").await["name"], "c");
    // A NULL column is removed from the hash.
    write_ok(&mut sink, vec![T.update(At(200, 2), &[("id", "1"), ("note", "null")], &[])], 0).await;
    assert!(!hgetall(&mut c, "user:1").await.contains_key("note"));

    // Delete leaves a tombstone that blocks an older insert replay.
    write_ok(&mut sink, vec![T.delete(At(300, 0), &[("id", "1")])], 0).await;
    assert!(!c.exists::<_, bool>("user:1").await.unwrap());
    let ttl: i64 = c.ttl("pgfanout:v:user:1").await.unwrap();
    assert!(ttl > 0 && ttl <= 86_400, "tombstone ttl {ttl}");
    write_ok(&mut sink, vec![T.insert(At(250, 0), &[("id", "1"), ("name", r#""zombie""#)])], 0).await;
    assert!(!c.exists::<_, bool>("user:1").await.unwrap(), "an older insert resurrected a deleted row");

    // A newer insert brings it back and the version key no longer expires.
    write_ok(&mut sink, vec![T.insert(At(400, 0), &[("id", "1"), ("name", r#""d""#)])], 0).await;
    assert_eq!(hgetall(&mut c, "user:1").await, map(&[("id", "1"), ("name", "d")]));
    assert_eq!(c.ttl::<_, i64>("pgfanout:v:user:1").await.unwrap(), -1);
    let v: String = c.hget("pgfanout:v:user:1", "_key").await.unwrap();
    assert_eq!(v, format!("{:020}{:010}", 400, 0));
}

#[tokio::test]
async fn cart_hash_fields_with_ttl() {
    let server = RedisServer::start();
    let cart = r#"{"type":"hash","key":"cart:{user_id}","field":"{product_id}","value":"{quantity}","ttl":"7d"}"#;
    let mut sink = connect(&server, &[cart]).await;
    let mut c = client(&server).await;
    let item = |at: At, op: Op, user: &str, product: &str, qty: &str| {
        let r = row(&[("user_id", user), ("product_id", product), ("quantity", qty)]);
        let key = row(&[("user_id", user), ("product_id", product)]);
        match op {
            Op::Delete => T.change(op, at, key, Some(r), None, &[]),
            _ => T.change(op, at, key, None, Some(r), &[]),
        }
    };
    write_ok(
        &mut sink,
        vec![
            item(At(10, 0), Op::Insert, "7", r#""p-1""#, "2"),
            item(At(10, 1), Op::Insert, "7", r#""p-2""#, "1"),
            item(At(10, 2), Op::Insert, "8", r#""p-1""#, "5"),
            item(At(20, 0), Op::Update, "7", r#""p-1""#, "3"),
            item(At(20, 1), Op::Delete, "7", r#""p-2""#, "1"),
        ],
        0,
    )
    .await;
    assert_eq!(hgetall(&mut c, "cart:7").await, map(&[("p-1", "3")]));
    assert_eq!(hgetall(&mut c, "cart:8").await, map(&[("p-1", "5")]));
    let ttl: i64 = c.ttl("cart:7").await.unwrap();
    assert!(ttl > 6 * 86_400 && ttl <= 7 * 86_400, "cart ttl {ttl}");
    // The deleted field's tombstone blocks a replay of its insert.
    write_ok(&mut sink, vec![item(At(10, 1), Op::Insert, "7", r#""p-2""#, "1")], 0).await;
    assert_eq!(hgetall(&mut c, "cart:7").await, map(&[("p-1", "3")]));
    // Emptying the cart removes the key; its versions expire as tombstones.
    write_ok(&mut sink, vec![item(At(30, 0), Op::Delete, "7", r#""p-1""#, "3")], 0).await;
    assert!(!c.exists::<_, bool>("cart:7").await.unwrap());
    let ttl: i64 = c.ttl("pgfanout:v:cart:7").await.unwrap();
    assert!(ttl > 0 && ttl <= 86_400, "tombstone ttl {ttl}");
}

#[tokio::test]
async fn string_row_and_column() {
    let server = RedisServer::start();
    let mut sink =
        connect(&server, &[r#"{"type":"string","key":"doc:{id}"}"#, r#"{"type":"string","key":"prefs:{id}","column":"prefs"}"#]).await;
    let mut c = client(&server).await;
    let full = || T.insert(At(1, 0), &[("id", "1"), ("title", r#""x""#), ("body", r#""big text""#), ("prefs", r#"{"theme":"dark"}"#)]);
    write_ok(&mut sink, vec![full()], 0).await;
    write_ok(&mut sink, vec![full()], 1).await;
    let doc: String = c.get("doc:1").await.unwrap();
    assert_eq!(doc, r#"{"id":1,"title":"x","body":"big text","prefs":{"theme":"dark"}}"#);
    let prefs: String = c.get("prefs:1").await.unwrap();
    assert_eq!(prefs, r#"{"theme":"dark"}"#);

    // Update with body and prefs unchanged TOAST: the row keeps the stored body.
    write_ok(&mut sink, vec![T.update(At(2, 0), &[("id", "1"), ("title", r#""y""#)], &["body", "prefs"])], 0).await;
    write_ok(&mut sink, vec![T.update(At(2, 0), &[("id", "1"), ("title", r#""y""#)], &["body", "prefs"])], 1).await;
    let doc: serde_json::Value = serde_json::from_str(&c.get::<_, String>("doc:1").await.unwrap()).unwrap();
    assert_eq!(doc, serde_json::json!({"id":1,"title":"y","body":"big text","prefs":{"theme":"dark"}}));
    assert_eq!(c.get::<_, String>("prefs:1").await.unwrap(), r#"{"theme":"dark"}"#);

    write_ok(&mut sink, vec![T.delete(At(3, 0), &[("id", "1")])], 0).await;
    assert!(!c.exists::<_, bool>("doc:1").await.unwrap());
    write_ok(&mut sink, vec![full()], 0).await;
    assert!(!c.exists::<_, bool>("doc:1").await.unwrap(), "stale insert after delete");
}

fn json_text(v: &Value) -> String {
    v.to_json_string()
}

/// The merge of a partial change (unchanged TOAST columns not sent) with
/// the stored JSON copies the stored members' text: numerics of any length,
/// `2.50` and jsonb numbers keep every digit (cjson kept 14).
#[tokio::test]
async fn partial_updates_keep_stored_numbers_digit_for_digit() {
    let server = RedisServer::start();
    let mut sink = connect(&server, &[r#"{"type":"string","key":"doc:{id}"}"#, r#"{"type":"hash","key":"docs","field":"{id}"}"#]).await;
    let mut c = client(&server).await;
    let n25 = Value::Number("1234567890123456789012345".into());
    let n60 = Value::Number(format!("-{}.{}", "9".repeat(30), "0123456789".repeat(3)).into());
    let n400 = Value::Number(format!("1{}", "0".repeat(399)).into());
    let j =
        Value::Json(r#"{"big": 123456789012345678901234567890.50, "list": [2.50, 1e-20, {"deep": 100000000000000000000000001}]}"#.into());
    // Escapes, braces and brackets inside a string must not confuse the scan.
    let big = Value::String(format!("{}\"}}{{[]\\\",{}", "md5-".repeat(700), "é".repeat(10)).into());
    let first = row_of(&[
        ("id", Value::Number("1".into())),
        ("half", Value::Number("2.50".into())),
        ("n25", n25.clone()),
        ("n60", n60.clone()),
        ("n400", n400.clone()),
        ("j", j.clone()),
        ("big", big.clone()),
    ]);
    let second = row_of(&[("id", Value::Number("1".into())), ("half", Value::Number("3.10".into())), ("n25", n25.clone())]);
    let unchanged = ["n60", "n400", "j", "big"];
    for route in [0, 1] {
        write_ok(&mut sink, vec![T.insert_row(At(1, 0), first.clone())], route).await;
        write_ok(&mut sink, vec![T.update_row(At(2, 0), second.clone(), &unchanged)], route).await;
        // A replay of the same partial change converges to the same text.
        write_ok(&mut sink, vec![T.update_row(At(2, 0), second.clone(), &unchanged)], route).await;
    }
    let want = format!(
        r#"{{"id":1,"half":3.10,"n25":1234567890123456789012345,"n60":{},"n400":{},"j":{},"big":{}}}"#,
        json_text(&n60),
        json_text(&n400),
        json_text(&j),
        json_text(&big)
    );
    assert_eq!(c.get::<_, String>("doc:1").await.unwrap(), want);
    assert_eq!(c.hget::<_, _, String>("docs", "1").await.unwrap(), want);
}

/// Routes that hold the whole row or its `big` column (a string document,
/// a hash per row, a hash field per row, a string of `big`), then `more`.
fn whole_row_routes(more: &[&'static str]) -> Vec<&'static str> {
    let mut routes = vec![
        r#"{"type":"string","key":"doc:{id}"}"#,
        r#"{"type":"hash","key":"row:{id}"}"#,
        r#"{"type":"hash","key":"docs","field":"{id}"}"#,
        r#"{"type":"string","key":"big:{id}","column":"big"}"#,
    ];
    routes.extend_from_slice(more);
    routes
}

/// A partial change whose stored entry is gone: skipped when a newer
/// version (a tombstone) says why, skipped when the mapping's TTL may have
/// expired it, refused (dead letter, nothing written) otherwise — never
/// written as if complete.
#[tokio::test]
async fn a_partial_change_without_its_stored_entry_is_never_written_as_complete() {
    let server = RedisServer::start();
    let routes = whole_row_routes(&[
        r#"{"type":"hash","key":"bigs","field":"{id}","value":"{big}"}"#,
        r#"{"type":"string","key":"cached:{id}","ttl":"1h"}"#,
    ]);
    let mut sink = connect(&server, &routes).await;
    let mut c = client(&server).await;
    let partial = |at: At, id: &str| T.update(at, &[("id", id), ("name", r#""n""#)], &["big"]);
    let with_ttl = routes.len() - 1;
    for route in 0..with_ttl {
        // Never written, no version: refused with the reason.
        let rejected = sink.write(&records(vec![partial(At(5, 0), "1")], route)).await.expect("write");
        assert_eq!(rejected.len(), 1, "route {route}: {rejected:?}");
        let error = &rejected[0].error;
        assert!(error.contains("INCOMPLETE") && error.contains("big") && error.contains("REPLICA IDENTITY FULL"), "{error}");
    }
    // The TTL mapping: the entry may have expired; skipped.
    write_ok(&mut sink, vec![partial(At(5, 0), "1")], with_ttl).await;
    let keys: Vec<String> = c.keys("*").await.unwrap();
    assert!(keys.is_empty(), "nothing written, not even a version: {keys:?}");

    // Written, then deleted by a later change: a replayed partial change is
    // skipped (the tombstone is newer), without a dead letter.
    for route in 0..routes.len() {
        write_ok(&mut sink, vec![T.insert(At(10, 0), &[("id", "2"), ("name", r#""a""#), ("big", r#""long""#)])], route).await;
        write_ok(&mut sink, vec![T.delete(At(30, 0), &[("id", "2")])], route).await;
        write_ok(&mut sink, vec![partial(At(20, 0), "2")], route).await;
    }
    for key in ["doc:2", "row:2", "big:2", "cached:2"] {
        assert!(!c.exists::<_, bool>(key).await.unwrap(), "{key}");
    }
    assert!(!c.hexists::<_, _, bool>("docs", "2").await.unwrap());
    assert!(!c.hexists::<_, _, bool>("bigs", "2").await.unwrap());

    // A stored document lacking the column (written by hand): refused.
    let _: () = c.set("doc:3", r#"{"id":3,"name":"a"}"#).await.unwrap();
    let rejected = sink.write(&records(vec![partial(At(40, 0), "3")], 0)).await.expect("write");
    assert!(rejected.len() == 1 && rejected[0].error.contains("INCOMPLETE"), "{rejected:?}");
    assert_eq!(c.get::<_, String>("doc:3").await.unwrap(), r#"{"id":3,"name":"a"}"#);

    // A key change under the default replica identity (old key columns
    // only) from a key that was never written: nothing to copy, refused
    // with the old entry named.
    let moved = T.change(
        Op::Update,
        At(60, 0),
        row(&[("id", "5")]),
        Some(row(&[("id", "4")])),
        Some(row(&[("id", "5"), ("name", r#""b""#)])),
        &["big"],
    );
    let rejected = sink.write(&records(vec![moved], 1)).await.expect("write");
    assert!(rejected.len() == 1 && rejected[0].error.contains("row:5") && rejected[0].error.contains("old entry row:4"), "{rejected:?}");
    assert!(!c.exists::<_, bool>("row:4").await.unwrap());
    assert!(!c.exists::<_, bool>("row:5").await.unwrap());
}

/// A key change (`id = id + 1000`) in an update that leaves the TOASTed
/// column `big` unchanged, under the default replica identity (`before`
/// holds the old key only): the row is written whole under the new key, the
/// unchanged values copied as stored (raw text, every digit) from the old
/// entry in the same script call, and the old entry is removed (a tombstone
/// at the move's version). Many rows in one batch over four lanes, each
/// followed in the same batch by a partial change of its new key, and a
/// chain of two moves. Replays are skipped, never dead-lettered, and never
/// copy a newer row that took the old key.
#[tokio::test]
async fn a_key_change_with_unchanged_toast_copies_the_old_entry() {
    let server = RedisServer::start();
    let routes = whole_row_routes(&[r#"{"type":"hash","key":"bigs:{id}","field":"f","value":"{big}"}"#]);
    let cfg = sink_config(&server.url(), r#","connections":4"#);
    let mut sink = RedisSink::connect(&cfg, routes.iter().map(|m| mapping(m)).collect()).await.expect("connect");
    let mut c = client(&server).await;
    let n = |id: u64| Value::Number(format!("{id}{}.50", "1234567890".repeat(4)).into());
    let big = |id: u64| Value::String(format!("{id}:{}\"}}{{[]\\\",{}", "md5-".repeat(700), "é".repeat(10)).into());
    let num = |id: u64| Value::Number(id.to_string().into());
    let name = |s: &str| Value::String(s.into());
    let full = |id: u64, nm: &str| row_of(&[("id", num(id)), ("name", name(nm)), ("n", n(id)), ("big", big(id))]);
    let sent = |id: u64, nm: &str, src: u64| row_of(&[("id", num(id)), ("name", name(nm)), ("n", n(src))]);
    let mv = |t: u64, from: u64, to: u64, nm: &str, src: u64| {
        T.change(Op::Update, At(t, 0), row_of(&[("id", num(to))]), Some(row_of(&[("id", num(from))])), Some(sent(to, nm, src)), &["big"])
    };
    let all: Vec<u64> = (1..=24).collect();
    let ids = &all[..];
    // The history: inserts at 10, moves at 20 (row 1 moves twice: 1 -> 1001
    // -> 2001), partial changes of the new keys at 30.
    let mut history = Vec::new();
    for &id in ids {
        history.push(T.insert_row(At(10, id as u32), full(id, "a")));
    }
    for &id in ids {
        history.push(mv(20, id, id + 1000, "b", id));
        history.push(T.update_row(At(30, id as u32), sent(id + 1000, "c", id), &["big"]));
    }
    history.push(mv(40, 1001, 2001, "d", 1));
    history.push(T.update_row(At(50, 0), sent(2001, "e", 1), &["big"]));
    let (hist_len, final_id) = (history.len(), |id: u64| if id == 1 { 2001 } else { id + 1000 });
    let final_name = |id: u64| if id == 1 { "e" } else { "c" };
    let doc = |id: u64, src: u64, nm: &str| {
        format!(r#"{{"id":{id},"name":{},"n":{},"big":{}}}"#, json_text(&name(nm)), json_text(&n(src)), json_text(&big(src)))
    };
    let check = |c: &mut redis::aio::MultiplexedConnection, route: usize| {
        let mut c = c.clone();
        async move {
            for &id in ids {
                let (new, nm) = (final_id(id), final_name(id));
                let want = doc(new, id, nm);
                match route {
                    0 => assert_eq!(c.get::<_, String>(format!("doc:{new}")).await.unwrap(), want),
                    1 => {
                        let want =
                            map(&[("id", &new.to_string()), ("name", nm), ("n", &json_text(&n(id))), ("big", &big(id).to_template_text())]);
                        assert_eq!(hgetall(&mut c, &format!("row:{new}")).await, want);
                    }
                    2 => assert_eq!(c.hget::<_, _, String>("docs", new.to_string()).await.unwrap(), want),
                    3 => assert_eq!(c.get::<_, String>(format!("big:{new}")).await.unwrap(), json_text(&big(id))),
                    _ => assert_eq!(c.hget::<_, _, String>(format!("bigs:{new}"), "f").await.unwrap(), big(id).to_template_text()),
                }
            }
            // No old entry is left, only version hashes (tombstones).
            let mut keys: Vec<String> = c.keys("*").await.unwrap();
            keys.retain(|k| !k.starts_with("pgfanout:v:"));
            keys.sort();
            let mut want: Vec<String> = match route {
                0 => ids.iter().map(|&id| format!("doc:{}", final_id(id))).collect(),
                1 => ids.iter().map(|&id| format!("row:{}", final_id(id))).collect(),
                2 => vec!["docs".to_string()],
                3 => ids.iter().map(|&id| format!("big:{}", final_id(id))).collect(),
                _ => ids.iter().map(|&id| format!("bigs:{}", final_id(id))).collect(),
            };
            want.sort();
            assert_eq!(keys, want, "route {route}");
            if route == 2 {
                let mut fields: Vec<String> = c.hkeys("docs").await.unwrap();
                fields.sort();
                let mut want: Vec<String> = ids.iter().map(|&id| final_id(id).to_string()).collect();
                want.sort();
                assert_eq!(fields, want);
            }
        }
    };
    for route in 0..routes.len() {
        let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
        // One batch: every change of the history at once.
        write_ok(&mut sink, history.clone(), route).await;
        check(&mut c, route).await;
        // The old key's tombstone carries the move's version.
        if route == 0 {
            let v: String = c.hget("pgfanout:v:doc:2", "_key").await.unwrap();
            assert_eq!(v, format!("{:020}{:010}", 20, 0));
            assert!(c.ttl::<_, i64>("pgfanout:v:doc:2").await.unwrap() > 0);
        }
        // The whole history again (a replay from an older slot position),
        // in one batch and record by record: nothing refused, same state.
        write_ok(&mut sink, history.clone(), route).await;
        for record in history.iter().take(hist_len) {
            write_ok(&mut sink, vec![record.clone()], route).await;
        }
        check(&mut c, route).await;
    }

    // The old key taken by a newer row, and the new key's entry and version
    // lost (as an expiry would): the replayed move finds a newer version on
    // the old key and skips, rather than copy the newer row.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
    write_ok(&mut sink, history.clone(), 0).await;
    write_ok(&mut sink, vec![T.insert_row(At(60, 0), full(2, "z"))], 0).await;
    let _: () = c.del(&["doc:1002", "pgfanout:v:doc:1002"]).await.unwrap();
    write_ok(&mut sink, vec![mv(20, 2, 1002, "b", 2)], 0).await;
    assert!(!c.exists::<_, bool>("doc:1002").await.unwrap());
    assert_eq!(c.get::<_, String>("doc:2").await.unwrap(), doc(2, 2, "z"));
}

/// A whole row makes the hash exactly its non-NULL columns: a field no
/// column maps to (written behind pgfanout's back, or a column now NULL)
/// goes; a partial change keeps the stored unchanged field.
#[tokio::test]
async fn a_whole_row_replaces_the_hash_and_a_partial_one_keeps_unchanged_fields() {
    let server = RedisServer::start();
    let mut sink = connect(&server, &[r#"{"type":"hash","key":"item:{id}","ttl":"1h"}"#]).await;
    let mut c = client(&server).await;
    write_ok(&mut sink, vec![T.insert(At(1, 0), &[("id", "5"), ("name", r#""a""#), ("big", r#""long""#), ("note", r#""x""#)])], 0).await;
    let _: () = c.hset("item:5", "junk", "1").await.unwrap();
    let _: () = c.hset("item:5", "other", "2").await.unwrap();
    // Partial: junk stays (nothing says it is not ours to keep), note removed.
    write_ok(&mut sink, vec![T.update(At(2, 0), &[("id", "5"), ("name", r#""b""#), ("note", "null")], &["big"])], 0).await;
    assert_eq!(hgetall(&mut c, "item:5").await, map(&[("id", "5"), ("name", "b"), ("big", "long"), ("junk", "1"), ("other", "2")]));
    // Whole row (a repair or backfill writes `op: read` rows): exactly the row.
    let read = T.change(
        Op::Read,
        At(3, 0),
        row(&[("id", "5")]),
        None,
        Some(row(&[("id", "5"), ("name", r#""b""#), ("big", r#""long""#), ("note", "null")])),
        &[],
    );
    write_ok(&mut sink, vec![read], 0).await;
    assert_eq!(hgetall(&mut c, "item:5").await, map(&[("id", "5"), ("name", "b"), ("big", "long")]));
    let ttl: i64 = c.ttl("item:5").await.unwrap();
    assert!(ttl > 3000, "ttl {ttl}");
    // Many stray fields at once.
    let stray: Vec<(String, String)> = (0..2500).map(|i| (format!("f{i}"), "v".to_string())).collect();
    let _: () = c.hset_multiple("item:5", &stray).await.unwrap();
    write_ok(&mut sink, vec![T.update(At(4, 0), &[("id", "5"), ("name", r#""c""#), ("big", r#""long""#)], &[])], 0).await;
    assert_eq!(hgetall(&mut c, "item:5").await, map(&[("id", "5"), ("name", "c"), ("big", "long")]));
}

#[tokio::test]
async fn sets_and_sorted_sets_move_members() {
    let server = RedisServer::start();
    let mut sink = connect(
        &server,
        &[
            r#"{"type":"set","key":"category:{category_id}:products","member":"{id}"}"#,
            r#"{"type":"sorted_set","key":"category:{category_id}:by_price","member":"{id}","score":"price"}"#,
        ],
    )
    .await;
    let mut c = client(&server).await;
    fn p<'a>(id: &'a str, cat: &'a str, price: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![("id", id), ("category_id", cat), ("price", price)]
    }
    for route in [0, 1] {
        write_ok(
            &mut sink,
            vec![T.insert(At(1, 0), &p("1", "10", "9.5")), T.insert(At(1, 1), &p("2", "10", "20")), T.insert(At(1, 2), &p("3", "11", "1"))],
            route,
        )
        .await;
        // Product 1 moves to category 11 (before known: REPLICA IDENTITY FULL).
        let moved =
            T.change(Op::Update, At(2, 0), row(&[("id", "1")]), Some(row(&p("1", "10", "9.5"))), Some(row(&p("1", "11", "7"))), &[]);
        write_ok(&mut sink, vec![moved, T.delete(At(3, 0), &p("2", "10", "20"))], route).await;
        // Replays of older changes do not bring members back.
        write_ok(&mut sink, vec![T.insert(At(1, 0), &p("1", "10", "9.5")), T.insert(At(1, 1), &p("2", "10", "20"))], route).await;
    }
    let mut members: Vec<String> = c.smembers("category:11:products").await.unwrap();
    members.sort();
    assert_eq!(members, ["1", "3"]);
    assert!(!c.exists::<_, bool>("category:10:products").await.unwrap());
    let ranked: Vec<(String, f64)> = c.zrange_withscores("category:11:by_price", 0, -1).await.unwrap();
    assert_eq!(ranked, [("3".to_string(), 1.0), ("1".to_string(), 7.0)]);
    assert!(!c.exists::<_, bool>("category:10:by_price").await.unwrap());
}

#[tokio::test]
async fn stream_appends_once_and_trims() {
    let server = RedisServer::start();
    let mut sink =
        connect(&server, &[r#"{"type":"stream","key":"changes:{table}"}"#, r#"{"type":"stream","key":"trimmed","maxlen":10}"#]).await;
    let mut c = client(&server).await;
    let batch = || {
        vec![T.insert(At(5, 0), &[("id", "1")]), T.update(At(5, 1), &[("id", "1"), ("a", "2")], &[]), T.delete(At(6, 0), &[("id", "1")])]
    };
    write_ok(&mut sink, batch(), 0).await;
    write_ok(&mut sink, batch(), 0).await; // replay: nothing appended twice
    assert_eq!(xlen(&mut c, "changes:t").await, 3);
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE").arg(&["changes:t", "-", "+"][..]).query_async(&mut c).await.unwrap();
    let last: HashMap<&str, &str> = entries[2].1.chunks(2).map(|kv| (kv[0].as_str(), kv[1].as_str())).collect();
    assert_eq!(last["op"], "delete");
    assert_eq!(last["table"], "public.t");
    let record: serde_json::Value = serde_json::from_str(last["change"]).unwrap();
    assert_eq!(record["before"], serde_json::json!({"id":1}));
    assert_eq!(record["commit_lsn"], "0/6");

    let many: Vec<Change> = (0..1000).map(|i| T.insert(At(100 + i, 0), &[("id", "1")])).collect();
    write_ok(&mut sink, many, 1).await;
    let len = xlen(&mut c, "trimmed").await;
    assert!((10..1000).contains(&len), "MAXLEN ~ 10 left {len} entries");
}

#[tokio::test]
async fn wrongtype_and_template_errors_reject_only_their_record() {
    let server = RedisServer::start();
    let mut sink = connect(&server, &[r#"{"type":"hash","key":"user:{id}"}"#, r#"{"type":"hash","key":"org:{org_id}"}"#]).await;
    let mut c = client(&server).await;
    let _: () = c.set("user:2", "not a hash").await.unwrap();
    let mut batch =
        records(vec![T.insert(At(1, 0), &[("id", "1")]), T.insert(At(1, 1), &[("id", "2")]), T.insert(At(1, 2), &[("id", "3")])], 0);
    batch.extend(records(vec![T.insert(At(1, 3), &[("id", "4")])], 1)); // no org_id column
    let rejected = sink.write(&batch).await.expect("write");
    let indexes: Vec<usize> = rejected.iter().map(|r| r.index).collect();
    assert_eq!(indexes, [1, 3], "{rejected:?}");
    assert!(rejected[0].error.contains("WRONGTYPE"), "{}", rejected[0].error);
    assert!(rejected[1].error.contains("org_id"), "{}", rejected[1].error);
    assert!(c.exists::<_, bool>("user:1").await.unwrap());
    assert!(c.exists::<_, bool>("user:3").await.unwrap());
    assert_eq!(c.get::<_, String>("user:2").await.unwrap(), "not a hash");
    // The rejected record left no version behind: fixing the key lets it apply.
    let _: () = c.del("user:2").await.unwrap();
    write_ok(&mut sink, vec![T.insert(At(1, 1), &[("id", "2")])], 0).await;
    assert!(c.exists::<_, bool>("user:2").await.unwrap());
}

#[tokio::test]
async fn json_mapping_needs_redisjson() {
    let server = RedisServer::start();
    let err = RedisSink::connect(&sink_config(&server.url(), ""), vec![mapping(r#"{"type":"json","key":"p:{id}"}"#)])
        .await
        .err()
        .map(SinkError::from)
        .expect("connect must fail without RedisJSON");
    assert!(matches!(&err, SinkError::Permanent(m) if m.contains("RedisJSON")), "{err}");
}

#[tokio::test]
async fn invalid_mapping_is_a_permanent_connect_error() {
    let server = RedisServer::start();
    let err = RedisSink::connect(&sink_config(&server.url(), ""), vec![mapping(r#"{"type":"set","key":"k"}"#)])
        .await
        .err()
        .map(SinkError::from)
        .expect("invalid");
    assert!(matches!(&err, SinkError::Permanent(m) if m.contains("member")), "{err}");
}

#[tokio::test]
async fn acl_user_and_database_number() {
    let server = RedisServer::start();
    let mut c = client(&server).await;
    let _: () = redis::cmd("ACL").arg(&["SETUSER", "app", "on", ">s3cret", "~*", "+@all"][..]).query_async(&mut c).await.unwrap();
    let url = format!("redis://127.0.0.1:{}/3", server.port);
    let bad = RedisSink::connect(&sink_config(&url, r#","username":"app","password":"wrong""#), vec![]).await;
    assert!(bad.is_err(), "a wrong password must not connect");
    let mut sink = RedisSink::connect(
        &sink_config(&url, r#","username":"app","password":"s3cret""#),
        vec![mapping(r#"{"type":"hash","key":"user:{id}"}"#)],
    )
    .await
    .expect("connect as app");
    write_ok(&mut sink, vec![T.insert(At(1, 0), &[("id", "1")])], 0).await;
    let _: () = redis::cmd("SELECT").arg(3).query_async(&mut c).await.unwrap();
    assert!(c.exists::<_, bool>("user:1").await.unwrap());
    let _: () = redis::cmd("SELECT").arg(0).query_async(&mut c).await.unwrap();
    assert!(!c.exists::<_, bool>("user:1").await.unwrap());
}

#[tokio::test]
async fn server_restart_gives_retriable_errors_then_success() {
    let server = RedisServer::start();
    let mut sink = RedisSink::connect(
        &sink_config(&server.url(), r#","connect_timeout":"1s","response_timeout":"2s","reconnect_max_delay":"200ms""#),
        vec![mapping(r#"{"type":"hash","key":"user:{id}"}"#)],
    )
    .await
    .expect("connect");
    write_ok(&mut sink, vec![T.insert(At(1, 0), &[("id", "1")])], 0).await;
    server.stop();
    let batch = records((0..50).map(|i| T.insert(At(10 + i, 0), &[("id", &i.to_string()), ("n", "1")])), 0);
    for _ in 0..3 {
        let err = sink.write(&batch).await.expect_err("redis is down");
        assert!(err.is_retriable(), "{err}");
    }
    // Restarted empty (no persistence) and without the script: retry until it lands.
    server.start_server();
    let start = Instant::now();
    loop {
        match sink.write(&batch).await {
            Ok(rejected) => {
                assert!(rejected.is_empty(), "{rejected:?}");
                break;
            }
            Err(e) => {
                assert!(e.is_retriable(), "{e}");
                assert!(start.elapsed() < Duration::from_secs(30), "still failing: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let mut c = client(&server).await;
    for i in 0..50 {
        assert_eq!(hgetall(&mut c, &format!("user:{i}")).await, map(&[("id", &i.to_string()), ("n", "1")]));
    }
}

/// Throughput of the hash mapping into a local redis-server:
/// `cargo test -p pgfanout-redis --release --test redis -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_hash_100k() {
    let server = RedisServer::start();
    let n = 100_000u64;
    let records = records(
        (0..n).map(|i| {
            let id = i.to_string();
            T.insert(At(1000 + i, 0), &[("id", &id), ("user_id", "42"), ("status", r#""paid""#), ("total", "19.99"), ("note", "null")])
        }),
        0,
    );
    for (connections, batch_size) in [(1, 5000), (2, 1000), (2, 5000), (4, 5000)] {
        let cfg = sink_config(&server.url(), &format!(r#","connections":{connections}"#));
        let mut sink = RedisSink::connect(&cfg, vec![mapping(r#"{"type":"hash","key":"order:{id}"}"#)]).await.expect("connect");
        let _: () = redis::cmd("FLUSHALL").query_async(&mut client(&server).await).await.unwrap();
        let start = Instant::now();
        for chunk in records.chunks(batch_size) {
            let rejected = sink.write(chunk).await.expect("write");
            assert!(rejected.is_empty());
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "hash mapping, {connections} connections, batches of {batch_size}: {n} records in {secs:.2}s = {:.0} rows/s",
            n as f64 / secs
        );
        let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut client(&server).await).await.unwrap();
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut client(&server).await).await.unwrap();
        println!("  server: {}", stats.lines().find(|l| l.starts_with("cmdstat_evalsha")).unwrap_or("no evalsha stats"));
        let keys: usize = redis::cmd("DBSIZE").query_async(&mut client(&server).await).await.unwrap();
        assert_eq!(keys as u64, 2 * n);
    }
}
