//! The two consumers being compared, each draining one slot up to an end LSN:
//!
//! - pgfanout: `pgfanout run -c FILE` on a generated config; the drain ends
//!   when the slot's `confirmed_flush_lsn` reaches the end LSN. pgfanout only
//!   confirms what every sink has made durable, so this is "everything is in
//!   the sink". Its CPU time and peak RSS are read from /proc just then,
//!   before it is stopped with SIGTERM.
//! - pg_recvlogical (pgoutput, proto 1, to /dev/null) with `--endpos`: the
//!   drain ends when it exits on reaching the end LSN. CPU and peak RSS come
//!   from `/usr/bin/time`.
//!
//! Both timings start when the process is spawned, so both include
//! connecting and starting replication.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::db::{fmt_lsn, Db, PUBLICATION};
use crate::procstat::{self, Usage};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// How pgfanout's config is written: status updates every 20 ms so the
/// slot position (what the drain waits on) trails the durable position by
/// at most a few tens of milliseconds. This only adds work for pgfanout.
pub const STATUS_INTERVAL: &str = "20ms";

/// The outcome of one timed drain.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    pub seconds: f64,
    pub usage: Usage,
    /// CPU seconds of the PostgreSQL walsender that decoded the stream for
    /// pgfanout (read just before pgfanout stops; None when unknown).
    pub walsender_cpu_seconds: Option<f64>,
}

/// A pgfanout config: one pipeline from `table` to one sink.
pub struct FanoutConfig<'a> {
    pub slot: &'a str,
    pub table: &'a str,
    /// The sink's YAML flow mapping, e.g. `{ type: file, path: /dev/null }`.
    pub sink: String,
    /// Extra pipeline lines (already indented by 4), e.g. a redis mapping.
    pub mapping: String,
    /// `Some(addr)` enables the HTTP listener on it.
    pub http_listen: Option<String>,
    /// `runtime.batch_size` (default: pgfanout's).
    pub batch_size: Option<usize>,
}

impl FanoutConfig<'_> {
    pub fn yaml(&self, db: &Db, dir: &Path) -> String {
        let http = match &self.http_listen {
            Some(addr) => format!("http:\n  listen: \"{addr}\"\n"),
            None => "http:\n  enabled: false\n".to_string(),
        };
        format!(
            "source:\n  postgres:\n    url: {url}\n    slot: {slot}\n    publication: {PUBLICATION}\n    snapshot: never\n    status_interval: {STATUS_INTERVAL}\nsinks:\n  out: {sink}\npipelines:\n  - name: bench\n    from: [\"public.{table}\"]\n    to: out\n{mapping}dead_letter:\n  path: \"{dlq}\"\n{http}runtime:\n  shutdown_timeout: 30s\n{batch}",
            url = db.url(),
            slot = self.slot,
            sink = self.sink,
            table = self.table,
            mapping = self.mapping,
            dlq = dir.join(format!("{}.dead.jsonl", self.slot)).display(),
            batch = self.batch_size.map(|n| format!("  batch_size: {n}\n")).unwrap_or_default(),
        )
    }
}

/// The pgfanout binary, optionally run under a wrapper command (e.g.
/// `valgrind --tool=callgrind` for a profile).
pub struct Program {
    pub bin: PathBuf,
    pub wrapper: Vec<String>,
}

impl Program {
    fn command(&self) -> Command {
        match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        }
    }
}

/// A running pgfanout daemon (killed on drop if still running).
pub struct Fanout {
    child: Option<Child>,
    pub log_path: PathBuf,
    started: Instant,
}

impl Fanout {
    /// Writes the config to `dir/<slot>.yaml` and starts `pgfanout run -c` on it.
    pub fn spawn(prog: &Program, dir: &Path, db: &Db, cfg: &FanoutConfig) -> Result<Fanout> {
        Fanout::spawn_yaml(prog, dir, cfg.slot, &cfg.yaml(db, dir), "warn")
    }

    /// Writes `yaml` to `dir/<name>.yaml` and starts `pgfanout run -c` on it
    /// with `PGFANOUT_LOG=<log_level>`; stderr goes to `dir/<name>.log`.
    pub fn spawn_yaml(prog: &Program, dir: &Path, name: &str, yaml: &str, log_level: &str) -> Result<Fanout> {
        let config_path = dir.join(format!("{name}.yaml"));
        std::fs::write(&config_path, yaml).context("write pgfanout config")?;
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).context("create pgfanout log")?;
        let started = Instant::now();
        let child = prog
            .command()
            .args(["run", "-c"])
            .arg(&config_path)
            .env("PGFANOUT_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", prog.bin.display()))?;
        Ok(Fanout { child: Some(child), log_path, started })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Fails with the log's tail if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(status) = c.try_wait()? {
                self.child = None;
                bail!("pgfanout exited early with {status}; log:\n{}", tail(&self.log_path));
            }
        }
        Ok(())
    }

    /// Waits until the slot's confirmed_flush_lsn reaches `end`, polling every
    /// 5 ms; returns the time since spawn.
    pub async fn wait_confirmed(&mut self, db: &Db, slot: &str, end: u64, timeout: Duration) -> Result<Duration> {
        loop {
            if db.confirmed_flush(slot).await? >= end {
                return Ok(self.elapsed());
            }
            self.check_running()?;
            if self.elapsed() > timeout {
                bail!("pgfanout did not confirm {} within {timeout:?}; log:\n{}", fmt_lsn(end), tail(&self.log_path));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// CPU time and peak RSS so far.
    pub fn usage(&self) -> Result<Usage> {
        procstat::usage(self.pid()).context("read pgfanout's /proc entry")
    }

    /// SIGTERM, then wait (up to 120 s, then SIGKILL).
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Fanout {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Last lines of a log file, for error messages.
pub fn tail(path: &Path) -> String {
    last_lines(&std::fs::read_to_string(path).unwrap_or_default(), 20)
}

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Cores kept busy on purpose (`--cpu-hog`): a quiet machine may have
/// that many busy.
pub static HOG_CORES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// pgfanout drains `slot` (created beforehand) into `cfg`'s sink up to `end`.
pub async fn drain_pgfanout(prog: &Program, dir: &Path, db: &Db, cfg: &FanoutConfig<'_>, end: u64, timeout: Duration) -> Result<Drain> {
    let mut f = Fanout::spawn(prog, dir, db, cfg)?;
    let took = f.wait_confirmed(db, cfg.slot, end, timeout).await?;
    let usage = f.usage()?;
    let walsender = active_pid(db, cfg.slot).await.and_then(procstat::cpu_seconds);
    f.stop();
    Ok(Drain { seconds: took.as_secs_f64(), usage, walsender_cpu_seconds: walsender })
}

/// The pid of the walsender reading `slot`, if one does.
pub async fn active_pid(db: &Db, slot: &str) -> Option<u32> {
    let row = db.client.query_opt("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await.ok()??;
    row.get::<_, Option<i32>>(0).map(|pid| pid as u32)
}

/// pg_recvlogical drains `slot` to /dev/null up to `end` (`--endpos`).
pub async fn drain_recvlogical(db: &Db, dir: &Path, slot: &str, end: u64, timeout: Duration) -> Result<Drain> {
    let time_out = dir.join(format!("{slot}.time"));
    let err_path = dir.join(format!("{slot}.recvlogical.log"));
    let err = std::fs::File::create(&err_path)?;
    let started = Instant::now();
    let mut child = Command::new("/usr/bin/time")
        .args(["-f", procstat::TIME_FORMAT, "-o"])
        .arg(&time_out)
        .arg(format!("{PG_BIN}/pg_recvlogical"))
        .args(["-h", "127.0.0.1", "-p", &db.pg.port.to_string(), "-U", "postgres", "-d", &db.name])
        .args(["--slot", slot, "--start", "--endpos", &fmt_lsn(end), "--no-loop"])
        .args(["-o", "proto_version=1", "-o", &format!("publication_names={PUBLICATION}"), "--plugin=pgoutput"])
        .args(["-f", "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .context("spawn /usr/bin/time pg_recvlogical (apt-get install -y time postgresql-client-15)")?;
    // The walsender exits with pg_recvlogical (`--endpos`): its CPU time is
    // sampled while it runs, so up to one interval (50 ms) of it is missed.
    let mut walsender: Option<(u32, f64)> = None;
    let mut sampled = Instant::now();
    let sample_walsender = async || {
        if sampled.elapsed() >= Duration::from_millis(50) {
            sampled = Instant::now();
            walsender = match walsender {
                Some((pid, _)) => procstat::cpu_seconds(pid).map(|cpu| (pid, cpu)).or(walsender),
                None => active_pid(db, slot).await.and_then(|pid| procstat::cpu_seconds(pid).map(|cpu| (pid, cpu))),
            };
        }
    };
    let Some(status) = wait_child(&mut child, started, timeout, sample_walsender).await? else {
        bail!("pg_recvlogical did not reach {} within {timeout:?}: {}", fmt_lsn(end), tail(&err_path));
    };
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("pg_recvlogical failed with {status}: {}", tail(&err_path));
    }
    let usage = procstat::parse_time_output(&time_out).context("read /usr/bin/time output")?;
    Ok(Drain { seconds, usage, walsender_cpu_seconds: walsender.map(|(_, cpu)| cpu) })
}

/// Waits for `child` (spawned at `started`) to exit, polling every 2 ms and
/// running `between` after each poll; once `timeout` has passed since
/// `started`, kills and reaps it and returns None.
pub async fn wait_child(
    child: &mut Child,
    started: Instant,
    timeout: Duration,
    mut between: impl AsyncFnMut(),
) -> Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        between().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits (up to 3 minutes) until the machine is idle before a measured
/// phase of a store workload: after a bulk load, Cassandra flushes and
/// compacts and OpenSearch merges segments for many seconds, and whichever
/// phase ran next used to pay for it (the same tool measured 0.5× right
/// after the warm-up and 0.96× in the next run).
pub async fn quiet_before(phase: &str) {
    let hog = HOG_CORES.load(std::sync::atomic::Ordering::Relaxed) as f64;
    let (waited, quiet) = crate::procstat::wait_machine_quiet(0.25 + hog, Duration::from_secs(180)).await;
    if !quiet {
        eprintln!("    (the machine did not get quiet before {phase} within {waited:.0} s; measuring anyway)");
    } else if waited > 4.0 {
        eprintln!("    (waited {waited:.0} s for the machine to get quiet before {phase})");
    }
}
