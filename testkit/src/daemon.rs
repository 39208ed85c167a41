//! Runs the pgfanout binary as a child process, the way an operator would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running `pgfanout run -c FILE`; killed on drop.
pub struct Daemon {
    child: Option<Child>,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

impl Daemon {
    /// Writes `config_yaml` to `dir/name.yaml` and starts `bin run -c` on it,
    /// with stderr (logs) going to `dir/name.log` (appended across restarts).
    pub fn start(bin: &Path, dir: &Path, name: &str, config_yaml: &str) -> Daemon {
        let config_path = dir.join(format!("{name}.yaml"));
        std::fs::write(&config_path, config_yaml).expect("write config");
        let log_path = dir.join(format!("{name}.log"));
        let mut d = Daemon { child: None, config_path, log_path };
        d.spawn(bin);
        d
    }

    /// Starts the process again with the same config (after a kill).
    pub fn spawn(&mut self, bin: &Path) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("open log");
        let child = Command::new(bin)
            .args(["run", "-c"])
            .arg(&self.config_path)
            // The state file (runtime.state_dir's default) beside the config.
            .env("STATE_DIRECTORY", self.config_path.parent().expect("the config's directory"))
            .env("PGFANOUT_LOG", std::env::var("PGFANOUT_TEST_LOG").unwrap_or_else(|_| "info,pgfanout=debug".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn pgfanout");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends a signal (`KILL`, `TERM`, `INT`).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status();
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        self.signal("KILL");
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Some(status);
                }
            } else {
                return None;
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Peak resident set size (VmHWM) in KiB, from /proc.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Reads a JSON-lines file (missing file = empty); a torn last line (from a
/// SIGKILL mid-write) is ignored.
pub fn read_json_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if !text.ends_with('\n') {
        lines.pop();
    }
    lines
}
