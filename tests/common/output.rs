//! The file sink's output read back as a replaying consumer would: the
//! records, the last state per key, and the comparison with the tables.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value as Json;
use testkit::Daemon;

/// The file sink output `<name>.jsonl` in `dir`.
pub fn out_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.jsonl"))
}

/// Parsed records of a JSON-lines output file.
pub fn records(path: &Path) -> Vec<Json> {
    testkit::daemon::read_json_lines(path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// The last `n` records of a JSON-lines file (cheap on big files).
pub fn tail_records(path: &Path, n: usize) -> Vec<Json> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let complete = if text.ends_with('\n') { &text[..] } else { text.rsplit_once('\n').map(|(a, _)| a).unwrap_or("") };
    let lines: Vec<&str> = complete.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
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

/// The live rows of each of `tables` that replaying `recs` ends with equal
/// the tables' rows, row for row (tables keyed by `id`).
pub async fn assert_replay_equals_tables(c: &tokio_postgres::Client, recs: &[Json], tables: &[&str]) {
    for t in tables {
        let ours = live(final_state(recs, t));
        let theirs = live(table_state(c, t).await);
        assert_eq!(ours.len(), theirs.len(), "{t}: row count");
        for (k, v) in &theirs {
            assert_eq!(ours.get(k), Some(v), "{t}: row {k}");
        }
    }
}

/// `{id as text -> to_jsonb(row)}` for every row of `table`.
pub async fn rows_by_id(c: &tokio_postgres::Client, table: &str) -> BTreeMap<String, Json> {
    // An alias no column is named: `to_jsonb(t)` would take a column `t`.
    let rows = c.query(&format!("SELECT id::text, to_jsonb(whole_row__)::text FROM {table} whole_row__"), &[]).await.unwrap();
    rows.iter().map(|r| (r.get::<_, String>(0), serde_json::from_str(&r.get::<_, String>(1)).unwrap())).collect()
}
