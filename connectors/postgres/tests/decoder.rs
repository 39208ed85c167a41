//! pgoutput decoding on bytes captured from a real PostgreSQL 15.
//!
//! The live test runs a workload that produces every message kind, reads the
//! slot with `pg_logical_slot_peek_binary_changes` (each row is exactly one
//! pgoutput message, as in XLogData), decodes it and builds the changes. The
//! fixture test replays a stream captured the same way (regenerate it with
//! `PGFANOUT_WRITE_FIXTURES=1`), so the decoder is also checked offline.

use std::path::PathBuf;

use bytes::Bytes;
use pgfanout_postgres::pgoutput::{self, LogicalMessage, TupleValue};
use pgfanout_sdk::{Lsn, Value};
use testkit::PgCluster;

#[path = "support/replay.rs"]
mod replay;

const SESSION: &str = "SET DateStyle = ISO; SET TimeZone = 'UTC'; SET IntervalStyle = postgres; \
    SET extra_float_digits = 3; SET bytea_output = hex; SET synchronous_commit = on;";

const SCHEMA: &str = "
CREATE TYPE color AS ENUM ('red', 'green');
CREATE TYPE pt AS (x int, y int);
CREATE TABLE items (id int PRIMARY KEY, name text, big text, c color, p pt);
ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE full_t (id int PRIMARY KEY, v text) ;
ALTER TABLE full_t REPLICA IDENTITY FULL;
CREATE TABLE nopk (a int, b text);
ALTER TABLE nopk REPLICA IDENTITY FULL;
CREATE PUBLICATION dec_pub FOR TABLE items, full_t, nopk;
";

/// Each statement is its own transaction.
const WORKLOAD: &[&str] = &[
    "INSERT INTO items VALUES (1, 'a', (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 200)), 'red', ROW(1, 2))",
    "UPDATE items SET name = 'b' WHERE id = 1",
    "UPDATE items SET id = 2 WHERE id = 1",
    "INSERT INTO full_t VALUES (1, 'x')",
    "UPDATE full_t SET v = 'y' WHERE id = 1",
    "DELETE FROM items WHERE id = 2",
    "DELETE FROM full_t WHERE id = 1",
    "INSERT INTO nopk VALUES (7, 'seven')",
    "DELETE FROM nopk WHERE a = 7",
    "SELECT pg_logical_emit_message(true, 'pgfanout', 'hello')",
    "SELECT pg_logical_emit_message(false, 'heartbeat', '')",
    "TRUNCATE full_t, nopk RESTART IDENTITY",
    "ALTER TABLE items ADD COLUMN extra int DEFAULT 5",
    "INSERT INTO items (id, name, extra) VALUES (3, 'c', 7)",
];

fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pgoutput_v1_session.hex")
}

async fn capture() -> (PgCluster, tokio_postgres::Client, Vec<(Lsn, Bytes)>) {
    let pg = PgCluster::start();
    let db = pg.create_database("decoder").await;
    let client = pg.client(&db).await;
    client.batch_execute(SESSION).await.unwrap();
    client.batch_execute(SCHEMA).await.unwrap();
    client.batch_execute("SELECT pg_create_logical_replication_slot('dec_slot', 'pgoutput')").await.unwrap();
    for sql in WORKLOAD {
        client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let rows = client
        .query(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes('dec_slot', NULL, NULL, \
             'proto_version', '1', 'publication_names', 'dec_pub', 'messages', 'true')",
            &[],
        )
        .await
        .unwrap();
    let raw = rows.iter().map(|r| (r.get::<_, String>(0).parse().unwrap(), Bytes::from(r.get::<_, Vec<u8>>(1)))).collect();
    (pg, client, raw)
}

fn decode_all(raw: &[(Lsn, Bytes)]) -> Vec<(Lsn, LogicalMessage)> {
    raw.iter().map(|(lsn, b)| (*lsn, pgoutput::decode(b.clone()).unwrap_or_else(|e| panic!("decode at {lsn}: {e}")))).collect()
}

fn kinds(msgs: &[(Lsn, LogicalMessage)]) -> Vec<&'static str> {
    msgs.iter().map(|(_, m)| m.kind()).collect()
}

/// Checks the message sequence and contents of the workload (live or from
/// the fixture): everything except LSNs, xids and timestamps.
fn check_messages(msgs: &[(Lsn, LogicalMessage)]) {
    let k = kinds(msgs);
    for kind in ["Begin", "Commit", "Relation", "Type", "Insert", "Update", "Delete", "Truncate", "Message"] {
        assert!(k.contains(&kind), "no {kind} message in {k:?}");
    }
    // Begin and Commit pair up and agree on the commit LSN.
    let mut open = None;
    for (_, m) in msgs {
        match m {
            LogicalMessage::Begin { final_lsn, commit_ts, xid } => {
                assert!(open.is_none(), "nested Begin");
                assert!(*xid > 0);
                assert!(*commit_ts > 1_600_000_000_000_000, "commit_ts in Unix micros: {commit_ts}");
                open = Some(*final_lsn);
            }
            LogicalMessage::Commit { commit_lsn, end_lsn, flags, .. } => {
                assert_eq!(Some(*commit_lsn), open.take(), "Commit matches Begin");
                assert!(end_lsn > commit_lsn);
                assert_eq!(*flags, 0);
            }
            _ => {}
        }
    }
    // Custom enum and composite columns announce their types.
    let types: Vec<&str> = msgs
        .iter()
        .filter_map(|(_, m)| match m {
            LogicalMessage::Type { name, namespace, .. } => {
                assert_eq!(namespace, "public");
                Some(name.as_str())
            }
            _ => None,
        })
        .collect();
    assert!(types.contains(&"color") && types.contains(&"pt"), "{types:?}");
    // Relation messages: items twice (the ALTER sends a new shape).
    let items: Vec<_> = msgs
        .iter()
        .filter_map(|(_, m)| match m {
            LogicalMessage::Relation(r) if r.name == "items" => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(items.len(), 2, "items described before and after ALTER TABLE");
    assert_eq!(items[0].namespace, "public");
    assert_eq!(items[0].replica_identity, b'd');
    let cols: Vec<_> = items[0].columns.iter().map(|c| (c.name.as_str(), c.is_key, c.type_oid)).collect();
    assert_eq!(cols[..3], [("id", true, 23), ("name", false, 25), ("big", false, 25)]);
    assert_eq!(items[1].columns.len(), 6);
    assert_eq!(items[1].columns[5].name, "extra");
    let full = msgs.iter().find_map(|(_, m)| match m {
        LogicalMessage::Relation(r) if r.name == "full_t" => Some(r),
        _ => None,
    });
    let full = full.expect("full_t relation");
    assert_eq!(full.replica_identity, b'f');
    assert!(full.columns.iter().all(|c| c.is_key), "FULL marks every column");

    let updates: Vec<_> = msgs
        .iter()
        .filter_map(|(_, m)| match m {
            LogicalMessage::Update { old, old_is_key, new, .. } => Some((old, *old_is_key, new)),
            _ => None,
        })
        .collect();
    assert_eq!(updates.len(), 3);
    // UPDATE name: no old tuple, the big column unchanged TOAST.
    assert!(updates[0].0.is_none());
    assert_eq!(updates[0].2 .0[2], TupleValue::UnchangedToast);
    // UPDATE id: key change, 'K' old tuple with only the key set.
    let old = updates[1].0.as_ref().expect("old key");
    assert!(updates[1].1);
    assert_eq!(old.text_at(0), Some(&b"1"[..]));
    assert_eq!(old.0[1], TupleValue::Null);
    // FULL: 'O' old tuple.
    assert!(!updates[2].1);
    assert_eq!(updates[2].0.as_ref().expect("old row").text_at(1), Some(&b"x"[..]));

    let trunc = msgs.iter().find_map(|(_, m)| match m {
        LogicalMessage::Truncate { options, relation_ids } => Some((*options, relation_ids.len())),
        _ => None,
    });
    assert_eq!(trunc, Some((2, 2)), "RESTART IDENTITY, two relations");

    let messages: Vec<_> = msgs
        .iter()
        .filter_map(|(_, m)| match m {
            LogicalMessage::Message { transactional, prefix, content, .. } => Some((*transactional, prefix.as_str(), &content[..])),
            _ => None,
        })
        .collect();
    assert_eq!(messages, [(true, "pgfanout", &b"hello"[..]), (false, "heartbeat", &b""[..])]);
}

fn json(v: Option<&pgfanout_sdk::Row>) -> String {
    match v {
        Some(r) => {
            let mut out = Vec::new();
            r.write_json(&mut out);
            String::from_utf8(out).unwrap()
        }
        None => "null".into(),
    }
}

#[tokio::test]
async fn live_stream_decodes_into_changes() {
    let (_pg, client, raw) = capture().await;
    if std::env::var_os("PGFANOUT_WRITE_FIXTURES").is_some() {
        let text: String = raw.iter().map(|(lsn, b)| format!("{lsn} {}\n", hex::encode(b))).collect();
        std::fs::create_dir_all(fixture_path().parent().unwrap()).unwrap();
        std::fs::write(fixture_path(), text).unwrap();
    }
    let msgs = decode_all(&raw);
    check_messages(&msgs);
    let changes = replay::build_all(&client, msgs).await;
    let summary: Vec<_> = changes.iter().map(|c| format!("{} {}", c.op, c.table)).collect();
    assert_eq!(
        summary,
        [
            "insert items",
            "update items",
            "update items",
            "insert full_t",
            "update full_t",
            "delete items",
            "delete full_t",
            "insert nopk",
            "delete nopk",
            "truncate full_t",
            "truncate nopk",
            "insert items"
        ]
    );
    let c = &changes[0];
    let after = c.after.as_ref().unwrap();
    assert_eq!(after.get("big").map(|v| v.to_template_text().len()), Some(6400));
    assert_eq!(json(c.key.as_ref()), r#"{"id":1}"#);
    assert_eq!(after.get("c"), Some(&Value::String("red".into())));
    assert_eq!(after.get("p").unwrap().to_json_string(), r#"{"x":1,"y":2}"#);
    assert!(c.before.is_none() && c.unchanged_toast.is_empty());
    assert!(c.xid.is_some_and(|x| x > 0));

    // Unchanged TOAST: absent from after, listed, no before.
    let c = &changes[1];
    assert!(!c.after.as_ref().unwrap().contains("big"));
    assert_eq!(c.unchanged_toast, vec![std::sync::Arc::<str>::from("big")]);
    assert_eq!(json(c.after.as_ref()), r#"{"id":1,"name":"b","c":"red","p":{"x":1,"y":2}}"#);
    assert!(c.before.is_none());

    // Key change: before = old key only, key = new key.
    let c = &changes[2];
    assert_eq!(json(c.before.as_ref()), r#"{"id":1}"#);
    assert_eq!(json(c.key.as_ref()), r#"{"id":2}"#);
    assert_eq!(c.unchanged_toast.len(), 1);

    // FULL with a primary key: before = whole old row, key = the primary key.
    let c = &changes[4];
    assert_eq!(json(c.before.as_ref()), r#"{"id":1,"v":"x"}"#);
    assert_eq!(json(c.after.as_ref()), r#"{"id":1,"v":"y"}"#);
    assert_eq!(json(c.key.as_ref()), r#"{"id":1}"#);

    // Delete with default identity: key and before = key columns.
    let c = &changes[5];
    assert_eq!((json(c.key.as_ref()), json(c.before.as_ref()), c.after.is_none()), (r#"{"id":2}"#.into(), r#"{"id":2}"#.into(), true));
    // Delete FULL: whole old row.
    assert_eq!(json(changes[6].before.as_ref()), r#"{"id":1,"v":"y"}"#);
    // FULL without a primary key: key = whole row.
    assert_eq!(json(changes[8].key.as_ref()), r#"{"a":7,"b":"seven"}"#);
    // Truncates: no rows, consecutive ordinals in one transaction.
    assert!(changes[9].key.is_none() && changes[9].after.is_none());
    assert_eq!((changes[9].ordinal, changes[10].ordinal), (0, 1));
    assert_eq!(changes[9].commit_lsn, changes[10].commit_lsn);
    // After ALTER TABLE the new shape is used.
    assert_eq!(json(changes[11].after.as_ref()), r#"{"id":3,"name":"c","big":null,"c":null,"p":null,"extra":7}"#);

    // Positions: commit_lsn from Begin, change LSN below it, ordinals per tx.
    for c in &changes {
        assert!(c.lsn <= c.commit_lsn, "{c:?}");
        assert!(c.commit_ts.unwrap() > 1_600_000_000_000_000);
    }
}

#[test]
fn captured_fixture_decodes() {
    let text = std::fs::read_to_string(fixture_path()).expect("fixture (regenerate with PGFANOUT_WRITE_FIXTURES=1)");
    let raw: Vec<(Lsn, Bytes)> = text
        .lines()
        .map(|l| {
            let (lsn, hex) = l.split_once(' ').expect("'<lsn> <hex>' lines");
            (lsn.parse().expect("lsn"), Bytes::from(hex::decode(hex).expect("hex")))
        })
        .collect();
    let msgs = decode_all(&raw);
    check_messages(&msgs);
    assert_eq!(kinds(&msgs).first(), Some(&"Begin"));
    // Truncating a message anywhere is reported, never a panic or a silent success.
    for (_, b) in &raw {
        for cut in [1, b.len() / 2, b.len() - 1] {
            if cut > 0 && cut < b.len() {
                assert!(pgoutput::decode(b.slice(..cut)).is_err(), "truncated at {cut} of {}", b.len());
            }
        }
    }
}
