//! The browser console: a page served by the operator listener at `/`
//! (same port as `/metrics`), and the one JSON document it polls,
//! `/console/api`.
//!
//! The page is plain HTML, CSS and JavaScript compiled into the binary
//! (`assets/`): no build step, no CDN. It shows the slot (lag in bytes and
//! seconds, WAL retained, leader or standby), each sink (durable position,
//! how far behind, 15 minutes of its write rate, errors and retries, dead
//! letters with their errors), the backfills with progress, rows/s and
//! ETA, and the last `verify` of each pipeline. It is read-only unless
//! `http.admin_token` is set: then pause, resume and cancel ask for the
//! token and send it as `Authorization: Bearer` to the `/backfills`
//! endpoints, which require it.
//!
//! What the metrics registry holds (totals, gauges) is read back from the
//! Prometheus text the listener renders anyway; what it does not (last
//! errors, dead letters, rate history) is kept by [`activity`].

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value as JsonValue};
use tokio::sync::Mutex;

use crate::activity;
use crate::http::{Admin, Health};
use crate::metrics as m;

const INDEX_HTML: &str = include_str!("assets/index.html");
const CONSOLE_JS: &str = include_str!("assets/console.js");
const CONSOLE_CSS: &str = include_str!("assets/console.css");

/// A pipeline as the console lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PipelineInfo {
    pub name: String,
    pub from: Vec<String>,
    pub to: String,
}

/// What the console reads.
#[derive(Clone)]
pub struct Console {
    pub prometheus: PrometheusHandle,
    pub health: Arc<Health>,
    pub admin: Option<Arc<Admin>>,
    pub pipelines: Arc<Vec<PipelineInfo>>,
    pub sink_names: Arc<Vec<String>>,
    /// Whether `http.admin_token` is set (the buttons show).
    pub controls: bool,
    /// One connection to the source database, opened when first needed.
    pub sql: Arc<Mutex<Option<tokio_postgres::Client>>>,
}

/// The console's routes: `/`, its two assets, `/console/api`.
pub fn router(console: Console) -> Router {
    spawn_sampler(console.prometheus.clone(), console.sink_names.clone());
    Router::new()
        .route("/", get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX_HTML) }))
        .route("/console.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], CONSOLE_JS) }))
        .route("/console.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CONSOLE_CSS) }))
        .route("/favicon.ico", get(|| async { axum::http::StatusCode::NO_CONTENT }))
        .route("/console/api", get(api))
        .with_state(console)
}

/// How often rates are sampled: [`activity::SAMPLE_EVERY`], or
/// `PGFANOUT_CONSOLE_SAMPLE_MS` (tests draw charts in seconds).
fn sample_every() -> std::time::Duration {
    std::env::var("PGFANOUT_CONSOLE_SAMPLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(|ms: u64| std::time::Duration::from_millis(ms.max(100)))
        .unwrap_or(activity::SAMPLE_EVERY)
}

/// Samples the written and read totals into [`activity`]'s rate series.
fn spawn_sampler(prometheus: PrometheusHandle, sinks: Arc<Vec<String>>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(sample_every());
        let mut last = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            let text = prometheus.render();
            let metrics = Metrics::parse(&text);
            // A sink that never wrote has no series yet: it writes 0/s.
            let by_sink = metrics.by_label(m::SINK_WRITTEN_TOTAL, m::LABEL_SINK);
            let written: HashMap<String, f64> =
                sinks.iter().map(|s| (s.clone(), by_sink.get(s.as_str()).copied().unwrap_or(0.0))).collect();
            let secs = last.elapsed().as_secs_f64().max(0.001);
            last = tokio::time::Instant::now();
            activity::sample(&written, metrics.total(m::CHANGES_READ_TOTAL), secs);
        }
    });
}

/// Samples of the Prometheus text: `(name, labels, value)`.
struct Metrics<'a> {
    samples: Vec<(&'a str, &'a str, f64)>,
}

impl<'a> Metrics<'a> {
    /// Parses the exposition format's sample lines (`name{labels} value`);
    /// comments and histogram internals are kept or skipped as they come.
    fn parse(text: &'a str) -> Metrics<'a> {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let value: f64 = value.parse().ok()?;
                let (name, labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or(rest)),
                    None => (series, ""),
                };
                Some((name, labels, value))
            })
            .collect();
        Metrics { samples }
    }

    /// The sum of every series of `name`.
    fn total(&self, name: &str) -> f64 {
        self.samples.iter().filter(|(n, _, _)| *n == name).map(|(_, _, v)| v).sum()
    }

    /// `name`'s values by the value of `label` (summed over other labels).
    fn by_label(&self, name: &str, label: &str) -> HashMap<&'a str, f64> {
        let mut out = HashMap::new();
        for (n, labels, v) in &self.samples {
            if *n != name {
                continue;
            }
            if let Some(value) = label_value(labels, label) {
                *out.entry(value).or_insert(0.0) += v;
            }
        }
        out
    }
}

/// The value of `label` in `a="x",b="y"` (values pgfanout sets: names
/// without quotes or backslashes).
fn label_value<'a>(labels: &'a str, label: &str) -> Option<&'a str> {
    labels.split("\",").find_map(|pair| {
        let (k, v) = pair.split_once("=\"")?;
        (k.trim_start_matches(',') == label).then(|| v.trim_end_matches('"'))
    })
}

/// `GET /console/api`: everything the page shows, in one document.
async fn api(State(c): State<Console>) -> impl IntoResponse {
    let rendered = c.prometheus.render();
    let metrics = Metrics::parse(&rendered);
    let (activity, read_rate) = activity::snapshot();
    let letters = crate::dead_letter::recent();
    let now = activity::now();
    let progress = c.health.progress.borrow().clone();
    let failed = metrics.by_label(m::SINK_FAILED_TOTAL, m::LABEL_SINK);
    let written = metrics.by_label(m::SINK_WRITTEN_TOTAL, m::LABEL_SINK);
    let dead = metrics.by_label(m::SINK_DEAD_LETTERED_TOTAL, m::LABEL_SINK);
    let pipeline_dead = metrics.by_label(m::PIPELINE_DEAD_LETTERED_TOTAL, m::LABEL_PIPELINE);
    let lag_bytes = c.health.lag_bytes.load(Ordering::Acquire);
    let mut lag_seconds: f64 = 0.0;
    let sinks: Vec<JsonValue> = c
        .sink_names
        .iter()
        .map(|name| {
            let a = activity.get(name).cloned().unwrap_or_default();
            let p = progress.sinks.iter().find(|s| s.name == *name);
            // Behind: since the oldest change a failing write holds was
            // committed; else the last write's commit-to-durable time.
            let behind = match a.waiting_since {
                Some(t) => Some((now - t).max(0.0)),
                None => a.latency.filter(|_| lag_bytes > 0),
            };
            lag_seconds = lag_seconds.max(behind.unwrap_or(0.0));
            json!({
                "name": name,
                "durable_lsn": p.map(|p| p.durable_lsn.to_string()),
                "pending_commit_lsn": p.and_then(|p| p.pending_commit_lsn).map(|l| l.to_string()),
                "written_total": written.get(name.as_str()).copied().unwrap_or(0.0),
                "failed_total": failed.get(name.as_str()).copied().unwrap_or(0.0),
                "dead_lettered_total": dead.get(name.as_str()).copied().unwrap_or(0.0),
                "error": a.error,
                "failing_since": a.failing_since,
                "behind_seconds": behind,
                "latency_seconds": a.latency,
                "retries": a.retries,
                "last_write": a.last_write,
                "rate": a.rate,
            })
        })
        .collect();
    let pipelines: Vec<JsonValue> = c
        .pipelines
        .iter()
        .map(|p| json!({ "name": p.name, "from": p.from, "to": p.to, "dead_lettered_total": pipeline_dead.get(p.name.as_str()).copied().unwrap_or(0.0) }))
        .collect();
    let ha = c.health.ha();
    let (backfills, verify, database_error) = match from_database(&c).await {
        Ok((b, v)) => (b, v, None),
        Err(e) => (Vec::new(), Vec::new(), Some(e)),
    };
    let body = json!({
        "now": now,
        "version": env!("CARGO_PKG_VERSION"),
        "controls": c.controls,
        "source": {
            "slot": c.admin.as_ref().map(|a| a.slot.clone()),
            "streaming": c.health.streaming.load(Ordering::Acquire),
            "lag_bytes": lag_bytes,
            "lag_seconds": lag_seconds,
            "retained_wal_bytes": metrics.total(m::SLOT_RETAINED_WAL_BYTES),
            "confirmed_flush_lsn": progress.confirmed_flush_lsn.to_string(),
            "changes_read_total": metrics.total(m::CHANGES_READ_TOTAL),
            "reconnects_total": metrics.total(m::SOURCE_RECONNECTS_TOTAL),
            "read_rate": read_rate,
            "role": ha.role,
            "instance": ha.instance,
            "leader": ha.leader,
        },
        "sinks": sinks,
        "pipelines": pipelines,
        "dead_letters": letters,
        "backfills": backfills,
        "verify": verify,
        "database_error": database_error,
        "sample_seconds": sample_every().as_secs_f64(),
    });
    ([(header::CACHE_CONTROL, "no-store")], Json(body))
}

/// Backfills (newest 20, with the table's estimated row count) and the
/// last verify of each pipeline, from the `pgfanout` schema.
async fn from_database(c: &Console) -> Result<(Vec<JsonValue>, Vec<JsonValue>), String> {
    let Some(admin) = &c.admin else { return Ok((Vec::new(), Vec::new())) };
    let mut guard = c.sql.lock().await;
    if guard.as_ref().is_none_or(|s| s.is_closed()) {
        let fresh = tokio::time::timeout(std::time::Duration::from_secs(3), pgfanout_postgres::conn::connect_sql(admin.opts.writer()))
            .await
            .map_err(|_| "source database: connect timed out".to_string())?
            .map_err(|e| format!("source database: {e}"))?;
        *guard = Some(fresh);
    }
    let Some(sql) = guard.as_ref() else { return Ok((Vec::new(), Vec::new())) };
    let query = async {
        let exists: (bool, bool) = {
            let r = sql
                .query_one("SELECT to_regclass('pgfanout.backfills') IS NOT NULL, to_regclass('pgfanout.verify_results') IS NOT NULL", &[])
                .await?;
            (r.get(0), r.get(1))
        };
        let mut backfills = Vec::new();
        if exists.0 {
            let rows = sql
                .query(
                    "SELECT b.id::int8, b.table_name::text, b.status::text, b.rows_done::int8, b.chunks_done::int8, \
                            b.max_rows_per_second::int8, b.reason::text, b.error::text, \
                            extract(epoch FROM b.updated_at)::float8, \
                            (SELECT greatest(c.reltuples, 0)::float8 FROM pg_class c WHERE c.oid = to_regclass(b.table_name)) \
                     FROM pgfanout.backfills b WHERE b.slot = $1 ORDER BY b.id DESC LIMIT 20",
                    &[&admin.slot],
                )
                .await?;
            for r in rows {
                backfills.push(json!({
                    "id": r.get::<_, i64>(0), "table": r.get::<_, String>(1), "status": r.get::<_, String>(2),
                    "rows": r.get::<_, i64>(3), "chunks": r.get::<_, i64>(4), "max_rows_per_second": r.get::<_, Option<i64>>(5),
                    "reason": r.get::<_, Option<String>>(6), "error": r.get::<_, Option<String>>(7),
                    "updated_at": r.get::<_, Option<f64>>(8), "estimated_rows": r.get::<_, Option<f64>>(9),
                }));
            }
        }
        let mut verify = Vec::new();
        if exists.1 {
            let rows = sql
                .query(
                    "SELECT pipeline::text, divergent::int8, rows_checked::int8, repaired::int8, extract(epoch FROM finished_at)::float8 \
                     FROM pgfanout.verify_results ORDER BY pipeline",
                    &[],
                )
                .await?;
            for r in rows {
                verify.push(json!({
                    "pipeline": r.get::<_, String>(0), "divergent": r.get::<_, i64>(1), "rows_checked": r.get::<_, i64>(2),
                    "repaired": r.get::<_, i64>(3), "finished_at": r.get::<_, f64>(4),
                }));
            }
        }
        Ok::<_, tokio_postgres::Error>((backfills, verify))
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), query).await {
        Ok(Ok(x)) => Ok(x),
        Ok(Err(e)) => {
            *guard = None;
            Err(format!("source database: {}", pgfanout_postgres::SourceError::from(e)))
        }
        Err(_) => {
            *guard = None;
            Err("source database: query timed out".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_totals_and_labels_from_the_prometheus_text() {
        let text = "# HELP x y\n# TYPE pgfanout_sink_written_total counter\n\
                    pgfanout_sink_written_total{sink=\"cache\"} 12\n\
                    pgfanout_sink_written_total{sink=\"search\",op=\"insert\"} 3\n\
                    pgfanout_sink_written_total{op=\"update\",sink=\"search\"} 4\n\
                    pgfanout_changes_read_total 99\n";
        let m = Metrics::parse(text);
        assert_eq!(m.total("pgfanout_changes_read_total"), 99.0);
        let by = m.by_label("pgfanout_sink_written_total", "sink");
        assert_eq!(by["cache"], 12.0);
        assert_eq!(by["search"], 7.0);
        assert_eq!(m.total("pgfanout_sink_written_total"), 19.0);
    }
}
