//! An ephemeral Bolt server: ArcadeDB from the `arcadedb-embedded` wheel.
//!
//! Why ArcadeDB: it speaks Bolt 4.4 (what neo4rs talks) and installs from
//! PyPI without Docker (SERVICES.md). `scripts/install-arcadedb.sh` creates
//! its virtualenv when missing (once, ~70 MB) and `scripts/arcadedb_server.py`
//! runs it on the given loopback ports, printing `READY` once Bolt accepts
//! connections and stopping cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::{free_port, run, scratch_dir};

/// A running ArcadeDB server with Bolt on a free loopback port; stopped
/// (SIGTERM, then SIGKILL after 10 s) and its directory removed on drop.
pub struct BoltServer {
    child: Child,
    _dir: tempfile::TempDir,
    pub bolt_port: u16,
    pub http_port: u16,
    pub user: String,
    pub password: String,
    /// The database created at start (`neo4j`).
    pub database: String,
}

/// The repository root (testkit lives in `<root>/testkit`).
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

impl BoltServer {
    /// Installs the virtualenv if missing, starts the server and waits (up to
    /// 120 s) until its Bolt port accepts connections. Panics on failure with
    /// the server's output.
    pub fn start() -> BoltServer {
        let root = repo_root();
        let venv = run(Command::new("bash").arg(root.join("scripts/install-arcadedb.sh"))).trim().to_string();
        let python = PathBuf::from(&venv).join("bin/python");
        let dir = scratch_dir("pgfanout-arcadedb-");
        let (bolt_port, http_port) = (free_port(), free_port());
        let password = "pgfanout-test".to_string();
        let mut child = Command::new(&python)
            .arg(root.join("scripts/arcadedb_server.py"))
            .args(["--dir", &dir.path().display().to_string()])
            .args(["--bolt-port", &bolt_port.to_string(), "--http-port", &http_port.to_string()])
            .args(["--password", &password])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(dir.path().join("server.log")).unwrap_or_else(|e| panic!("create server.log: {e}"))))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", python.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let log = dir.path().join("server.log");
        let server = BoltServer { child, _dir: dir, bolt_port, http_port, user: "root".into(), password, database: "neo4j".into() };
        loop {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(line) if line.starts_with("READY") => return server,
                Ok(_) => continue,
                Err(_) => {
                    let tail = std::fs::read_to_string(&log).unwrap_or_default();
                    let tail: String = tail.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
                    panic!("ArcadeDB did not become ready:\n{tail}");
                }
            }
        }
    }

    /// `bolt://127.0.0.1:<port>`.
    pub fn uri(&self) -> String {
        format!("bolt://127.0.0.1:{}", self.bolt_port)
    }
}

impl Drop for BoltServer {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..200 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
