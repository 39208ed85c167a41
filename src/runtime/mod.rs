//! The runtime: wires the source, the pipelines and the sink workers
//! together, and handles start-up checks and shutdown.

pub mod ack;
#[cfg(feature = "kafka")]
mod applier;
mod bridge;
mod error;
mod failover;
mod feedback;
mod handed;
mod heartbeat;
mod in_progress;
pub mod lease;
mod memory;
mod outbox;
mod partitions;
pub mod pins;
mod samplers;
mod settings;
pub mod setup;
pub mod sinks;
pub mod snapshot;
pub mod source;
mod stats;
mod txn;
mod type_changes;
mod undecodable;
pub mod worker;

use std::sync::Arc;

use pgfanout_postgres::replication::ReceiveBuffer;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::dead_letter::DeadLetters;
use crate::http::Health;
use crate::pipeline::Router;
use crate::runtime::ack::AckTracker;
use crate::runtime::source::{SourceLoop, SourceSettings};
pub use error::RunError;

/// Runs the daemon until SIGTERM/SIGINT (Ok) or a permanent error.
pub async fn run(cfg: Config) -> Result<(), RunError> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown requested");
        let _ = shutdown_tx.send(true);
    });

    let health = Arc::new(Health::default());
    health.max_lag_bytes.store(cfg.http.ready_max_lag.0, std::sync::atomic::Ordering::Release);
    if cfg.http.enabled {
        let handle = crate::http::install_recorder().map_err(|e| RunError::Fatal(format!("metrics: {e}")))?;
        let mut rx = shutdown_rx.clone();
        let patterns: Vec<crate::config::TablePattern> =
            cfg.pipelines.iter().flat_map(|p| p.from.items()).filter_map(|t| crate::config::TablePattern::parse(t).ok()).collect();
        let routed: crate::backfill::TableFilter =
            Arc::new(move |schema: &str, table: &str| patterns.iter().any(|p| p.matches(schema, table)));
        let admin = cfg
            .source
            .postgres
            .connect_options()
            .ok()
            .map(|opts| Arc::new(crate::http::Admin { opts, slot: cfg.source.postgres.slot.clone(), routed }));
        let sink_names: Vec<String> = cfg.sinks.keys().cloned().collect();
        let console = cfg.http.console.then(|| {
            crate::console::router(crate::console::Console {
                prometheus: handle.clone(),
                health: health.clone(),
                admin: admin.clone(),
                pipelines: Arc::new(
                    cfg.pipelines
                        .iter()
                        .map(|p| crate::console::PipelineInfo {
                            name: p.name.clone(),
                            from: p.from.items().into_iter().map(String::from).collect(),
                            to: p.to.clone(),
                        })
                        .collect(),
                ),
                sink_names: Arc::new(sink_names.clone()),
                controls: cfg.http.admin_token.is_some(),
                sql: Default::default(),
            })
        });
        let options = crate::http::Options { extra: console, admin_token: cfg.http.admin_token.clone() };
        crate::http::serve(&cfg.http.listen, handle, health.clone(), sink_names, admin, options, async move {
            let _ = rx.wait_for(|v| *v).await;
        })
        .await
        .map_err(|e| RunError::Fatal(e.to_string()))?;
        info!(listen = %cfg.http.listen, "metrics and health endpoints up");
    }

    let router = Router::new(&cfg).map_err(|e| RunError::Config(e.to_string()))?;
    let pg = &cfg.source.postgres;
    let opts = pg.connect_options().map_err(|e| RunError::Config(e.to_string()))?;
    let dead_letters = DeadLetters::from_config(&cfg, &opts).map_err(RunError::Config)?;

    #[cfg(feature = "kafka")]
    if let Some(kafka) = &cfg.source.kafka {
        let fence = lease::Fence::open();
        let Some(sinks) = sinks::spawn_all(&cfg, &router, &dead_letters, &fence, shutdown_rx.clone()).await.map_err(RunError::Fatal)?
        else {
            return Ok(());
        };
        return applier::run(&cfg, kafka, router, sinks, dead_letters, health, shutdown_rx).await;
    }

    if !cfg.ha.enabled {
        let prepared = match setup::prepare_source(&opts, pg, &router, shutdown_rx.clone()).await {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(()),
            Err(e) => return Err(RunError::Fatal(e.to_string())),
        };
        let fence = lease::Fence::open();
        let Some(sinks) = sinks::spawn_all(&cfg, &router, &dead_letters, &fence, shutdown_rx.clone()).await.map_err(RunError::Fatal)?
        else {
            return Ok(());
        };
        return lead(&cfg, router, prepared, sinks, dead_letters, health, fence, shutdown_rx).await;
    }

    // `ha`: connect the sinks (warm, fenced), wait for the lease, then lead
    // until shutdown or until the lease is lost.
    let fence = lease::Fence::closed();
    let Some(sinks) = sinks::spawn_all(&cfg, &router, &dead_letters, &fence, shutdown_rx.clone()).await.map_err(RunError::Fatal)? else {
        return Ok(());
    };
    let lease_settings = lease::LeaseSettings {
        opts: opts.clone(),
        slot: pg.slot.clone(),
        instance: cfg.ha.instance.clone().unwrap_or_else(lease::default_instance),
        lease: cfg.ha.lease,
    };
    info!(instance = %lease_settings.instance, lease = ?cfg.ha.lease, "ha: standby until this instance holds the lease");
    let mut held = match lease::acquire(lease_settings, fence.clone(), health.clone(), shutdown_rx.clone()).await {
        Ok(Some(l)) => l,
        Ok(None) => return Ok(()),
        Err(e) => return Err(RunError::Fatal(e.to_string())),
    };
    let leading = async {
        let prepared = match setup::prepare_source(&opts, pg, &router, shutdown_rx.clone()).await {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(()),
            Err(e) => return Err(RunError::Fatal(e.to_string())),
        };
        lead(&cfg, router, prepared, sinks, dead_letters, health, fence, shutdown_rx).await
    };
    tokio::select! {
        done = leading => {
            held.release().await;
            done
        }
        now = held.lost() => {
            error!(leader = %now, "lost the lease: stepping down; nothing more is written (restart this instance to make it a standby)");
            Err(RunError::Fatal(format!("lost the lease of slot {:?} to {now}; stepped down", cfg.source.postgres.slot)))
        }
    }
}

/// Streams (after the snapshot, if one is due) until shutdown or a
/// permanent error: the leader's part.
#[allow(clippy::too_many_arguments)]
async fn lead(
    cfg: &Config,
    router: Router,
    prepared: setup::Prepared,
    mut sinks: sinks::Sinks,
    dead_letters: DeadLetters,
    health: Arc<Health>,
    fence: Arc<lease::Fence>,
    shutdown_rx: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let pg = &cfg.source.postgres;
    let opts = pg.connect_options().map_err(|e| RunError::Config(e.to_string()))?;
    let start = prepared.start;
    let tracker = AckTracker::new(std::mem::take(&mut sinks.durable), start);
    let settings = SourceSettings {
        opts: opts.clone(),
        slot: pg.slot.clone(),
        publication: pg.publication.clone(),
        status_interval: pg.status_interval,
        receive_timeout: Some(pg.receive_timeout).filter(|t| !t.is_zero()),
        batch_size: cfg.runtime.batch_size,
        // Each sink can hold `queue_batches` chunks of this size.
        chunk_bytes: (usize::try_from(cfg.runtime.queue_memory.0).unwrap_or(usize::MAX)
            / (cfg.runtime.queue_batches * cfg.sinks.len()).max(1))
        .max(64 << 10),
        shutdown_timeout: cfg.runtime.shutdown_timeout,
        heartbeat_interval: pg.heartbeat_interval,
        read_coalesce: pg.read_coalesce,
        // The small same-host buffer pays only with coalesced reads.
        receive_buffer: match pg.receive_buffer.0 {
            ReceiveBuffer::Auto if pg.read_coalesce.is_zero() => ReceiveBuffer::Kernel,
            other => other,
        },
        linger: cfg.runtime.linger,
        on_decode_error: pg.on_decode_error,
        on_type_change: pg.on_type_change,
        streaming: pg.streaming == crate::config::Streaming::Auto,
        streaming_memory: usize::try_from(pg.streaming_memory.0).unwrap_or(usize::MAX),
        streaming_spill_dir: pg.streaming_spill_dir.clone(),
        fence,
        recover_lost_changes: pg.on_slot_lost == crate::config::OnSlotLost::Recreate,
        state_dir: cfg.runtime.state_dir.clone(),
    };
    let patterns: Vec<crate::config::TablePattern> =
        router.table_patterns().iter().filter_map(|p| crate::config::TablePattern::parse(p).ok()).collect();
    let (backfill_tx, backfill_rx) = tokio::sync::mpsc::channel(16);
    let driver = crate::backfill::Driver {
        opts: opts.clone(),
        slot: pg.slot.clone(),
        publication: pg.publication.clone(),
        to_source: backfill_tx,
        shutdown: shutdown_rx.clone(),
        routed: Arc::new(move |schema: &str, table: &str| patterns.iter().any(|p| p.matches(schema, table))),
        run: format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0)),
    };
    let mut source = SourceLoop::new(settings, router, sinks, tracker, dead_letters, health, shutdown_rx.clone());
    source.with_backfills(backfill_rx);
    let reconcile = Arc::new(tokio::sync::Notify::new());
    source.with_reconciler(reconcile.clone());
    let prepared_recreated = prepared.recreated;
    let mut plan = prepared.snapshot;
    let mut backoff = pgfanout_sdk::settings::Backoff::new(std::time::Duration::from_millis(500), std::time::Duration::from_secs(30));
    while let Some(p) = plan.take() {
        match snapshot::run(&mut source, p, &pg.slot, pg.snapshot_parallelism).await {
            Ok(true) => {}
            Ok(false) => {
                info!("shutdown during the snapshot; it starts again on the next run");
                source.drain_workers().await;
                return Ok(());
            }
            Err(e) if e.is_retriable() => {
                // The state still says "running": planning again copies the
                // unfinished tables under a fresh snapshot (rows already
                // delivered are delivered again; sinks are idempotent).
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in = ?delay, "snapshot interrupted; copying again");
                let mut shutdown = shutdown_rx.clone();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                }
                match setup::prepare_source(&opts, pg, source.router(), shutdown_rx.clone()).await {
                    Ok(Some(again)) => plan = again.snapshot,
                    Ok(None) => {
                        source.drain_workers().await;
                        return Ok(());
                    }
                    Err(e) => {
                        source.drain_workers().await;
                        return Err(RunError::Fatal(e.to_string()));
                    }
                }
            }
            Err(e) => {
                error!(error = %e, "snapshot failed; it starts again on the next run");
                source.drain_workers().await;
                return Err(RunError::Fatal(e.to_string()));
            }
        }
    }
    // Backfills start once the initial snapshot (if any) is done.
    tokio::spawn(driver.run());
    samplers::spawn(opts.clone(), pg.slot.clone(), shutdown_rx.clone());
    partitions::spawn(opts.clone(), pg.slot.clone(), pg.publication.clone(), source.reconnect_handle(), shutdown_rx.clone());
    tokio::spawn(reconciler(cfg.clone(), reconcile.clone(), shutdown_rx.clone()));
    if prepared_recreated {
        reconcile.notify_one();
    }
    match source.run().await {
        Ok(()) => {
            info!("stopped");
            Ok(())
        }
        Err(e) => {
            error!(error = %e, "stopping");
            Err(RunError::Fatal(e.to_string()))
        }
    }
}

/// Runs [`reconcile_after_backfills`] each time `wake` is signalled: after a
/// lost slot was created again, and after a failover that lost delivered
/// changes (`failover`).
async fn reconciler(cfg: Config, wake: Arc<tokio::sync::Notify>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = wake.notified() => reconcile_after_backfills(cfg.clone(), shutdown.clone()).await,
            _ = shutdown.changed() => return,
        }
    }
}

/// After a lost slot was created again, or a failover lost delivered
/// changes: once every table's backfill is done the stores hold every row,
/// but rows deleted while the slot was lost (or rows only the old primary
/// had) are still in them. `verify --repair` over every pipeline removes
/// those entries (for the stores that can be read back; log sinks such as
/// files and Kafka keep what they received).
async fn reconcile_after_backfills(cfg: Config, mut shutdown: watch::Receiver<bool>) {
    let pg = &cfg.source.postgres;
    let Ok(opts) = pg.connect_options() else { return };
    loop {
        if *shutdown.borrow() {
            return;
        }
        let pending = async {
            use crate::backfill::state::BackfillStatus;
            const ACTIVE: [BackfillStatus; 3] = BackfillStatus::ACTIVE;
            let c = pgfanout_postgres::conn::connect_sql(opts.writer()).await?;
            let row = c
                .query_one(
                    "SELECT count(*) FROM pgfanout.backfills WHERE slot = $1 AND reason = ANY($2) AND status IN ($3, $4, $5)",
                    &[&pg.slot, &[setup::RECREATED, failover::LOST_IN_FAILOVER].as_slice(), &ACTIVE[0], &ACTIVE[1], &ACTIVE[2]],
                )
                .await?;
            Ok::<i64, pgfanout_postgres::SourceError>(row.get(0))
        }
        .await;
        if let Ok(0) = pending {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = shutdown.changed() => {}
        }
    }
    info!("recovery backfills are done; removing entries of rows the source does not have (verify --repair)");
    let opts = crate::verify::VerifyOptions {
        pipelines: Vec::new(),
        sample: None,
        repair: true,
        json: None,
        max_rows_per_second: None,
        chunk_rows: 1000,
        settle: std::time::Duration::from_secs(60),
        show: 5,
    };
    match crate::verify::run(&cfg, &opts, &|_, _, _| {}, |_| {}).await {
        Ok(done) => {
            let divergent = done.iter().filter(|p| p.outcome.error.is_some() || !p.outcome.divergent.is_empty()).count();
            info!(divergent, "reconciliation after the recovery backfills finished");
        }
        Err(e) => warn!(error = ?e, "reconciliation after the recovery backfills could not run"),
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
