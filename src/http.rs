//! The operator HTTP listener: `/metrics` (Prometheus), `/healthz`,
//! `/readyz`, `/status` (the daemon's own positions as JSON, read by
//! `pgfanout status`), `/wait` (read-your-writes: answers once a
//! position is durable in a sink, read by `pgfanout wait`),
//! `/backfills` (start, list, pause, resume, cancel backfills; with
//! `http.admin_token` set, the ones that change something require it as
//! `Authorization: Bearer`), and whatever routes are handed to it (the
//! browser console at `/`, `crate::console`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::Path;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use pgfanout_sdk::settings::Secret;
use pgfanout_sdk::Lsn;
use tokio::sync::watch;

use crate::backfill::state::SignalKind;

/// Liveness/readiness facts published by the runtime.
#[derive(Debug)]
pub struct Health {
    /// True while the replication stream is up.
    pub streaming: AtomicBool,
    /// Server WAL end minus confirmed flush, in bytes.
    pub lag_bytes: AtomicU64,
    /// `/readyz` fails above this lag.
    pub max_lag_bytes: AtomicU64,
    /// The positions last confirmed, published with every status update.
    pub progress: watch::Sender<Progress>,
    /// This instance's part under `ha` (role `off` without it).
    pub ha: std::sync::Mutex<HaState>,
}

/// An instance's part under `ha`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HaRole {
    /// `ha` is not enabled.
    #[default]
    Off,
    /// Waiting for the lease, warm.
    Standby,
    /// Holding the lease: streaming and writing.
    Leader,
    /// Lost the lease: writes nothing more, exiting.
    Deposed,
}

/// What `/status` and `/readyz` say of `ha`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct HaState {
    pub role: HaRole,
    pub instance: Option<String>,
    /// The instance holding the lease, as last seen.
    pub leader: Option<String>,
    pub epoch: Option<i64>,
}

impl Health {
    pub fn set_ha(&self, role: HaRole, instance: &str, leader: Option<String>, epoch: Option<i64>) {
        *self.ha.lock().unwrap_or_else(|p| p.into_inner()) = HaState { role, instance: Some(instance.to_string()), leader, epoch };
    }

    pub fn ha(&self) -> HaState {
        self.ha.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Default for Health {
    fn default() -> Self {
        Health {
            streaming: AtomicBool::new(false),
            lag_bytes: AtomicU64::new(0),
            max_lag_bytes: AtomicU64::new(0),
            progress: watch::channel(Progress::default()).0,
            ha: std::sync::Mutex::new(HaState::default()),
        }
    }
}

/// Where the daemon stands: the flush position confirmed to PostgreSQL and,
/// per sink, the end LSN up to which everything routed to it is durable.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Progress {
    pub confirmed_flush_lsn: Lsn,
    pub sinks: Vec<SinkProgress>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SinkProgress {
    pub name: String,
    pub durable_lsn: Lsn,
    /// Commit LSN of the oldest transaction received but not yet durable
    /// in this sink.
    pub pending_commit_lsn: Option<Lsn>,
}

impl SinkProgress {
    /// Whether every transaction committed at or before `lsn` is durable
    /// here (see `AckTracker::sink_oldest_pending`).
    pub fn has(&self, lsn: Lsn) -> bool {
        self.durable_lsn >= lsn && self.pending_commit_lsn.is_none_or(|p| p > lsn)
    }
}

impl Progress {
    /// Whether `lsn` is durable in sink `sink` (every sink when `None`).
    /// Nothing is durable before the first positions are published.
    pub fn has(&self, lsn: Lsn, sink: Option<&str>) -> bool {
        !self.sinks.is_empty() && self.sinks.iter().filter(|s| sink.is_none_or(|n| n == s.name)).all(|s| s.has(lsn))
    }
}

/// Longest `/wait` allowed (`timeout=` above it is cut to it).
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// `GET /status`.
#[derive(Debug, serde::Serialize)]
struct StatusBody {
    streaming: bool,
    lag_bytes: u64,
    #[serde(flatten)]
    progress: Progress,
    #[serde(skip_serializing_if = "Option::is_none")]
    ha: Option<HaState>,
}

#[derive(Clone)]
struct AppState {
    prometheus: PrometheusHandle,
    health: Arc<Health>,
    sink_names: Arc<Vec<String>>,
    admin: Option<Arc<Admin>>,
    token: Option<Arc<Secret>>,
}

/// What the listener serves besides the fixed endpoints.
#[derive(Default)]
pub struct Options {
    /// More routes (the console, `crate::console::router`), merged in.
    pub extra: Option<Router>,
    /// `http.admin_token`.
    pub admin_token: Option<Secret>,
}

/// What the backfill endpoints need: the source database and the slot.
pub struct Admin {
    pub opts: pgfanout_postgres::conn::PgConnectOptions,
    pub slot: String,
    /// Whether some pipeline reads a table: a backfill of another table is
    /// refused at once (400), as `pgfanout backfill` refuses it.
    pub routed: crate::backfill::TableFilter,
}

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let builder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])?;
    let handle = builder.install_recorder()?;
    crate::metrics::describe();
    Ok(handle)
}

/// Binds `listen` and serves until `shutdown` resolves.
pub async fn serve(
    listen: &str,
    prometheus: PrometheusHandle,
    health: Arc<Health>,
    sink_names: Vec<String>,
    admin: Option<Arc<Admin>>,
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {listen} (http.listen): {e}"))?;
    let sink_names = Arc::new(sink_names);
    let token = options.admin_token.map(Arc::new);
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/status", get(status))
        .route("/wait", get(wait))
        .route("/backfills", get(list_backfills).post(start_backfill))
        .route("/backfills/{id}/{action}", post(control_backfill))
        .with_state(AppState { prometheus: prometheus.clone(), health, sink_names, admin, token });
    let app = match options.extra {
        Some(extra) => app.merge(extra),
        None => app,
    };
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::warn!(error = %e, "http listener stopped");
        }
    }))
}

async fn metrics(State(s): State<AppState>) -> String {
    s.prometheus.render()
}

async fn status(State(s): State<AppState>) -> Json<StatusBody> {
    Json(StatusBody {
        streaming: s.health.streaming.load(Ordering::Acquire),
        lag_bytes: s.health.lag_bytes.load(Ordering::Acquire),
        progress: s.health.progress.borrow().clone(),
        ha: Some(s.health.ha()).filter(|h| h.role != HaRole::Off),
    })
}

/// `/readyz` fails once a sink has failed every write for this long
/// (seconds): a short outage is retried without a flap.
const SINK_FAILING_UNREADY: f64 = 10.0;

async fn ready(State(s): State<AppState>) -> (StatusCode, String) {
    let streaming = s.health.streaming.load(Ordering::Acquire);
    let lag = s.health.lag_bytes.load(Ordering::Acquire);
    let max = s.health.max_lag_bytes.load(Ordering::Acquire);
    let ha = s.health.ha();
    let leader = ha.leader.as_deref().unwrap_or("nobody yet");
    if ha.role == HaRole::Standby {
        (StatusCode::SERVICE_UNAVAILABLE, format!("standby: {leader} leads\n"))
    } else if ha.role == HaRole::Deposed {
        (StatusCode::SERVICE_UNAVAILABLE, format!("deposed: {leader} took the lease; stepping down\n"))
    } else if !streaming {
        (StatusCode::SERVICE_UNAVAILABLE, "not streaming\n".into())
    } else if max > 0 && lag > max {
        (StatusCode::SERVICE_UNAVAILABLE, format!("lag {lag} bytes exceeds {max}\n"))
    } else if let Some((sink, secs, error)) = crate::activity::failing().into_iter().find(|f| f.1 >= SINK_FAILING_UNREADY) {
        let error: String = error.chars().take(500).collect();
        (StatusCode::SERVICE_UNAVAILABLE, format!("sink {sink} failing for {secs:.0}s: {error}\n"))
    } else {
        (StatusCode::OK, format!("ready, lag {lag} bytes\n"))
    }
}

#[derive(Debug, serde::Deserialize)]
struct WaitQuery {
    lsn: Option<String>,
    sink: Option<String>,
    timeout: Option<String>,
}

/// `GET /wait?lsn=0/16B3748[&sink=NAME][&timeout=5s]`: 200 once every
/// change committed at or before `lsn` is durable in `sink` (in every sink
/// when none is named; changes a sink's pipelines filter out count as
/// done), 504 when `timeout` (default 30s, at most 10m) passes first, 400
/// for a bad request. The body is JSON: the outcome, the position asked
/// and each sink's durable position.
async fn wait(State(s): State<AppState>, Query(q): Query<WaitQuery>) -> (StatusCode, Json<serde_json::Value>) {
    let started = std::time::Instant::now();
    let bad = |msg: String| {
        metrics::counter!(crate::metrics::WAIT_REQUESTS_TOTAL, crate::metrics::LABEL_OUTCOME => "bad_request").increment(1);
        (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "outcome": "bad_request", "error": msg })))
    };
    let lsn: Lsn = match q.lsn.as_deref().map(str::parse) {
        Some(Ok(l)) => l,
        Some(Err(_)) => return bad(format!("lsn={:?} is not an LSN like 0/16B3748", q.lsn.unwrap_or_default())),
        None => return bad("lsn is required, e.g. /wait?lsn=0/16B3748 (from pg_current_wal_insert_lsn() after the commit)".into()),
    };
    if let Some(name) = &q.sink {
        if !s.sink_names.contains(name) {
            return bad(format!("unknown sink {name:?}; the sinks are: {}", s.sink_names.join(", ")));
        }
    }
    let timeout = match q.timeout.as_deref().map(humantime::parse_duration) {
        None => std::time::Duration::from_secs(30),
        Some(Ok(d)) => d.min(MAX_WAIT),
        Some(Err(e)) => return bad(format!("timeout={:?}: {e} (e.g. 5s, 500ms)", q.timeout.unwrap_or_default())),
    };
    let mut rx = s.health.progress.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    let done = loop {
        if rx.borrow_and_update().has(lsn, q.sink.as_deref()) {
            break true;
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break false },
            _ = tokio::time::sleep_until(deadline) => break false,
        }
    };
    let progress = rx.borrow().clone();
    let outcome = if done { "done" } else { "timeout" };
    metrics::counter!(crate::metrics::WAIT_REQUESTS_TOTAL, crate::metrics::LABEL_OUTCOME => outcome).increment(1);
    metrics::histogram!(crate::metrics::WAIT_SECONDS, crate::metrics::LABEL_OUTCOME => outcome).record(started.elapsed().as_secs_f64());
    let body = serde_json::json!({
        "outcome": outcome,
        "lsn": lsn,
        "sink": q.sink,
        "waited_ms": started.elapsed().as_millis() as u64,
        "sinks": progress.sinks,
    });
    (if done { StatusCode::OK } else { StatusCode::GATEWAY_TIMEOUT }, Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_is_durable_only_when_nothing_at_or_before_it_is_pending() {
        let sink = |durable: u64, pending: Option<u64>| SinkProgress {
            name: "s".into(),
            durable_lsn: Lsn(durable),
            pending_commit_lsn: pending.map(Lsn),
        };
        assert!(sink(100, None).has(Lsn(100)));
        assert!(!sink(99, None).has(Lsn(100)));
        assert!(!sink(100, Some(100)).has(Lsn(100)), "a transaction committed at 100 is still pending");
        assert!(sink(100, Some(101)).has(Lsn(100)));
        let p = Progress { confirmed_flush_lsn: Lsn(0), sinks: vec![sink(100, None), SinkProgress { name: "t".into(), ..sink(50, None) }] };
        assert!(p.has(Lsn(100), Some("s")));
        assert!(!p.has(Lsn(100), None));
        assert!(!Progress::default().has(Lsn(1), None), "nothing published yet");
    }
}

type JsonReply = (StatusCode, Json<serde_json::Value>);

fn reply(status: StatusCode, body: serde_json::Value) -> JsonReply {
    (status, Json(body))
}

/// With `http.admin_token` set, a request that changes something must carry
/// it (`Authorization: Bearer <token>`); 401 otherwise.
fn authorize(s: &AppState, headers: &HeaderMap) -> Result<(), JsonReply> {
    let Some(token) = &s.token else { return Ok(()) };
    let given = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // Compared in time independent of where they differ.
    let same = given.is_some_and(|g| {
        let (a, b) = (g.as_bytes(), token.expose().as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    });
    if same {
        Ok(())
    } else {
        Err(reply(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "this endpoint needs the admin token (http.admin_token) as Authorization: Bearer <token>"}),
        ))
    }
}

async fn admin_client(s: &AppState) -> Result<(Arc<Admin>, tokio_postgres::Client), JsonReply> {
    let admin = s.admin.clone().ok_or_else(|| reply(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"error": "not ready"})))?;
    match pgfanout_postgres::conn::connect_sql(admin.opts.writer()).await {
        Ok(c) => Ok((admin, c)),
        Err(e) => Err(reply(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"error": format!("source database: {e}")}))),
    }
}

#[derive(Debug, serde::Deserialize)]
struct BackfillQuery {
    table: Option<String>,
    #[serde(rename = "where")]
    filter: Option<String>,
    chunk_size: Option<i64>,
    max_rows_per_second: Option<i64>,
}

/// `POST /backfills?table=public.orders[&where=...][&chunk_size=N][&max_rows_per_second=N]`:
/// 202 with the signal's id; the daemon starts the backfill within a second.
async fn start_backfill(State(s): State<AppState>, headers: HeaderMap, Query(q): Query<BackfillQuery>) -> JsonReply {
    if let Err(r) = authorize(&s, &headers) {
        return r;
    }
    let Some(table) = q.table else {
        return reply(StatusCode::BAD_REQUEST, serde_json::json!({"error": "table is required, e.g. POST /backfills?table=public.orders"}));
    };
    let name = match crate::backfill::parse_table(&table) {
        Ok(t) => t,
        Err(e) => return reply(StatusCode::BAD_REQUEST, serde_json::json!({ "error": e })),
    };
    if let Some(admin) = &s.admin {
        if !(admin.routed)(&name.schema, &name.name) {
            return reply(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": format!("table {name}: no pipeline of this config reads it (its rows would go nowhere)") }),
            );
        }
    }
    let (admin, c) = match admin_client(&s).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let data = serde_json::json!({
        "table": table, "where": q.filter, "chunk_size": q.chunk_size, "max_rows_per_second": q.max_rows_per_second,
        "slot": admin.slot, "reason": "http",
    });
    match crate::backfill::state::signal(&c, SignalKind::Backfill, &data).await {
        Ok(id) => reply(StatusCode::ACCEPTED, serde_json::json!({ "signal": id, "table": table })),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({ "error": e.to_string() })),
    }
}

/// `GET /backfills`: every backfill of this daemon's slot, newest first.
async fn list_backfills(State(s): State<AppState>) -> JsonReply {
    let (admin, c) = match admin_client(&s).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match crate::backfill::state::list(&c, &admin.slot).await {
        Ok(list) => reply(StatusCode::OK, serde_json::Value::Array(list.iter().map(|b| b.to_json()).collect())),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({ "error": e.to_string() })),
    }
}

/// `POST /backfills/{id}/pause|resume|cancel`.
async fn control_backfill(State(s): State<AppState>, headers: HeaderMap, Path((id, action)): Path<(i64, String)>) -> JsonReply {
    if let Err(r) = authorize(&s, &headers) {
        return r;
    }
    let kind = match action.as_str() {
        "pause" => SignalKind::Pause,
        "resume" => SignalKind::Resume,
        "cancel" => SignalKind::Cancel,
        _ => return reply(StatusCode::NOT_FOUND, serde_json::json!({"error": "actions: pause, resume, cancel"})),
    };
    let (admin, c) = match admin_client(&s).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match crate::backfill::state::signal(&c, kind, &serde_json::json!({ "id": id, "slot": admin.slot })).await {
        Ok(signal) => reply(StatusCode::ACCEPTED, serde_json::json!({ "signal": signal, "backfill": id, "action": action })),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({ "error": e.to_string() })),
    }
}
