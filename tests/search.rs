//! End-to-end search sink tests against a real OpenSearch 2.19 node
//! (`testkit::OpenSearchNode`). OpenSearch stands in for Elasticsearch: the
//! `_bulk`, `_mget`, document and search APIs the sink uses are the same
//! (Elasticsearch 8 runs here too, without the modules Elastic does not
//! publish; see testkit/README.md).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value as Json;
use testkit::{OpenSearchNode, Server};

async fn products_cluster(db: &str) -> (PgCluster, tokio_postgres::Client) {
    let (pg, c) = cluster(db).await;
    c.batch_execute(
        "CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2), code text,
                                tags text[], meta jsonb, description text);
         ALTER TABLE products ALTER COLUMN description SET STORAGE EXTERNAL;",
    )
    .await
    .unwrap();
    (pg, c)
}

fn node() -> &'static OpenSearchNode {
    OpenSearchNode::shared()
}

fn config(pg: &PgCluster, db: &str, url: &str, index: &str, extra: &str, dir: &std::path::Path) -> String {
    let sink = format!("  search: {{ type: opensearch, urls: [\"{url}\"], request_timeout: 5s, retry: {{ max_backoff: 1s }} }}");
    let pipelines = format!(
        "  - name: catalog\n    from: public.products\n    to: search\n    opensearch: {{ index: {index}, id: \"{{id}}\"{extra} }}"
    );
    daemon_config(pg, db, db, &sink, &pipelines, &dir.join(format!("{db}.dead.jsonl")))
}

/// A random mixed workload on `products`: inserts (some with a TOASTed
/// description), updates that leave the description unchanged, updates of
/// it, key changes, deletes.
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
                "INSERT INTO products VALUES ({id}, 'product {id}', {}.{:02}, '{}', ARRAY['a','b{id}'], '{{\"n\": {id}}}', {d})",
                w.rng.below(900),
                w.rng.below(100),
                w.rng.below(1000)
            )
        }
        // The description is TOASTed and unchanged: a partial change.
        (3..=5, Some(id)) => format!("UPDATE products SET price = price + 1, name = name || '+' WHERE id = {id}"),
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

/// The dead-letter file `<db>.dead.jsonl` in `dir` is empty; otherwise
/// fails with its first letter and the daemon log.
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

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Waits until the slot confirmed everything written so far (then the index
/// has it, by the ack rule) and compares the index with the table, document
/// by document and field by field.
async fn assert_index_equals_table(c: &tokio_postgres::Client, slot: &str, url: &str, index: &str, d: &Daemon) {
    assert_index_equals_table_with(&http(), c, slot, url, index, d).await
}

/// [`assert_index_equals_table`] read with a given client.
async fn assert_index_equals_table_with(
    http: &reqwest::Client,
    c: &tokio_postgres::Client,
    slot: &str,
    url: &str,
    index: &str,
    d: &Daemon,
) {
    wait_confirmed(c, slot, d, Duration::from_secs(300)).await;
    let docs = documents_with(http, url, index).await;
    let want = rows_by_id(c, "products").await;
    let missing: Vec<&String> = want.keys().filter(|k| !docs.contains_key(*k)).collect();
    let extra: Vec<&String> = docs.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, extra {extra:?}\n{}", d.log());
    for (id, row) in &want {
        assert_eq!(&docs[id], row, "document {id} differs from its row");
    }
    assert!(!want.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_workload_with_key_changes_and_toast_equals_the_table() {
    let db = "mixed";
    let (pg, c) = products_cluster(db).await;
    let url = node().url();
    let dir = scratch();
    let d = Daemon::start(bin(), dir.path(), db, &config(&pg, db, &url, "mixed-products", "", dir.path()));
    wait_slot(&c, db, &d).await;
    let mut w = Workload::new(PRODUCTS, 0x5eed_0001);
    w.run(&c, 400).await;
    assert_index_equals_table(&c, db, &url, "mixed-products", &d).await;
    let toasted: i64 = c.query_one("SELECT count(*) FROM products WHERE length(description) > 2000", &[]).await.unwrap().get(0);
    assert!(toasted > 10, "the workload must exercise TOASTed rows: {toasted}");
    assert_nothing_dead_lettered(dir.path(), db, &d);
}

/// The same workload against a real Elasticsearch 8 node (`type:
/// elasticsearch`; the node runs without the modules Elastic does not
/// publish, which the sink does not need), then `pgfanout verify` of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_workload_into_elasticsearch_equals_the_table() {
    let db = "elastic";
    let (pg, c) = products_cluster(db).await;
    let url = tokio::task::spawn_blocking(|| testkit::ElasticsearchNode::shared().url()).await.unwrap();
    let dir = scratch();
    let yaml = config(&pg, db, &url, "elastic-products", "", dir.path())
        .replace("type: opensearch", "type: elasticsearch")
        .replace("    opensearch: {", "    elasticsearch: {");
    let d = Daemon::start(bin(), dir.path(), db, &yaml);
    wait_slot(&c, db, &d).await;
    let mut w = Workload::new(PRODUCTS, 0x5eed_0e1a);
    w.run(&c, 300).await;
    assert_index_equals_table(&c, db, &url, "elastic-products", &d).await;
    assert_nothing_dead_lettered(dir.path(), db, &d);
    let path = dir.path().join("verify.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = tokio::task::block_in_place(|| std::process::Command::new(bin()).args(["verify", "-c"]).arg(&path).output().unwrap());
    assert_eq!(out.status.code(), Some(0), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_a_node_outage_lose_nothing() {
    let db = "faults";
    let (pg, c) = products_cluster(db).await;
    // A node of this test's own, so stopping it does not disturb others.
    let node = tokio::task::spawn_blocking(OpenSearchNode::start).await.unwrap();
    let url = node.url();
    let dir = scratch();
    let mut d = Daemon::start(bin(), dir.path(), db, &config(&pg, db, &url, "faults-products", "", dir.path()));
    wait_slot(&c, db, &d).await;
    let (stop, sampler) = sample_confirmed_flush(pg.client(db).await, db, Duration::from_millis(50));
    let mut w = Workload::new(PRODUCTS, 0x5eed_0002);
    w.run(&c, 150).await;
    d.kill9();
    w.run(&c, 50).await;
    d.spawn(bin());
    w.run(&c, 50).await;
    // The node goes away mid-workload; writes go on in PostgreSQL.
    let before_stop = insert_lsn(&c).await;
    tokio::task::block_in_place(|| node.stop());
    let down_at = Instant::now();
    c.batch_execute("UPDATE products SET name = name || '!' WHERE id = (SELECT min(id) FROM products)").await.unwrap();
    let first_lost = insert_lsn(&c).await;
    w.run(&c, 100).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let up_at = Instant::now();
    tokio::task::block_in_place(|| node.start_server());
    w.run(&c, 50).await;
    assert_index_equals_table(&c, db, &url, "faults-products", &d).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler.await.unwrap();
    let down: Vec<u64> = samples.iter().filter(|(t, _)| *t > down_at + Duration::from_millis(200) && *t < up_at).map(|s| s.1).collect();
    assert!(down.len() > 20, "sampled during the outage: {}", down.len());
    let max_down = down.iter().copied().max().unwrap_or_default();
    assert!(max_down < first_lost, "confirmed {max_down:X} reached {first_lost:X} while the node was down\n{}", d.log());
    assert!(before_stop < first_lost);
    assert!(samples.windows(2).all(|w| w[0].1 <= w[1].1), "confirmed_flush_lsn moved backwards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_the_mapping_rejects_is_dead_lettered_and_later_changes_arrive() {
    let db = "reject";
    let (pg, c) = products_cluster(db).await;
    let url = node().url();
    let dir = scratch();
    let extra = ", mappings: { properties: { code: { type: integer } } }";
    let d = Daemon::start(bin(), dir.path(), db, &config(&pg, db, &url, "reject-products", extra, dir.path()));
    wait_slot(&c, db, &d).await;
    c.batch_execute(
        "INSERT INTO products (id, name, code) VALUES (1, 'good', '12');
         INSERT INTO products (id, name, code) VALUES (2, 'bad', 'not a number');
         INSERT INTO products (id, name, code) VALUES (3, 'later', '13');",
    )
    .await
    .unwrap();
    let dead = dir.path().join(format!("{db}.dead.jsonl"));
    testkit::wait_until(Duration::from_secs(60), "the rejected document in the dead-letter file", || line_count(&dead) >= 1);
    let end = insert_lsn(&c).await;
    testkit::wait_for(Duration::from_secs(180), "confirmed", || {
        let c = &c;
        async move { confirmed_flush(c, db).await >= end }
    })
    .await;
    let docs = documents(&url, "reject-products").await;
    assert!(docs.contains_key("1") && docs.contains_key("3") && !docs.contains_key("2"), "{docs:?}");
    let letters = testkit::daemon::read_json_lines(&dead);
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter: Json = serde_json::from_str(&letters[0]).unwrap();
    assert_eq!(letter["change"]["after"]["id"], 2);
    let error = letter["error"].as_str().unwrap();
    assert!(error.contains("mapper_parsing_exception") || error.contains("number_format"), "the engine's error: {error}");
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecommerce_example_indexes_the_catalog() {
    let (pg, c) = ecommerce_cluster("shop").await;
    let url = node().url();
    let dir = scratch();
    let cfg = ecommerce_subset(&pg, &[("search", serde_json::json!({"urls": [url]}))], dir.path());
    let d = Daemon::start(bin(), dir.path(), "shop", &cfg);
    let changes = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ecommerce-changes.sql")).unwrap();
    testkit::wait_for(Duration::from_secs(60), "streaming", || {
        let log = d.log();
        async move { log.contains("streaming started") }
    })
    .await;
    c.batch_execute(&changes).await.unwrap();
    let end = insert_lsn(&c).await;
    let parsed: Json = serde_json::from_str(&cfg).unwrap();
    let slot = parsed["source"]["postgres"]["slot"].as_str().unwrap().to_string();
    testkit::wait_for(Duration::from_secs(180), "confirmed", || {
        let (c, slot) = (&c, slot.clone());
        async move { confirmed_flush(c, &slot).await >= end }
    })
    .await;
    // The catalog: every product, without its purchase price.
    let docs = documents(&url, "products").await;
    let n: i64 = c.query_one("SELECT count(*) FROM products", &[]).await.unwrap().get(0);
    assert_eq!(docs.len() as i64, n, "{}", d.log());
    assert!(docs.values().all(|p| p.get("cost_price").is_none()), "cost_price is dropped");
    // The README's catalog search.
    let hits = search(&url, "products", serde_json::json!({"query": {"match": {"description": "mechanical"}}})).await;
    let titles: Vec<&str> = hits["hits"]["hits"].as_array().unwrap().iter().filter_map(|h| h["_source"]["title"].as_str()).collect();
    assert_eq!(titles, vec!["Keyboard"], "the README's catalog search: {hits}");
    // numeric(10,2) keeps its scale: 84.90, not 84.9.
    assert_eq!(docs["10"]["price"].to_string(), "84.90", "the last price change arrived");
}

/// Real back-pressure: a node whose write thread pool has one thread and a
/// queue of one refuses bulk items with 429 under two lanes of load; the
/// sink retries exactly those items and every document ends as in the
/// table (versions keep retried items from undoing newer writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_write_queue_gives_429s_and_every_document_still_arrives() {
    let db = "pressure";
    let (pg, c) = products_cluster(db).await;
    let node = tokio::task::spawn_blocking(|| {
        OpenSearchNode::start_with(&[("thread_pool.write.size", "1"), ("thread_pool.write.queue_size", "1")])
    })
    .await
    .unwrap();
    let url = node.url();
    // Several shards so one bulk request fans out to several queued tasks.
    let extra = ", settings: { number_of_shards: 4, number_of_replicas: 0 }";
    let dir = scratch();
    // Small batches, several in flight: one transaction's changes to a
    // document span batches queued on the lanes at once, while items fail
    // with 429 and are retried (the order of one document's changes must
    // survive both).
    let cfg = config(&pg, db, &url, "pressure-products", extra, dir.path())
        .replace("request_timeout: 5s,", "request_timeout: 5s, concurrency: 4, in_flight_batches: 8, bulk: { max_records: 50 },")
        .replace("shutdown_timeout: 10s\n", "shutdown_timeout: 10s\n  batch_size: 16\n");
    assert!(cfg.contains("batch_size: 16"), "{cfg}");
    let d = Daemon::start(bin(), dir.path(), db, &cfg);
    wait_slot(&c, db, &d).await;
    let mut w = Workload::new(PRODUCTS, 0x5eed_0004);
    // Big transactions so each batch carries many documents.
    for _ in 0..20 {
        let sql: String = (0..40).map(|_| format!("{};", products_statement(&mut w))).collect();
        c.batch_execute(&format!("BEGIN; {sql} COMMIT;")).await.unwrap();
    }
    assert_index_equals_table(&c, db, &url, "pressure-products", &d).await;
    let log = d.log();
    assert!(log.contains("es_rejected_execution_exception") || log.contains("429"), "no 429 happened; the test proves nothing:\n{log}");
    eprintln!(
        "requests without an answer: {}, waits for one still running: {}",
        log.matches("bulk request failed").count(),
        log.matches("still running on the cluster").count()
    );
    assert_nothing_dead_lettered(dir.path(), db, &d);
}

/// Columns whose values every merge path used to round: a numeric of ~28
/// significant digits, a TOASTed jsonb with long numbers (unchanged by most
/// updates, so it is merged from the stored document), and a `json` with
/// duplicate keys and a number `jsonb` rewrites (`to_jsonb` keeps the last
/// key, prints `1.0e2` as `100`; OpenSearch refuses duplicate keys).
async fn add_exact_columns(c: &tokio_postgres::Client) {
    c.batch_execute(
        r#"CREATE FUNCTION long_numeric() RETURNS numeric LANGUAGE sql AS
             $$ SELECT (floor(random() * 1e9)::text || '.' || lpad(floor(random() * 1e9)::text, 9, '0')
                        || lpad(floor(random() * 1e9)::text, 9, '0') || '7')::numeric $$;
           CREATE FUNCTION big_specs() RETURNS jsonb LANGUAGE sql AS
             $$ SELECT jsonb_build_object('pad', repeat(md5(random()::text), 90),
                                          'n', 648199.3821223196731458777 + long_numeric(),
                                          'm', 2.50, 'e', 1.2345678901234567890123456789e+29, 'z', -0.000000000000000000000001) $$;
           ALTER TABLE products ADD COLUMN exact numeric DEFAULT long_numeric(),
                                ADD COLUMN specs jsonb DEFAULT big_specs(),
                                ADD COLUMN raw json DEFAULT '{"k": 1, "k": 2.50, "n": 1.0e2, "a": [1E-3]}';
           ALTER TABLE products ALTER COLUMN specs SET STORAGE EXTERNAL;"#,
    )
    .await
    .unwrap();
}

/// The issue's workload: 25-digit numerics, unchanged TOAST, key changes,
/// deletes and two SIGKILLs, into an index that stores every value as sent
/// (`dynamic: false`): every document ends equal to `to_jsonb` of its row,
/// field by field and digit by digit, with no dead letter (a replayed
/// partial change whose document a later change moved or deleted is
/// superseded, not dead-lettered). A second pipeline with the default
/// dynamic mapping (without `specs`, whose 30-digit integer no dynamic
/// `long` holds) gets a row the engine cannot hold (numeric 10^400 in a
/// `float` field): that row alone is dead-lettered, and the sink and the
/// slot keep moving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_numerics_toast_key_changes_and_two_sigkills_end_exact() {
    let db = "exact";
    let (pg, c) = products_cluster(db).await;
    add_exact_columns(&c).await;
    let url = node().url();
    let dir = scratch();
    let extra = ", mappings: { dynamic: false, properties: { id: { type: integer } } }";
    let mut yaml = config(&pg, db, &url, "exact-products", extra, dir.path());
    yaml = yaml.replace(
        "\ndead_letter:",
        "\n  - name: dynamic\n    from: public.products\n    to: search\n    transforms: [ { drop: [specs] } ]\n    opensearch: { index: exact-dynamic, id: \"{id}\" }\ndead_letter:",
    );
    let mut d = Daemon::start(bin(), dir.path(), db, &yaml);
    wait_slot(&c, db, &d).await;
    let mut w = Workload::new(PRODUCTS, 0x5eed_0030);
    w.run(&c, 120).await;
    // A value the dynamic index cannot hold, then more changes.
    c.batch_execute("INSERT INTO products (id, name, exact) VALUES (900000, 'huge', 1e400)").await.unwrap();
    w.run(&c, 60).await;
    d.kill9();
    w.run(&c, 60).await;
    d.spawn(bin());
    w.run(&c, 60).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.kill9();
    // A partial change of the huge row: merged from a stored 401-digit number.
    c.batch_execute("UPDATE products SET name = 'huge+' WHERE id = 900000").await.unwrap();
    w.run(&c, 60).await;
    d.spawn(bin());
    w.run(&c, 60).await;
    assert_index_equals_table(&c, db, &url, "exact-products", &d).await;
    let toasted: i64 = c.query_one("SELECT count(*) FROM products WHERE pg_column_size(specs) > 2000", &[]).await.unwrap().get(0);
    assert!(toasted > 10, "the workload must exercise TOASTed rows: {toasted}");
    let docs = documents(&url, "exact-products").await;
    assert_eq!(docs["900000"]["exact"].to_string(), format!("1{}", "0".repeat(400)));
    assert_eq!(docs["900000"]["name"], "huge+");
    let some = docs.values().find(|d| d["raw"].is_object()).expect("a document");
    assert_eq!(some["raw"].to_string(), r#"{"a":[0.001],"k":2.50,"n":100}"#, "json as to_jsonb: last key, numeric text");
    // Only the dynamic index's 10^400 rows are dead letters.
    let dead = dir.path().join(format!("{db}.dead.jsonl"));
    let letters: Vec<Json> = testkit::daemon::read_json_lines(&dead).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!letters.is_empty(), "the 10^400 row must be refused by the dynamic index\n{}", d.log());
    for l in &letters {
        assert_eq!(l["pipeline"], "dynamic", "only the dynamic index refuses a value: {l}");
        assert_eq!(l["change"]["after"]["id"], 900000, "{l}");
    }
    let dynamic = documents(&url, "exact-dynamic").await;
    assert!(dynamic.len() > 10 && !dynamic.contains_key("900000"), "later rows reach the dynamic index");
}

/// A replay of the whole history, as after a crash between writes and
/// their acknowledgement, but deterministic: a second slot, created before
/// the workload, streams every change again into the index the first
/// daemon already brought up to date. Partial changes (unchanged TOAST)
/// whose document a later change moved or deleted find no document; they
/// are superseded (the index remembers the newer delete), not dead letters,
/// and the index still equals the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_history_dead_letters_nothing() {
    let db = "replay";
    let (pg, c) = products_cluster(db).await;
    let url = node().url();
    let dir = scratch();
    // Delete tombstones kept for 10 minutes (60 s by default): a slow
    // machine must not let the early deletes expire before the replay.
    let yaml = config(&pg, db, &url, "replay-products", ", settings: { index.gc_deletes: 10m }", dir.path());
    // The second slot exists before any change.
    c.batch_execute("CREATE PUBLICATION again FOR TABLE products").await.unwrap();
    c.batch_execute("SELECT pg_create_logical_replication_slot('again', 'pgoutput')").await.unwrap();
    let d = Daemon::start(bin(), dir.path(), db, &yaml);
    wait_slot(&c, db, &d).await;
    let mut w = Workload::new(PRODUCTS, 0x5eed_0031);
    w.run(&c, 300).await;
    assert_index_equals_table(&c, db, &url, "replay-products", &d).await;
    let settings = http().get(format!("{url}/replay-products/_settings")).send().await.unwrap().text().await.unwrap();
    assert!(settings.contains(r#""gc_deletes":"10m""#), "{settings}");
    assert_nothing_dead_lettered(dir.path(), db, &d);
    drop(d);
    let moves: i64 = c.query_one("SELECT count(*) FROM products WHERE id > 1", &[]).await.unwrap().get(0);
    assert!(moves > 0);
    // The same index, every change again from the start.
    // One record per batch: a partial change never finds its document's
    // earlier content in its own batch, so every one whose document a later
    // change removed goes through the tombstone check, among them the
    // update of row 1 followed by its delete in the same transaction (one
    // commit LSN, so one version: the delete's tombstone is not newer than
    // the update, yet supersedes it).
    let again = yaml
        .replace(&format!("slot: {db}\n"), "slot: again\n")
        .replace(&format!("publication: {db}\n"), "publication: again\n")
        .replace("runtime:\n", "runtime:\n  batch_size: 1\n");
    assert!(again.contains("slot: again") && again.contains("batch_size: 1"), "{again}");
    let d = Daemon::start(bin(), dir.path(), "again", &again);
    let end = insert_lsn(&c).await;
    let start = Instant::now();
    while confirmed_flush(&c, "again").await < end {
        assert!(start.elapsed() < Duration::from_secs(120), "the replay did not finish\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_index_equals_table(&c, "again", &url, "replay-products", &d).await;
    assert_nothing_dead_lettered(dir.path(), db, &d);
}

/// The Elasticsearch tombstone window, on the path where it matters: a dead
/// letter replayed after `index.gc_deletes` (1 s here, 60 s by default).
///
/// The index maps `code` as an integer, so the changes of rows whose code is
/// not a number are refused and dead-lettered. Half of those rows are then
/// deleted: the deletes reach the index (tombstones with their versions).
/// Past `gc_deletes` the index has forgotten them (checked: it takes an old
/// version of a deleted probe document), so replaying a deleted row's insert
/// would bring it back for good. The fix goes into the config (a transform
/// that nulls a code that is not a number); `replay` delivers the living
/// rows' letters and removes the deleted rows' as superseded. The index
/// then equals the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_replayed_past_gc_deletes_does_not_bring_a_deleted_row_back() {
    let db = "gcdel";
    let (pg, c) = products_cluster(db).await;
    let url = node().url();
    let dir = scratch();
    let index = "gcdel-products";
    let extra = ", settings: { index: { gc_deletes: 1s } }, mappings: { properties: { code: { type: integer } } }";
    let broken = config(&pg, db, &url, index, extra, dir.path());
    let mut d = Daemon::start(bin(), dir.path(), db, &broken);
    wait_slot(&c, db, &d).await;
    // Ids 1..=40; the even ones have a code that is not a number.
    for id in 1..=40 {
        let code = if id % 2 == 0 { format!("'x{id}'") } else { format!("'{id}'") };
        c.batch_execute(&format!("INSERT INTO products (id, name, price, code) VALUES ({id}, 'p{id}', 1.{id:02}, {code})")).await.unwrap();
    }
    // Refused rows change again (refused again), and some are deleted.
    c.batch_execute("UPDATE products SET name = name || '+' WHERE id % 4 = 0").await.unwrap();
    c.batch_execute("DELETE FROM products WHERE id % 4 = 2 OR id IN (1, 3)").await.unwrap();
    wait_confirmed(&c, db, &d, Duration::from_secs(120)).await;
    d.signal("TERM");
    d.wait(Duration::from_secs(20));
    let run = |args: &[&str], config: &std::path::Path| {
        let out = tokio::task::block_in_place(|| std::process::Command::new(bin()).args(args).arg("-c").arg(config).output().unwrap());
        (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let (code, listed) = run(&["dead-letters", "list", "--json"], &d.config_path);
    assert_eq!(code, 0, "{listed}");
    // 20 inserts and 10 updates refused.
    assert_eq!(listed.lines().count(), 30, "{listed}");

    // Past gc_deletes: the index takes an old version of a deleted document.
    let http = reqwest::Client::new();
    let probe = |version: u32, delete: bool| {
        let u = format!("{url}/{index}/_doc/probe?version={version}&version_type=external");
        let r = if delete { http.delete(u) } else { http.put(u).json(&serde_json::json!({ "name": "probe" })) };
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(probe(5, false).await, 201);
    assert_eq!(probe(6, true).await, 200);
    assert_eq!(probe(1, false).await, 409, "right after the delete, its version is known");
    tokio::time::sleep(Duration::from_secs(3)).await;
    for _ in 0..2 {
        http.post(format!("{url}/{index}/_refresh")).send().await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert_eq!(probe(1, false).await, 201, "past gc_deletes the index forgot the delete");
    assert_eq!(probe(2, true).await, 200);

    // The fix, then the replay.
    let fixed = dir.path().join("fixed.yaml");
    let transform = "\n    transforms:\n      - set: { code: 'after.code.matches(\"^[0-9]+$\") ? after.code : null' }";
    let fixed_yaml = broken.replacen("code: { type: integer } } } }", &format!("code: {{ type: integer }} }} }} }}{transform}"), 1);
    assert_ne!(fixed_yaml, broken);
    std::fs::write(&fixed, &fixed_yaml).unwrap();
    let (code, out) = run(&["dead-letters", "replay"], &fixed);
    assert_eq!(code, 0, "{out}");
    // The index equals the table: no deleted row came back.
    http.post(format!("{url}/{index}/_refresh")).send().await.unwrap();
    let docs = documents(&url, index).await;
    let rows = c.query("SELECT id::text, name, code FROM products ORDER BY id", &[]).await.unwrap();
    let want: std::collections::BTreeMap<String, (Json, Json)> = rows
        .iter()
        .map(|r| {
            let code: &str = r.get(2);
            let code = if code.chars().all(|ch| ch.is_ascii_digit()) { Json::from(code) } else { Json::Null };
            (r.get::<_, String>(0), (Json::from(r.get::<_, &str>(1)), code))
        })
        .collect();
    let got: std::collections::BTreeMap<String, (Json, Json)> =
        docs.iter().map(|(id, doc)| (id.clone(), (doc["name"].clone(), doc["code"].clone()))).collect();
    assert_eq!(got, want, "the index equals the table through the fixed pipeline");
    // Rows 4, 8, ..., 40 (10 rows, an insert and an update each) are
    // delivered; rows 2, 6, ..., 38 (10 inserts) were deleted.
    assert!(out.contains("20 delivered, 0 filtered out, 10 superseded, 0 refused again"), "{out}");
    let (_, left) = run(&["dead-letters", "list", "--json"], &fixed);
    assert_eq!(left.trim(), "", "every letter is gone");
}

/// TLS to a real OpenSearch node that speaks only HTTPS and requires a
/// client certificate (its own `SecureNetty4HttpServerTransport`, given an
/// SSL engine by the test kit's launcher; the security plugin is not on
/// Maven Central's classpath here): `doctor` passes with the test CA and a
/// client certificate, and fails with the fix for a certificate from
/// another CA, for a host the certificate does not list, and without a
/// client certificate; the daemon then streams the mixed workload over
/// TLS and the index equals the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_test_ca_and_a_client_certificate_streams_and_wrong_ones_are_refused_with_the_fix() {
    let db = "stls";
    let (pg, c) = products_cluster(db).await;
    let node = tokio::task::block_in_place(|| OpenSearchNode::start_tls(true));
    let tls = node.tls.clone().unwrap();
    let certs = &tls.certs;
    let dir = scratch();
    let index = "secure-products";
    let secure = |host: &str, ca: &std::path::Path, client: bool| {
        let url = format!("https://{host}:{}", tls.port);
        let identity = match client {
            true => format!(", cert_file: \"{}\", key_file: \"{}\"", certs.cert_file.display(), certs.key_file.display()),
            false => String::new(),
        };
        let cfg = config(&pg, db, &url, index, "", dir.path());
        let plain = format!("urls: [\"{url}\"],");
        assert!(cfg.contains(&plain));
        cfg.replace(&plain, &format!("{plain} tls: {{ ca_file: \"{}\"{identity} }},", ca.display()))
    };
    let doctor = |name: &str, yaml: String| tokio::task::block_in_place(|| doctor_says(dir.path(), name, &yaml, "search"));
    let said = doctor("good", secure("localhost", &certs.ca_file, true));
    assert!(said.contains("ok") && !said.contains("FAIL"), "the right CA and a client certificate:\n{said}");
    let said = doctor("other-ca", secure("localhost", &certs.other_ca_file, true));
    assert!(said.contains("FAIL") && said.contains("set tls.ca_file"), "a certificate from another CA is refused, with the fix:\n{said}");
    // 127.0.0.2 reaches the node too, but the certificate is for localhost
    // and 127.0.0.1 only.
    let said = doctor("other-host", secure("127.0.0.2", &certs.ca_file, true));
    assert!(said.contains("FAIL") && said.contains("subjectAltName"), "a host the certificate does not list is refused:\n{said}");
    let said = doctor("no-client-cert", secure("localhost", &certs.ca_file, false));
    assert!(
        said.contains("FAIL") && said.contains("tls.cert_file"),
        "without a client certificate the node refuses, with the fix:\n{said}"
    );

    let d = Daemon::start(bin(), dir.path(), db, &secure("localhost", &certs.ca_file, true));
    wait_slot(&c, db, &d).await;
    let mut w = Workload::new(PRODUCTS, 0x5eed_0007);
    w.run(&c, 200).await;
    let pem = |p: &std::path::Path| std::fs::read(p).unwrap();
    let reader = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem(&certs.ca_file)).unwrap())
        .identity(reqwest::Identity::from_pem(&[pem(&certs.key_file), pem(&certs.cert_file)].concat()).unwrap())
        .build()
        .unwrap();
    assert_index_equals_table_with(&reader, &c, db, &node.url(), index, &d).await;
    assert_nothing_dead_lettered(dir.path(), db, &d);
}
