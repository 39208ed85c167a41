//! An ephemeral Elasticsearch 8 node on a free loopback port.
//!
//! Elasticsearch 8.19 from the artifacts Elastic publishes on Maven Central
//! (`org.elasticsearch:elasticsearch` and the `transport-netty4` module,
//! installed by `scripts/install-jvm-servers.sh`), run by the launcher
//! `pgfanout.testkit.ElasticsearchMain` with the server on the module path:
//! one node, `discovery.type=single-node`, HTTP and transport on 127.0.0.1,
//! no X-Pack (no security: plain HTTP, no auth), new indexes without
//! replicas (green).
//!
//! Not there, because Elastic does not publish those modules on Maven
//! Central: painless scripts (`lang-painless`), the extra analyzers of
//! `analysis-common`, reindex, X-Pack. `GET /` (the unpublished `rest-root`
//! module) is served by a small module of ours built at install time
//! (`testkit/jvm/elasticsearch/plugin`). The document, `_bulk`, search,
//! mapping and index APIs are in the server and work.
//!
//! Start: ~3-5 s, RSS ~300 MB (`-Xmx512m`).

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::jvm::{http_status, wait_port_closed, JvmInstall, JvmProcess};
use crate::{free_ports, scratch_dir};

/// A running Elasticsearch node; killed on drop and its directory removed.
pub struct ElasticsearchNode {
    dir: tempfile::TempDir,
    install: JvmInstall,
    child: Mutex<Option<JvmProcess>>,
    /// The HTTP port.
    pub port: u16,
    pub transport_port: u16,
}

impl ElasticsearchNode {
    /// Starts a node and waits (up to 180 s) until `GET /` answers 200.
    pub fn start() -> ElasticsearchNode {
        crate::retry_on_port_clash(|| {
            let [port, transport_port] = free_ports();
            let node = ElasticsearchNode {
                dir: scratch_dir("pgfanout-elasticsearch-"),
                install: JvmInstall::find("elasticsearch"),
                child: Mutex::new(None),
                port,
                transport_port,
            };
            node.start_server();
            node
        })
    }

    /// One node for the whole test binary, started on first use and gone
    /// with the process. Tests share it: use distinct index names.
    pub fn shared() -> &'static ElasticsearchNode {
        static SHARED: OnceLock<ElasticsearchNode> = OnceLock::new();
        SHARED.get_or_init(ElasticsearchNode::start)
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
        let lib = self.install.dir.join("lib");
        let jvm_args: Vec<String> = [
            "-Xms256m",
            "-Xmx512m",
            "-XX:+UseSerialGC",
            "-Dio.netty.noUnsafe=true",
            "-Dio.netty.noKeySetOptimization=true",
            "-Dio.netty.recycler.maxCapacityPerThread=0",
            "-Dlog4j.shutdownHookEnabled=false",
            "-Dlog4j2.disable.jmx=true",
            "-Dlog4j2.formatMsgNoLookups=true",
            "-Djava.locale.providers=CLDR",
            "-Djava.awt.headless=true",
            "-Dfile.encoding=UTF-8",
            "--add-modules=ALL-MODULE-PATH",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            format!("--module-path={}", lib.display()),
            format!("-Dpgfanout.log4j2={}", self.install.conf("log4j2.properties").display()),
        ])
        .collect();
        let home = self.dir.path().join("home");
        let modules = self.install.dir.join("modules");
        let classes = self.install.dir.join("classes").display().to_string();
        let mut p = JvmProcess::spawn_with_classpath(
            "elasticsearch",
            &self.install,
            &classes,
            &jvm_args,
            "pgfanout.testkit.ElasticsearchMain",
            &[home.display().to_string(), self.port.to_string(), self.transport_port.to_string(), modules.display().to_string()],
            &self.dir.path().join("elasticsearch.log"),
            Some(self.dir.path()),
        );
        let port = self.port;
        p.wait_until(Duration::from_secs(180), "READY and GET / = 200", |out| out.contains("READY") && http_status(port, "/") == Some(200));
        *child = Some(p);
    }

    /// Stops the node gracefully (SIGTERM; SIGKILL after 60 s) and waits
    /// until the port is closed.
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
        std::fs::read_to_string(self.dir.path().join("elasticsearch.log")).unwrap_or_default()
    }
}

impl Drop for ElasticsearchNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            c.kill();
        }
    }
}
