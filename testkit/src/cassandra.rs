//! An ephemeral Apache Cassandra node on a free loopback port.
//!
//! Cassandra 5.0 (`org.apache.cassandra:cassandra-all`, installed by
//! `scripts/install-jvm-servers.sh`) runs as `CassandraDaemon` in the
//! foreground with a `cassandra.yaml` written here: one node, one token,
//! CQL (native protocol) and storage on 127.0.0.1, no auth
//! (`AllowAllAuthenticator`), no JMX, small caches, no wait for gossip.
//! It stands in for ScyllaDB too (which cannot be had here): both speak CQL.
//!
//! Start: ~8-9 s, RSS ~500 MB (`-Xmx512m`).

use std::time::Duration;

use crate::free_ports;
use crate::jvm::JvmInstall;
use crate::process::{Server, ServerProcess, ServerSlot};

/// A running Cassandra node; killed on drop and its directory removed.
/// [`Server`]: stop (SIGTERM drains and flushes, ~6 s), kill, pid, log.
pub struct CassandraNode {
    slot: ServerSlot,
    install: JvmInstall,
    /// The CQL (native transport) port.
    pub port: u16,
    /// The internode (storage) port.
    pub storage_port: u16,
    /// TLS on the CQL port ([`CassandraNode::start_tls`]).
    pub tls: Option<crate::redis::Tls>,
}

impl CassandraNode {
    /// Starts a node and waits (up to 180 s) until it listens for CQL clients.
    pub fn start() -> CassandraNode {
        crate::retry_on_port_clash(|| {
            let [port, storage_port] = free_ports();
            let install = JvmInstall::find("cassandra");
            CassandraNode { slot: ServerSlot::new("cassandra", port), install, port, storage_port, tls: None }.started()
        })
    }

    /// A node whose CQL port also takes TLS (`client_encryption_options`
    /// with `optional: true`: plaintext clients, such as the readiness
    /// check and the test's own reads, still connect). The certificate is
    /// for `localhost` and 127.0.0.1 ([`crate::make_certificates`]);
    /// `tls.port` is the CQL port.
    pub fn start_tls() -> CassandraNode {
        crate::retry_on_port_clash(|| {
            let [port, storage_port] = free_ports();
            let install = JvmInstall::find("cassandra");
            let slot = ServerSlot::new("cassandra", port);
            let certs = crate::make_certificates(slot.dir());
            certs.pkcs12();
            let tls = Some(crate::redis::Tls { port, certs });
            CassandraNode { slot, install, port, storage_port, tls }.started()
        })
    }

    /// One node for the whole test binary, started on first use and gone
    /// with the process. Tests share it: use distinct keyspaces.
    pub fn shared() -> &'static CassandraNode {
        crate::process::shared(CassandraNode::start)
    }

    /// `127.0.0.1:<port>`, the contact point for CQL drivers.
    pub fn contact_point(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn write_config(&self) {
        let d = self.slot.dir().display();
        let (p, sp) = (self.port, self.storage_port);
        let yaml = format!(
            "cluster_name: pgfanout-test
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: \"127.0.0.1:{sp}\"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: {sp}
ssl_storage_port: {sp}
native_transport_port: {p}
start_native_transport: true
data_file_directories: [{d}/data]
commitlog_directory: {d}/commitlog
saved_caches_directory: {d}/saved_caches
hints_directory: {d}/hints
cdc_raw_directory: {d}/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
auto_snapshot: false
concurrent_compactors: 1
memtable_allocation_type: heap_buffers
file_cache_size: 32MiB
networking_cache_size: 16MiB
key_cache_size: 0MiB
counter_cache_size: 0MiB
memtable_heap_space: 64MiB
memtable_offheap_space: 64MiB
concurrent_reads: 4
concurrent_writes: 4
concurrent_counter_writes: 4
native_transport_max_threads: 16
"
        );
        let mut yaml = yaml;
        if self.tls.is_some() {
            yaml.push_str(&format!(
                "client_encryption_options:
  enabled: true
  optional: true
  keystore: {d}/server.p12
  keystore_password: changeit
  store_type: PKCS12
  require_client_auth: false
"
            ));
        }
        std::fs::write(self.slot.dir().join("cassandra.yaml"), yaml).expect("write cassandra.yaml");
    }

    /// Spawns the JVM and waits until it answers CQL.
    fn launch(&self) -> ServerProcess {
        self.write_config();
        let d = self.slot.dir();
        let conf = |key: &str, path: &std::path::Path| format!("-D{key}={}", path.display());
        let jvm_args = [
            format!("-Dcassandra.config=file://{}", d.join("cassandra.yaml").display()),
            conf("cassandra.storagedir", d),
            conf("cassandra.logdir", &d.join("logs")),
            conf("logback.configurationFile", &self.install.conf("logback.xml")),
        ];
        let mut p =
            self.install.spawn(&self.slot, &self.install.classpath(), &jvm_args, "org.apache.cassandra.service.CassandraDaemon", &[]);
        // The log line comes before the bind, and an open port is not yet a
        // served protocol: a driver that connected at that moment once had
        // its OPTIONS request answered by a closed connection. Ready means a
        // CQL OPTIONS request gets its SUPPORTED answer.
        let port = self.port;
        p.wait_until(Duration::from_secs(180), "a CQL OPTIONS request to be answered", |out| {
            out.contains("Starting listening for CQL clients") && answers_cql_options(port)
        });
        p
    }
}

impl Server for CassandraNode {
    fn slot(&self) -> &ServerSlot {
        &self.slot
    }

    fn start_server(&self) {
        self.slot.start(|| self.launch());
    }
}

/// Sends a native-protocol v4 OPTIONS frame to `127.0.0.1:port` and reports
/// whether a SUPPORTED frame came back.
fn answers_cql_options(port: u16) -> bool {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    // version 4 request, no flags, stream 0, opcode OPTIONS (0x05), empty body
    if s.write_all(&[0x04, 0, 0, 0, 0x05, 0, 0, 0, 0]).is_err() {
        return false;
    }
    let mut header = [0u8; 9];
    // response version 0x84, opcode SUPPORTED (0x06)
    s.read_exact(&mut header).is_ok() && header[0] == 0x84 && header[4] == 0x06
}
