//! An ephemeral Kafka-protocol broker: Tansu, on a free loopback port.
//!
//! Tansu is a single binary that speaks the Kafka protocol (no transactions).
//! `scripts/install-tansu.sh` builds it once into
//! `$HOME/.cache/pgfanout/tansu/bin/tansu`; `PGFANOUT_TANSU` overrides the
//! path. The broker keeps its data in memory: [`KafkaBroker::stop`] followed
//! by [`KafkaBroker::start_server`] brings back an empty broker on the same
//! port (the binary built here has no on-disk storage engine).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::{free_port, scratch_dir, wait_until};

/// A running Tansu broker on a free loopback port; killed on drop.
pub struct KafkaBroker {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Mutex<Option<Child>>,
}

impl KafkaBroker {
    /// Starts a broker and waits until it accepts connections.
    pub fn start() -> KafkaBroker {
        let broker = KafkaBroker { dir: scratch_dir("pgfanout-kafka-"), port: free_port(), child: Mutex::new(None) };
        broker.start_server();
        broker
    }

    /// The tansu binary, or a panic saying how to install it.
    pub fn bin() -> PathBuf {
        if let Some(p) = std::env::var_os("PGFANOUT_TANSU") {
            return PathBuf::from(p);
        }
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
        let p = home.join(".cache/pgfanout/tansu/bin/tansu");
        if !p.exists() {
            panic!("tansu not found at {}: run scripts/install-tansu.sh (or set PGFANOUT_TANSU)", p.display());
        }
        p
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts (or restarts after [`stop`](Self::stop)) the broker on the same port.
    pub fn start_server(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if child.is_some() {
            return;
        }
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("tansu.log")).expect("open tansu log");
        let log2 = log.try_clone().expect("clone log handle");
        let spawned = Command::new(Self::bin())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn tansu: {e}"));
        *child = Some(spawned);
        drop(child);
        wait_until(Duration::from_secs(20), "tansu to accept connections", || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    /// Kills the broker (its data is lost) and waits until the port is closed.
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        drop(child);
        wait_until(Duration::from_secs(10), "tansu to stop", || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err());
    }

    /// The broker's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
