//! Router tests: routing by table, pattern and op; filters; every transform.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;

use pgfanout_sdk::{Change, Op, Row, Value};

use super::{Routed, Router};
use crate::config::{load_with_env, Config};

fn config(pipelines: &str) -> Config {
    let yaml = format!(
        "source:\n  postgres:\n    url: postgres://rep:pw@localhost/shop\n\
         sinks:\n  a: {{ type: file, path: a.jsonl }}\n  b: {{ type: file, path: b.jsonl }}\n  cache: {{ type: redis, url: redis://localhost }}\n\
         pipelines:\n{pipelines}"
    );
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(yaml.as_bytes()).unwrap();
    match load_with_env(f.path(), &HashMap::new()) {
        Ok(c) => c,
        Err(e) => panic!("{e}\n{yaml}"),
    }
}

fn router(pipelines: &str) -> Router {
    Router::new(&config(pipelines)).unwrap()
}

fn num(n: &str) -> Value {
    Value::Number(n.into())
}

fn s(v: &str) -> Value {
    Value::String(v.into())
}

fn row(cols: &[(&str, Value)]) -> Row {
    Row(cols.iter().map(|(k, v)| (Arc::from(*k), v.clone())).collect())
}

fn change(op: Op, schema: &str, table: &str, after: Option<Row>) -> Arc<Change> {
    let key = Some(row(&[("id", num("1"))]));
    Arc::new(Change {
        op,
        schema: schema.into(),
        table: table.into(),
        key,
        before: None,
        after,
        unchanged_toast: Vec::new(),
        lsn: "0/10".parse().unwrap(),
        commit_lsn: "0/20".parse().unwrap(),
        ordinal: 0,
        xid: Some(9),
        commit_ts: Some(0),
    })
}

fn user(op: Op) -> Arc<Change> {
    let after = (op != Op::Delete).then(|| row(&[("id", num("1")), ("email", s("a@b.c")), ("name", s("Ann")), ("quantity", num("2"))]));
    change(op, "public", "users", after)
}

/// (sink, route) of deliveries, "DL:<pipeline>" for dead letters.
fn outcome(r: &mut Router, c: &Arc<Change>) -> Vec<String> {
    let mut out = Vec::new();
    r.route(c, &mut out);
    out.iter()
        .map(|o| match o {
            Routed::Deliver { sink, record } => format!("{sink}/{}", record.route),
            Routed::DeadLetter { pipeline, .. } => format!("DL:{pipeline}"),
        })
        .collect()
}

fn delivered(r: &mut Router, c: &Arc<Change>) -> Change {
    let mut out = Vec::new();
    r.route(c, &mut out);
    match out.as_slice() {
        [Routed::Deliver { record, .. }] => Change::clone(&record.change),
        other => panic!("expected one delivery, got {other:?}"),
    }
}

fn dead_letter(r: &mut Router, c: &Arc<Change>) -> String {
    let mut out = Vec::new();
    r.route(c, &mut out);
    match out.as_slice() {
        [Routed::DeadLetter { error, change, .. }] => {
            assert!(Arc::ptr_eq(change, c), "the dead letter carries the original change");
            error.clone()
        }
        other => panic!("expected one dead letter, got {other:?}"),
    }
}

#[test]
fn routes_by_table_pattern_and_op() {
    let mut r = router(
        "  - { name: p1, from: public.users, to: a }\n\
         \x20 - { name: p2, from: [public.orders, shop.*], to: b, ops: [insert] }\n\
         \x20 - { name: p3, from: users, to: b }\n\
         \x20 - { name: p4, from: public.*, to: cache, ops: [delete, truncate], redis: { type: string, key: \"k:{id}\" } }\n",
    );
    assert_eq!(r.sink_names(), vec!["a", "b", "cache"]);
    assert_eq!(r.table_patterns(), vec!["public.users", "public.orders", "shop.*", "public.*"]);
    assert_eq!(outcome(&mut r, &user(Op::Insert)), vec!["0/0", "1/1"]);
    assert_eq!(outcome(&mut r, &user(Op::Delete)), vec!["0/0", "1/1", "2/0"]);
    assert_eq!(outcome(&mut r, &change(Op::Insert, "public", "orders", Some(Row::new()))), vec!["1/0"]);
    assert_eq!(outcome(&mut r, &change(Op::Update, "public", "orders", Some(Row::new()))), Vec::<String>::new());
    assert_eq!(outcome(&mut r, &change(Op::Truncate, "public", "orders", None)), vec!["2/0"]);
    assert_eq!(outcome(&mut r, &change(Op::Insert, "shop", "anything", Some(Row::new()))), vec!["1/0"]);
    assert_eq!(outcome(&mut r, &change(Op::Insert, "other", "users", Some(Row::new()))), Vec::<String>::new());
    // The cache answers the same the second time.
    assert_eq!(outcome(&mut r, &user(Op::Insert)), vec!["0/0", "1/1"]);
    let b = r.routes_for_sink(1);
    assert_eq!(b.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>(), vec!["p2", "p3"]);
}

/// Logical messages route by prefix (`message:p`, `message:*`), never by a
/// table pattern, and pgfanout's own prefixes are not read; they are not
/// tables of the publication. A filter reads the content's fields.
#[test]
fn logical_messages_route_by_prefix() {
    let mut r = router(
        "  - { name: m1, from: \"message:payments\", to: a }\n\
         \x20 - { name: m2, from: [\"message:*\", public.users], to: b, filter: \"op != 'message' || after.amount > 10\" }\n\
         \x20 - { name: t, from: public.*, to: cache, redis: { type: string, key: \"k:{id}\" } }\n",
    );
    assert!(r.reads_messages());
    assert_eq!(r.table_patterns(), vec!["public.users", "public.*"]);
    let message = |prefix: &str, content: &str| Arc::new(Change::message(prefix, content.as_bytes(), 5.into(), 9.into(), 0, 7, 0));
    assert_eq!(outcome(&mut r, &message("payments", r#"{"amount": 12}"#)), vec!["0/0", "1/0"]);
    assert_eq!(outcome(&mut r, &message("payments", r#"{"amount": 3}"#)), vec!["0/0"]);
    assert_eq!(outcome(&mut r, &message("audit", r#"{"amount": 11}"#)), vec!["1/0"]);
    assert_eq!(outcome(&mut r, &message("pgfanout_heartbeat", r#"{"amount": 11}"#)), Vec::<String>::new());
    assert_eq!(outcome(&mut r, &user(Op::Insert)), vec!["1/0", "2/0"]);
    for bad in ["message:", "message:pgfanout_backfill", "pg_message.payments"] {
        assert!(crate::config::TablePattern::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn pipelines_without_transforms_share_the_change() {
    let mut r = router("  - { name: p1, from: users, to: a }\n  - { name: p2, from: users, to: b, filter: \"op == 'insert'\" }\n");
    let c = user(Op::Insert);
    let mut out = Vec::new();
    r.route(&c, &mut out);
    assert_eq!(out.len(), 2);
    for o in &out {
        let Routed::Deliver { record, .. } = o else { panic!("{o:?}") };
        assert!(Arc::ptr_eq(&record.change, &c));
    }
}

#[test]
fn mapping_sections_follow_the_sink() {
    let r = router(
        "  - { name: carts, from: users, to: cache, redis: { type: hash, key: \"user:{id}\" } }\n  - { name: plain, from: users, to: a }\n",
    );
    let routes = r.routes_for_sink(2);
    assert_eq!(routes[0].0.as_ref(), "carts");
    assert_eq!(routes[0].1.as_ref().and_then(|m| m.get("key")).and_then(|k| k.as_str()), Some("user:{id}"));
    assert_eq!(r.routes_for_sink(0)[0].1, None);
    assert!(r.routes_for_sink(1).is_empty());
}

#[test]
fn filters_pass_drop_and_short_circuit() {
    let mut r = router("  - { name: f, from: users, to: a, filter: \"after.quantity > 1 || op == 'delete'\" }\n");
    assert_eq!(outcome(&mut r, &user(Op::Insert)), vec!["0/0"]);
    let small = change(Op::Insert, "public", "users", Some(row(&[("id", num("1")), ("quantity", num("1"))])));
    assert_eq!(outcome(&mut r, &small), Vec::<String>::new());
    // after is null on delete: the left side errors, the right side is true.
    assert_eq!(outcome(&mut r, &user(Op::Delete)), vec!["0/0"]);

    let mut r = router("  - { name: f, from: users, to: a, filter: \"op == 'delete' || after.quantity > 1\" }\n");
    assert_eq!(outcome(&mut r, &user(Op::Delete)), vec!["0/0"]);
}

#[test]
fn filter_errors_become_dead_letters() {
    let mut r =
        router("  - { name: strict, from: users, to: a, filter: \"after.quantity > 0\" }\n  - { name: other, from: users, to: b }\n");
    let mut out = Vec::new();
    r.route(&user(Op::Delete), &mut out);
    match out.as_slice() {
        [Routed::DeadLetter { pipeline, sink: 0, error, .. }, Routed::Deliver { sink: 1, .. }] => {
            assert_eq!(pipeline.as_ref(), "strict");
            assert!(error.contains("after.quantity"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    // A string where a bool is expected, at run time.
    let mut r = router("  - { name: s, from: users, to: a, filter: \"after.name == 'Ann' ? true : after.name\" }\n");
    let bob = change(Op::Insert, "public", "users", Some(row(&[("id", num("1")), ("name", s("Bob"))])));
    assert!(dead_letter(&mut r, &bob).contains("expected a bool"));
}

#[test]
fn keep_and_drop_leave_the_key_alone() {
    let mut r = router("  - { name: t, from: users, to: a, transforms: [ { keep: [email, quantity] } ] }\n");
    let out = delivered(&mut r, &user(Op::Insert));
    assert_eq!(out.after, Some(row(&[("email", s("a@b.c")), ("quantity", num("2"))])));
    assert_eq!(out.key, Some(row(&[("id", num("1"))])));

    let mut r = router("  - { name: t, from: users, to: a, transforms: [ { drop: [id, name] } ] }\n");
    let out = delivered(&mut r, &user(Op::Insert));
    assert_eq!(out.after, Some(row(&[("email", s("a@b.c")), ("quantity", num("2"))])));
    assert_eq!(out.key, Some(row(&[("id", num("1"))])));
    // Deletes have no after: nothing is missing.
    let out = delivered(&mut r, &user(Op::Delete));
    assert_eq!(out.key, Some(row(&[("id", num("1"))])));
}

#[test]
fn missing_columns_fail_unless_unchanged_toast() {
    let mut r = router("  - { name: t, from: users, to: a, transforms: [ { drop: [bio] } ] }\n");
    let err = dead_letter(&mut r, &user(Op::Update));
    assert!(err.contains("drop") && err.contains("\"bio\""), "{err}");

    let mut toasted = Change::clone(&user(Op::Update));
    toasted.unchanged_toast = vec!["bio".into(), "notes".into()];
    let toasted = Arc::new(toasted);
    let out = delivered(&mut r, &toasted);
    assert_eq!(out.unchanged_toast, vec![Arc::<str>::from("notes")]);
    assert!(!out.after.as_ref().unwrap().contains("bio"));

    let mut r = router("  - { name: t, from: users, to: a, transforms: [ { mask: [bio] }, { rename: { notes: remarks } } ] }\n");
    let out = delivered(&mut r, &toasted);
    assert_eq!(out.unchanged_toast, vec![Arc::<str>::from("bio"), Arc::from("remarks")]);
    assert!(!out.after.as_ref().unwrap().contains("bio"), "transforms never invent TOAST values");

    let mut r = router("  - { name: t, from: users, to: a, transforms: [ { rename: { nope: x } } ] }\n");
    assert!(dead_letter(&mut r, &user(Op::Insert)).contains("nope"));
    let mut r = router("  - { name: t, from: users, to: a, transforms: [ { set: { x: after.nope } } ] }\n");
    assert!(dead_letter(&mut r, &user(Op::Insert)).contains("nope"));
}

#[test]
fn rename_applies_to_key_before_and_after() {
    let mut r = router("  - { name: t, from: users, to: a, transforms: [ { rename: { id: user_id, email: mail } } ] }\n");
    let mut c = Change::clone(&user(Op::Update));
    c.before = Some(row(&[("id", num("1")), ("email", s("old@b.c"))]));
    let out = delivered(&mut r, &Arc::new(c));
    assert_eq!(out.key, Some(row(&[("user_id", num("1"))])));
    assert_eq!(out.before, Some(row(&[("user_id", num("1")), ("mail", s("old@b.c"))])));
    let after = out.after.unwrap();
    assert_eq!(after.get("mail"), Some(&s("a@b.c")));
    assert!(!after.contains("email") && after.contains("user_id"));

    let mut r = router("  - { name: t, from: users, to: a, transforms: [ { rename: { email: name } } ] }\n");
    assert!(dead_letter(&mut r, &user(Op::Insert)).contains("already has a column"));
}

#[test]
fn set_computes_from_the_record_in_order() {
    let mut r = router(
        "  - name: t\n    from: users\n    to: a\n    transforms:\n      - set: { total: \"after.quantity * 10\", source: \"'web'\" }\n      - set: { double_total: \"after.total * 2\" }\n",
    );
    let out = delivered(&mut r, &user(Op::Insert));
    let after = out.after.unwrap();
    assert_eq!(after.get("total"), Some(&num("20")));
    assert_eq!(after.get("source"), Some(&s("web")));
    assert_eq!(after.get("double_total"), Some(&num("40")));
    // No after on deletes: set does nothing.
    let out = delivered(&mut r, &user(Op::Delete));
    assert_eq!(out.after, None);
}

#[test]
fn mask_and_hash_apply_everywhere_and_keep_nulls() {
    let mut r = router("  - { name: t, from: users, to: a, transforms: [ { mask: [name] }, { mask: { columns: [quantity], with: X } }, { hash: [email, id] } ] }\n");
    let mut c = Change::clone(&user(Op::Update));
    c.after.as_mut().unwrap().set("name".into(), Value::Null);
    let out = delivered(&mut r, &Arc::new(c));
    let after = out.after.unwrap();
    assert_eq!(after.get("name"), Some(&Value::Null));
    assert_eq!(after.get("quantity"), Some(&s("X")));
    // sha256("a@b.c") and sha256("1")
    let expect = |t: &str| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(t.as_bytes()))
    };
    assert_eq!(after.get("email"), Some(&s(&expect("a@b.c"))));
    assert_eq!(after.get("id"), Some(&s(&expect("1"))));
    assert_eq!(out.key, Some(row(&[("id", s(&expect("1")))])), "the key is hashed the same way");
    assert_eq!(expect("1"), "6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b");
}

#[test]
fn a_failing_pipeline_does_not_disturb_the_others_or_the_order() {
    let mut r = router("  - { name: bad, from: users, to: a, transforms: [ { drop: [nope] } ] }\n  - { name: good, from: users, to: b }\n");
    let changes: Vec<Arc<Change>> = (0..5)
        .map(|i| {
            let mut c = Change::clone(&user(Op::Insert));
            c.ordinal = i;
            Arc::new(c)
        })
        .collect();
    let mut out = Vec::new();
    for c in &changes {
        r.route(c, &mut out);
    }
    let good: Vec<u32> = out
        .iter()
        .filter_map(|o| match o {
            Routed::Deliver { sink: 1, record } => Some(record.change.ordinal),
            _ => None,
        })
        .collect();
    assert_eq!(good, vec![0, 1, 2, 3, 4]);
    assert_eq!(out.iter().filter(|o| matches!(o, Routed::DeadLetter { .. })).count(), 5);
}

#[test]
fn router_is_send() {
    fn send<T: Send>() {}
    send::<Router>();
}
