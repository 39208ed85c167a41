//! An ephemeral Neo4j 5 Community server with Bolt on a free loopback port.
//!
//! Neo4j 5.26 LTS (`org.neo4j:neo4j`, installed by
//! `scripts/install-jvm-servers.sh`) runs embedded under the launcher
//! `pgfanout.testkit.Neo4jMain`: Bolt only (no HTTP), unencrypted, auth on,
//! user `neo4j` with the password [`Neo4jServer::password`], databases
//! `neo4j` and `system`. The store is on disk: [`Neo4jServer::stop`] then
//! [`Neo4jServer::start_server`] brings back the same data on the same port.
//!
//! Each server starts from a copy
//! of a store made at install time (`template/`), which saves creating the
//! system database. Start: ~6 s on a busy 2-core machine (~11 s without the
//! template), RSS ~310 MB (`-Xmx512m`, 64 MB page cache).

use std::time::Duration;

use crate::free_port;
use crate::jvm::{copy_dir, JvmInstall};
use crate::process::{tail, Server, ServerSlot};

/// A running Neo4j server; killed on drop and its directory removed.
/// [`Server`]: stop (checkpoint and close, ~3 s), kill (committed
/// transactions are in the transaction log and recovered on the next
/// start), pid, log (the launcher's output and Neo4j's `debug.log`).
pub struct Neo4jServer {
    slot: ServerSlot,
    install: JvmInstall,
    pub bolt_port: u16,
    pub user: String,
    pub password: String,
    /// The default database (`neo4j`).
    pub database: String,
    /// Bolt requires TLS ([`Neo4jServer::start_tls`]); `tls.port` is the
    /// Bolt port.
    pub tls: Option<crate::redis::Tls>,
}

impl Neo4jServer {
    /// Starts a server and waits (up to 180 s) until Bolt accepts logins.
    pub fn start() -> Neo4jServer {
        crate::retry_on_port_clash(|| {
            let bolt_port = free_port();
            let server = Neo4jServer {
                slot: ServerSlot::new("neo4j", bolt_port),
                install: JvmInstall::find("neo4j"),
                bolt_port,
                user: "neo4j".into(),
                // the install script's template store has this password too
                password: "pgfanout-test".into(),
                database: "neo4j".into(),
                tls: None,
            };
            server.started()
        })
    }

    /// A server whose Bolt connector requires TLS, with a certificate for
    /// `localhost` and 127.0.0.1 ([`crate::make_certificates`]): connect
    /// with `bolt+s://localhost:<bolt_port>` and the CA `tls.certs.ca_file`.
    pub fn start_tls() -> Neo4jServer {
        crate::retry_on_port_clash(|| {
            let bolt_port = free_port();
            let slot = ServerSlot::new("neo4j", bolt_port);
            let dir = slot.dir().join("tls");
            for sub in ["trusted", "revoked"] {
                std::fs::create_dir_all(dir.join(sub)).expect("create the TLS directories");
            }
            let certs = crate::make_certificates(&dir);
            let server = Neo4jServer {
                slot,
                install: JvmInstall::find("neo4j"),
                bolt_port,
                user: "neo4j".into(),
                password: "pgfanout-test".into(),
                database: "neo4j".into(),
                tls: Some(crate::redis::Tls { port: bolt_port, certs }),
            };
            server.started()
        })
    }

    /// One server for the whole test binary, started on first use and gone
    /// with the process. Tests share its `neo4j` database: use distinct
    /// labels or clean up.
    pub fn shared() -> &'static Neo4jServer {
        crate::process::shared(Neo4jServer::start)
    }

    /// `bolt://127.0.0.1:<port>`.
    pub fn uri(&self) -> String {
        format!("bolt://127.0.0.1:{}", self.bolt_port)
    }
}

impl Server for Neo4jServer {
    fn slot(&self) -> &ServerSlot {
        &self.slot
    }

    fn start_server(&self) {
        self.slot.start(|| {
            let home = self.slot.dir().join("home");
            let _ = std::fs::create_dir_all(&home);
            // a new store made at install time (system database and password set): half the start time
            let template = self.install.dir.join("template/data");
            if template.is_dir() && !home.join("data").exists() {
                copy_dir(&template, &home.join("data")).unwrap_or_else(|e| panic!("copy the Neo4j template store: {e}"));
            }
            let mut args = vec![home.display().to_string(), self.bolt_port.to_string(), self.password.clone()];
            if self.tls.is_some() {
                args.push(self.slot.dir().join("tls").display().to_string());
            }
            let mut p = self.install.spawn(&self.slot, &self.install.classpath(), &[], "pgfanout.testkit.Neo4jMain", &args);
            p.wait_ready(Duration::from_secs(180), self.bolt_port, "READY");
            p
        });
    }

    fn log(&self) -> String {
        let debug = tail(&self.slot.dir().join("home/logs/debug.log"), 200);
        format!("{}\n--- debug.log (tail) ---\n{debug}", self.slot.log())
    }
}
