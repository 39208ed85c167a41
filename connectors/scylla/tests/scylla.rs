//! The ScyllaDB sink against a real Apache Cassandra 5.0 node (testkit).
//! ScyllaDB itself cannot run on the test machines; Cassandra speaks the
//! same CQL protocol and has the same `USING TIMESTAMP` semantics.
//!
//! Each test feeds hand-built changes to `ScyllaSink::write` and reads the
//! tables back with the driver.

use std::sync::Arc;

use pgfanout_scylla::{ScyllaMapping, ScyllaSettings, ScyllaSink};
use pgfanout_sdk::{Change, Lsn, Op, Row, Sink, SinkError, SinkRecord, Value};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use testkit::CassandraNode;

fn settings(keyspace: &str, extra: &str) -> ScyllaSettings {
    let node = CassandraNode::shared();
    serde_json::from_str(&format!(r#"{{"nodes":["{}"],"keyspace":"{keyspace}","create":true{extra}}}"#, node.contact_point())).unwrap()
}

fn mapping(json: &str) -> ScyllaMapping {
    serde_json::from_str(json).expect("mapping")
}

async fn client() -> Session {
    SessionBuilder::new().known_node(CassandraNode::shared().contact_point()).build().await.unwrap()
}

fn row(cols: &[(&str, &str)]) -> Row {
    Row(cols.iter().map(|(c, v)| (Arc::from(*c), Value::from_serde(&serde_json::from_str(v).unwrap()))).collect())
}

/// (commit_lsn, ordinal)
struct At(u64, u32);

fn change(op: Op, at: At, key: Row, before: Option<Row>, after: Option<Row>, toast: &[&str]) -> Change {
    Change {
        op,
        schema: "public".into(),
        table: "items".into(),
        key: Some(key),
        before,
        after,
        unchanged_toast: toast.iter().map(|c| Arc::from(*c)).collect(),
        lsn: Lsn(at.0),
        commit_lsn: Lsn(at.0),
        ordinal: at.1,
        xid: Some(1),
        commit_ts: Some(1_700_000_000_000_000 + at.0 as i64),
    }
}

fn ins(at: At, after: &[(&str, &str)]) -> Change {
    change(Op::Insert, at, row(&after[..1]), None, Some(row(after)), &[])
}

fn upd(at: At, after: &[(&str, &str)], toast: &[&str]) -> Change {
    change(Op::Update, at, row(&after[..1]), None, Some(row(after)), toast)
}

fn del(at: At, key: &[(&str, &str)]) -> Change {
    change(Op::Delete, at, row(key), Some(row(key)), None, &[])
}

fn records(changes: Vec<Change>) -> Vec<SinkRecord> {
    changes.into_iter().map(|c| SinkRecord { change: Arc::new(c), route: 0 }).collect()
}

const ITEMS: &str = r#"{"table":"items","columns":{"id":"id","name":"name","bio":"bio","qty":"qty","price":"price","tags":"tags"},
    "partition_key":["id"],"types":{"id":"int","qty":"bigint","price":"decimal","tags":"list<text>"}}"#;

type Item = (i32, Option<String>, Option<String>, Option<i64>);

async fn items(session: &Session, ks: &str) -> Vec<Item> {
    let mut rows: Vec<Item> = session
        .query_unpaged(format!("SELECT id, name, bio, qty FROM {ks}.items"), ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows()
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn upsert_mirrors_rows_with_toast_key_changes_deletes_and_replays() {
    let ks = "upsert_ks";
    let mut sink = ScyllaSink::connect(&settings(ks, ""), &[mapping(ITEMS)]).await.expect("connect");
    let history = vec![
        ins(At(1000, 0), &[("id", "1"), ("name", "\"a\""), ("bio", "\"long\""), ("qty", "1"), ("price", "12.50"), ("tags", "[\"x\"]")]),
        ins(At(1000, 1), &[("id", "2"), ("name", "\"b\""), ("bio", "\"big\""), ("qty", "2"), ("price", "1e2"), ("tags", "[]")]),
        // Unchanged TOAST: bio absent, must stay "long".
        upd(At(2000, 0), &[("id", "1"), ("name", "\"a2\""), ("qty", "null")], &["bio"]),
        // Key change 2 -> 3: the old row goes.
        change(
            Op::Update,
            At(2000, 1),
            row(&[("id", "3")]),
            Some(row(&[("id", "2")])),
            Some(row(&[("id", "3"), ("name", "\"c\""), ("bio", "\"big\""), ("qty", "3")])),
            &[],
        ),
        // Within one transaction: insert, delete, insert again, update.
        ins(At(3000, 0), &[("id", "4"), ("name", "\"d\""), ("bio", "\"x\""), ("qty", "4")]),
        del(At(3000, 1), &[("id", "4")]),
        ins(At(3000, 2), &[("id", "4"), ("name", "\"d2\""), ("qty", "5")]),
        upd(At(3000, 3), &[("id", "4"), ("name", "\"d3\"")], &["bio", "qty"]),
        ins(At(4000, 0), &[("id", "5"), ("name", "\"e\"")]),
        del(At(5000, 0), &[("id", "5")]),
    ];
    let expected = vec![
        (1, Some("a2".to_string()), Some("long".to_string()), None),
        (3, Some("c".to_string()), Some("big".to_string()), Some(3)),
        (4, Some("d3".to_string()), None, Some(5)),
    ];
    assert_eq!(sink.write(&records(history.clone())).await.unwrap(), vec![]);
    let session = client().await;
    assert_eq!(items(&session, ks).await, expected);
    // A replay of everything (a crash before the flush was confirmed) and a
    // replay one change at a time (each transaction's batches split) change nothing.
    let mut replay = ScyllaSink::connect(&settings(ks, ""), &[mapping(ITEMS)]).await.unwrap();
    assert_eq!(replay.write(&records(history.clone())).await.unwrap(), vec![]);
    assert_eq!(items(&session, ks).await, expected);
    let mut one_by_one = ScyllaSink::connect(&settings(ks, ""), &[mapping(ITEMS)]).await.unwrap();
    for c in history {
        assert_eq!(one_by_one.write(&records(vec![c])).await.unwrap(), vec![]);
    }
    assert_eq!(items(&session, ks).await, expected);
    // An old change arriving late loses.
    sink.write(&records(vec![ins(At(1000, 0), &[("id", "5"), ("name", "\"zombie\"")])])).await.unwrap();
    assert_eq!(items(&session, ks).await, expected);
}

#[tokio::test]
async fn a_value_that_does_not_fit_is_rejected_alone() {
    let ks = "reject_ks";
    let mut sink = ScyllaSink::connect(&settings(ks, ""), &[mapping(ITEMS)]).await.expect("connect");
    let batch = records(vec![
        ins(At(1000, 0), &[("id", "1"), ("name", "\"ok\""), ("qty", "1")]),
        ins(At(1000, 1), &[("id", "2"), ("name", "\"bad\""), ("qty", "\"many\"")]),
        ins(At(1000, 2), &[("id", "3"), ("price", "\"NaN\"")]),
        ins(At(1000, 3), &[("id", "99999999999"), ("name", "\"too big a key\"")]),
        ins(At(1000, 4), &[("id", "4"), ("name", "\"ok too\"")]),
    ]);
    let rejected = sink.write(&batch).await.unwrap();
    assert_eq!(rejected.iter().map(|r| r.index).collect::<Vec<_>>(), vec![1, 2, 3], "{rejected:?}");
    let ids: Vec<i32> = items(&client().await, ks).await.into_iter().map(|r| r.0).collect();
    assert_eq!(ids, vec![1, 4]);
}

#[tokio::test]
async fn append_writes_one_row_per_change_and_replays_do_not_duplicate() {
    let ks = "feed_ks";
    let feed = r#"{"table":"activity_feed","mode":"append","ops":["insert","update"],
        "columns":{"user_id":"user_id","event_time":"$commit_ts","position":"$position","action":"{table}.{op}","details":"$row"},
        "partition_key":["user_id"],"clustering_key":["event_time","position"],"clustering_order":"desc",
        "types":{"user_id":"bigint","event_time":"timestamp"},"ttl":"30d"}"#;
    let mut sink = ScyllaSink::connect(&settings(ks, ""), &[mapping(feed)]).await.expect("connect");
    let mk = |op: Op, at: At, user: &str, status: &str| {
        let r = row(&[("id", "1"), ("user_id", user), ("status", status)]);
        change(op, at, row(&[("id", "1")]), None, Some(r), &[])
    };
    let history = vec![
        mk(Op::Insert, At(1000, 0), "7", "\"new\""),
        mk(Op::Update, At(1000, 1), "7", "\"paid\""),
        mk(Op::Insert, At(2000, 0), "8", "\"new\""),
        mk(Op::Update, At(3000, 0), "7", "\"shipped\""),
        del(At(4000, 0), &[("id", "1"), ("user_id", "7")]),
    ];
    sink.write(&records(history.clone())).await.unwrap();
    sink.write(&records(history.clone())).await.unwrap();
    let mut again = ScyllaSink::connect(&settings(ks, ""), &[mapping(feed)]).await.unwrap();
    again.write(&records(history[1..].to_vec())).await.unwrap();
    let session = client().await;
    let rows: Vec<(String, String)> = session
        .query_unpaged(format!("SELECT action, details FROM {ks}.activity_feed WHERE user_id = 7 LIMIT 10"), ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows()
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let statuses: Vec<&str> = rows.iter().map(|(_, d)| d.split("\"status\":\"").nth(1).unwrap().split('"').next().unwrap()).collect();
    assert_eq!(statuses, vec!["shipped", "paid", "new"], "{rows:?}");
    assert_eq!(rows[0].0, "items.update");
    let (ttl,): (Option<i32>,) = session
        .query_unpaged(format!("SELECT TTL(action) FROM {ks}.activity_feed WHERE user_id = 8"), ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row()
        .unwrap();
    assert!(ttl.is_some_and(|t| t > 29 * 86_400), "{ttl:?}");
}

#[tokio::test]
async fn missing_tables_and_columns_are_permanent_with_the_fix() {
    let ks = "missing_ks";
    let s: ScyllaSettings =
        serde_json::from_str(&format!(r#"{{"nodes":["{}"],"keyspace":"{ks}"}}"#, CassandraNode::shared().contact_point())).unwrap();
    let m = mapping(r#"{"table":"nope","columns":{"id":"id"}}"#);
    let err = ScyllaSink::connect(&s, std::slice::from_ref(&m)).await.err().expect("no keyspace");
    assert!(matches!(&err, SinkError::Permanent(e) if e.contains("keyspace missing_ks does not exist")), "{err}");
    // Create the keyspace and a table without one mapped column.
    let _ = ScyllaSink::connect(&settings(ks, ""), &[mapping(r#"{"table":"t","columns":{"id":"id","a":"a"},"partition_key":["id"]}"#)])
        .await
        .unwrap();
    let err = ScyllaSink::connect(&s, &[mapping(r#"{"table":"t","columns":{"id":"id","a":"a","b":"b"}}"#)]).await.err().unwrap();
    assert!(matches!(&err, SinkError::Permanent(e) if e.contains("column b does not exist")), "{err}");
    let err = ScyllaSink::connect(&s, &[m]).await.err().unwrap();
    assert!(matches!(&err, SinkError::Permanent(e) if e.contains("table missing_ks.nope does not exist")), "{err}");
    let err = ScyllaSink::connect(&s, &[mapping(r#"{"table":"t","columns":{"a":"a"}}"#)]).await.err().unwrap();
    assert!(matches!(&err, SinkError::Permanent(e) if e.contains("primary key column id is not mapped")), "{err}");
    // doctor, through the connector.
    let settings_json = serde_json::to_value(serde_json::json!({"nodes":[CassandraNode::shared().contact_point()],"keyspace":ks})).unwrap();
    let mapping_json = serde_json::json!({"table":"t","columns":{"id":"id","a":"a","b":"b"}});
    let mappings = [Some(&mapping_json)];
    let input = pgfanout_sdk::SinkInput { name: "feed", settings: &settings_json, mappings: &mappings };
    let configured = pgfanout_sdk::Connector::configure(&pgfanout_scylla::CONNECTOR, &input).map_err(|_| "configure").unwrap();
    let checks = configured.doctor().await;
    assert!(checks.iter().any(|c| c.problem.as_deref().is_some_and(|p| p.contains("column b does not exist"))), "{checks:?}");
}

#[tokio::test]
async fn an_unreachable_cluster_is_retriable() {
    let s: ScyllaSettings = serde_json::from_str(r#"{"nodes":["127.0.0.1:1"],"keyspace":"x","connect_timeout":"1s"}"#).unwrap();
    let err = ScyllaSink::connect(&s, &[]).await.err().unwrap();
    assert!(err.is_retriable(), "{err}");
}
