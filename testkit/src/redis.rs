//! An ephemeral redis-server.

use std::process::Command;
use std::time::Duration;

use crate::{find_bin, free_port, run, scratch_dir, wait_until};

/// A running redis-server on a free loopback port; shut down on drop.
pub struct RedisServer {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = scratch_dir("pgfanout-redis-");
        let server = RedisServer { dir, port: free_port() };
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
        run(Command::new(Self::bin("redis-server")).args([
            "--bind",
            "127.0.0.1",
            "--port",
            &self.port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "yes",
            "--pidfile",
            dir.join("redis.pid").to_str().unwrap(),
            "--logfile",
            dir.join("redis.log").to_str().unwrap(),
            "--dir",
            dir.to_str().unwrap(),
        ]));
        wait_until(Duration::from_secs(10), "redis to accept connections", || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    /// Stops the server (data is lost: no persistence).
    pub fn stop(&self) {
        let _ = Command::new(Self::bin("redis-cli")).args(["-p", &self.port.to_string(), "shutdown", "nosave"]).output();
        wait_until(Duration::from_secs(10), "redis to stop", || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err());
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = Command::new(Self::bin("redis-cli")).args(["-p", &self.port.to_string(), "shutdown", "nosave"]).output();
    }
}
