//! The daemon's configs: every end-to-end config is built here from one
//! `source:` section, so they differ only where a test needs them to.

use std::path::Path;

use serde_json::Value as Json;
use testkit::PgCluster;

/// A daemon config for `db` (no snapshot, status every second, no HTTP
/// listener): `sinks` is the YAML under `sinks:`, `pipelines` the list under
/// `pipelines:`, dead letters go to `dlq`. Every end-to-end config is built
/// here so they differ only where a test needs them to.
pub fn daemon_config(pg: &PgCluster, db: &str, slot: &str, sinks: &str, pipelines: &str, dlq: &Path) -> String {
    format!(
        "{source}sinks:\n{sinks}\npipelines:\n{pipelines}\ndead_letter:\n  path: \"{dlq}\"\nhttp:\n  enabled: false\nruntime:\n  shutdown_timeout: 10s\n",
        source = source_section(pg, db, slot),
        sinks = sinks.trim_end(),
        pipelines = pipelines.trim_end(),
        dlq = dlq.display(),
    )
}

/// A config streaming `tables` (patterns) of `db` into a file sink at `out`.
pub fn file_config(pg: &PgCluster, db: &str, slot: &str, tables: &[&str], out: &Path) -> String {
    let from = tables.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ");
    daemon_config(
        pg,
        db,
        slot,
        &format!("  out: {{ type: file, path: \"{}\" }}", out.display()),
        &format!("  - name: all\n    from: [{from}]\n    to: out"),
        &out.with_extension("dead.jsonl"),
    )
}

/// A config streaming `db` into one Redis sink named `cache` at `redis_url`.
/// `pipelines` is the YAML list under `pipelines:` (items with `to: cache`).
/// Reconnects are capped at 1 s so an outage test sees recovery quickly;
/// the dead-letter file is `dir/<slot>.dead.jsonl`.
pub fn redis_config(pg: &PgCluster, db: &str, slot: &str, redis_url: &str, pipelines: &str, dir: &Path) -> String {
    let sink =
        format!("  cache: {{ type: redis, url: \"{redis_url}\", reconnect_max_delay: 1s, connect_timeout: 2s, response_timeout: 10s }}");
    daemon_config(pg, db, slot, &sink, pipelines, &dir.join(format!("{slot}.dead.jsonl")))
}

/// A config streaming `db` into one Kafka sink named `events` at
/// `bootstrap`. `sink_extra` is YAML flow-map entries appended to the sink
/// (e.g. `"topics: { partitions: 3 }"`, may be empty); `pipelines` is the
/// YAML list under `pipelines:` (items with `to: events`). Deliveries time
/// out after 5 s so a broker outage turns into retries quickly; the
/// dead-letter file is `dir/<slot>.dead.jsonl`.
pub fn kafka_config(pg: &PgCluster, db: &str, slot: &str, bootstrap: &str, sink_extra: &str, pipelines: &str, dir: &Path) -> String {
    let extra = if sink_extra.is_empty() { String::new() } else { format!(", {sink_extra}") };
    let sink = format!("  events: {{ type: kafka, brokers: \"{bootstrap}\", delivery_timeout: 5s{extra} }}");
    daemon_config(pg, db, slot, &sink, pipelines, &dir.join(format!("{slot}.dead.jsonl")))
}

/// A config streaming `db` into one Neo4j sink named `graph` on the Bolt
/// server at `uri`. `pipelines` is the YAML list under `pipelines:` (items
/// with `to: graph`); the dead-letter file is `dir/<slot>.dead.jsonl`.
#[allow(clippy::too_many_arguments)]
pub fn neo4j_config(
    pg: &PgCluster,
    db: &str,
    slot: &str,
    uri: &str,
    user: &str,
    password: &str,
    database: &str,
    pipelines: &str,
    dir: &Path,
) -> String {
    let sink = format!("  graph: {{ type: neo4j, uri: \"{uri}\", user: \"{user}\", password: \"{password}\", database: \"{database}\" }}");
    daemon_config(pg, db, slot, &sink, pipelines, &dir.join(format!("{slot}.dead.jsonl")))
}

/// The `source:` section of every end-to-end config: no snapshot, status
/// every second so confirmed positions move quickly.
fn source_section(pg: &PgCluster, db: &str, slot: &str) -> String {
    format!(
        "source:\n  postgres:\n    url: {url}\n    slot: {slot}\n    publication: {slot}\n    snapshot: never\n    status_interval: 1s\n",
        url = pg.url(db)
    )
}

/// `config/ecommerce.yaml` reduced to the sinks named in `keep`, each with
/// the JSON fields given merged in (the test server's address), and the
/// pipelines that write to them. The PostgreSQL URL keeps its
/// `${PGPASSWORD:-…}@${PGHOST:-…}` interpolation, only its port changes;
/// status every second; files go to `dir`. Returned as JSON (a YAML flow
/// document).
pub fn ecommerce_subset(pg: &PgCluster, keep: &[(&str, Json)], dir: &Path) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/ecommerce.yaml");
    let text = std::fs::read_to_string(path).expect("read config/ecommerce.yaml");
    let mut cfg: Json = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Yaml))
        .build()
        .and_then(|c| c.try_deserialize())
        .expect("parse config/ecommerce.yaml");
    let url = cfg["source"]["postgres"]["url"].as_str().expect("source url").to_string();
    assert!(url.contains("${PGPASSWORD:-replicator}@${PGHOST:-127.0.0.1}:5432/"), "{url}");
    cfg["source"]["postgres"]["url"] = Json::from(url.replace(":5432/", &format!(":{}/", pg.port)));
    cfg["source"]["postgres"]["status_interval"] = Json::from("1s");
    let sinks = cfg["sinks"].as_object_mut().expect("sinks");
    sinks.retain(|name, _| keep.iter().any(|(k, _)| k == name));
    for (name, fields) in keep {
        let sink = sinks.get_mut(*name).and_then(Json::as_object_mut).unwrap_or_else(|| panic!("no sink {name} in the example"));
        for (k, v) in fields.as_object().expect("sink fields") {
            sink.insert(k.clone(), v.clone());
        }
    }
    cfg["pipelines"].as_array_mut().expect("pipelines").retain(|p| keep.iter().any(|(k, _)| p["to"] == *k));
    cfg["dead_letter"]["path"] = Json::from(dir.join("ecommerce.dead.jsonl").display().to_string());
    cfg["http"] = serde_json::json!({ "enabled": false });
    serde_json::to_string_pretty(&cfg).expect("config JSON")
}

/// A fresh cluster with [`ecommerce_database`] `db`, and a client of it.
pub async fn ecommerce_cluster(db: &str) -> (PgCluster, tokio_postgres::Client) {
    let pg = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let c = ecommerce_database(&pg, db).await;
    (pg, c)
}

/// A database `db` with the e-commerce example schema
/// (`examples/ecommerce.sql`) and the `replicator` role the example
/// connects as (superuser here, so it may create the publication).
pub async fn ecommerce_database(pg: &PgCluster, db: &str) -> tokio_postgres::Client {
    let admin = pg.client("postgres").await;
    admin.batch_execute("CREATE ROLE replicator LOGIN SUPERUSER PASSWORD 'replicator'").await.expect("create role");
    pg.create_database(db).await;
    let c = pg.client(db).await;
    let schema = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ecommerce.sql")).expect("read schema");
    c.batch_execute(&schema).await.expect("load examples/ecommerce.sql");
    c
}
