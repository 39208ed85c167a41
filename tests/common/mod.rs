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

/// A config streaming `tables` (patterns) of `db` into a file sink at `out`.
pub fn file_config(pg: &PgCluster, db: &str, slot: &str, tables: &[&str], out: &Path) -> String {
    let from = tables.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ");
    format!(
        r#"
source:
  postgres:
    url: {url}
    slot: {slot}
    publication: {slot}
    snapshot: never
    status_interval: 1s
sinks:
  out: {{ type: file, path: "{out}" }}
pipelines:
  - name: all
    from: [{from}]
    to: out
dead_letter:
  path: "{dlq}"
http:
  enabled: false
runtime:
  shutdown_timeout: 10s
"#,
        url = pg.url(db),
        out = out.display(),
        dlq = out.with_extension("dead.jsonl").display(),
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
    let row = c
        .query_opt("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await
        .expect("query slot");
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
    let rows = c
        .query(&format!("SELECT jsonb_build_object('id', id)::text, to_jsonb(t)::text FROM {table} t"), &[])
        .await
        .expect("read table");
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
