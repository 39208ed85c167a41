//! Each server testkit starts, with a real round trip through the Rust
//! client the sinks use (or would use), then stopped:
//!
//! - Apache Kafka: rdkafka produces, a consumer reads the records back;
//! - Neo4j: neo4rs CREATE, then MATCH;
//! - OpenSearch and Elasticsearch: `_bulk` then `_search` over plain HTTP
//!   (reqwest), as the Elasticsearch sink's requests are;
//! - Cassandra: the `scylla` driver (the ScyllaDB sink's client; Cassandra
//!   speaks the same CQL) creates a keyspace and a table, inserts, selects;
//! - FerretDB: the official `mongodb` driver (without its DNS resolver:
//!   the test URIs are plain host:port) inserts, updates, deletes and reads
//!   documents back (stored as rows in PostgreSQL). A restarted FerretDB
//!   1.24 did not list the collections created before the restart (see
//!   testkit/README.md).
//!
//! Each test prints how long the start took.

use std::time::{Duration, Instant};

use testkit::{CassandraNode, ElasticsearchNode, FerretDb, KafkaBroker, Neo4jServer, OpenSearchNode, PgCluster, Server};

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let t = f();
    eprintln!("{what}: started in {:.1} s", start.elapsed().as_secs_f64());
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_produce_and_consume() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{ClientConfig, Message};

    let broker = tokio::task::spawn_blocking(|| timed("kafka", KafkaBroker::start)).await.unwrap();
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).set("acks", "all").create().expect("producer");
    for i in 0..10 {
        let (key, value) = (format!("k{i}"), format!("v{i}"));
        producer
            .send(FutureRecord::to("roundtrip").key(&key).payload(&value), Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}\n{}", broker.log()));
    }
    let got = tokio::task::block_in_place(|| {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .set("group.id", "roundtrip")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        consumer.subscribe(&["roundtrip"]).expect("subscribe");
        let mut got = Vec::new();
        let start = Instant::now();
        while got.len() < 10 && start.elapsed() < Duration::from_secs(60) {
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                let m = m.expect("consume");
                got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
            }
        }
        got
    });
    assert_eq!(got, (0..10).map(|i| format!("v{i}")).collect::<Vec<_>>());
    tokio::task::block_in_place(|| broker.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neo4j_create_and_match() {
    use neo4rs::{query, Graph};

    let server = tokio::task::spawn_blocking(|| timed("neo4j", Neo4jServer::start)).await.unwrap();
    // the default database (neo4j), as the server's user
    let g = Graph::new(server.uri(), server.user.as_str(), server.password.as_str()).await.expect("connect");
    g.run(query("CREATE (:Probe {id: 1, name: 'one'})-[:NEXT]->(:Probe {id: 2, name: 'two'})")).await.expect("create");
    let mut rows = g.execute(query("MATCH (a:Probe)-[:NEXT]->(b:Probe) RETURN a.name AS a, b.id AS b")).await.expect("match");
    let mut got = Vec::new();
    while let Some(row) = rows.next().await.expect("row") {
        got.push((row.get::<String>("a").expect("a"), row.get::<i64>("b").expect("b")));
    }
    assert_eq!(got, vec![("one".to_string(), 2)]);
    tokio::task::block_in_place(|| server.stop());
}

/// `_bulk` (two index operations, refresh) then `_search` for one of them.
async fn bulk_and_search(url: &str, log: impl Fn() -> String) {
    let http = reqwest::Client::new();
    let bulk = concat!(
        r#"{"index":{"_index":"roundtrip","_id":"1"}}"#,
        "\n",
        r#"{"name":"keyboard","price":84.9}"#,
        "\n",
        r#"{"index":{"_index":"roundtrip","_id":"2"}}"#,
        "\n",
        r#"{"name":"mouse","price":19.99}"#,
        "\n",
    );
    let resp = http
        .post(format!("{url}/_bulk?refresh=true"))
        .header("content-type", "application/x-ndjson")
        .body(bulk)
        .send()
        .await
        .expect("_bulk");
    assert!(resp.status().is_success(), "_bulk: {}\n{}", resp.status(), log());
    let body: serde_json::Value = resp.json().await.expect("_bulk body");
    assert_eq!(body["errors"], serde_json::json!(false), "{body}");
    let resp = http
        .post(format!("{url}/roundtrip/_search"))
        .json(&serde_json::json!({"query": {"match": {"name": "mouse"}}}))
        .send()
        .await
        .expect("_search");
    assert!(resp.status().is_success(), "_search: {}\n{}", resp.status(), log());
    let body: serde_json::Value = resp.json().await.expect("_search body");
    let hits = body["hits"]["hits"].as_array().cloned().unwrap_or_default();
    assert_eq!(hits.len(), 1, "{body}");
    assert_eq!(hits[0]["_id"], "2");
    assert_eq!(hits[0]["_source"]["price"], serde_json::json!(19.99));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opensearch_bulk_and_search() {
    let node = tokio::task::spawn_blocking(|| timed("opensearch", OpenSearchNode::start)).await.unwrap();
    bulk_and_search(&node.url(), || node.log()).await;
    tokio::task::block_in_place(|| node.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_bulk_and_search() {
    let node = tokio::task::spawn_blocking(|| timed("elasticsearch", ElasticsearchNode::start)).await.unwrap();
    bulk_and_search(&node.url(), || node.log()).await;
    tokio::task::block_in_place(|| node.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_insert_and_select_with_the_scylla_driver() {
    use scylla::client::session::Session;
    use scylla::client::session_builder::SessionBuilder;

    let node = tokio::task::spawn_blocking(|| timed("cassandra", CassandraNode::start)).await.unwrap();
    let session: Session =
        SessionBuilder::new().known_node(node.contact_point()).build().await.unwrap_or_else(|e| panic!("connect: {e}\n{}", node.log()));
    session
        .query_unpaged("CREATE KEYSPACE roundtrip WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}", &[])
        .await
        .expect("create keyspace");
    session
        .query_unpaged("CREATE TABLE roundtrip.feed (user_id int, seq int, action text, PRIMARY KEY (user_id, seq))", &[])
        .await
        .expect("create table");
    for (seq, action) in [(1_i32, "view"), (2, "cart"), (3, "order")] {
        session
            .query_unpaged("INSERT INTO roundtrip.feed (user_id, seq, action) VALUES (?, ?, ?)", (7_i32, seq, action))
            .await
            .expect("insert");
    }
    let rows = session
        .query_unpaged("SELECT seq, action FROM roundtrip.feed WHERE user_id = ?", (7_i32,))
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows");
    let got: Vec<(i32, String)> = rows.rows::<(i32, String)>().expect("typed rows").map(|r| r.expect("row")).collect();
    assert_eq!(got, vec![(1, "view".to_string()), (2, "cart".to_string()), (3, "order".to_string())]);
    tokio::task::block_in_place(|| node.stop());
}

/// Start and stop only: no MongoDB client is built (testkit/README.md).
#[test]
fn ferretdb_starts_and_stops() {
    let pg = PgCluster::start();
    let f = timed("ferretdb", || FerretDb::start(&pg));
    assert!(f.pid().is_some());
    assert!(std::net::TcpStream::connect(("127.0.0.1", f.port)).is_ok());
    f.stop();
    assert!(std::net::TcpStream::connect(("127.0.0.1", f.port)).is_err(), "port closed after stop");
    f.start_server();
    assert!(std::net::TcpStream::connect(("127.0.0.1", f.port)).is_ok(), "restarted\n{}", f.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferretdb_round_trip_with_the_mongodb_driver() {
    use futures_util::TryStreamExt;
    use mongodb::bson::{doc, Document};

    let (pg, f) = tokio::task::spawn_blocking(|| {
        let pg = PgCluster::start();
        let f = timed("ferretdb", || FerretDb::start(&pg));
        (pg, f)
    })
    .await
    .unwrap();
    let client = mongodb::Client::with_uri_str(f.uri()).await.expect("mongodb client");
    let coll = client.database("pgfanout").collection::<Document>("roundtrip");
    coll.insert_many((1..=5).map(|i| doc! {"_id": i, "name": format!("item {i}"), "qty": i * 10, "tags": ["a", "b"]}))
        .await
        .unwrap_or_else(|e| panic!("insert: {e}\n{}", f.log()));
    coll.update_one(doc! {"_id": 2}, doc! {"$set": {"name": "renamed"}, "$inc": {"qty": 1}}).await.expect("update");
    coll.delete_one(doc! {"_id": 4}).await.expect("delete");
    let read = |coll: mongodb::Collection<Document>| async move {
        let docs: Vec<Document> = coll.find(doc! {}).sort(doc! {"_id": 1}).await.expect("find").try_collect().await.expect("cursor");
        docs.iter()
            .map(|d| (d.get_i32("_id").unwrap(), d.get_str("name").unwrap().to_string(), d.get_i32("qty").unwrap()))
            .collect::<Vec<_>>()
    };
    let want = vec![(1, "item 1".to_string(), 10), (2, "renamed".into(), 21), (3, "item 3".into(), 30), (5, "item 5".into(), 50)];
    assert_eq!(read(coll.clone()).await, want);
    // The documents are rows in PostgreSQL (one table per collection).
    let rows = pg.psql("ferretdb", "SELECT count(*) FROM pgfanout.\"roundtrip_6d965b64\"");
    assert_eq!(rows.trim(), "4", "documents stored in PostgreSQL");
    client.shutdown().await;
    tokio::task::block_in_place(|| f.stop());
    drop(pg);
}
