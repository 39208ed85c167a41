//! The operator files outside the code stay in step with it: the Grafana
//! dashboard and the Prometheus alert rules in `dashboards/` name only
//! metrics and labels that `src/metrics.rs` defines (a renamed metric would
//! otherwise leave an empty panel or an alert that never fires, silently),
//! and the Docker setup in `docker/` runs a configuration that `pgfanout
//! check` accepts, with the files and ports its pieces expect of each other.
//!
//! The rules' behaviour on synthetic series is tested by
//! `promtool test rules dashboards/alerts.test.yaml` (needs Prometheus's
//! promtool, so not part of this test).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use pgfanout::config::load_with_env;
use pgfanout::metrics as m;
use pgfanout::pipeline::Router;
use regex::Regex;
use serde_json::Value;

/// Histograms: Prometheus exposes them as `_bucket`, `_sum` and `_count`.
const HISTOGRAMS: &[&str] = &[m::SINK_BATCH_DURATION_SECONDS, m::END_TO_END_LATENCY_SECONDS, m::WAIT_SECONDS];

/// Labels a query may group or match on: the metrics' own labels, the
/// histogram bucket label and the two labels Prometheus adds to each target.
fn known_labels() -> BTreeSet<&'static str> {
    [
        m::LABEL_SINK,
        m::LABEL_TABLE,
        m::LABEL_OP,
        m::LABEL_PIPELINE,
        m::LABEL_OUTCOME,
        m::LABEL_TOPIC,
        m::LABEL_PARTITION,
        "le",
        "instance",
        "job",
    ]
    .into_iter()
    .collect()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `dashboards/*.json|yaml|yml` file with its text.
fn dashboard_files() -> Vec<(PathBuf, String)> {
    let dir = root().join("dashboards");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if matches!(path.extension().and_then(|e| e.to_str()), Some("json" | "yaml" | "yml")) {
            let text = read(&path);
            files.push((path, text));
        }
    }
    files.sort();
    files
}

/// Each `pgfanout_...` identifier in `text` (not preceded by an identifier
/// character), in order of appearance.
fn metric_names(text: &str) -> Vec<String> {
    let re = Regex::new(r"(?:^|[^A-Za-z0-9_:])(pgfanout_[A-Za-z0-9_]+)").expect("regex");
    re.captures_iter(text).map(|c| c[1].to_string()).collect()
}

/// The metric of `src/metrics.rs` that `name` refers to: itself, or the
/// histogram whose `_bucket` / `_sum` / `_count` series it is.
fn defined_metric(name: &str) -> Option<&'static str> {
    if let Some(found) = m::ALL.iter().find(|n| **n == name) {
        return Some(found);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find_map(|base| HISTOGRAMS.iter().find(|h| **h == base).copied())
}

/// Label names an expression groups by, joins on or matches: the contents
/// of `by (…)`, `without (…)`, `on (…)`, `ignoring (…)`, `group_left (…)`,
/// `group_right (…)` and the keys of `{label="…"}` matchers.
fn labels_in_expr(expr: &str) -> BTreeSet<String> {
    let clause = Regex::new(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)").expect("regex");
    let matcher = Regex::new(r#"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*""#).expect("regex");
    let mut labels = BTreeSet::new();
    for c in clause.captures_iter(expr) {
        labels.extend(c[1].split(',').map(str::trim).filter(|l| !l.is_empty()).map(String::from));
    }
    let selector = Regex::new(r"\{([^{}]*)\}").expect("regex");
    for s in selector.captures_iter(expr) {
        labels.extend(matcher.captures_iter(&s[1]).map(|c| c[1].to_string()));
    }
    labels
}

fn load_dashboard() -> Value {
    let path = root().join("dashboards/grafana-pgfanout.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: not valid JSON: {e}", path.display()))
}

/// The panels of the dashboard, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(nested) = p.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The alert rules file as JSON, parsed by the `config` crate's YAML reader.
fn load_alerts() -> Value {
    let path = root().join("dashboards/alerts.yaml");
    let text = read(&path);
    config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Yaml))
        .build()
        .and_then(|c| c.try_deserialize::<Value>())
        .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", path.display()))
}

fn alert_rules(alerts: &Value) -> Vec<&Value> {
    alerts["groups"].as_array().into_iter().flatten().flat_map(|g| g["rules"].as_array().into_iter().flatten()).collect()
}

#[test]
fn dashboards_use_only_metrics_defined_in_src_metrics() {
    let files = dashboard_files();
    let names: Vec<&str> = files.iter().map(|(p, _)| p.file_name().and_then(|n| n.to_str()).unwrap_or("?")).collect();
    for required in ["grafana-pgfanout.json", "alerts.yaml"] {
        assert!(names.contains(&required), "dashboards/{required} is missing (found {names:?})");
    }
    let mut unknown = Vec::new();
    let mut used_by_file: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    for (path, text) in &files {
        let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_string();
        let found = metric_names(text);
        assert!(!found.is_empty(), "{file}: names no pgfanout_ metric");
        for name in found {
            match defined_metric(&name) {
                Some(metric) => {
                    used_by_file.entry(file.clone()).or_default().insert(metric);
                }
                None => unknown.push(format!("{file}: {name}")),
            }
        }
    }
    assert!(unknown.is_empty(), "metric names not in pgfanout::metrics::ALL:\n  {}", unknown.join("\n  "));

    // The dashboard shows every metric the daemon defines.
    let on_dashboard = &used_by_file["grafana-pgfanout.json"];
    let missing: Vec<&&str> = m::ALL.iter().filter(|n| !on_dashboard.contains(**n)).collect();
    assert!(missing.is_empty(), "metrics without a panel on the dashboard: {missing:?}");
}

#[test]
fn the_name_check_catches_unknown_and_misused_names() {
    // Guards the checker itself: a typo, a made-up metric and a histogram
    // suffix on a counter are all rejected; real series names pass.
    assert_eq!(defined_metric("pgfanout_sink_written_total"), Some(m::SINK_WRITTEN_TOTAL));
    assert_eq!(defined_metric("pgfanout_end_to_end_latency_seconds_bucket"), Some(m::END_TO_END_LATENCY_SECONDS));
    assert_eq!(defined_metric("pgfanout_sink_batch_duration_seconds_count"), Some(m::SINK_BATCH_DURATION_SECONDS));
    assert_eq!(defined_metric("pgfanout_sink_writen_total"), None);
    assert_eq!(defined_metric("pgfanout_sink_written_total_count"), None);
    assert_eq!(defined_metric("pgfanout_lag_seconds"), None);
    assert_eq!(
        metric_names(r#"rate(pgfanout_a_total[5m]) / x:pgfanout_b + sum(pgfanout_c_bucket{le="1"})"#),
        vec!["pgfanout_a_total", "pgfanout_c_bucket"]
    );
    assert_eq!(
        labels_in_expr(r#"sum by (sink, le) (rate(x{instance=~"$instance", sink!="a"}[5m])) and on (instance) y"#),
        ["instance", "le", "sink"].into_iter().map(String::from).collect()
    );
}

#[test]
fn grafana_dashboard_is_well_formed() {
    let dashboard = load_dashboard();
    assert_eq!(dashboard["uid"], "pgfanout");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion");

    // A Prometheus data source variable that every panel and query uses.
    let variables = dashboard["templating"]["list"].as_array().expect("templating.list");
    let ds = variables.iter().find(|v| v["name"] == "datasource").expect("a `datasource` variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    for v in variables.iter().filter(|v| v["type"] == "query") {
        assert_eq!(v["datasource"]["uid"], "${datasource}", "variable {}", v["name"]);
    }

    let known = known_labels();
    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    let mut exprs = Vec::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        let id = panel["id"].as_u64().unwrap_or_else(|| panic!("panel {title:?} has no id"));
        assert!(ids.insert(id), "panel id {id} used twice");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap_or(99), grid["w"].as_u64().unwrap_or(99));
        assert!(x + w <= 24 && grid["h"].as_u64().is_some_and(|h| h > 0), "panel {title:?}: gridPos {grid}");
        if panel["type"] == "row" {
            continue;
        }
        titles.insert(title.to_string());
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {title:?}");
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty()).unwrap_or_else(|| panic!("panel {title:?} has no query"));
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "panel {title:?}");
            let expr = t["expr"].as_str().filter(|e| !e.trim().is_empty()).unwrap_or_else(|| panic!("panel {title:?}: empty expr"));
            let stray: Vec<String> = labels_in_expr(expr).into_iter().filter(|l| !known.contains(l.as_str())).collect();
            assert!(stray.is_empty(), "panel {title:?}: unknown labels {stray:?} in {expr}");
            if expr.contains("histogram_quantile") {
                assert!(
                    expr.contains("_bucket") && labels_in_expr(expr).contains("le"),
                    "panel {title:?}: quantile without buckets: {expr}"
                );
            }
            exprs.push(expr.to_string());
        }
    }

    for wanted in [
        "Changes read/s by table and op",
        "Transactions/s",
        "Bytes read/s",
        "Source lag",
        "Confirmed flush LSN progress",
        "Written/s by sink",
        "Failed/s by sink",
        "Dead-lettered/s",
        "Durable LSN by sink",
        "Batch duration p50 / p99",
        "End-to-end latency p50 / p99",
        "Snapshot rows/s by table",
        "Snapshot progress by table",
        "Reconnects and streaming",
    ] {
        assert!(titles.contains(wanted), "no panel {wanted:?} (panels: {titles:?})");
    }
    // Both histograms are shown as p50 and p99.
    for h in HISTOGRAMS {
        for q in ["0.5", "0.99"] {
            let bucket = format!("{h}_bucket");
            assert!(
                exprs.iter().any(|e| e.contains(&format!("histogram_quantile({q},")) && e.contains(&bucket)),
                "no p{q} quantile of {h}"
            );
        }
    }
}

#[test]
fn alert_rules_have_the_expected_structure() {
    let alerts = load_alerts();
    let groups = alerts["groups"].as_array().filter(|g| !g.is_empty()).expect("`groups:` with at least one group");
    for g in groups {
        assert!(g["name"].as_str().is_some_and(|n| !n.is_empty()), "group without a name: {g}");
        assert!(g["rules"].as_array().is_some_and(|r| !r.is_empty()), "group {} without rules", g["name"]);
    }

    let known = known_labels();
    let duration = Regex::new(r"^[0-9]+[smhd]$").expect("regex");
    let label_ref = Regex::new(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)").expect("regex");
    let mut by_name: HashMap<String, &Value> = HashMap::new();
    for rule in alert_rules(&alerts) {
        let name = rule["alert"].as_str().unwrap_or_else(|| panic!("a rule without `alert:` (recording rules belong elsewhere): {rule}"));
        assert!(name.starts_with("Pgfanout"), "{name}: alert names start with Pgfanout");
        let expr = rule["expr"].as_str().filter(|e| !e.trim().is_empty()).unwrap_or_else(|| panic!("{name}: no expr"));
        assert!(!metric_names(expr).is_empty(), "{name}: expr names no pgfanout_ metric");
        let stray: Vec<String> = labels_in_expr(expr).into_iter().filter(|l| !known.contains(l.as_str())).collect();
        assert!(stray.is_empty(), "{name}: unknown labels {stray:?}");
        if let Some(f) = rule.get("for") {
            assert!(f.as_str().is_some_and(|f| duration.is_match(f)), "{name}: `for: {f}` is not a duration");
        }
        assert!(matches!(rule["labels"]["severity"].as_str(), Some("warning" | "critical")), "{name}: severity warning|critical");
        for key in ["summary", "description"] {
            let text = rule["annotations"][key].as_str().filter(|t| !t.trim().is_empty());
            let text = text.unwrap_or_else(|| panic!("{name}: no annotations.{key}"));
            for c in label_ref.captures_iter(text) {
                assert!(known.contains(&c[1]), "{name}: annotations.{key} uses unknown label {}", &c[1]);
            }
        }
        assert!(by_name.insert(name.to_string(), rule).is_none(), "alert {name} defined twice");
    }

    // The alerts operators rely on, with the metric and hold time each needs.
    let expect = |name: &str, metrics: &[&str], hold: Option<&str>| {
        let rule = by_name.get(name).unwrap_or_else(|| panic!("no alert {name} (have {:?})", by_name.keys().collect::<Vec<_>>()));
        let expr = rule["expr"].as_str().unwrap_or("");
        for metric in metrics {
            assert!(metric_names(expr).iter().any(|n| n.starts_with(metric)), "{name}: expr does not use {metric}: {expr}");
        }
        assert_eq!(rule.get("for").and_then(Value::as_str), hold, "{name}: `for`");
        expr.to_string()
    };
    expect("PgfanoutSourceLagHigh", &[m::SOURCE_LAG_BYTES], Some("10m"));
    let not_streaming = expect("PgfanoutNotStreaming", &[m::SOURCE_STREAMING], Some("5m"));
    assert!(not_streaming.contains("== 0"), "{not_streaming}");
    expect("PgfanoutSinkFailing", &[m::SINK_FAILED_TOTAL], Some("10m"));
    expect("PgfanoutSinkDeadLetters", &[m::SINK_DEAD_LETTERED_TOTAL], None);
    expect("PgfanoutPipelineDeadLetters", &[m::PIPELINE_DEAD_LETTERED_TOTAL], None);
    expect("PgfanoutFlushLsnStuck", &[m::CONFIRMED_FLUSH_LSN, m::SOURCE_LAG_BYTES], Some("5m"));
    let latency = expect("PgfanoutEndToEndLatencyHigh", &[m::END_TO_END_LATENCY_SECONDS], Some("10m"));
    assert!(latency.contains("histogram_quantile(0.99,") && latency.contains("_bucket"), "{latency}");
    expect("PgfanoutFrequentReconnects", &[m::SOURCE_RECONNECTS_TOTAL], None);
}

#[test]
fn docker_setup_is_consistent() {
    let docker = root().join("docker");

    // The compose config of pgfanout passes `pgfanout check` and uses only
    // sinks this build has.
    let config_path = docker.join("pgfanout.yaml");
    let cfg = load_with_env(&config_path, &HashMap::new()).unwrap_or_else(|e| panic!("{e}"));
    let router = Router::new(&cfg).unwrap_or_else(|e| panic!("{}: {e}", config_path.display()));
    assert!(!router.table_patterns().is_empty());
    let available = pgfanout::connectors::available_kinds();
    for (name, sink) in &cfg.sinks {
        assert!(available.contains(&sink.kind()), "sinks.{name}: {} is not built into pgfanout", sink.kind());
    }
    // Reachable from Prometheus on the compose network, on the exposed port.
    assert_eq!(cfg.http.listen, "0.0.0.0:9187");

    // Every file compose bind-mounts exists (paths are relative to docker/).
    let compose = read(&docker.join("compose.yaml"));
    let mount = Regex::new(r"(?m)^\s*-\s*(\.{1,2}/[^:\s]+):(/[^:\s]+)").expect("regex");
    let mut targets = BTreeMap::new();
    for c in mount.captures_iter(&compose) {
        let source = docker.join(&c[1]);
        assert!(source.exists(), "compose.yaml mounts {} which does not exist", &c[1]);
        targets.insert(c[2].to_string(), c[1].to_string());
    }
    assert_eq!(targets.get("/etc/pgfanout/config.yaml").map(String::as_str), Some("./pgfanout.yaml"));
    assert_eq!(targets.get("/etc/prometheus/rules/pgfanout.yaml").map(String::as_str), Some("../dashboards/alerts.yaml"));
    assert!(targets.values().any(|s| s == "../examples/ecommerce.sql"), "the e-commerce schema is not mounted");
    assert!(compose.contains("wal_level=logical"), "compose PostgreSQL without wal_level=logical");

    // The image runs that path and exposes that port; Prometheus scrapes it.
    let dockerfile = read(&docker.join("Dockerfile"));
    assert!(dockerfile.contains(r#"ENTRYPOINT ["pgfanout"]"#), "Dockerfile ENTRYPOINT");
    assert!(dockerfile.contains(r#"CMD ["run", "-c", "/etc/pgfanout/config.yaml"]"#), "Dockerfile CMD");
    assert!(dockerfile.contains("EXPOSE 9187"), "Dockerfile EXPOSE");
    assert!(read(&docker.join("prometheus.yml")).contains("pgfanout:9187"), "prometheus.yml does not scrape pgfanout:9187");
}
