//! Shared helpers for the end-to-end tests: a cluster, a scratch directory,
//! a config for the daemon, and readers for its output.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value as Json;
pub use testkit::{Daemon, PgCluster};

pub const BIN: &str = env!("CARGO_BIN_EXE_pgfanout");

pub fn bin() -> &'static Path {
    Path::new(BIN)
}

/// A scratch directory for configs, outputs and logs.
pub fn scratch() -> tempfile::TempDir {
    testkit::scratch_dir("pgfanout-e2e-")
}

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

/// Parsed records of a JSON-lines output file.
pub fn records(path: &Path) -> Vec<Json> {
    testkit::daemon::read_json_lines(path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// Number of complete lines in a file, cheaply.
pub fn line_count(path: &Path) -> usize {
    std::fs::read(path).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0)
}

/// Waits until `path` has at least `n` lines; panics with the daemon log.
pub fn wait_lines(path: &Path, n: usize, timeout: Duration, daemon: &Daemon) {
    let start = std::time::Instant::now();
    loop {
        let have = line_count(path);
        if have >= n {
            return;
        }
        if start.elapsed() > timeout {
            panic!("timed out waiting for {n} lines in {} (have {have})\n--- daemon log ---\n{}", path.display(), daemon.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The slot's confirmed_flush_lsn as a number.
pub async fn confirmed_flush(c: &tokio_postgres::Client, slot: &str) -> u64 {
    let row =
        c.query_opt("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await.expect("query slot");
    row.and_then(|r| r.get::<_, Option<String>>(0)).map(|s| lsn(&s)).unwrap_or(0)
}

pub fn lsn(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').expect("lsn");
    (u64::from_str_radix(hi, 16).expect("hi") << 32) | u64::from_str_radix(lo, 16).expect("lo")
}

/// The last record per key (JSON text of `key`) for one table: the state a
/// replaying consumer ends with.
pub fn final_state(recs: &[Json], table: &str) -> HashMap<String, Option<Json>> {
    let mut state = HashMap::new();
    for r in recs.iter().filter(|r| r["table"] == table) {
        let key = r["key"].to_string();
        match r["op"].as_str() {
            Some("delete") => {
                state.insert(key, None);
            }
            Some("truncate") => state.clear(),
            _ => {
                state.insert(key, Some(r["after"].clone()));
            }
        }
    }
    state
}

/// `{key json text -> to_jsonb(row)}` from PostgreSQL for a table keyed by `id`.
pub async fn table_state(c: &tokio_postgres::Client, table: &str) -> HashMap<String, Option<Json>> {
    let rows =
        c.query(&format!("SELECT jsonb_build_object('id', id)::text, to_jsonb(t)::text FROM {table} t"), &[]).await.expect("read table");
    rows.iter()
        .map(|r| {
            let k: Json = serde_json::from_str(&r.get::<_, String>(0)).expect("key json");
            let v: Json = serde_json::from_str(&r.get::<_, String>(1)).expect("row json");
            (k.to_string(), Some(v))
        })
        .collect()
}

/// Drops deleted keys so states compare as sets of live rows.
pub fn live(state: HashMap<String, Option<Json>>) -> HashMap<String, Json> {
    state.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect()
}

pub fn out_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.jsonl"))
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

/// `pg_current_wal_insert_lsn()` as a number: the end of everything written
/// so far (with synchronous_commit off, `pg_current_wal_lsn()` lags).
pub async fn insert_lsn(c: &tokio_postgres::Client) -> u64 {
    let s: String = c.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.expect("insert lsn").get(0);
    lsn(&s)
}

/// The `source:` section of every end-to-end config: no snapshot, status
/// every second so confirmed positions move quickly.
fn source_section(pg: &PgCluster, db: &str, slot: &str) -> String {
    format!(
        "source:\n  postgres:\n    url: {url}\n    slot: {slot}\n    publication: {slot}\n    snapshot: never\n    status_interval: 1s\n",
        url = pg.url(db)
    )
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

/// Samples the slot's confirmed_flush_lsn every `every` on client `c` (its
/// own connection) until the returned flag is set; the task's result is
/// every sample with the time it was taken.
pub fn sample_confirmed_flush(
    c: tokio_postgres::Client,
    slot: &str,
    every: Duration,
) -> (std::sync::Arc<std::sync::atomic::AtomicBool>, tokio::task::JoinHandle<Vec<(std::time::Instant, u64)>>) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let slot = slot.to_string();
    let handle = tokio::spawn(async move {
        let mut out = Vec::new();
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            out.push((std::time::Instant::now(), confirmed_flush(&c, &slot).await));
            tokio::time::sleep(every).await;
        }
        out
    });
    (stop, handle)
}

/// The last `n` records of a JSON-lines file (cheap on big files).
pub fn tail_records(path: &Path, n: usize) -> Vec<Json> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let complete = if text.ends_with('\n') { &text[..] } else { text.rsplit_once('\n').map(|(a, _)| a).unwrap_or("") };
    let lines: Vec<&str> = complete.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
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

/// A small deterministic generator (xorshift), so a failing workload replays.
pub struct Rng(pub u64);

impl Rng {
    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}
