//! The operator HTTP listener: `/metrics` (Prometheus), `/healthz`,
//! `/readyz`, and `/status` (the daemon's own positions as JSON, read by
//! `pgfanout status`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use pgfanout_sdk::Lsn;
use tokio::sync::watch;

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
}

impl Default for Health {
    fn default() -> Self {
        Health {
            streaming: AtomicBool::new(false),
            lag_bytes: AtomicU64::new(0),
            max_lag_bytes: AtomicU64::new(0),
            progress: watch::channel(Progress::default()).0,
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
}

/// `GET /status`.
#[derive(Debug, serde::Serialize)]
struct StatusBody {
    streaming: bool,
    lag_bytes: u64,
    #[serde(flatten)]
    progress: Progress,
}

#[derive(Clone)]
struct AppState {
    prometheus: PrometheusHandle,
    health: Arc<Health>,
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
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {listen} (http.listen): {e}"))?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/status", get(status))
        .with_state(AppState { prometheus: prometheus.clone(), health });
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
    })
}

async fn ready(State(s): State<AppState>) -> (StatusCode, String) {
    let streaming = s.health.streaming.load(Ordering::Acquire);
    let lag = s.health.lag_bytes.load(Ordering::Acquire);
    let max = s.health.max_lag_bytes.load(Ordering::Acquire);
    if !streaming {
        (StatusCode::SERVICE_UNAVAILABLE, "not streaming\n".into())
    } else if max > 0 && lag > max {
        (StatusCode::SERVICE_UNAVAILABLE, format!("lag {lag} bytes exceeds {max}\n"))
    } else {
        (StatusCode::OK, format!("ready, lag {lag} bytes\n"))
    }
}
