//! Plumbing shared by the JVM servers (Kafka, Neo4j, OpenSearch, Cassandra).
//!
//! `scripts/install-jvm-servers.sh` puts each server's jars, launchers and
//! logging config under `$PGFANOUT_JVM_CACHE` (default
//! `$HOME/.cache/pgfanout/jvm`), one directory per server. Every JVM runs
//! under `pgfanout.testkit.Launch`, a watchdog that reads its standard input:
//! the pipe is held by the test process, so when that process ends (however
//! it ends) the JVM sees end-of-file, deletes its scratch directory and halts.
//! No JVM outlives the test process, and servers in `static`s (the `shared()`
//! helpers) are cleaned up too.

use std::io::{Read, Seek, SeekFrom};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The cache root: `$PGFANOUT_JVM_CACHE` or `$HOME/.cache/pgfanout/jvm`.
pub fn cache_root() -> PathBuf {
    if let Some(p) = std::env::var_os("PGFANOUT_JVM_CACHE") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/pgfanout/jvm")
}

/// One server's installation (`<cache>/<server>`).
#[derive(Debug, Clone)]
pub struct JvmInstall {
    pub dir: PathBuf,
    pub java: PathBuf,
}

impl JvmInstall {
    /// The installed server `name`, or a panic saying how to install it.
    pub fn find(name: &str) -> JvmInstall {
        let dir = cache_root().join(name);
        if !dir.join(".installed").exists() || !dir.join("lib").is_dir() {
            panic!("{name} is not installed under {}: run scripts/install-jvm-servers.sh (or set PGFANOUT_JVM_CACHE)", dir.display());
        }
        let java = java_bin(&dir);
        JvmInstall { dir, java }
    }

    /// `<dir>/classes:<dir>/lib/*`.
    pub fn classpath(&self) -> String {
        format!("{}:{}/*", self.dir.join("classes").display(), self.dir.join("lib").display())
    }

    /// A file under `<dir>/conf`.
    pub fn conf(&self, file: &str) -> PathBuf {
        self.dir.join("conf").join(file)
    }
}

/// `$PGFANOUT_JAVA`, else the JDK the install script chose (`<dir>/java`,
/// Java 17), else `$JAVA_HOME/bin/java`, else `java` on the PATH.
fn java_bin(dir: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("PGFANOUT_JAVA") {
        return PathBuf::from(p);
    }
    if let Ok(s) = std::fs::read_to_string(dir.join("java")) {
        let p = PathBuf::from(s.trim());
        if p.exists() {
            return p;
        }
    }
    if let Some(h) = std::env::var_os("JAVA_HOME") {
        let p = PathBuf::from(h).join("bin/java");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("java")
}

/// The last `n` lines of a file (for failure messages).
pub fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A JVM under the stdin watchdog, its stdout and stderr appended to a log
/// file. Killed (SIGKILL) on drop.
pub struct JvmProcess {
    name: String,
    child: Child,
    /// Held open: the JVM exits when it is closed.
    stdin: Option<ChildStdin>,
    log: PathBuf,
    /// Where this run's output starts in the log (the log is appended to).
    log_start: u64,
}

impl JvmProcess {
    /// Starts `java <jvm_args> $PGFANOUT_JVM_OPTS -cp <classpath> pgfanout.testkit.Launch <main> <args>`.
    /// With `delete_on_eof`, the JVM deletes that directory when the test
    /// process goes away without stopping it.
    pub fn spawn(
        name: &str,
        install: &JvmInstall,
        jvm_args: &[String],
        main: &str,
        args: &[String],
        log: &Path,
        delete_on_eof: Option<&Path>,
    ) -> JvmProcess {
        Self::spawn_with_classpath(name, install, &install.classpath(), jvm_args, main, args, log, delete_on_eof)
    }

    /// [`spawn`](Self::spawn) with another classpath than `classes:lib/*`.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_with_classpath(
        name: &str,
        install: &JvmInstall,
        classpath: &str,
        jvm_args: &[String],
        main: &str,
        args: &[String],
        log: &Path,
        delete_on_eof: Option<&Path>,
    ) -> JvmProcess {
        let file =
            std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let log_start = file.metadata().map(|m| m.len()).unwrap_or(0);
        let file2 = file.try_clone().expect("clone log handle");
        let mut cmd = Command::new(&install.java);
        cmd.args(jvm_args);
        // extra options for every JVM server (they come last, so they win)
        if let Ok(extra) = std::env::var("PGFANOUT_JVM_OPTS") {
            cmd.args(extra.split_whitespace());
        }
        if let Some(d) = delete_on_eof {
            cmd.arg(format!("-Dpgfanout.deleteOnEof={}", d.display()));
        }
        cmd.arg("-cp").arg(classpath).arg("pgfanout.testkit.Launch").arg(main).args(args);
        cmd.stdin(Stdio::piped()).stdout(file).stderr(file2);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {} for {name}: {e}", install.java.display()));
        let stdin = child.stdin.take();
        JvmProcess { name: name.to_string(), child, stdin, log: log.to_path_buf(), log_start }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// This run's output so far.
    pub fn output(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            if f.seek(SeekFrom::Start(self.log_start)).is_ok() {
                let _ = f.read_to_string(&mut s);
            }
        }
        s
    }

    /// Waits until `127.0.0.1:<port>` accepts connections and this run's
    /// output contains `needle`; panics with the log's tail if the JVM exits
    /// or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration, port: u16, needle: &str) {
        let start = Instant::now();
        loop {
            if self.output().contains(needle) && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) before it was ready:\n{}", self.name, tail(&self.log, 60));
            }
            if start.elapsed() > timeout {
                self.kill();
                panic!("{} not ready after {timeout:?} (waiting for {needle:?} and port {port}):\n{}", self.name, tail(&self.log, 60));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Like [`wait_ready`](Self::wait_ready) with a readiness check of the caller's.
    pub fn wait_until(&mut self, timeout: Duration, what: &str, mut ready: impl FnMut(&str) -> bool) {
        let start = Instant::now();
        loop {
            if ready(&self.output()) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) before {what}:\n{}", self.name, tail(&self.log, 60));
            }
            if start.elapsed() > timeout {
                self.kill();
                panic!("{}: timed out after {timeout:?} waiting for {what}:\n{}", self.name, tail(&self.log, 60));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Graceful stop: SIGTERM (the server's shutdown hooks run), then SIGKILL
    /// if it has not exited within `grace`. Returns true if it exited by itself.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).stdin(Stdio::null()).status();
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.stdin = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        false
    }

    /// SIGKILL, and wait for the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stdin = None;
    }
}

impl Drop for JvmProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits (up to `timeout`) until nothing accepts connections on the port.
pub fn wait_port_closed(port: u16, timeout: Duration) {
    crate::wait_until(timeout, "the port to close", || TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// The status code of `GET http://127.0.0.1:<port><path>` (plain HTTP/1.0
/// over a socket: no client library needed), or None if it cannot be had.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::Write;
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut head = [0u8; 32];
    let mut n = 0;
    while n < 12 {
        let k = s.read(&mut head[n..]).ok()?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let line = std::str::from_utf8(&head[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Copies a directory tree (files and directories only).
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
