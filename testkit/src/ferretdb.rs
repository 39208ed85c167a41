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
use std::process::Command;
use std::time::Duration;

use crate::process::{Ending, Server, ServerSlot};
use crate::{free_port, PgCluster};

/// `$PGFANOUT_BIN/ferretdb` or `~/.cache/pgfanout/bin/ferretdb`.
pub fn ferretdb_bin() -> PathBuf {
    crate::cached_bin("ferretdb", "FerretDB", "scripts/install-ferretdb.sh")
}

/// A running FerretDB on a free loopback port; stopped on drop.
/// [`Server`]: stop (SIGTERM, by closing its wrapper's pipe), kill, pid (the
/// wrapper's), log.
pub struct FerretDb {
    slot: ServerSlot,
    pub port: u16,
    /// The PostgreSQL URL FerretDB stores its documents under.
    pub postgresql_url: String,
    /// A TLS listener beside the plain one ([`FerretDb::start_tls`]).
    pub tls: Option<crate::redis::Tls>,
}

impl FerretDb {
    /// `mongodb://127.0.0.1:<port>/`.
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/", self.port)
    }

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
        let port = free_port();
        FerretDb { slot: ServerSlot::new("ferretdb", port), port, postgresql_url: pg.url(db), tls: None }.started()
    }

    /// Like [`start`](Self::start), with a TLS listener (`tls.port`, a
    /// certificate for `localhost` and 127.0.0.1 from
    /// [`crate::make_certificates`]) beside the plain one (`port`, for the
    /// test's own reads).
    pub fn start_tls(pg: &PgCluster) -> FerretDb {
        let db = "ferretdb";
        if pg.psql("postgres", &format!("SELECT 1 FROM pg_database WHERE datname = '{db}'")).trim().is_empty() {
            pg.psql("postgres", &format!("CREATE DATABASE \"{db}\""));
        }
        let [port, tls_port] = crate::free_ports();
        let slot = ServerSlot::new("ferretdb", port);
        let certs = crate::make_certificates(slot.dir());
        let tls = Some(crate::redis::Tls { port: tls_port, certs });
        FerretDb { slot, port, postgresql_url: pg.url(db), tls }.started()
    }
}

impl Server for FerretDb {
    fn slot(&self) -> &ServerSlot {
        &self.slot
    }

    fn start_server(&self) {
        self.slot.start(|| {
            // FerretDB in the background (its stdin is /dev/null); `cat` returns
            // when the test process closes the pipe (or dies), then FerretDB
            // gets SIGTERM.
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(r#""$@" & pid=$!; cat >/dev/null; kill $pid 2>/dev/null; wait $pid"#)
                .arg("ferretdb-wrapper")
                .arg(ferretdb_bin())
                .arg("--handler=pg")
                .arg(format!("--postgresql-url={}", self.postgresql_url))
                .arg(format!("--listen-addr=127.0.0.1:{}", self.port))
                .arg("--debug-addr=-")
                .arg("--telemetry=disable")
                .arg(format!("--state-dir={}", self.slot.dir().display()))
                .arg("--log-level=warn");
            if let Some(tls) = &self.tls {
                cmd.arg(format!("--listen-tls=127.0.0.1:{}", tls.port))
                    .arg(format!("--listen-tls-cert-file={}", tls.certs.cert_file.display()))
                    .arg(format!("--listen-tls-key-file={}", tls.certs.key_file.display()));
            }
            let mut p = self.slot.spawn(cmd, Ending::StdinClosed);
            let port = self.port;
            p.wait_until(Duration::from_secs(30), "FerretDB to accept connections", |_| {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            p
        });
    }
}
