//! Plumbing shared by the JVM servers (Kafka, Neo4j, OpenSearch,
//! Elasticsearch, Cassandra): where each is installed and how its JVM is
//! started. The process itself (log, readiness, stop, drop) is
//! [`crate::process`]'s.
//!
//! `scripts/install-jvm-servers.sh` puts each server's jars, launchers and
//! logging config under `$PGFANOUT_JVM_CACHE` (default
//! `$HOME/.cache/pgfanout/jvm`), one directory per server. Every JVM runs
//! under `pgfanout.testkit.Launch`, a watchdog that reads its standard input:
//! the pipe is held by the test process, so when that process ends (however
//! it ends) the JVM sees end-of-file, deletes its scratch directory and halts.
//! No JVM outlives the test process, and servers in `static`s (the `shared()`
//! helpers) are cleaned up too.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{Ending, ServerProcess, ServerSlot};

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

    /// The JVM options in `<dir>/conf/jvm.options` (from
    /// `testkit/jvm/<server>/conf/jvm.options`): every line that is not
    /// blank or a `#` comment, as the servers' own `jvm.options` files are.
    pub fn jvm_options(&self) -> Vec<String> {
        let path = self.conf("jvm.options");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
    }

    /// Starts `java <jvm.options> <jvm_args> $PGFANOUT_JVM_OPTS -cp
    /// <classpath> pgfanout.testkit.Launch <main> <args>` as `slot`'s server,
    /// its output in the slot's log. When the test process goes away without
    /// stopping it, the JVM deletes the slot's directory and halts.
    pub fn spawn(&self, slot: &ServerSlot, classpath: &str, jvm_args: &[String], main: &str, args: &[String]) -> ServerProcess {
        self.spawn_with_options(self.jvm_options(), slot, classpath, jvm_args, main, args)
    }

    /// [`spawn`](Self::spawn) with `options` in place of `conf/jvm.options`
    /// (the benchmark runs Debezium as a Kafka Connect worker would be run).
    pub fn spawn_with_options(
        &self,
        options: Vec<String>,
        slot: &ServerSlot,
        classpath: &str,
        jvm_args: &[String],
        main: &str,
        args: &[String],
    ) -> ServerProcess {
        let mut cmd = Command::new(&self.java);
        cmd.args(options).args(jvm_args);
        // extra options for every JVM server (they come last, so they win)
        if let Ok(extra) = std::env::var("PGFANOUT_JVM_OPTS") {
            cmd.args(extra.split_whitespace());
        }
        cmd.arg(format!("-Dpgfanout.deleteOnEof={}", slot.dir().display()));
        cmd.arg("-cp").arg(classpath).arg("pgfanout.testkit.Launch").arg(main).args(args);
        slot.spawn(cmd, Ending::Signals)
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
