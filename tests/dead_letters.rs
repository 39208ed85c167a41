//! Dead letters you can replay, against a real PostgreSQL and a real Redis.
//!
//! A pipeline keys products by `sku`, which legacy rows lack (NULL): the
//! Redis sink refuses their changes (a key template column is NULL) and
//! they become dead letters while the other rows stream on. The fix goes
//! into the config (a `set` transform that gives legacy rows an sku);
//! `pgfanout dead-letters replay` then runs each letter's source change
//! through the fixed pipeline and into Redis, and removes it. The oracle:
//! Redis holds exactly what the fixed pipeline implies for every row of
//! the table, numerics to the last of their 25 digits.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::*;
use testkit::RedisServer;

/// REPLICA IDENTITY FULL: a delete must carry `sku` to find its key.
const SCHEMA: &str = "CREATE TABLE products (id int PRIMARY KEY, sku text, name text NOT NULL, price numeric(30,10) NOT NULL);
    ALTER TABLE products REPLICA IDENTITY FULL;";

/// Where the letters go.
#[derive(Clone, Copy)]
enum To {
    File,
    Table,
    /// A topic on this broker (`dead_letter.sink` names a Kafka sink with
    /// no pipelines).
    #[cfg(feature = "kafka")]
    Kafka(&'static testkit::KafkaBroker),
}

/// `dead_letter:` as YAML for the destination under test.
fn destination(to: To, dir: &std::path::Path) -> String {
    match to {
        To::Table => "dead_letter:\n  to: postgres\n".into(),
        To::File => format!("dead_letter:\n  path: \"{}\"\n", dir.join("dead.jsonl").display()),
        #[cfg(feature = "kafka")]
        To::Kafka(_) => "dead_letter:\n  to: kafka\n  sink: letters\n  topic: dl.letters\n".into(),
    }
}

/// The config; `fixed` adds the transform that gives legacy rows an sku.
fn config(pg: &PgCluster, redis: &RedisServer, dir: &std::path::Path, to: To, fixed: bool) -> String {
    let transform =
        if fixed { "\n    transforms:\n      - set: { sku: 'after.sku == null ? \"L-\" + string(after.id) : after.sku' }" } else { "" };
    let pipelines = format!(
        "  - name: products\n    from: public.products\n    to: cache\n    redis: {{ type: hash, key: \"product:{{sku}}\" }}{transform}"
    );
    let base = redis_config(pg, "dl", "dl", &redis.url(), &pipelines, dir);
    // Swap the file destination for the one under test.
    let start = base.find("dead_letter:").unwrap();
    let end = base[start..].find("http:").unwrap() + start;
    let cfg = format!("{}{}{}", &base[..start], destination(to, dir), &base[end..]);
    match to {
        #[cfg(feature = "kafka")]
        To::Kafka(broker) => {
            cfg.replacen("sinks:\n", &format!("sinks:\n  letters: {{ type: kafka, brokers: \"{}\" }}\n", broker.bootstrap()), 1)
        }
        _ => cfg,
    }
}

fn price(i: u32) -> String {
    format!("{:015}.{:010}", 123_456_789_012_345u64 - u64::from(i), 1_234_567_891 + i)
}

/// Rows 1..=300; every third has no sku (100 legacy rows). Each statement
/// is its own transaction. Returns how many changes touched a legacy row
/// (each one is a dead letter with the broken config).
async fn workload(c: &tokio_postgres::Client, round: u32) -> usize {
    let mut legacy_changes = 0;
    for id in 1..=300u32 {
        let legacy = id % 3 == 0;
        let sql = if round == 0 {
            let sku = if legacy { "NULL".to_string() } else { format!("'S-{id}'") };
            format!("INSERT INTO products VALUES ({id}, {sku}, 'product {id}', {})", price(id))
        } else if id % 10 == 0 {
            // Legacy or not: a later change of the same row.
            format!("UPDATE products SET name = name || ' r{round}', price = {} WHERE id = {id}", price(id + 1000 * round))
        } else if id % 29 == 1 && !legacy {
            format!("DELETE FROM products WHERE id = {id}")
        } else {
            continue;
        };
        c.batch_execute(&sql).await.unwrap();
        legacy_changes += usize::from(legacy);
    }
    legacy_changes
}

/// What the fixed pipeline implies: key -> (sku, name, price).
async fn expected(c: &tokio_postgres::Client) -> BTreeMap<String, (String, String, String)> {
    let rows = c.query("SELECT coalesce(sku, 'L-' || id), name, price::text FROM products", &[]).await.unwrap();
    rows.iter().map(|r| (format!("product:{}", r.get::<_, String>(0)), (r.get(0), r.get(1), r.get(2)))).collect()
}

fn stored(redis: &RedisServer) -> BTreeMap<String, (String, String, String)> {
    let field = |k: &str, f: &str| redis.cmd(&["HGET", k, f]).text();
    redis
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("product:"))
        .map(|k| {
            let v = (field(&k, "sku"), field(&k, "name"), field(&k, "price"));
            (k, v)
        })
        .collect()
}

fn cli(args: &[&str], config: &std::path::Path) -> (i32, String, String) {
    let out = tokio::task::block_in_place(|| Command::new(bin()).args(args).arg("-c").arg(config).output().unwrap());
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The letters `list --json` prints.
fn listed(config: &std::path::Path) -> Vec<serde_json::Value> {
    let (code, out, err) = cli(&["dead-letters", "list", "--json"], config);
    assert_eq!(code, 0, "{err}");
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn refused_then_replayed(to: To, kill: bool) {
    let db = "dl";
    let (pg, c) = cluster(db).await;
    c.batch_execute(SCHEMA).await.unwrap();
    let redis = RedisServer::start();
    let dir = scratch();
    let broken = config(&pg, &redis, dir.path(), to, false);
    let mut d = Daemon::start(bin(), dir.path(), "dl", &broken);
    wait_slot(&c, "dl", &d).await;
    let mut letters = workload(&c, 0).await;
    if kill {
        // SIGKILL while letters are being written, then again right after
        // more of them: every letter is in the table once.
        d.kill9();
        d.spawn(bin());
        letters += workload(&c, 1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        d.kill9();
        d.spawn(bin());
    } else {
        letters += workload(&c, 1).await;
    }
    // Three legacy rows get an sku, then are deleted: those changes stream
    // (the sku is there), and their insert letters are superseded: replayed
    // through the fix they would write `product:L-<id>`, a key no delete
    // ever reaches.
    for id in [3, 6, 9] {
        c.batch_execute(&format!("UPDATE products SET sku = 'X-{id}' WHERE id = {id}; DELETE FROM products WHERE id = {id}"))
            .await
            .unwrap();
    }
    wait_confirmed(&c, "dl", &d, Duration::from_secs(60)).await;
    d.signal("TERM");
    d.wait(Duration::from_secs(20));

    // Every change to a legacy row is a letter, once; the others streamed.
    let list = listed(&d.config_path);
    assert_eq!(list.len(), letters, "one letter per refused change:\n{}", d.log());
    assert!(list.iter().all(|l| l["sink"] == "cache" && l["pipeline"] == "products" && l["attempts"] == 1), "{list:?}");
    assert!(list.iter().all(|l| l["error"].as_str().unwrap().contains("sku")), "{list:?}");
    let legacy_keys: std::collections::BTreeSet<i64> = list.iter().map(|l| l["change"]["key"]["id"].as_i64().unwrap()).collect();
    assert_eq!(legacy_keys, (1..=100).map(|i| i * 3).collect(), "the letters are the legacy rows'");
    let before_fix = stored(&redis);
    assert_eq!(before_fix.len(), expected(&c).await.len() - 97, "the other rows streamed");

    // Replaying through the broken config: refused again, kept, attempts 2;
    // the deleted rows' letters are removed.
    let (code, out, _) = cli(&["dead-letters", "replay"], &d.config_path);
    assert_eq!(code, 1, "{out}");
    let letters = letters - 3;
    assert!(out.contains(&format!("0 delivered, 0 filtered out, 3 superseded, {letters} refused again")), "{out}");
    let list = listed(&d.config_path);
    assert_eq!(list.len(), letters);
    assert!(list.iter().all(|l| l["attempts"] == 2));

    // The fix, in the config; a dry run writes nothing.
    let fixed_path = dir.path().join("fixed.yaml");
    std::fs::write(&fixed_path, config(&pg, &redis, dir.path(), to, true)).unwrap();
    let (code, out, err) = cli(&["dead-letters", "replay", "--dry-run"], &fixed_path);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("would send {letters} to cache")), "{out}");
    assert_eq!(stored(&redis), before_fix);
    let (code, out, err) = cli(&["dead-letters", "replay"], &fixed_path);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("{letters} delivered, 0 filtered out, 0 superseded, 0 refused again, 0 not tried")), "{out}");
    assert!(listed(&fixed_path).is_empty(), "delivered letters are removed");
    assert_eq!(stored(&redis), expected(&c).await, "Redis equals the table through the fixed pipeline");

    // The daemon, fixed, goes on from there; a second replay finds nothing.
    let mut d = Daemon::start(bin(), dir.path(), "dl2", &std::fs::read_to_string(&fixed_path).unwrap());
    workload(&c, 2).await;
    wait_confirmed(&c, "dl", &d, Duration::from_secs(60)).await;
    assert_eq!(stored(&redis), expected(&c).await);
    assert!(listed(&fixed_path).is_empty(), "{}", d.log());
    let (code, out, _) = cli(&["dead-letters", "replay"], &fixed_path);
    assert_eq!((code, out.contains("0 delivered")), (0, true), "{out}");
    assert!(d.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_in_the_table_survive_sigkills_and_replay_after_the_fix() {
    refused_then_replayed(To::Table, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_in_the_file_replay_after_the_fix() {
    refused_then_replayed(To::File, false).await;
}

/// The letters in a compacted Kafka topic, written with `acks=all` before
/// their records count as done: two SIGKILLs lose none and duplicate none
/// (the same letter is the same key).
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_in_a_kafka_topic_survive_sigkills_and_replay_after_the_fix() {
    let broker = tokio::task::spawn_blocking(testkit::KafkaBroker::shared).await.unwrap();
    refused_then_replayed(To::Kafka(broker), true).await;
}
