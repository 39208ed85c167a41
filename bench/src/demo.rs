//! `pgfanout-demo`: the e-commerce example into every store at once
//! (`scripts/demo.sh --all`).
//!
//! Starts throwaway servers on free loopback ports with the test kit
//! (PostgreSQL, Redis, Kafka, OpenSearch, Neo4j, Cassandra, FerretDB),
//! loads `examples/ecommerce.sql`, runs `pgfanout run` on
//! `config/ecommerce.yaml` plus the MongoDB profile of
//! `config/profiles.yaml` (addresses changed to the servers'), applies
//! `examples/ecommerce-changes.sql` in two steps, and prints what landed in
//! each store, asked in the store's own query language. Everything it
//! started is stopped and its files removed when it ends (also on Ctrl-C).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{json, Value as Json};
use testkit::{CassandraNode, Daemon, FerretDb, KafkaBroker, Neo4jServer, OpenSearchNode, PgCluster, RedisServer};

#[derive(Parser)]
#[command(about = "The e-commerce example into Redis, Kafka, OpenSearch, Neo4j, Cassandra, FerretDB and a file, printed store by store")]
struct Args {
    /// The pgfanout binary.
    #[arg(long)]
    pgfanout: PathBuf,
    /// The repository (config/ and examples/).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::spawn(async {
        // Ctrl-C: return from main, so every server is dropped (stopped).
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("interrupted: stopping the servers");
        std::process::exit(130);
    });
    let started = Instant::now();
    say("starting PostgreSQL, Redis, Kafka, OpenSearch, Neo4j, Cassandra and FerretDB on free ports (a minute or two)");
    let pg = tokio::task::spawn_blocking(PgCluster::start).await?;
    let (redis, kafka, search, neo4j, cassandra) = tokio::task::spawn_blocking(|| {
        std::thread::scope(|s| {
            let redis = s.spawn(RedisServer::start);
            let kafka = s.spawn(KafkaBroker::start);
            let search = s.spawn(OpenSearchNode::start);
            let neo4j = s.spawn(Neo4jServer::start);
            let cassandra = s.spawn(CassandraNode::start);
            // A server that cannot start panics in its thread with the reason.
            (
                redis.join().expect("Redis did not start"),
                kafka.join().expect("Kafka did not start"),
                search.join().expect("OpenSearch did not start"),
                neo4j.join().expect("Neo4j did not start"),
                cassandra.join().expect("Cassandra did not start"),
            )
        })
    })
    .await?;
    let ferret = {
        let pg = &pg;
        tokio::task::block_in_place(|| FerretDb::start(pg))
    };
    say(&format!("servers up in {:.0} s", started.elapsed().as_secs_f64()));

    // The shop database, as examples/ecommerce.sql makes it.
    let admin = pg.client("postgres").await;
    admin.batch_execute("CREATE ROLE replicator LOGIN SUPERUSER PASSWORD 'replicator'").await?;
    pg.create_database("shop").await;
    let shop = pg.client("shop").await;
    shop.batch_execute(&read(&args.repo, "examples/ecommerce.sql")?).await.context("examples/ecommerce.sql")?;
    // The activity feed's table, as connectors/scylla/README.md gives it.
    let cql = scylla::client::session_builder::SessionBuilder::new().known_node(cassandra.contact_point()).build().await?;
    for statement in [
        "CREATE KEYSPACE IF NOT EXISTS shop WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE IF NOT EXISTS shop.activity_feed (user_id bigint, event_time timestamp, position text, action text, \
         details text, PRIMARY KEY ((user_id), event_time, position)) WITH CLUSTERING ORDER BY (event_time DESC, position DESC)",
    ] {
        cql.query_unpaged(statement, ()).await?;
    }
    cql.await_schema_agreement().await?;

    let dir = tempfile::tempdir()?;
    let (hooks, hook_url) = receiver().await?;
    let mut config = config(&args.repo, &pg, &redis, &kafka, &search, &neo4j, &cassandra, &ferret, dir.path())?;
    // The outbox's events also go to a webhook (a receiver in this process).
    config["sinks"]["hooks"] = json!({ "type": "webhook", "url": hook_url });
    if let Some(p) = config["pipelines"].as_array_mut() {
        p.push(json!({ "name": "order-hooks", "from": "public.outbox", "to": "hooks",
                       "http": { "format": "outbox", "path": "/events/{aggregatetype}" } }));
    }
    let config = serde_json::to_string_pretty(&config)?;
    let config_path = dir.path().join("ecommerce-all.yaml");
    std::fs::write(&config_path, &config)?;
    say(&format!(
        "running: pgfanout run -c {} (config/ecommerce.yaml + config/profiles.yaml, the servers' addresses)",
        config_path.display()
    ));
    let daemon = Daemon::start(&args.pgfanout, dir.path(), "demo", &config);
    wait_until(&shop, &daemon, "the initial snapshot", |lsn| lsn > 0).await?;

    // The changes: first up to the cart update, then checkout and the rest.
    let changes = read(&args.repo, "examples/ecommerce-changes.sql")?;
    let (before_checkout, checkout) = changes.split_at(changes.find("BEGIN;").context("a BEGIN in examples/ecommerce-changes.sql")?);
    shop.batch_execute(before_checkout).await?;
    caught_up(&shop, &daemon).await?;
    heading("Redis: Ada's cart before checkout", "HGETALL cart:1");
    print!("{}", redis.cli(&["HGETALL", "cart:1"]));
    shop.batch_execute(checkout).await?;
    caught_up(&shop, &daemon).await?;
    heading("Redis: after checkout the cart is gone", "EXISTS cart:1");
    print!("{}", redis.cli(&["EXISTS", "cart:1"]));

    heading("OpenSearch: the catalog document (no cost_price)", "GET /products/_doc/10");
    let doc: Json = reqwest::get(format!("{}/products/_doc/10", search.url())).await?.json().await?;
    println!("{}", serde_json::to_string_pretty(&json!({ "_id": doc["_id"], "_version": doc["_version"], "_source": doc["_source"] }))?);

    let recommend = "MATCH (:Product {id: 10})<-[:BOUGHT]-(u:User)-[:BOUGHT]->(p:Product) WHERE p.id <> 10 \
                     RETURN p.id AS id, p.title AS title, count(DISTINCT u) AS buyers ORDER BY buyers DESC LIMIT 10";
    heading("Neo4j: who bought the keyboard also bought", recommend);
    let graph = neo4rs::Graph::connect(
        neo4rs::ConfigBuilder::default()
            .uri(neo4j.uri())
            .user(&neo4j.user)
            .password(&neo4j.password)
            .db(neo4j.database.as_str())
            .build()?,
    )
    .await?;
    let mut rows = graph.execute(neo4rs::query(recommend)).await?;
    while let Some(row) = rows.next().await? {
        println!("id={} title={} buyers={}", row.get::<i64>("id")?, row.get::<String>("title")?, row.get::<i64>("buyers")?);
    }

    let feed = "SELECT event_time, action, details FROM shop.activity_feed WHERE user_id = 1 LIMIT 10";
    heading("Cassandra: Ada's activity feed, newest first", feed);
    let rows = cql.query_unpaged(feed, ()).await?.into_rows_result()?;
    for row in rows.rows::<(scylla::value::CqlTimestamp, String, String)>()? {
        let (at, action, details) = row?;
        let at = std::time::UNIX_EPOCH + Duration::from_millis(at.0.max(0) as u64);
        println!("{}  {action:<20} {details}", humantime::format_rfc3339_millis(at));
    }

    heading("Kafka: the order event", "kafka-console-consumer --topic shop.public.orders --from-beginning");
    for (key, value) in read_topic(&kafka.bootstrap(), "shop.public.orders")? {
        println!("key={key}\n{value}");
    }

    heading("Kafka: the order_placed event from the outbox", "kafka-console-consumer --topic outbox.event.order --from-beginning");
    for (key, value) in read_topic(&kafka.bootstrap(), "outbox.event.order")? {
        println!("key={key}\n{value}");
    }

    heading("Webhook: the same event POSTed to a receiver", "POST /events/order (X-Event-Id, X-Event-Type)");
    for request in hooks.lock().map_err(|_| anyhow::anyhow!("receiver poisoned"))?.iter() {
        println!("{request}");
    }

    heading("FerretDB (MongoDB wire protocol): Ada's profile, her addresses embedded", "db.profiles.findOne({_id: 1})");
    let mongo = mongodb::Client::with_uri_str(ferret.uri()).await?;
    let profile =
        mongo.database("shop").collection::<mongodb::bson::Document>("profiles").find_one(mongodb::bson::doc! { "_id": 1 }).await?;
    println!("{}", profile.map(|d| mongodb::bson::Bson::Document(d).into_relaxed_extjson().to_string()).unwrap_or_else(|| "(none)".into()));

    heading("File: the audit trail's last record", "tail -n 1 changes.jsonl");
    let audit = std::fs::read_to_string(dir.path().join("changes.jsonl"))?;
    println!("{}", audit.lines().last().unwrap_or("(empty)"));

    let dead = std::fs::read_to_string(dir.path().join("ecommerce.dead.jsonl")).unwrap_or_default();
    if !dead.is_empty() {
        bail!("dead letters:\n{dead}\n{}", daemon.log());
    }
    say(&format!("done in {:.0} s; stopping every server and removing their files", started.elapsed().as_secs_f64()));
    drop(daemon);
    Ok(())
}

fn say(what: &str) {
    eprintln!("==> {what}");
}

fn heading(what: &str, query: &str) {
    println!("\n--- {what}\n$ {query}");
}

fn read(repo: &Path, file: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(repo.join(file)).with_context(|| format!("read {file} (run from the repository, or give --repo)"))
}

/// `config/ecommerce.yaml` with the servers' addresses, and the profile
/// sink and pipelines of `config/profiles.yaml` added (JSON, which YAML reads).
#[allow(clippy::too_many_arguments)]
fn config(
    repo: &Path,
    pg: &PgCluster,
    redis: &RedisServer,
    kafka: &KafkaBroker,
    search: &OpenSearchNode,
    neo4j: &Neo4jServer,
    cassandra: &CassandraNode,
    ferret: &FerretDb,
    dir: &Path,
) -> anyhow::Result<Json> {
    let parse = |file: &str| -> anyhow::Result<Json> {
        let text = read(repo, file)?;
        config::Config::builder()
            .add_source(config::File::from_str(&text, config::FileFormat::Yaml))
            .build()
            .and_then(|c| c.try_deserialize())
            .with_context(|| format!("parse {file}"))
    };
    let mut cfg = parse("config/ecommerce.yaml")?;
    let profiles = parse("config/profiles.yaml")?;
    let url = cfg["source"]["postgres"]["url"].as_str().context("source url")?.to_string();
    cfg["source"]["postgres"]["url"] = Json::from(url.replace(":5432/", &format!(":{}/", pg.port)));
    cfg["source"]["postgres"]["status_interval"] = Json::from("1s");
    let set = |cfg: &mut Json, sink: &str, fields: Json| {
        for (k, v) in fields.as_object().into_iter().flatten() {
            cfg["sinks"][sink][k] = v.clone();
        }
    };
    set(&mut cfg, "cache", json!({ "url": redis.url() }));
    set(&mut cfg, "search", json!({ "urls": [search.url()] }));
    set(&mut cfg, "graph", json!({ "uri": neo4j.uri(), "user": neo4j.user, "password": neo4j.password, "database": neo4j.database }));
    set(&mut cfg, "feed", json!({ "nodes": [cassandra.contact_point()], "consistency": "one" }));
    set(&mut cfg, "events", json!({ "brokers": kafka.bootstrap() }));
    set(&mut cfg, "audit", json!({ "path": dir.join("changes.jsonl").display().to_string() }));
    cfg["sinks"]["profiles"] = profiles["sinks"]["profiles"].clone();
    cfg["sinks"]["profiles"]["uri"] = Json::from(ferret.uri());
    if let (Some(p), Some(more)) = (cfg["pipelines"].as_array_mut(), profiles["pipelines"].as_array()) {
        p.extend(more.iter().cloned());
    }
    cfg["dead_letter"]["path"] = Json::from(dir.join("ecommerce.dead.jsonl").display().to_string());
    cfg["http"] = json!({ "enabled": false });
    Ok(cfg)
}

/// What the demo's webhook receiver got: one line per request.
type Received = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// A webhook receiver on a free loopback port: keeps each request's path,
/// event headers and body. Returns them and its URL.
async fn receiver() -> anyhow::Result<(Received, String)> {
    let received = Received::default();
    let kept = received.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: String| {
        let kept = kept.clone();
        async move {
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
            let line =
                format!("POST {}  X-Event-Id: {}  X-Event-Type: {}\n{body}", uri.path(), header("x-event-id"), header("x-event-type"));
            kept.lock().map(|mut k| k.push(line)).ok();
            axum::http::StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((received, url))
}

/// The slot's confirmed position, as a number.
async fn confirmed(shop: &tokio_postgres::Client) -> u64 {
    let row = shop
        .query_opt("SELECT (confirmed_flush_lsn - '0/0')::int8 FROM pg_replication_slots WHERE slot_name = 'pgfanout'", &[])
        .await
        .ok()
        .flatten();
    row.and_then(|r| r.get::<_, Option<i64>>(0)).unwrap_or(0) as u64
}

async fn wait_until(shop: &tokio_postgres::Client, daemon: &Daemon, what: &str, done: impl Fn(u64) -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    while !done(confirmed(shop).await) {
        if Instant::now() > deadline {
            bail!("{what}: not done in 3 minutes; pgfanout's log:\n{}", daemon.log());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Waits until every change committed so far is durable in every store.
async fn caught_up(shop: &tokio_postgres::Client, daemon: &Daemon) -> anyhow::Result<()> {
    let end: i64 = shop.query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::int8", &[]).await?.get(0);
    wait_until(shop, daemon, "the changes", |lsn| lsn >= end as u64).await
}

/// Every record of `topic` from the beginning: (key, value).
fn read_topic(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<(String, String)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "pgfanout-demo")
        .set("enable.auto.commit", "false")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = md.topics().iter().find(|t| t.name() == topic).map(|t| t.partitions().len()).unwrap_or(0);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => out.push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            )),
            Some(Err(e)) => bail!("reading {topic}: {e}"),
            None if !out.is_empty() => break,
            None => {}
        }
    }
    Ok(out)
}
