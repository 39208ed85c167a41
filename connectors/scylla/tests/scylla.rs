//! The ScyllaDB sink against a real Apache Cassandra 5.0 node (testkit).
//! ScyllaDB itself cannot run on the test machines; Cassandra speaks the
//! same CQL protocol and has the same `USING TIMESTAMP` semantics.
//!
//! Each test feeds hand-built changes to `ScyllaSink::write` and reads the
//! tables back with the driver.

use pgfanout_scylla::{ScyllaError, ScyllaMapping, ScyllaSettings, ScyllaSink};
use pgfanout_sdk::testing::{records, row, At, Table};
use pgfanout_sdk::{Op, Sink, SinkError};
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

/// Every change here is of `public.items`.
const T: Table = Table("items");

#[path = "../../../tests/common/scylla.rs"]
mod cql;

use cql::{select, select_one};

const ITEMS: &str = r#"{"table":"items","columns":{"id":"id","name":"name","bio":"bio","qty":"qty","price":"price","tags":"tags"},
    "partition_key":["id"],"types":{"id":"int","qty":"bigint","price":"decimal","tags":"list<text>"}}"#;

type Item = (i32, Option<String>, Option<String>, Option<i64>);

async fn items(session: &Session, ks: &str) -> Vec<Item> {
    let mut rows: Vec<Item> = select(session, format!("SELECT id, name, bio, qty FROM {ks}.items")).await;
    rows.sort();
    rows
}

#[tokio::test]
async fn upsert_mirrors_rows_with_toast_key_changes_deletes_and_replays() {
    let ks = "upsert_ks";
    let mut sink = ScyllaSink::connect(&settings(ks, ""), &[mapping(ITEMS)]).await.expect("connect");
    let history = vec![
        T.insert(
            At(1000, 0),
            &[("id", "1"), ("name", "\"a\""), ("bio", "\"long\""), ("qty", "1"), ("price", "12.50"), ("tags", "[\"x\"]")],
        ),
        T.insert(At(1000, 1), &[("id", "2"), ("name", "\"b\""), ("bio", "\"big\""), ("qty", "2"), ("price", "1e2"), ("tags", "[]")]),
        // Unchanged TOAST: bio absent, must stay "long".
        T.update(At(2000, 0), &[("id", "1"), ("name", "\"a2\""), ("qty", "null")], &["bio"]),
        // Key change 2 -> 3: the old row goes.
        T.change(
            Op::Update,
            At(2000, 1),
            row(&[("id", "3")]),
            Some(row(&[("id", "2")])),
            Some(row(&[("id", "3"), ("name", "\"c\""), ("bio", "\"big\""), ("qty", "3")])),
            &[],
        ),
        // Within one transaction: insert, delete, insert again, update.
        T.insert(At(3000, 0), &[("id", "4"), ("name", "\"d\""), ("bio", "\"x\""), ("qty", "4")]),
        T.delete(At(3000, 1), &[("id", "4")]),
        T.insert(At(3000, 2), &[("id", "4"), ("name", "\"d2\""), ("qty", "5")]),
        T.update(At(3000, 3), &[("id", "4"), ("name", "\"d3\"")], &["bio", "qty"]),
        T.insert(At(4000, 0), &[("id", "5"), ("name", "\"e\"")]),
        T.delete(At(5000, 0), &[("id", "5")]),
    ];
    let expected = vec![
        (1, Some("a2".to_string()), Some("long".to_string()), None),
        (3, Some("c".to_string()), Some("big".to_string()), Some(3)),
        (4, Some("d3".to_string()), None, Some(5)),
    ];
    assert_eq!(sink.write(&records(history.clone(), 0)).await.unwrap(), vec![]);
    let session = client().await;
    assert_eq!(items(&session, ks).await, expected);
    // A replay of everything (a crash before the flush was confirmed) and a
    // replay one change at a time (each transaction's batches split) change nothing.
    let mut replay = ScyllaSink::connect(&settings(ks, ""), &[mapping(ITEMS)]).await.unwrap();
    assert_eq!(replay.write(&records(history.clone(), 0)).await.unwrap(), vec![]);
    assert_eq!(items(&session, ks).await, expected);
    let mut one_by_one = ScyllaSink::connect(&settings(ks, ""), &[mapping(ITEMS)]).await.unwrap();
    for c in history {
        assert_eq!(one_by_one.write(&records(vec![c], 0)).await.unwrap(), vec![]);
    }
    assert_eq!(items(&session, ks).await, expected);
    // An old change arriving late loses.
    sink.write(&records(vec![T.insert(At(1000, 0), &[("id", "5"), ("name", "\"zombie\"")])], 0)).await.unwrap();
    assert_eq!(items(&session, ks).await, expected);
}

#[tokio::test]
async fn a_value_that_does_not_fit_is_rejected_alone() {
    let ks = "reject_ks";
    let mut sink = ScyllaSink::connect(&settings(ks, ""), &[mapping(ITEMS)]).await.expect("connect");
    let batch = records(
        vec![
            T.insert(At(1000, 0), &[("id", "1"), ("name", "\"ok\""), ("qty", "1")]),
            T.insert(At(1000, 1), &[("id", "2"), ("name", "\"bad\""), ("qty", "\"many\"")]),
            T.insert(At(1000, 2), &[("id", "3"), ("price", "\"NaN\"")]),
            T.insert(At(1000, 3), &[("id", "99999999999"), ("name", "\"too big a key\"")]),
            T.insert(At(1000, 4), &[("id", "4"), ("name", "\"ok too\"")]),
        ],
        0,
    );
    let rejected = sink.write(&batch).await.unwrap();
    assert_eq!(rejected.iter().map(|r| r.index).collect::<Vec<_>>(), vec![1, 2, 3], "{rejected:?}");
    let ids: Vec<i32> = items(&client().await, ks).await.into_iter().map(|r| r.0).collect();
    assert_eq!(ids, vec![1, 4]);
}

#[tokio::test]
async fn append_writes_one_row_per_change_and_replays_do_not_duplicate() {
    let ks = "feed_ks";
    let feed = r#"{"table":"activity_feed","mode":"append","ops":["insert","update"],
        "columns":{"user_id":"user_id","event_time":"$commit_ts","day":"$commit_ts","position":"$position","action":"{table}.{op}","details":"$row"},
        "partition_key":["user_id"],"clustering_key":["event_time","position"],"clustering_order":"desc",
        "types":{"user_id":"bigint","event_time":"timestamp","day":"date"},"ttl":"30d"}"#;
    let mut sink = ScyllaSink::connect(&settings(ks, ""), &[mapping(feed)]).await.expect("connect");
    let mk = |op: Op, at: At, user: &str, status: &str| {
        let r = row(&[("id", "1"), ("user_id", user), ("status", status)]);
        T.change(op, at, row(&[("id", "1")]), None, Some(r), &[])
    };
    let history = vec![
        mk(Op::Insert, At(1000, 0), "7", "\"new\""),
        mk(Op::Update, At(1000, 1), "7", "\"paid\""),
        mk(Op::Insert, At(2000, 0), "8", "\"new\""),
        mk(Op::Update, At(3000, 0), "7", "\"shipped\""),
        {
            let key = row(&[("id", "1"), ("user_id", "7")]);
            T.change(Op::Delete, At(4000, 0), key.clone(), Some(key), None, &[])
        },
    ];
    sink.write(&records(history.clone(), 0)).await.unwrap();
    sink.write(&records(history.clone(), 0)).await.unwrap();
    let mut again = ScyllaSink::connect(&settings(ks, ""), &[mapping(feed)]).await.unwrap();
    again.write(&records(history[1..].to_vec(), 0)).await.unwrap();
    let session = client().await;
    let rows: Vec<(String, String)> =
        select(&session, format!("SELECT action, details FROM {ks}.activity_feed WHERE user_id = 7 LIMIT 10")).await;
    let statuses: Vec<&str> = rows.iter().map(|(_, d)| d.split("\"status\":\"").nth(1).unwrap().split('"').next().unwrap()).collect();
    assert_eq!(statuses, vec!["shipped", "paid", "new"], "{rows:?}");
    assert_eq!(rows[0].0, "items.update");
    let (ttl,): (Option<i32>,) = select_one(&session, format!("SELECT TTL(action) FROM {ks}.activity_feed WHERE user_id = 8")).await;
    assert!(ttl.is_some_and(|t| t > 29 * 86_400), "{ttl:?}");
    // `$commit_ts` in a date column: the commit's UTC day (1_700_000_000 s is in day 19_675).
    let (day,): (scylla::value::CqlDate,) = select_one(&session, format!("SELECT day FROM {ks}.activity_feed WHERE user_id = 8")).await;
    assert_eq!(day.0, (1 << 31) + 19_675);
}

#[tokio::test]
async fn missing_tables_and_columns_are_permanent_with_the_fix() {
    let ks = "missing_ks";
    let s: ScyllaSettings =
        serde_json::from_str(&format!(r#"{{"nodes":["{}"],"keyspace":"{ks}"}}"#, CassandraNode::shared().contact_point())).unwrap();
    let m = mapping(r#"{"table":"nope","columns":{"id":"id"}}"#);
    let err = SinkError::from(ScyllaSink::connect(&s, std::slice::from_ref(&m)).await.err().expect("no keyspace"));
    assert!(matches!(&err, SinkError::Permanent(e) if e.contains("keyspace missing_ks does not exist")), "{err}");
    // Create the keyspace and a table without one mapped column.
    let _ = ScyllaSink::connect(&settings(ks, ""), &[mapping(r#"{"table":"t","columns":{"id":"id","a":"a"},"partition_key":["id"]}"#)])
        .await
        .unwrap();
    let err =
        SinkError::from(ScyllaSink::connect(&s, &[mapping(r#"{"table":"t","columns":{"id":"id","a":"a","b":"b"}}"#)]).await.err().unwrap());
    assert!(matches!(&err, SinkError::Permanent(e) if e.contains("column b does not exist")), "{err}");
    let err = SinkError::from(ScyllaSink::connect(&s, &[m]).await.err().unwrap());
    assert!(matches!(&err, SinkError::Permanent(e) if e.contains("table missing_ks.nope does not exist")), "{err}");
    let err = SinkError::from(ScyllaSink::connect(&s, &[mapping(r#"{"table":"t","columns":{"a":"a"}}"#)]).await.err().unwrap());
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
    assert!(err.is_retriable() && matches!(err, ScyllaError::Connect { .. }), "{err:?}");
    assert!(SinkError::from(err).is_retriable());
}

const ZOO: &str = r#"{"table":"zoo","columns":{"id":"id","d":"d","ts":"ts","t":"t","addr":"addr","ints":"ints","fz":"ints","tags":"tags",
    "n":"n","big":"big","f":"f","fl":"fl","body":"body"},
    "partition_key":["id"],"types":{"id":"int","d":"date","ts":"timestamp","t":"time","addr":"inet","ints":"list<int>",
    "fz":"frozen<list<int>>","tags":"set<text>","n":"decimal","big":"varint","f":"double","fl":"float"}}"#;

/// Values at PostgreSQL's edges go through Cassandra and back exactly as
/// the type mapping says, the verifier (the same mapping) sees no
/// difference, and each value a column cannot hold rejects its record alone.
#[tokio::test]
async fn edge_values_round_trip_and_the_verifier_agrees() {
    let ks = "zoo_ks";
    let mut sink = ScyllaSink::connect(&settings(ks, ""), &[mapping(ZOO)]).await.expect("connect");
    let n400 = format!("\"{}\"", "9".repeat(400));
    let frac = format!("-0.{}1", "0".repeat(398));
    let good = vec![
        T.insert(
            At(1000, 0),
            &[("id", "1"), ("d", "\"0044-03-15 BC\""), ("ts", "\"0001-01-01T00:00:00 BC\""), ("t", "\"23:59:59.999999\"")],
        ),
        T.insert(
            At(1000, 1),
            &[("id", "2"), ("d", "\"4714-11-24 BC\""), ("ts", "\"294276-12-31T23:59:59.999999\""), ("addr", "\"10.0.0.1/32\"")],
        ),
        T.insert(
            At(1000, 2),
            &[("id", "3"), ("d", "\"5874897-12-31\""), ("ts", "\"2024-02-29T01:02:03.123456+00:00\""), ("addr", "\"2001:db8::1\"")],
        ),
        T.insert(
            At(1000, 3),
            &[("id", "4"), ("ints", "[]"), ("tags", "[]"), ("n", &n400.replace('"', "")), ("big", &format!("-{}", n400.replace('"', "")))],
        ),
        T.insert(
            At(1000, 4),
            &[("id", "5"), ("ints", "[1,2,3]"), ("tags", "[\"b\",\"a\",\"b\"]"), ("n", &frac), ("f", "\"NaN\""), ("fl", "\"-Infinity\"")],
        ),
        T.insert(At(1000, 5), &[("id", "6"), ("n", "12.50"), ("big", "0"), ("f", "0.1"), ("fl", "0.1"), ("body", "\"x\"")]),
    ];
    let bad = vec![
        T.insert(At(1000, 6), &[("id", "101"), ("d", "\"infinity\"")]),
        T.insert(At(1000, 7), &[("id", "102"), ("ts", "\"-infinity\"")]),
        T.insert(At(1000, 8), &[("id", "103"), ("addr", "\"2001:db8::1/64\"")]),
        T.insert(At(1000, 9), &[("id", "104"), ("ints", "[1,null]")]),
        T.insert(At(1000, 10), &[("id", "105"), ("n", "\"NaN\"")]),
        T.insert(At(1000, 11), &[("id", "106"), ("t", "\"24:00:00\"")]),
        T.insert(At(1000, 12), &[("id", "107"), ("fl", "1e39")]),
        T.insert(At(1000, 13), &[("id", "108"), ("big", "1.5")]),
    ];
    let batch = records(good.iter().chain(&bad).cloned(), 0);
    let rejected = sink.write(&batch).await.unwrap();
    assert_eq!(rejected.iter().map(|r| r.index).collect::<Vec<_>>(), (6..14).collect::<Vec<_>>(), "{rejected:?}");
    assert!(rejected[0].error.contains("infinity has no CQL value"), "{rejected:?}");
    assert!(rejected[2].error.contains("network prefix (/64)"), "{rejected:?}");

    let session = client().await;
    let read = |cql: String| {
        let session = &session;
        async move { select_one::<scylla::value::Row>(session, cql).await.columns }
    };
    use scylla::value::{CqlDate, CqlTimestamp, CqlValue};
    let r1 = read(format!("SELECT d, ts FROM {ks}.zoo WHERE id = 1")).await;
    assert_eq!(
        r1,
        vec![Some(CqlValue::Date(CqlDate((1 << 31) - 735_160))), Some(CqlValue::Timestamp(CqlTimestamp(-719_528 * 86_400_000)))]
    );
    let r2 = read(format!("SELECT d, ts, addr FROM {ks}.zoo WHERE id = 2")).await;
    assert_eq!(r2[0], Some(CqlValue::Date(CqlDate((1 << 31) - 2_440_588))));
    assert_eq!(r2[1], Some(CqlValue::Timestamp(CqlTimestamp(9_224_318_015_999_999))));
    assert_eq!(r2[2], Some(CqlValue::Inet("10.0.0.1".parse().unwrap())));
    let r4 = read(format!("SELECT ints, fz, tags, n, big FROM {ks}.zoo WHERE id = 4")).await;
    assert_eq!(&r4[..3], &[None, Some(CqlValue::List(vec![])), None], "empty: null, frozen: []");
    let Some(CqlValue::Decimal(d)) = &r4[3] else { panic!("{r4:?}") };
    assert_eq!(d.as_signed_be_bytes_slice_and_exponent().1, 0);
    let r5 = read(format!("SELECT tags FROM {ks}.zoo WHERE id = 5")).await;
    assert_eq!(r5[0], Some(CqlValue::Set(vec![CqlValue::Text("a".into()), CqlValue::Text("b".into())])));

    // The verifier expects, through the same mapping, exactly what is stored.
    let settings_json = serde_json::json!({"nodes":[CassandraNode::shared().contact_point()],"keyspace":ks});
    let mapping_json: serde_json::Value = serde_json::from_str(ZOO).unwrap();
    let mappings = [Some(&mapping_json)];
    let input = pgfanout_sdk::SinkInput { name: "zoo", settings: &settings_json, mappings: &mappings };
    let configured = pgfanout_sdk::Connector::configure(&pgfanout_scylla::CONNECTOR, &input).map_err(|_| "configure").unwrap();
    let mut verifier = configured.verifier(0).await.unwrap();
    let mut expected = Vec::new();
    for r in records(good.clone(), 0) {
        expected.extend(verifier.expect(&r).unwrap());
    }
    let ids: Vec<String> = expected.iter().map(|e| e.id.clone()).collect();
    let stored = verifier.read(&ids).await.unwrap();
    for (e, s) in expected.iter().zip(&stored) {
        assert_eq!(Some(&e.value), s.as_ref(), "{}", e.id);
    }
    let n = &stored[3].as_ref().unwrap()["n"];
    assert_eq!(n, &serde_json::json!("9".repeat(400)), "decimals compared as their digits");
    assert_eq!(stored[4].as_ref().unwrap()["n"], serde_json::json!(frac));
    assert_eq!(stored[0].as_ref().unwrap()["d"], serde_json::json!("0044-03-15 BC"));
    for r in records(bad, 0) {
        assert!(verifier.expect(&r).is_err(), "a dead-lettered row is not mappable");
    }
    // A different stored value is seen, however small the difference.
    session.query_unpaged(format!("UPDATE {ks}.zoo USING TIMESTAMP 1000 SET n = 12.500 WHERE id = 6"), ()).await.unwrap();
    let again = verifier.read(&ids[5..6]).await.unwrap();
    assert_eq!(again[0].as_ref().unwrap()["n"], serde_json::json!("12.500"));
    assert_ne!(again[0], stored[5]);
}

/// A value too large for the store (Cassandra refuses mutations above half
/// a commit log segment, 16 MiB by default) rejects its record alone and
/// does not stop the sink.
#[tokio::test]
async fn an_oversized_value_is_rejected_alone() {
    let ks = "oversize_ks";
    let mut sink = ScyllaSink::connect(&settings(ks, ""), &[mapping(ZOO)]).await.expect("connect");
    let huge = format!("\"{}\"", "x".repeat(40 << 20));
    let batch = records(
        vec![
            T.insert(At(1000, 0), &[("id", "1"), ("body", "\"small\"")]),
            T.insert(At(1000, 1), &[("id", "2"), ("body", &huge)]),
            T.insert(At(1000, 2), &[("id", "3"), ("body", "\"small\"")]),
        ],
        0,
    );
    let rejected = tokio::time::timeout(std::time::Duration::from_secs(120), sink.write(&batch)).await.expect("not stuck").unwrap();
    assert_eq!(rejected.iter().map(|r| r.index).collect::<Vec<_>>(), vec![1], "{rejected:?}");
    let rows: Vec<(i32,)> = select(&client().await, format!("SELECT id FROM {ks}.zoo")).await;
    let mut ids: Vec<i32> = rows.into_iter().map(|r| r.0).collect();
    ids.sort();
    assert_eq!(ids, vec![1, 3]);
}
