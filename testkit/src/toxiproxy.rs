//! Toxiproxy (Shopify's fault-injection TCP proxy) on a free loopback port,
//! for putting slow, lossy and silent links between pgfanout and its
//! servers.
//!
//! `scripts/install-toxiproxy.sh` builds v2.5.0 from the Go module proxy
//! into `~/.cache/pgfanout/bin/toxiproxy-server`. Each [`Link`] is a proxy
//! listening on a free port and forwarding to a server's port; toxics are
//! added and removed through the HTTP API (a few lines of HTTP/1.1 over a
//! `TcpStream`, as the Redis handle speaks RESP). Lifetime as FerretDB's: a
//! `sh` wrapper holding a pipe from the test process stops it when the
//! test ends, however it ends.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::free_port;
use crate::process::{Ending, Server, ServerSlot};

/// `$PGFANOUT_BIN/toxiproxy-server` or `~/.cache/pgfanout/bin/toxiproxy-server`.
pub fn toxiproxy_bin() -> PathBuf {
    crate::cached_bin("toxiproxy-server", "Toxiproxy", "scripts/install-toxiproxy.sh")
}

/// A running toxiproxy-server (its API on `port`); stopped on drop.
pub struct Toxiproxy {
    slot: ServerSlot,
    pub port: u16,
}

/// One proxied link: connect to `port` instead of the server's.
#[derive(Debug, Clone)]
pub struct Link {
    pub name: String,
    /// Where clients connect.
    pub port: u16,
    api: u16,
}

/// Which direction a toxic acts on: `Down` is server to client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Up,
    Down,
}

impl Toxiproxy {
    /// Starts the server; waits (up to 30 s) for its API.
    pub fn start() -> Toxiproxy {
        let port = free_port();
        Toxiproxy { slot: ServerSlot::new("toxiproxy", port), port }.started()
    }

    /// A proxy named `name` from a free port to `127.0.0.1:upstream`.
    pub fn link(&self, name: &str, upstream: u16) -> Link {
        self.link_on(name, free_port(), upstream)
    }

    /// A proxy named `name` from `port` (chosen beforehand, e.g. for a
    /// server that must advertise it) to `127.0.0.1:upstream`.
    pub fn link_on(&self, name: &str, port: u16, upstream: u16) -> Link {
        let body = format!(r#"{{"name":"{name}","listen":"127.0.0.1:{port}","upstream":"127.0.0.1:{upstream}","enabled":true}}"#);
        api(self.port, "POST", "/proxies", &body);
        Link { name: name.into(), port, api: self.port }
    }
}

impl Link {
    /// Adds toxic `kind` (`latency`, `bandwidth`, `slicer`, `reset_peer`,
    /// `timeout`, `limit_data`) named `name` on `stream` with `attributes`
    /// (a JSON object, e.g. `{"latency": 2000}`).
    pub fn add(&self, name: &str, kind: &str, stream: Stream, attributes: &str) {
        let stream = match stream {
            Stream::Up => "upstream",
            Stream::Down => "downstream",
        };
        let body = format!(r#"{{"name":"{name}","type":"{kind}","stream":"{stream}","toxicity":1.0,"attributes":{attributes}}}"#);
        api(self.api, "POST", &format!("/proxies/{}/toxics", self.name), &body);
    }

    /// Removes toxic `name`.
    pub fn remove(&self, name: &str) {
        api(self.api, "DELETE", &format!("/proxies/{}/toxics/{name}", self.name), "");
    }

    /// Enables or disables the proxy: disabled, it closes every connection
    /// and refuses new ones.
    pub fn enabled(&self, on: bool) {
        api(self.api, "POST", &format!("/proxies/{}", self.name), &format!(r#"{{"enabled":{on}}}"#));
    }
}

/// One API request; panics on anything but a 2xx (a test bug).
fn api(port: u16, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("toxiproxy API :{port}: {e}"));
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send to the toxiproxy API");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    let status = reply.split_whitespace().nth(1).unwrap_or("");
    assert!(status.starts_with('2'), "toxiproxy {method} {path} {body}: {reply}");
    reply.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

impl Server for Toxiproxy {
    fn slot(&self) -> &ServerSlot {
        &self.slot
    }

    fn start_server(&self) {
        self.slot.start(|| {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(r#""$@" & pid=$!; cat >/dev/null; kill $pid 2>/dev/null; wait $pid"#)
                .arg("toxiproxy-wrapper")
                .arg(toxiproxy_bin())
                .arg("-host")
                .arg("127.0.0.1")
                .arg("-port")
                .arg(self.port.to_string());
            let mut p = self.slot.spawn(cmd, Ending::StdinClosed);
            let port = self.port;
            p.wait_until(Duration::from_secs(30), "Toxiproxy's API", |_| TcpStream::connect(("127.0.0.1", port)).is_ok());
            p
        });
    }
}
