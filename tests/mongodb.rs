//! End-to-end document sink tests against FerretDB 1.24 (`testkit::FerretDb`:
//! the MongoDB wire protocol over a PostgreSQL database), through the
//! official `mongodb` driver. MongoDB's own server cannot be had on this
//! machine (no package reachable here ships it); FerretDB speaks the same
//! commands the sink uses (`update`, `delete`, `find`, `buildInfo`), and
//! has no decimal128, so numbers no double holds are stored as their
//! exact text (`decimals: auto`). The decimal128 path is unit-tested in
//! `connectors/mongodb` only.
#![cfg(feature = "mongodb")]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use serde_json::Value as Json;
use testkit::{FerretDb, Server};

/// A products table with the values every merge path used to round: a
/// ~28-digit numeric, a TOASTed description (unchanged by most updates), a
/// jsonb with long numbers, arrays.
async fn products_cluster(db: &str) -> (PgCluster, tokio_postgres::Client) {
    let (pg, c) = cluster(db).await;
    c.batch_execute(
        r#"CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2), code text,
                                  tags text[], meta jsonb, description text, exact numeric, ratio float8);
           ALTER TABLE products ALTER COLUMN description SET STORAGE EXTERNAL;
           CREATE FUNCTION long_numeric() RETURNS numeric LANGUAGE sql AS
             $$ SELECT (floor(random() * 1e9)::text || '.' || lpad(floor(random() * 1e9)::text, 9, '0')
                        || lpad(floor(random() * 1e9)::text, 9, '0') || '7')::numeric $$;"#,
    )
    .await
    .unwrap();
    (pg, c)
}

const PRODUCTS: Mix = Mix { statement: products_statement, max_statements: 3 };

fn description(w: &mut Workload) -> String {
    w.big("long description", "lorem ipsum dolor sit amet ", 120)
}

fn products_statement(w: &mut Workload) -> String {
    let pick = w.pick();
    match (w.rng.below(10), pick) {
        (0..=2, _) | (_, None) => {
            let id = w.insert();
            let d = if w.rng.below(3) == 0 { "'short'".to_string() } else { description(w) };
            format!(
                "INSERT INTO products VALUES ({id}, 'product {id}', {}.{:02}, '{}', ARRAY['a','b{id}'],
                   jsonb_build_object('n', {id}, 'long', long_numeric(), 'nested', jsonb_build_object('x', 2.50)),
                   {d}, long_numeric(), {}.25)",
                w.rng.below(900),
                w.rng.below(100),
                w.rng.below(1000),
                w.rng.below(100)
            )
        }
        // The description is TOASTed and unchanged: a partial change.
        (3..=5, Some(id)) => format!("UPDATE products SET price = price + 1, name = name || '+', exact = long_numeric() WHERE id = {id}"),
        (6, Some(id)) => format!("UPDATE products SET description = {} WHERE id = {id}", description(w)),
        (7, Some(id)) => {
            let new = w.rekey(id);
            format!("UPDATE products SET id = {new} WHERE id = {id}")
        }
        (_, Some(id)) => {
            w.delete(id);
            format!("DELETE FROM products WHERE id = {id}")
        }
    }
}

fn config(pg: &PgCluster, db: &str, uri: &str, dir: &std::path::Path) -> String {
    let sink = format!("  docs: {{ type: mongodb, uri: \"{uri}\", database: shop, timeout: 2s }}");
    let pipelines = "  - name: catalog\n    from: public.products\n    to: docs\n    mongodb:\n      collection: products\n      fields: { name: title, code: attrs.code }\n      exclude: [ratio]";
    daemon_config(pg, db, db, &sink, pipelines, &dir.join(format!("{db}.dead.jsonl")))
}

/// What the mapping makes of a row (`to_jsonb`): `name` is `title`, `code`
/// is `attrs.code`, `ratio` is left out.
fn expected(row: &Json) -> Json {
    let mut m = row.as_object().cloned().unwrap();
    let name = m.remove("name").unwrap();
    let code = m.remove("code").unwrap();
    m.remove("ratio");
    m.insert("title".into(), name);
    m.insert("attrs".into(), serde_json::json!({ "code": code }));
    Json::Object(m)
}

async fn documents(uri: &str) -> BTreeMap<String, Document> {
    let client = mongodb::Client::with_uri_str(uri).await.unwrap();
    let docs: Vec<Document> =
        client.database("shop").collection::<Document>("products").find(doc! {}).await.unwrap().try_collect().await.unwrap();
    client.shutdown().await;
    docs.into_iter()
        .map(|mut d| {
            let id = d.remove("_id").unwrap();
            d.remove("_pgfanout_version").expect("every document carries its version");
            (id.into_relaxed_extjson().to_string(), d)
        })
        .collect()
}

/// Waits until the slot confirmed everything written so far (then the
/// collection has it, by the ack rule) and compares every document with
/// its row, field by field and digit by digit.
async fn assert_collection_equals_table(c: &tokio_postgres::Client, slot: &str, ferret: &FerretDb, d: &Daemon, pg: &PgCluster) {
    let uri = &ferret.uri();
    let target = insert_lsn(c).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while confirmed_flush(c, slot).await < target {
        assert!(
            std::time::Instant::now() < deadline,
            "confirmed_flush_lsn did not reach {target:X}\n{}\n--- ferretdb ---\n{}\n{}",
            d.log(),
            ferret.log(),
            pg.psql("postgres", "SELECT pid, datname, state, wait_event_type, wait_event, left(query, 200) FROM pg_stat_activity")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let docs = documents(uri).await;
    let want = rows_by_id(c, "products").await;
    let missing: Vec<&String> = want.keys().filter(|k| !docs.contains_key(*k)).collect();
    let extra: Vec<&String> = docs.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, extra {extra:?}\n{}", d.log());
    for (id, row) in &want {
        let e = expected(row);
        assert!(same(&e, &Bson::Document(docs[id].clone())), "document {id} differs from its row:\n  want {e}\n  got  {}", docs[id]);
    }
    assert!(!want.is_empty());
}

fn assert_nothing_dead_lettered(dir: &std::path::Path, db: &str, d: &Daemon) {
    let dead = dir.join(format!("{db}.dead.jsonl"));
    assert_eq!(
        line_count(&dead),
        0,
        "nothing dead-lettered; first: {}\n{}",
        std::fs::read_to_string(&dead).unwrap_or_default().lines().next().unwrap_or_default(),
        d.log()
    );
}

/// The issue's workload: key changes, unchanged TOAST, deletes, 28-digit
/// numerics (in a column and inside jsonb), two SIGKILLs of pgfanout and a
/// restart of the server mid-stream. Every document ends equal to its row
/// with nothing dead-lettered (a replayed partial change whose document a
/// later change moved or deleted is superseded by its tombstone); the
/// confirmed position never passes what the server held while it was down.
/// Then `verify` finds injected divergence and `--repair` mends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_workload_sigkills_and_a_server_restart_end_equal_and_verify_repairs() {
    let db = "mongo";
    let (pg, c) = products_cluster(db).await;
    let ferret = tokio::task::block_in_place(|| FerretDb::start(&pg));
    let uri = ferret.uri();
    let dir = scratch();
    let yaml = config(&pg, db, &uri, dir.path());
    let mut d = Daemon::start(bin(), dir.path(), db, &yaml);
    wait_slot(&c, db, &d).await;
    let (stop, sampler) = sample_confirmed_flush(pg.client(db).await, db, Duration::from_millis(50));
    let mut w = Workload::new(PRODUCTS, 0x5eed_0d0c);
    w.run(&c, 150).await;
    d.kill9();
    w.run(&c, 50).await;
    d.spawn(bin());
    w.run(&c, 50).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.kill9();
    w.run(&c, 30).await;
    d.spawn(bin());
    // The server goes away mid-workload; writes go on in PostgreSQL.
    tokio::task::block_in_place(|| ferret.stop());
    let down_at = std::time::Instant::now();
    c.batch_execute("UPDATE products SET name = name || '!' WHERE id = (SELECT min(id) FROM products)").await.unwrap();
    let first_lost = insert_lsn(&c).await;
    w.run(&c, 80).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let up_at = std::time::Instant::now();
    tokio::task::block_in_place(|| ferret.start_server());
    w.run(&c, 50).await;
    assert_collection_equals_table(&c, db, &ferret, &d, &pg).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler.await.unwrap();
    let down: Vec<u64> = samples.iter().filter(|(t, _)| *t > down_at + Duration::from_millis(200) && *t < up_at).map(|s| s.1).collect();
    assert!(down.len() > 20, "sampled during the outage: {}", down.len());
    let max_down = down.iter().copied().max().unwrap_or_default();
    assert!(max_down < first_lost, "confirmed {max_down:X} reached {first_lost:X} while the server was down\n{}", d.log());
    let toasted: i64 = c.query_one("SELECT count(*) FROM products WHERE length(description) > 2000", &[]).await.unwrap().get(0);
    assert!(toasted > 10, "the workload must exercise TOASTed rows: {toasted}");
    assert_nothing_dead_lettered(dir.path(), db, &d);

    // verify (the daemon still running): equal; then divergence injected
    // behind pgfanout's back.
    let path = dir.path().join("verify.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let (code, report, out) = tokio::task::block_in_place(|| run_verify(&path, "30s", &[]));
    assert_eq!(code, 0, "{out}");
    assert_eq!(pipeline_report(&report, "catalog")["status"], "equal", "{out}");
    // doctor names the server and how long numbers are stored there.
    let doctor = tokio::task::block_in_place(|| std::process::Command::new(bin()).args(["doctor", "-c"]).arg(&path).output().unwrap());
    let said = String::from_utf8_lossy(&doctor.stdout).to_string() + &String::from_utf8_lossy(&doctor.stderr);
    assert!(said.contains("FerretDB v1.24.2") && said.contains("their exact text"), "{said}");
    assert!(said.contains("collection shop.products exists"), "{said}");
    let ids: Vec<i32> = c.query("SELECT id FROM products ORDER BY id LIMIT 2", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let coll = client.database("shop").collection::<Document>("products");
    coll.delete_one(doc! {"_id": ids[0]}).await.unwrap();
    coll.update_one(doc! {"_id": ids[1]}, doc! {"$set": {"exact": "1.5"}}).await.unwrap();
    coll.insert_one(doc! {"_id": 777_777, "title": "stray"}).await.unwrap();
    let (code, report, out) = tokio::task::block_in_place(|| run_verify(&path, "30s", &[]));
    assert_ne!(code, 0, "{out}");
    let p = pipeline_report(&report, "catalog");
    let text = p.to_string();
    assert!(text.contains(&format!("products/{}", ids[0])) && text.contains("products/777777"), "{out}");
    assert_eq!(p["different"], serde_json::json!([{"id": format!("products/{}", ids[1]), "fields": ["exact"]}]), "{out}");
    let (code, report, out) = tokio::task::block_in_place(|| run_verify(&path, "30s", &["--repair"]));
    assert_eq!(code, 1, "what was found is still reported:\n{out}");
    assert_eq!(pipeline_report(&report, "catalog")["repaired"], 3, "{out}");
    let (code, _, out) = tokio::task::block_in_place(|| run_verify(&path, "30s", &[]));
    assert_eq!(code, 0, "repaired: {out}");
    client.shutdown().await;
}

/// Profiles with embedded addresses (`embed:`): users are documents, each
/// user's addresses an array inside them. Some rows exist before pgfanout
/// starts (the snapshot may copy addresses before their users); then
/// addresses are added, edited (a 25-digit numeric, a TOASTed note left
/// unchanged: partial changes), moved to another user, re-keyed and
/// deleted, users are edited (their whole writes keep the arrays) and
/// deleted with their addresses (ON DELETE CASCADE), through a SIGKILL and
/// a restart of the server.
/// Every profile ends equal to its user row plus exactly its address rows;
/// `verify` checks both pipelines, finds a removed, an altered and a stray
/// element, and `--repair` mends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_addresses_follow_their_rows_through_moves_deletes_and_a_sigkill() {
    let db = "membed";
    let (pg, c) = cluster(db).await;
    c.batch_execute(
        "CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, credit numeric(30,4));
         CREATE TABLE addresses (id int PRIMARY KEY, user_id int NOT NULL REFERENCES users ON DELETE CASCADE,
                                 city text NOT NULL, geo numeric(30,25), note text);
         ALTER TABLE addresses ALTER COLUMN note SET STORAGE EXTERNAL;
         INSERT INTO users SELECT g, 'user ' || g, 12345678901234567890123456.0001 FROM generate_series(1, 20) g;
         INSERT INTO addresses SELECT g, 1 + g % 20, 'city ' || g, 1.0000000000000000000000001 * g, repeat('note ', 800)
           FROM generate_series(1, 30) g;",
    )
    .await
    .unwrap();
    let ferret = tokio::task::block_in_place(|| FerretDb::start(&pg));
    let uri = ferret.uri();
    let dir = scratch();
    let sink = format!("  docs: {{ type: mongodb, uri: \"{uri}\", database: shop, timeout: 2s }}");
    let pipelines = "  - { name: profiles, from: public.users, to: docs, mongodb: { collection: profiles } }
  - name: addresses
    from: public.addresses
    to: docs
    mongodb: { collection: profiles, exclude: [user_id], embed: { field: addresses, parent_id: \"{user_id}\" } }";
    let yaml = daemon_config(&pg, db, db, &sink, pipelines, &dir.path().join(format!("{db}.dead.jsonl")))
        .replace("runtime:\n", "runtime:\n  batch_size: 16\n")
        .replace("snapshot: never", "snapshot: initial");
    assert!(yaml.contains("snapshot: initial"));
    let mut d = Daemon::start(bin(), dir.path(), db, &yaml);
    wait_slot(&c, db, &d).await;
    // (A snapshot cut short is finished by backfills while streaming; a
    // partial change of a row they have not copied yet is dead-lettered,
    // as in every sink: not this test's subject.)
    testkit::wait_until(Duration::from_secs(60), "the snapshot", || d.log().contains("snapshot complete"));
    let mut rng = Rng(0x05ee_de3b);
    let (mut next_user, mut next_address) = (21, 31);
    for i in 0..400 {
        if i == 200 {
            d.kill9();
            tokio::time::sleep(Duration::from_millis(200)).await;
            d.spawn(bin());
        }
        // The server goes away for a while; writes go on in PostgreSQL.
        if i == 300 {
            tokio::task::block_in_place(|| ferret.stop());
        }
        if i == 340 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            tokio::task::block_in_place(|| ferret.start_server());
        }
        let user = "(SELECT id FROM users ORDER BY random() LIMIT 1)";
        let address = "(SELECT id FROM addresses ORDER BY random() LIMIT 1)";
        let sql = match rng.below(20) {
            0..=3 => {
                next_user += 1;
                format!("INSERT INTO users VALUES ({next_user}, 'user {next_user}', {next_user}.5)")
            }
            4..=8 | 18 | 19 => {
                next_address += 1;
                format!(
                    "INSERT INTO addresses SELECT {next_address}, id, 'city {next_address}', 0.0000000000000000000000007, repeat('n', 3000)
                       FROM users ORDER BY random() LIMIT 1"
                )
            }
            9 | 10 => format!("UPDATE addresses SET city = city || '+', geo = geo + 0.0000000000000000000000001 WHERE id = {address}"),
            11 => format!("UPDATE addresses SET user_id = {user} WHERE id = {address}"),
            12 => {
                next_address += 1;
                format!("UPDATE addresses SET id = {next_address} WHERE id = {address}")
            }
            13 => format!("DELETE FROM addresses WHERE id = {address}"),
            14..=16 => format!("UPDATE users SET name = name || '!', credit = credit + 1 WHERE id = {user}"),
            _ => format!("DELETE FROM users WHERE id = {user}"),
        };
        c.batch_execute(&sql).await.unwrap();
    }
    let target = insert_lsn(&c).await;
    testkit::wait_for(Duration::from_secs(60), "everything confirmed", || async { confirmed_flush(&c, db).await >= target }).await;

    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let coll = client.database("shop").collection::<Document>("profiles");
    let docs: BTreeMap<String, Document> = coll
        .find(doc! {})
        .await
        .unwrap()
        .try_collect::<Vec<Document>>()
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.get("_id").unwrap().clone().into_relaxed_extjson().to_string(), d))
        .collect();
    let users = rows_by_id(&c, "users").await;
    let addresses = rows_by_id(&c, "addresses").await;
    assert_eq!(docs.keys().collect::<Vec<_>>(), users.keys().collect::<Vec<_>>(), "one profile per user\n{}", d.log());
    for (id, user) in &users {
        let mut doc = docs[id].clone();
        doc.remove("_id");
        doc.remove("_pgfanout_version").expect("the user's own write");
        let mut array: Vec<Bson> = match doc.remove("addresses") {
            Some(Bson::Array(a)) => a,
            None => Vec::new(),
            other => panic!("addresses of {id}: {other:?}"),
        };
        assert!(same(user, &Bson::Document(doc.clone())), "profile {id} differs from its row:\n  want {user}\n  got  {doc}");
        let mut want: Vec<(String, Json)> = addresses
            .iter()
            .filter(|(_, a)| a["user_id"].as_i64() == id.parse().ok())
            .map(|(k, a)| {
                let mut a = a.as_object().cloned().unwrap();
                a.remove("user_id");
                (k.clone(), Json::Object(a))
            })
            .collect();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        array.sort_by_key(|e| e.as_document().and_then(|e| e.get_str("_pgfanout_key").ok()).unwrap_or_default().to_string());
        let keys: Vec<String> = array.iter().map(|e| e.as_document().unwrap().get_str("_pgfanout_key").unwrap().to_string()).collect();
        assert_eq!(
            keys,
            want.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            "the addresses of user {id}; where each element is: {:?}; dead letters:\n{}\n{}",
            docs.values()
                .flat_map(|d| d.get_array("addresses").into_iter().flatten().map(move |e| (
                    d.get("_id").unwrap().to_string(),
                    e.as_document().unwrap().get_str("_pgfanout_key").unwrap().to_string()
                )))
                .collect::<Vec<_>>(),
            std::fs::read_to_string(dir.path().join(format!("{db}.dead.jsonl"))).unwrap_or_default(),
            d.log()
        );
        for (e, (k, a)) in array.iter().zip(&want) {
            let mut e = e.as_document().unwrap().clone();
            e.remove("_pgfanout_key");
            e.remove("_pgfanout_version").expect("each element carries its version");
            assert!(same(a, &Bson::Document(e.clone())), "address {k} of user {id}:\n  want {a}\n  got  {e}");
        }
    }
    assert!(addresses.len() > 20 && users.len() > 10, "{} addresses, {} users", addresses.len(), users.len());
    assert_nothing_dead_lettered(dir.path(), db, &d);

    // verify: both pipelines equal; then an element removed, one altered
    // and a stray one added behind pgfanout's back.
    let path = dir.path().join("verify.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let (code, report, out) = tokio::task::block_in_place(|| run_verify(&path, "30s", &[]));
    assert_eq!(code, 0, "{out}");
    for p in ["profiles", "addresses"] {
        assert_eq!(pipeline_report(&report, p)["status"], "equal", "{out}");
    }
    let (holder, mut array) = docs
        .values()
        .find_map(|d| match d.get("addresses") {
            Some(Bson::Array(a)) if a.len() >= 2 && users.contains_key(&d.get("_id").unwrap().to_string()) => {
                Some((d.get("_id").unwrap().clone(), a.clone()))
            }
            _ => None,
        })
        .expect("a user with two addresses");
    let gone = array.remove(0).as_document().unwrap().get_str("_pgfanout_key").unwrap().to_string();
    let altered = array[0].as_document().unwrap().get_str("_pgfanout_key").unwrap().to_string();
    array[0].as_document_mut().unwrap().insert("city", "Atlantis");
    array.push(Bson::Document(doc! {"id": 999_999, "city": "stray", "_pgfanout_key": "999999", "_pgfanout_version": "0"}));
    coll.update_one(doc! {"_id": holder}, doc! {"$set": {"addresses": array}}).await.unwrap();
    let (code, report, out) = tokio::task::block_in_place(|| run_verify(&path, "30s", &[]));
    assert_ne!(code, 0, "{out}");
    let p = pipeline_report(&report, "addresses");
    let text = p.to_string();
    assert!(text.contains(&format!("profiles#addresses/{gone}")) && text.contains("profiles#addresses/999999"), "{out}");
    assert_eq!(p["different"], serde_json::json!([{"id": format!("profiles#addresses/{altered}"), "fields": ["city"]}]), "{out}");
    assert_eq!(pipeline_report(&report, "profiles")["status"], "equal", "the profiles' own fields are untouched: {out}");
    let (_, report, out) = tokio::task::block_in_place(|| run_verify(&path, "30s", &["--repair"]));
    assert_eq!(pipeline_report(&report, "addresses")["repaired"], 3, "{out}");
    let (code, _, out) = tokio::task::block_in_place(|| run_verify(&path, "30s", &[]));
    assert_eq!(code, 0, "repaired: {out}");
    client.shutdown().await;
}

/// TLS to MongoDB (FerretDB with a TLS listener and a certificate from a
/// test CA; `tls=true&tlsCAFile=` in the URI, verification on). `doctor`
/// passes with that CA; with another CA it fails and says what to fix. The
/// daemon then streams through TLS and the collection (read over the plain
/// listener) equals the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_test_ca_streams_and_a_wrong_ca_is_refused_with_the_fix() {
    let db = "mtls";
    let (pg, c) = cluster(db).await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)").await.unwrap();
    let ferret = tokio::task::block_in_place(|| FerretDb::start_tls(&pg));
    let tls = ferret.tls.clone().unwrap();
    let dir = scratch();
    let config = |ca: &std::path::Path| {
        let uri = format!("mongodb://localhost:{}/?tls=true&tlsCAFile={}", tls.port, ca.display());
        let sink = format!("  docs: {{ type: mongodb, uri: \"{uri}\", database: shop, timeout: 5s }}");
        let pipelines = "  - name: t\n    from: public.t\n    to: docs\n    mongodb: { collection: t }";
        daemon_config(&pg, db, db, &sink, pipelines, &dir.path().join("dead.jsonl"))
    };
    let doctor = |name: &str, yaml: String| tokio::task::block_in_place(|| doctor_says(dir.path(), name, &yaml, "docs"));
    let said = doctor("good", config(&tls.certs.ca_file));
    assert!(said.contains("ok    sink docs") && !said.contains("FAIL  sink docs"), "the right CA:\n{said}");
    let said = doctor("other-ca", config(&tls.certs.other_ca_file));
    assert!(said.contains("FAIL  sink docs") && said.contains("set tls.ca_file"), "another CA is refused, with the fix:\n{said}");

    let d = Daemon::start(bin(), dir.path(), db, &config(&tls.certs.ca_file));
    wait_slot(&c, db, &d).await;
    c.batch_execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 200) g; UPDATE t SET v = v || '+' WHERE id % 3 = 0; DELETE FROM t WHERE id % 7 = 0")
        .await
        .unwrap();
    wait_confirmed(&c, db, &d, Duration::from_secs(60)).await;
    let rows = c.query("SELECT id, v FROM t", &[]).await.unwrap();
    let want: BTreeMap<String, String> = rows.iter().map(|r| (r.get::<_, i32>(0).to_string(), r.get(1))).collect();
    let got: BTreeMap<String, String> = collection_documents(&ferret.uri(), "shop", "t")
        .await
        .into_iter()
        .map(|(id, doc)| (id, doc.get_str("v").unwrap().to_string()))
        .collect();
    assert_eq!(got, want, "every change through TLS\n{}", d.log());
}
