//! An ephemeral redis-server, and a minimal RESP client for reading it back.
//!
//! The client is a few lines of blocking RESP2 over `TcpStream` so tests of
//! crates without the `redis` dependency (the daemon's end-to-end tests) can
//! inspect keys without shelling out to `redis-cli`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::{find_bin, free_port, run, scratch_dir, wait_until};

/// A running redis-server on a free loopback port; shut down on drop.
pub struct RedisServer {
    dir: tempfile::TempDir,
    pub port: u16,
    /// Append-only file with `appendfsync always`: every acknowledged write
    /// survives [`stop`](Self::stop) and [`start_server`](Self::start_server).
    persistent: bool,
    /// A TLS listener beside the plain one ([`start_tls`](Self::start_tls)).
    pub tls: Option<Tls>,
}

/// The TLS listener of a [`RedisServer::start_tls`] (or
/// [`crate::FerretDb::start_tls`]) server: `port`, with a certificate for
/// `localhost` and 127.0.0.1 signed by `certs.ca_file`. Clients are not
/// asked for certificates.
#[derive(Debug, Clone)]
pub struct Tls {
    pub port: u16,
    pub certs: crate::TestCerts,
}

impl RedisServer {
    /// A server without persistence (a stop loses everything).
    pub fn start() -> RedisServer {
        let dir = scratch_dir("pgfanout-redis-");
        let server = RedisServer { dir, port: free_port(), persistent: false, tls: None };
        server.start_server();
        server
    }

    /// A server with a TLS listener (`tls.port`) beside the plain one
    /// (`port`, for the test's own reads); certificates made with `openssl`
    /// ([`crate::make_certificates`]).
    pub fn start_tls() -> RedisServer {
        let dir = scratch_dir("pgfanout-redis-");
        let certs = crate::make_certificates(dir.path());
        let [port, tls_port] = crate::free_ports();
        let server = RedisServer { dir, port, persistent: false, tls: Some(Tls { port: tls_port, certs }) };
        server.start_server();
        server
    }

    /// A server with `--appendonly yes --appendfsync always`: a write Redis
    /// acknowledged is on disk, so a stop/start on the same port keeps it.
    pub fn start_persistent() -> RedisServer {
        let dir = scratch_dir("pgfanout-redis-");
        let server = RedisServer { dir, port: free_port(), persistent: true, tls: None };
        server.start_server();
        server
    }

    fn bin(name: &str) -> String {
        find_bin(name, &["/usr/bin", "/usr/local/bin"])
            .unwrap_or_else(|| panic!("{name} not found: apt-get install -y redis-server"))
            .display()
            .to_string()
    }

    /// Starts (or restarts after [`stop`](Self::stop)) the server on the same port.
    pub fn start_server(&self) {
        let dir = self.dir.path();
        let mut command = Command::new(Self::bin("redis-server"));
        if let Some(tls) = &self.tls {
            let path = |p: &std::path::Path| p.display().to_string();
            command.args([
                "--tls-port",
                &tls.port.to_string(),
                "--tls-cert-file",
                &path(&tls.certs.cert_file),
                "--tls-key-file",
                &path(&tls.certs.key_file),
                "--tls-ca-cert-file",
                &path(&tls.certs.ca_file),
                "--tls-auth-clients",
                "no",
            ]);
        }
        run(command.args([
            "--bind",
            // A TLS server also listens on 127.0.0.2: an address its
            // certificate does not list, for the hostname-check test.
            if self.tls.is_some() { "127.0.0.1 127.0.0.2" } else { "127.0.0.1" },
            "--port",
            &self.port.to_string(),
            "--save",
            "",
            "--appendonly",
            if self.persistent { "yes" } else { "no" },
            "--appendfsync",
            "always",
            "--daemonize",
            "yes",
            "--pidfile",
            dir.join("redis.pid").to_str().unwrap(),
            "--logfile",
            dir.join("redis.log").to_str().unwrap(),
            "--dir",
            dir.to_str().unwrap(),
        ]));
        // Connections are taken at once; commands only once the append-only
        // file is loaded (until then: `LOADING`).
        wait_until(Duration::from_secs(30), "redis to load its data and answer", || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.cmd(&["PING"]) == Resp::Text("PONG".into())
        });
    }

    /// Stops the server; without persistence its data is lost, with
    /// [`start_persistent`](Self::start_persistent) the append-only file keeps it.
    pub fn stop(&self) {
        let _ = Command::new(Self::bin("redis-cli")).args(["-p", &self.port.to_string(), "shutdown", "nosave"]).output();
        wait_until(Duration::from_secs(10), "redis to stop", || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err());
    }

    /// Kills the server at once (SIGKILL). With
    /// [`start_persistent`](Self::start_persistent) every write it
    /// acknowledged is in the append-only file and is back after
    /// [`start_server`](Self::start_server).
    pub fn kill(&self) {
        let pid = std::fs::read_to_string(self.dir.path().join("redis.pid")).expect("redis.pid");
        let _ = Command::new("kill").args(["-9", pid.trim()]).output();
        wait_until(Duration::from_secs(10), "redis to die", || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err());
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Runs one command on a fresh connection and returns the reply; panics
    /// when the server cannot be reached (a test bug, not a test outcome).
    pub fn cmd(&self, args: &[&str]) -> Resp {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap_or_else(|e| panic!("connect to redis :{}: {e}", self.port));
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        (&stream).write_all(&out).expect("send to redis");
        read_resp(&mut BufReader::new(&stream))
    }

    /// Every key name (`KEYS *`; test data sets are small).
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.cmd(&["KEYS", "*"]).array().iter().map(Resp::text).collect();
        keys.sort();
        keys
    }

    /// The `redis-cli` output of a command (for documentation examples).
    pub fn cli(&self, args: &[&str]) -> String {
        run(Command::new(Self::bin("redis-cli")).arg("-p").arg(self.port.to_string()).args(args))
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Nil,
    Int(i64),
    /// A simple or bulk string (bulk strings lossily as UTF-8).
    Text(String),
    Error(String),
    Array(Vec<Resp>),
}

impl Resp {
    /// The string value; panics on any other reply.
    pub fn text(&self) -> String {
        match self {
            Resp::Text(s) => s.clone(),
            other => panic!("expected a string reply, got {other:?}"),
        }
    }

    /// The string value, or `None` for nil; panics on any other reply.
    pub fn opt_text(&self) -> Option<String> {
        match self {
            Resp::Nil => None,
            other => Some(other.text()),
        }
    }

    /// The integer value; panics on any other reply.
    pub fn int(&self) -> i64 {
        match self {
            Resp::Int(i) => *i,
            other => panic!("expected an integer reply, got {other:?}"),
        }
    }

    /// The elements of an array (nil = empty); panics on any other reply.
    pub fn array(&self) -> Vec<Resp> {
        match self {
            Resp::Array(a) => a.clone(),
            Resp::Nil => Vec::new(),
            other => panic!("expected an array reply, got {other:?}"),
        }
    }

    /// An array of strings taken as (name, value) pairs (HGETALL, ZRANGE … WITHSCORES).
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.array().chunks(2).map(|p| (p[0].text(), p[1].text())).collect()
    }
}

fn read_resp(r: &mut impl BufRead) -> Resp {
    let mut line = String::new();
    r.read_line(&mut line).expect("read from redis");
    let line = line.trim_end_matches(['\r', '\n']);
    if line.is_empty() {
        panic!("redis closed the connection without a reply");
    }
    let (tag, rest) = line.split_at(1);
    let num = || rest.parse::<i64>().unwrap_or_else(|e| panic!("bad RESP line {line:?}: {e}"));
    match tag {
        "+" => Resp::Text(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Int(num()),
        "$" if num() < 0 => Resp::Nil,
        "$" => {
            let mut buf = vec![0u8; num() as usize + 2];
            r.read_exact(&mut buf).expect("read bulk string");
            buf.truncate(buf.len() - 2);
            Resp::Text(String::from_utf8_lossy(&buf).into_owned())
        }
        "*" if num() < 0 => Resp::Nil,
        "*" => Resp::Array((0..num()).map(|_| read_resp(r)).collect()),
        _ => panic!("bad RESP line {line:?}"),
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = Command::new(Self::bin("redis-cli")).args(["-p", &self.port.to_string(), "shutdown", "nosave"]).output();
    }
}
