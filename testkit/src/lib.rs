//! Test support: real servers on free loopback ports, removed afterwards.
//!
//! Every integration test starts its own servers here (never the shared
//! instances on the standard ports). Servers are stopped when their handle is
//! dropped, and their directories are deleted.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub mod cassandra;
pub mod daemon;
pub mod debezium;
pub mod elasticsearch;
pub mod ferretdb;
pub mod jvm;
pub mod kafka;
pub mod neo4j;
pub mod opensearch;
pub mod pg;
pub mod process;
pub mod redis;
pub mod search;
pub mod tls;
pub mod toxiproxy;

pub use cassandra::CassandraNode;
pub use daemon::Daemon;
pub use debezium::Debezium;
pub use elasticsearch::ElasticsearchNode;
pub use ferretdb::FerretDb;
pub use kafka::KafkaBroker;
pub use neo4j::Neo4jServer;
pub use opensearch::OpenSearchNode;
pub use pg::PgCluster;
pub use process::Server;
pub use redis::{RedisServer, Resp};
pub use tls::{make_certificates, TestCerts};
pub use toxiproxy::{Link, Stream as ToxicStream, Toxiproxy};

/// Runs `start` (which picks free ports and starts a server, or starts one
/// again on its ports) again, up to three times, when it fails because
/// another process held a port when the server bound it: between
/// [`free_port`] releasing it and the server binding it, or for the moment
/// another test's [`free_port`] holds it (many servers start at once under
/// nextest).
pub fn retry_on_port_clash<T>(mut start: impl FnMut() -> T) -> T {
    for attempt in 1.. {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut start)) {
            Ok(v) => return v,
            Err(e) => {
                let text =
                    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                let clash = text.contains("Address already in use") || text.contains("BindException");
                if !clash || attempt >= 3 {
                    std::panic::resume_unwind(e);
                }
                eprintln!("testkit: a port was taken when the server bound it; starting it again");
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        }
    }
    unreachable!()
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// `N` distinct free loopback ports (for a server that listens on several):
/// the listeners are held until all are chosen, so two separate
/// [`free_port`] calls cannot hand out the same port twice.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")).collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local addr").port())
}

/// True when this process runs as root (initdb then runs as `postgres`).
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// Runs a command to completion, panicking with its output on failure.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if !out.status.success() {
        panic!("{cmd:?} failed with {}:\n{}\n{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `f` returns true, up to `timeout`; panics with `what` otherwise.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Async variant of [`wait_until`].
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A scratch directory that the `postgres` user can also write to.
pub fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().expect("tempdir");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777));
    }
    dir
}

/// An executable an install script builds into `$PGFANOUT_BIN` (default
/// `~/.cache/pgfanout/bin`); panics naming the script when it is missing.
pub fn cached_bin(name: &str, what: &str, script: &str) -> PathBuf {
    let dir = std::env::var_os("PGFANOUT_BIN").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
        home.join(".cache/pgfanout/bin")
    });
    let bin = dir.join(name);
    if !bin.exists() {
        panic!("{what} is not installed at {}: run {script}", bin.display());
    }
    bin
}

/// Finds an executable in the usual places.
pub fn find_bin(name: &str, dirs: &[&str]) -> Option<PathBuf> {
    dirs.iter().map(|d| Path::new(d).join(name)).find(|p| p.exists())
}
