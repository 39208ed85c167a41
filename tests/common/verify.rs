//! `pgfanout verify` as the tests run it: the command line, a fresh JSON
//! report per run, and what it said; and `pgfanout doctor`'s lines about a
//! sink.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value as Json;

use super::bin;

/// Runs `pgfanout verify -c <config> --json <report> --settle <settle>
/// <args>` and waits for it (blocking: call inside `block_in_place`). The
/// report is a new file next to `config` each run. Returns the exit code
/// (-1 when killed by a signal), the JSON report (`Null` when none was
/// written) and stdout then stderr.
pub fn run_verify(config: &Path, settle: &str, args: &[&str]) -> (i32, Json, String) {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let report = config.with_file_name(format!("verify-report-{}.json", RUNS.fetch_add(1, Ordering::Relaxed)));
    let out = Command::new(bin())
        .args(["verify", "-c"])
        .arg(config)
        .arg("--json")
        .arg(&report)
        .args(["--settle", settle])
        .args(args)
        .output()
        .expect("run pgfanout verify");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let json = std::fs::read_to_string(&report).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Json::Null);
    (out.status.code().unwrap_or(-1), json, text)
}

/// The report entry of pipeline `name` (`Null` when absent).
pub fn pipeline_report(report: &Json, name: &str) -> Json {
    report["pipelines"].as_array().and_then(|a| a.iter().find(|p| p["pipeline"] == name).cloned()).unwrap_or(Json::Null)
}

/// Writes `yaml` to `<dir>/<name>.yaml`, runs `pgfanout doctor -c` on it and
/// returns what it said of sink `sink`: each line naming `sink <sink>` and
/// the `fix:` line under it, if any. (Blocking: call it inside
/// `block_in_place` from a multi-threaded runtime, or from a test with no
/// runtime.)
pub fn doctor_says(dir: &Path, name: &str, yaml: &str, sink: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(bin()).args(["doctor", "-c"]).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let (lines, needle) = (text.lines().collect::<Vec<_>>(), format!("sink {sink}"));
    let mut said = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.contains(&needle) {
            said.push(l.to_string());
            said.extend(lines.get(i + 1).filter(|n| n.trim_start().starts_with("fix:")).map(|n| n.to_string()));
        }
    }
    said.join("\n")
}
