//! An ephemeral FerretDB 1.x (the MongoDB wire protocol) on a free loopback
//! port, storing its documents in a PostgreSQL database of the test's own.
//!
//! FerretDB v1.24 (`scripts/install-ferretdb.sh`: `go install` into
//! `~/.cache/pgfanout/bin`) with its `pg` handler; v2 needs a PostgreSQL
//! extension that cannot be had here. MongoDB's own server cannot be had
//! either (SERVICES.md). No auth, no TLS, telemetry and the debug HTTP
//! listener off. Start: well under a second.
//!
//! Lifetime: FerretDB runs under a small `sh` wrapper that holds a pipe
//! from the test process on its standard input; when the pipe closes (the
//! handle is dropped or stopped, or the test process dies however it dies)
//! the wrapper sends FerretDB SIGTERM. Nothing outlives the test process.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::{free_port, scratch_dir, wait_until, PgCluster};

/// `$PGFANOUT_BIN/ferretdb` or `~/.cache/pgfanout/bin/ferretdb`.
pub fn ferretdb_bin() -> PathBuf {
    let dir = std::env::var_os("PGFANOUT_BIN").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
        home.join(".cache/pgfanout/bin")
    });
    let bin = dir.join("ferretdb");
    if !bin.exists() {
        panic!("FerretDB is not installed at {}: run scripts/install-ferretdb.sh", bin.display());
    }
    bin
}

/// A running FerretDB on a free loopback port; stopped on drop.
pub struct FerretDb {
    dir: tempfile::TempDir,
    child: Mutex<Option<Child>>,
    pub port: u16,
    /// The PostgreSQL URL FerretDB stores its documents under.
    pub postgresql_url: String,
}

impl FerretDb {
    /// Creates the database `ferretdb` in `pg` (if absent) and starts
    /// FerretDB on it; waits (up to 30 s) until the port accepts connections.
    pub fn start(pg: &PgCluster) -> FerretDb {
        FerretDb::start_on(pg, "ferretdb")
    }

    /// Like [`start`](Self::start), on the database `db` of `pg`.
    pub fn start_on(pg: &PgCluster, db: &str) -> FerretDb {
        let exists = pg.psql("postgres", &format!("SELECT 1 FROM pg_database WHERE datname = '{db}'"));
        if exists.trim().is_empty() {
            pg.psql("postgres", &format!("CREATE DATABASE \"{db}\""));
        }
        let server =
            FerretDb { dir: scratch_dir("pgfanout-ferretdb-"), child: Mutex::new(None), port: free_port(), postgresql_url: pg.url(db) };
        server.start_server();
        server
    }

    /// `mongodb://127.0.0.1:<port>/`.
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/", self.port)
    }

    /// Starts (or restarts after [`stop`](Self::stop)) FerretDB on the same
    /// port and PostgreSQL database.
    pub fn start_server(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if child.is_some() {
            return;
        }
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("ferretdb.log")).expect("open ferretdb.log");
        let state = self.dir.path().join("state");
        let _ = std::fs::create_dir_all(&state);
        // FerretDB in the background (its stdin is /dev/null); `cat` returns
        // when the test process closes the pipe (or dies), then FerretDB
        // gets SIGTERM.
        let c = Command::new("sh")
            .arg("-c")
            .arg(r#""$@" & pid=$!; cat >/dev/null; kill $pid 2>/dev/null; wait $pid"#)
            .arg("ferretdb-wrapper")
            .arg(ferretdb_bin())
            .arg("--handler=pg")
            .arg(format!("--postgresql-url={}", self.postgresql_url))
            .arg(format!("--listen-addr=127.0.0.1:{}", self.port))
            .arg("--debug-addr=-")
            .arg("--telemetry=disable")
            .arg(format!("--state-dir={}", state.display()))
            .arg("--log-level=warn")
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn ferretdb: {e}"));
        *child = Some(c);
        drop(child);
        let port = self.port;
        wait_until(Duration::from_secs(30), "FerretDB to accept connections", || {
            if let Some(c) = self.child.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("FerretDB exited with {status}:\n{}", self.log());
                }
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// Stops FerretDB (SIGTERM) and waits for it to exit.
    pub fn stop(&self) {
        if let Some(mut c) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            drop(c.stdin.take());
            let _ = c.wait();
        }
        crate::jvm::wait_port_closed(self.port, Duration::from_secs(10));
    }

    /// The wrapper's process id while FerretDB runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(Child::id)
    }

    /// FerretDB's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ferretdb.log")).unwrap_or_default()
    }
}

impl Drop for FerretDb {
    fn drop(&mut self) {
        self.stop();
    }
}
