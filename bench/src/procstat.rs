//! CPU time and peak memory of a process, from /proc (while it runs) or from
//! `/usr/bin/time` (for a process that exits by itself, like pg_recvlogical
//! with `--endpos`, whose /proc entry is gone by the time we could read it).

use std::path::Path;
use std::sync::OnceLock;

/// CPU seconds (user + system) and peak resident set size of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub peak_rss_kib: u64,
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of a running process, in seconds; None when it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: fields after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// VmHWM (peak RSS) of a running process in KiB; None when it is gone.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// Both figures of a running process.
pub fn usage(pid: u32) -> Option<Usage> {
    Some(Usage { cpu_seconds: cpu_seconds(pid)?, peak_rss_kib: peak_rss_kib(pid)? })
}

/// The format string given to `/usr/bin/time -f`, read back by [`parse_time_output`].
pub const TIME_FORMAT: &str = "%U %S %M";

/// Reads what `/usr/bin/time -f "%U %S %M" -o FILE` wrote (the last line;
/// a line "Command exited with non-zero status" may precede it).
pub fn parse_time_output(path: &Path) -> Option<Usage> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let mut it = line.split_whitespace();
    let user: f64 = it.next()?.parse().ok()?;
    let sys: f64 = it.next()?.parse().ok()?;
    let rss: u64 = it.next()?.parse().ok()?;
    Some(Usage { cpu_seconds: user + sys, peak_rss_kib: rss })
}

/// CPU seconds every process of the machine has used so far (busy time
/// of all cores, kernel included): the delta over a phase is what the whole
/// pipeline cost, whichever processes ran it.
pub fn machine_cpu_seconds() -> Option<f64> {
    machine_jiffies().map(|(busy, _)| busy as f64 / clock_ticks())
}

/// Busy and total jiffies of the whole machine (`/proc/stat`'s `cpu` line).
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    Some((total - idle, total))
}

/// Waits until the machine is quiet: below `max_busy_cores` busy (all
/// processes: a store's flushes, merges and compactions after the previous
/// phase, PostgreSQL's autovacuum) for three consecutive seconds, or
/// `timeout`. Returns the seconds waited and whether it got quiet, so that
/// each measured phase starts on an idle store rather than inheriting the
/// background work of the one before it.
pub async fn wait_machine_quiet(max_busy_cores: f64, timeout: std::time::Duration) -> (f64, bool) {
    let started = std::time::Instant::now();
    let cores = std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0);
    let mut quiet = 0;
    let Some(mut last) = machine_jiffies() else { return (0.0, false) };
    while started.elapsed() < timeout {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let Some(now) = machine_jiffies() else { return (started.elapsed().as_secs_f64(), false) };
        let (busy, total) = (now.0 - last.0, now.1 - last.1);
        last = now;
        let busy_cores = if total == 0 { 0.0 } else { busy as f64 / total as f64 * cores };
        quiet = if busy_cores < max_busy_cores { quiet + 1 } else { 0 };
        if quiet >= 3 {
            return (started.elapsed().as_secs_f64(), true);
        }
    }
    (started.elapsed().as_secs_f64(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let u = usage(std::process::id()).expect("own /proc entry");
        assert!(u.peak_rss_kib > 0);
        assert!(u.cpu_seconds >= 0.0);
    }

    #[test]
    fn parses_time_output() {
        let dir = tempfile_dir();
        let p = dir.join("t");
        std::fs::write(&p, "Command exited with non-zero status 1\n1.25 0.50 20480\n").unwrap();
        let u = parse_time_output(&p).unwrap();
        assert!((u.cpu_seconds - 1.75).abs() < 1e-9);
        assert_eq!(u.peak_rss_kib, 20480);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pgfanout-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
