//! An ephemeral OpenSearch node on a free loopback port.
//!
//! OpenSearch 2.19 (`org.opensearch:opensearch` and the modules
//! `transport-netty4-client`, `analysis-common`, `lang-painless`, installed
//! by `scripts/install-jvm-servers.sh`) runs as one node under the launcher
//! `pgfanout.testkit.OpenSearchMain`: `discovery.type=single-node`, HTTP and
//! transport on 127.0.0.1, no security plugin (plain HTTP, no auth), new
//! indexes without replicas (green). It stands in for Elasticsearch too: the
//! document, `_bulk` and search APIs the sink uses are the same.
//!
//! Start: ~7 s, RSS ~300 MB (`-Xmx512m`).

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::jvm::{http_status, wait_port_closed, JvmInstall, JvmProcess};
use crate::{free_ports, scratch_dir};

/// A running OpenSearch node; killed on drop and its directory removed.
pub struct OpenSearchNode {
    dir: tempfile::TempDir,
    install: JvmInstall,
    child: Mutex<Option<JvmProcess>>,
    /// The HTTP port.
    pub port: u16,
    pub transport_port: u16,
    /// Extra node settings (`key=value`), e.g. a tiny write queue.
    settings: Vec<String>,
}

impl OpenSearchNode {
    /// Starts a node and waits (up to 180 s) until `GET /` answers 200.
    pub fn start() -> OpenSearchNode {
        OpenSearchNode::start_with(&[])
    }

    /// Starts a node with extra node settings, e.g.
    /// `[("thread_pool.write.queue_size", "1")]` for real back-pressure.
    pub fn start_with(settings: &[(&str, &str)]) -> OpenSearchNode {
        crate::retry_on_port_clash(|| {
            let [port, transport_port] = free_ports();
            let node = OpenSearchNode {
                dir: scratch_dir("pgfanout-opensearch-"),
                install: JvmInstall::find("opensearch"),
                child: Mutex::new(None),
                port,
                transport_port,
                settings: settings.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            };
            node.start_server();
            node
        })
    }

    /// One node for the whole test binary, started on first use and gone
    /// with the process. Tests share it: use distinct index names.
    pub fn shared() -> &'static OpenSearchNode {
        static SHARED: OnceLock<OpenSearchNode> = OnceLock::new();
        SHARED.get_or_init(OpenSearchNode::start)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts (or restarts after [`stop`](Self::stop)) the node on the same
    /// ports and data.
    pub fn start_server(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if child.is_some() {
            return;
        }
        let jvm_args: Vec<String> = [
            "-Xms256m",
            "-Xmx512m",
            "-XX:+UseSerialGC",
            "-Dio.netty.noUnsafe=true",
            "-Dio.netty.noKeySetOptimization=true",
            "-Dio.netty.recycler.maxCapacityPerThread=0",
            "-Dlog4j.shutdownHookEnabled=false",
            "-Dlog4j2.disable.jmx=true",
            "-Djava.locale.providers=SPI,COMPAT",
            "-Djava.awt.headless=true",
            "-Dfile.encoding=UTF-8",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("-Dpgfanout.log4j2={}", self.install.conf("log4j2.properties").display())])
        .collect();
        let home = self.dir.path().join("home");
        let mut p = JvmProcess::spawn(
            "opensearch",
            &self.install,
            &jvm_args,
            "pgfanout.testkit.OpenSearchMain",
            &[home.display().to_string(), self.port.to_string(), self.transport_port.to_string()]
                .into_iter()
                .chain(self.settings.iter().cloned())
                .collect::<Vec<_>>(),
            &self.dir.path().join("opensearch.log"),
            Some(self.dir.path()),
        );
        let port = self.port;
        p.wait_until(Duration::from_secs(180), "READY and GET / = 200", |out| out.contains("READY") && http_status(port, "/") == Some(200));
        *child = Some(p);
    }

    /// Stops the node gracefully (SIGTERM, ~2 s; SIGKILL after 60 s) and
    /// waits until the port is closed.
    pub fn stop(&self) {
        if let Some(mut c) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            c.terminate(Duration::from_secs(60));
        }
        wait_port_closed(self.port, Duration::from_secs(10));
    }

    /// The JVM's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(JvmProcess::pid)
    }

    /// The node's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("opensearch.log")).unwrap_or_default()
    }
}

impl Drop for OpenSearchNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            c.kill();
        }
    }
}
