//! High availability: one leader per slot, chosen by a lease in PostgreSQL.
//!
//! Several instances run with the same configuration and `ha.enabled`. Each
//! connects its sinks and serves its metrics, then tries to take the slot's
//! row in `pgfanout.leases`; the one that holds it streams and writes, the
//! others wait, warm, polling every tenth of the lease (at most 1 s).
//!
//! - **Taking the lease** is one `INSERT ... ON CONFLICT DO UPDATE ...
//!   WHERE`: it succeeds when there is no row, when the row's `expires_at`
//!   has passed on the server's clock, or when the holder's lease
//!   connection (its backend pid, checked in `pg_stat_activity`) is gone,
//!   as after a crash or a SIGKILL. Each taking adds one to `epoch`.
//! - **Renewing** is an `UPDATE ... WHERE holder = me AND epoch = mine`,
//!   every third of the lease. Finding the row changed (another instance
//!   took it) deposes this one.
//! - **Fencing by time.** The leader may write to its sinks only until four
//!   fifths of the lease after it *sent* its last successful renewal: the
//!   server set the deadline later than that, so the leader stops before
//!   any standby can take over, even when it is frozen (SIGSTOP, a stalled
//!   VM) or cut off from PostgreSQL. Every sink worker checks the
//!   [`Fence`] right before each write, and the reader before it connects.
//!   A leader that notices its lease connection closed stops writing at
//!   once (a standby may take over as soon as it sees that connection gone).
//! - **Taking over the slot.** The new leader terminates the backend still
//!   holding the replication slot (a frozen leader's walsender), then
//!   streams from the slot's confirmed position: what the old leader had
//!   not made durable everywhere is delivered again (at-least-once; the
//!   sinks' version guards drop what they already have).
//! - **Stepping down.** A deposed leader writes nothing more and the
//!   process exits (code 1, "lost the lease"), as Kubernetes controllers
//!   do; its supervisor starts it again, as a standby.
//!
//! What is left to chance: a process frozen between the fence check and
//! the send of one request can still send that request after its deadline;
//! the sinks' version guards reject it when it is older than what the new
//! leader wrote.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfanout_postgres::conn::{connect_sql, PgConnectOptions};
use pgfanout_postgres::SourceError;
use tokio::sync::{watch, Notify};
use tokio_postgres::Client;
use tracing::{info, warn};

use crate::http::{HaRole, Health};
use crate::metrics as m;

/// Whether this instance may write to its sinks now.
#[derive(Debug)]
pub struct Fence {
    base: Instant,
    /// Writes are allowed until this many milliseconds after `base`
    /// (`u64::MAX`: always).
    until_ms: AtomicU64,
    deposed: AtomicBool,
    changed: Notify,
}

impl Fence {
    /// A fence that always allows (no `ha`).
    pub fn open() -> Arc<Fence> {
        Arc::new(Fence {
            base: Instant::now(),
            until_ms: AtomicU64::new(u64::MAX),
            deposed: AtomicBool::new(false),
            changed: Notify::new(),
        })
    }

    /// A fence that allows nothing until a lease extends it.
    pub fn closed() -> Arc<Fence> {
        let fence = Fence::open();
        fence.until_ms.store(0, Ordering::Release);
        fence
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// True while writes are allowed.
    pub fn allows(&self) -> bool {
        !self.deposed.load(Ordering::Acquire) && self.ms(Instant::now()) < self.until_ms.load(Ordering::Acquire)
    }

    /// Returns once writes are allowed; never when deposed.
    pub async fn wait(&self) {
        if self.allows() {
            return;
        }
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.allows() {
                return;
            }
            notified.await;
        }
    }

    fn allow_until(&self, until: Instant) {
        if !self.deposed.load(Ordering::Acquire) {
            self.until_ms.store(self.ms(until).max(1), Ordering::Release);
            self.changed.notify_waiters();
        }
    }

    fn close_now(&self) {
        self.until_ms.store(0, Ordering::Release);
    }

    fn depose(&self) {
        self.deposed.store(true, Ordering::Release);
        self.until_ms.store(0, Ordering::Release);
    }
}

/// What the lease is for and how long it lasts.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub opts: PgConnectOptions,
    pub slot: String,
    pub instance: String,
    pub lease: Duration,
}

impl LeaseSettings {
    /// How often a leader renews.
    fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    /// How long after sending a renewal the leader may still write.
    fn fenced_after(&self) -> Duration {
        self.lease * 4 / 5
    }

    /// How often a standby tries to take the lease.
    fn poll_every(&self) -> Duration {
        (self.lease / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }
}

/// This instance's default name in the lease: host name and process id.
pub fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

const ACQUIRE: &str = "INSERT INTO pgfanout.leases AS l \
       (slot, holder, epoch, holder_pid, holder_started, acquired_at, renewed_at, expires_at) \
     SELECT $1, $2, 1, a.pid, a.backend_start, clock_timestamp(), clock_timestamp(), \
       clock_timestamp() + make_interval(secs => $3::float8) \
     FROM pg_stat_activity a WHERE a.pid = pg_backend_pid() \
     ON CONFLICT (slot) DO UPDATE SET holder = EXCLUDED.holder, epoch = l.epoch + 1, \
       holder_pid = EXCLUDED.holder_pid, holder_started = EXCLUDED.holder_started, \
       acquired_at = EXCLUDED.acquired_at, renewed_at = EXCLUDED.renewed_at, expires_at = EXCLUDED.expires_at \
     WHERE l.expires_at < clock_timestamp() \
       OR NOT EXISTS (SELECT 1 FROM pg_stat_activity h WHERE h.pid = l.holder_pid \
                      AND (h.backend_start IS NULL OR h.backend_start = l.holder_started)) \
     RETURNING l.epoch";

const RENEW: &str = "UPDATE pgfanout.leases SET renewed_at = clock_timestamp(), \
       expires_at = clock_timestamp() + make_interval(secs => $4::float8), \
       holder_pid = pg_backend_pid(), \
       holder_started = (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()) \
     WHERE slot = $1 AND holder = $2 AND epoch = $3 RETURNING epoch";

/// Who holds the lease of a slot, as `status` and the standbys see it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Holder {
    pub instance: String,
    pub epoch: i64,
    /// Milliseconds until the lease expires (negative: expired).
    pub expires_in_ms: i64,
}

/// The slot's lease holder, if any (None also when the table is missing).
pub async fn holder(c: &Client, slot: &str) -> Result<Option<Holder>, SourceError> {
    let row = match c
        .query_opt(
            "SELECT holder, epoch, (extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint \
             FROM pgfanout.leases WHERE slot = $1",
            &[&slot],
        )
        .await
    {
        Ok(row) => row,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => None,
        Err(e) => return Err(e.into()),
    };
    Ok(row.map(|r| Holder { instance: r.get(0), epoch: r.get(1), expires_in_ms: r.get(2) }))
}

/// A lease held: the fence it keeps open, and word when it is lost.
pub struct Lease {
    settings: LeaseSettings,
    epoch: i64,
    lost: watch::Receiver<Option<String>>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Resolves when the lease is lost, with the instance that holds it now
    /// (the fence is already closed for good then).
    pub async fn lost(&mut self) -> String {
        let now = self.lost.wait_for(Option::is_some).await.map(|v| v.clone().unwrap_or_default());
        match now {
            Ok(now) => now,
            Err(_) => std::future::pending().await,
        }
    }

    /// Gives the lease up (clean shutdown, after the last write): a standby
    /// takes over at its next poll.
    pub async fn release(self) {
        self.keeper.abort();
        let done = async {
            let c = connect_sql(self.settings.opts.writer()).await?;
            c.execute(
                "UPDATE pgfanout.leases SET expires_at = clock_timestamp() - interval '1 second' \
                 WHERE slot = $1 AND holder = $2 AND epoch = $3",
                &[&self.settings.slot, &self.settings.instance, &self.epoch],
            )
            .await?;
            Ok::<_, SourceError>(())
        };
        match tokio::time::timeout(Duration::from_secs(5), done).await {
            Ok(Ok(())) => info!(instance = %self.settings.instance, "lease released"),
            Ok(Err(e)) => warn!(error = %e, "could not release the lease; a standby takes over when it expires"),
            Err(_) => warn!("releasing the lease timed out; a standby takes over when it expires"),
        }
    }
}

/// Waits, as a standby, until this instance holds the slot's lease; then
/// opens `fence` and keeps the lease renewed in the background. `Ok(None)`
/// when shutdown is asked first. Connection errors are retried.
pub async fn acquire(
    settings: LeaseSettings,
    fence: Arc<Fence>,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Option<Lease>, SourceError> {
    let mut conn: Option<Client> = None;
    let mut seen: Option<String> = None;
    let waiting = Instant::now();
    health.set_ha(HaRole::Standby, &settings.instance, None, None);
    metrics::gauge!(m::HA_LEADER).set(0.0);
    loop {
        if *shutdown.borrow() {
            return Ok(None);
        }
        match try_acquire(&settings, &mut conn).await {
            Ok(Ok(epoch)) => {
                let c = conn.take().expect("connected");
                let previous = seen.as_deref().unwrap_or("nobody");
                info!(
                    instance = %settings.instance,
                    epoch,
                    previous,
                    waited_ms = waiting.elapsed().as_millis() as u64,
                    "took the lease: leading"
                );
                fence.allow_until(Instant::now() + settings.fenced_after());
                match settings.opts.primary {
                    // Decoding on a standby: the slot (and the walsender
                    // holding it) is there.
                    Some(_) => match connect_sql(&settings.opts).await {
                        Ok(standby) => take_slot(&standby, &settings.slot).await,
                        Err(e) => warn!(error = %e, "cannot reach the standby to end the old leader's replication connection"),
                    },
                    None => take_slot(&c, &settings.slot).await,
                }
                health.set_ha(HaRole::Leader, &settings.instance, Some(settings.instance.clone()), Some(epoch));
                metrics::gauge!(m::HA_LEADER).set(1.0);
                metrics::gauge!(m::HA_EPOCH).set(epoch as f64);
                let (lost_tx, lost) = watch::channel(None);
                let keeper = tokio::spawn(keep(settings.clone(), epoch, c, fence, health, lost_tx));
                return Ok(Some(Lease { settings, epoch, lost, keeper }));
            }
            Ok(Err(held)) => {
                if let Some(h) = &held {
                    if seen.as_deref() != Some(h.instance.as_str()) {
                        info!(leader = %h.instance, epoch = h.epoch, expires_in_ms = h.expires_in_ms, "standby: waiting for the lease");
                        seen = Some(h.instance.clone());
                    }
                }
                let epoch = held.as_ref().map(|h| h.epoch);
                health.set_ha(HaRole::Standby, &settings.instance, held.map(|h| h.instance), epoch);
            }
            Err(e) if e.is_retriable() => {
                warn!(error = %e, "standby: cannot reach PostgreSQL to take the lease; retrying");
                conn = None;
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = tokio::time::sleep(settings.poll_every()) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// One try: `Ok(Ok(epoch))` when taken, `Ok(Err(holder))` when another
/// instance holds it.
async fn try_acquire(settings: &LeaseSettings, conn: &mut Option<Client>) -> Result<Result<i64, Option<Holder>>, SourceError> {
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        let c = connect_sql(settings.opts.writer()).await?;
        pgfanout_postgres::schema::migrate(&c).await?;
        *conn = Some(c);
    }
    let c = conn.as_ref().expect("connected");
    let row = c.query_opt(ACQUIRE, &[&settings.slot, &settings.instance, &settings.lease.as_secs_f64()]).await?;
    match row {
        Some(r) => Ok(Ok(r.get(0))),
        None => Ok(Err(holder(c, &settings.slot).await?)),
    }
}

/// Terminates the backend still holding the replication slot (the old
/// leader's walsender, frozen or cut off), so that streaming starts now and
/// not at the server's `wal_sender_timeout`.
async fn take_slot(c: &Client, slot: &str) {
    let ended = c
        .query(
            "SELECT active_pid, pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active_pid IS NOT NULL AND active_pid <> pg_backend_pid()",
            &[&slot],
        )
        .await;
    match ended {
        Ok(rows) => {
            for r in rows {
                let pid: i32 = r.get(0);
                info!(pid, slot, "ended the old leader's replication connection");
            }
        }
        Err(e) => warn!(error = %e, slot, "could not end the backend holding the slot; streaming starts when it lets go"),
    }
}

/// Renews the lease every third of it until it is lost.
async fn keep(
    settings: LeaseSettings,
    epoch: i64,
    conn: Client,
    fence: Arc<Fence>,
    health: Arc<Health>,
    lost: watch::Sender<Option<String>>,
) {
    let mut conn = Some(conn);
    let mut last = Instant::now();
    let check = Duration::from_millis(100).min(settings.renew_every());
    let mut failing = false;
    loop {
        tokio::time::sleep(check).await;
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            // A standby may take over as soon as it sees this connection
            // gone: stop writing until a renewal on a new one succeeds.
            if conn.take().is_some() {
                warn!("the lease connection closed; writes stop until the lease is renewed");
            }
            fence.close_now();
        } else if last.elapsed() < settings.renew_every() && !failing {
            continue;
        }
        let sent = Instant::now();
        match renew(&settings, epoch, &mut conn).await {
            Ok(true) => {
                fence.allow_until(sent + settings.fenced_after());
                last = sent;
                if failing {
                    info!("lease renewed again");
                    failing = false;
                }
            }
            Ok(false) => {
                fence.depose();
                let now = match conn.as_ref() {
                    Some(c) => holder(c, &settings.slot).await.ok().flatten().map(|h| h.instance),
                    None => None,
                };
                let now = now.unwrap_or_else(|| "another instance".into());
                health.set_ha(HaRole::Deposed, &settings.instance, Some(now.clone()), None);
                metrics::gauge!(m::HA_LEADER).set(0.0);
                let _ = lost.send(Some(now));
                return;
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "cannot renew the lease; writes stop when it runs out");
                }
                failing = true;
                conn = None;
            }
        }
    }
}

/// Renews on `conn` (connecting again if need be): false when the lease is
/// not this instance's any more.
async fn renew(settings: &LeaseSettings, epoch: i64, conn: &mut Option<Client>) -> Result<bool, SourceError> {
    if conn.is_none() {
        *conn = Some(connect_sql(settings.opts.writer()).await?);
    }
    let c = conn.as_ref().expect("connected");
    let row = c.query_opt(RENEW, &[&settings.slot, &settings.instance, &epoch, &settings.lease.as_secs_f64()]).await?;
    Ok(row.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fence_allows_until_its_deadline_and_never_after_deposition() {
        let fence = Fence::closed();
        assert!(!fence.allows());
        fence.allow_until(Instant::now() + Duration::from_millis(50));
        assert!(fence.allows());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(!fence.allows(), "past its deadline");
        let waiting = {
            let fence = fence.clone();
            tokio::spawn(async move { fence.wait().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        fence.allow_until(Instant::now() + Duration::from_secs(5));
        tokio::time::timeout(Duration::from_secs(1), waiting).await.expect("woken by the renewal").unwrap();
        fence.depose();
        assert!(!fence.allows());
        fence.allow_until(Instant::now() + Duration::from_secs(5));
        assert!(!fence.allows(), "a deposed fence stays closed");
        assert!(Fence::open().allows());
    }
}
