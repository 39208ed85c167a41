//! The MongoDB sink against a real FerretDB 1.24 (testkit, free loopback
//! port, documents stored in a PostgreSQL of the test's own). MongoDB's own
//! server cannot be had on this machine; FerretDB speaks the commands the
//! sink uses.
//!
//! Each test feeds hand-built changes to `MongoSink::write` and reads the
//! documents back with the driver.

use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use pgfanout_mongodb::{MongoMapping, MongoSink, MongoSinkConfig};
use pgfanout_sdk::testing::{records, row, At, Table};
use pgfanout_sdk::{Change, Op, Sink};
use testkit::{FerretDb, PgCluster};

const T: Table = Table("t");

async fn start() -> (PgCluster, FerretDb) {
    tokio::task::spawn_blocking(|| {
        let pg = PgCluster::start();
        let f = FerretDb::start(&pg);
        (pg, f)
    })
    .await
    .unwrap()
}

async fn connect(f: &FerretDb, mapping: &str) -> MongoSink {
    let cfg: MongoSinkConfig = serde_json::from_str(&format!(r#"{{"uri":"{}","database":"shop","timeout":"2s"}}"#, f.uri())).unwrap();
    let m: MongoMapping = serde_json::from_str(mapping).unwrap();
    MongoSink::connect(&cfg, vec![m]).await.expect("connect")
}

async fn write_ok(sink: &mut MongoSink, changes: Vec<Change>) {
    let rejected =
        tokio::time::timeout(Duration::from_secs(30), sink.write(&records(changes, 0))).await.expect("write in time").expect("write");
    assert!(rejected.is_empty(), "unexpected rejections: {rejected:?}");
}

async fn docs(f: &FerretDb, collection: &str) -> Vec<Document> {
    let client = mongodb::Client::with_uri_str(f.uri()).await.unwrap();
    let mut out: Vec<Document> =
        client.database("shop").collection::<Document>(collection).find(doc! {}).await.unwrap().try_collect().await.unwrap();
    out.sort_by_key(|d| d.get("_id").map(|b| b.to_string()));
    for d in &mut out {
        d.remove("_pgfanout_version");
    }
    client.shutdown().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_toast_key_changes_and_tombstones() {
    let (_pg, f) = start().await;
    let mut sink = connect(&f, r#"{"collection":"profiles","fields":{"city":"address.city"}}"#).await;
    let long = "648199.3821223196731458777";
    write_ok(
        &mut sink,
        vec![
            T.insert(At(100, 0), &[("id", "1"), ("name", r#""a""#), ("bio", r#""long""#), ("city", r#""Oslo""#), ("n", long)]),
            T.insert(At(100, 1), &[("id", "2"), ("name", r#""b""#), ("bio", r#""x""#), ("city", "null"), ("n", "1")]),
        ],
    )
    .await;
    assert_eq!(
        docs(&f, "profiles").await,
        vec![
            doc! {"_id": 1, "id": 1, "name": "a", "bio": "long", "address": {"city": "Oslo"}, "n": long},
            doc! {"_id": 2, "id": 2, "name": "b", "bio": "x", "address": {"city": Bson::Null}, "n": 1},
        ]
    );
    // Unchanged TOAST: a $set of the columns sent; the stored bio stays.
    write_ok(&mut sink, vec![T.update(At(200, 0), &[("id", "1"), ("name", r#""a2""#), ("city", r#""Bergen""#), ("n", "2")], &["bio"])])
        .await;
    // A replay of the older insert is skipped.
    write_ok(
        &mut sink,
        vec![T.insert(At(100, 0), &[("id", "1"), ("name", r#""old""#), ("bio", r#""old""#), ("city", "null"), ("n", "0")])],
    )
    .await;
    assert_eq!(docs(&f, "profiles").await[0], doc! {"_id": 1, "id": 1, "name": "a2", "bio": "long", "address": {"city": "Bergen"}, "n": 2});
    // A key change with unchanged TOAST moves the document, bio and all.
    let moved = T.change(
        Op::Update,
        At(300, 0),
        row(&[("id", "3")]),
        Some(row(&[("id", "1")])),
        Some(row(&[("id", "3"), ("name", r#""a3""#), ("city", r#""Bergen""#), ("n", "3")])),
        &["bio"],
    );
    write_ok(&mut sink, vec![moved]).await;
    let all = docs(&f, "profiles").await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[1], doc! {"_id": 3, "name": "a3", "bio": "long", "address": {"city": "Bergen"}, "n": 3, "id": 3});
    // Delete, then a replay of an older write of it: the tombstone keeps it gone.
    write_ok(&mut sink, vec![T.delete(At(400, 0), &[("id", "2")])]).await;
    write_ok(&mut sink, vec![T.insert(At(100, 1), &[("id", "2"), ("name", r#""b""#), ("bio", r#""x""#), ("city", "null"), ("n", "1")])])
        .await;
    // A replayed partial change of the moved-away document is superseded.
    write_ok(&mut sink, vec![T.update(At(200, 0), &[("id", "1"), ("name", r#""a2""#), ("city", r#""Bergen""#), ("n", "2")], &["bio"])])
        .await;
    let all = docs(&f, "profiles").await;
    assert_eq!(all.iter().map(|d| d.get("_id").cloned().unwrap()).collect::<Vec<_>>(), vec![Bson::Int32(3)]);
    // A partial change of a document never stored is refused (dead letter).
    let rejected = sink.write(&records(vec![T.update(At(500, 0), &[("id", "9"), ("name", r#""z""#)], &["bio"])], 0)).await.unwrap();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(rejected[0].error.contains("profiles/9"), "{}", rejected[0].error);
}

/// Documents written before a restart of the server (and by another sink
/// instance, as after a crash of pgfanout) are found again: a partial
/// change of one is a `$set`, not a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_found_again_after_a_server_restart() {
    use testkit::Server;
    let (_pg, f) = start().await;
    let mapping = r#"{"collection":"products"}"#;
    let mut sink = connect(&f, mapping).await;
    let inserts = (1..=40).map(|i| T.insert(At(100, i), &[("id", &i.to_string()), ("name", r#""a""#), ("bio", r#""long""#)])).collect();
    write_ok(&mut sink, inserts).await;
    drop(sink);
    tokio::task::block_in_place(|| {
        f.stop();
        f.start_server();
    });
    let mut sink = connect(&f, mapping).await;
    let updates = (1..=40).map(|i| T.update(At(200, i), &[("id", &i.to_string()), ("name", r#""b""#)], &["bio"])).collect();
    write_ok(&mut sink, updates).await;
    let all = docs(&f, "products").await;
    assert_eq!(all.len(), 40);
    assert!(all.iter().all(|d| d.get_str("name") == Ok("b") && d.get_str("bio") == Ok("long")), "{all:?}");
}
