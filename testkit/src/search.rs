//! One launcher for the two search engines the tests run: Elasticsearch 8
//! ([`crate::ElasticsearchNode`]) and OpenSearch 2 ([`crate::OpenSearchNode`]).
//!
//! The two are started the same way: one node under a small launcher class
//! of ours (`testkit/jvm/<engine>/src`), HTTP and transport on two free
//! loopback ports, `discovery.type=single-node`, no security (plain HTTP, no
//! auth), new indexes without replicas (green); ready when the launcher has
//! printed `READY` and `GET /` answers 200. What differs is an [`Engine`]:
//! the launcher class, a few JVM options, and whether the server's jars go
//! on the module path (Elasticsearch) or the class path (OpenSearch).

use std::marker::PhantomData;
use std::sync::OnceLock;
use std::time::Duration;

use crate::free_ports;
use crate::jvm::{http_status, JvmInstall};
use crate::process::ServerSlot;

/// A search engine: its [`Launcher`] and the node the tests of one binary
/// share.
pub trait Engine: Sized + Send + Sync + 'static {
    /// How its node is launched.
    const LAUNCHER: Launcher;

    /// The cell of [`SearchNode::shared`] (a `static` of the engine's own).
    fn shared_cell() -> &'static OnceLock<SearchNode<Self>>;
}

/// What one search engine's node needs that the other's does not.
pub struct Launcher {
    /// The server's directory in the JVM cache, its scratch directory's
    /// prefix and its log's name.
    pub name: &'static str,
    /// The launcher class: `<main> <home> <http port> <transport port> [...]`.
    pub main: &'static str,
    /// JVM options after those both engines take.
    pub jvm_options: &'static [&'static str],
    /// The server on the module path (`--module-path lib`), and the modules
    /// directory as the launcher's fourth argument (Elasticsearch); else
    /// everything on the class path.
    pub module_path: bool,
}

/// JVM options for either engine (heap, serial GC, Netty and log4j tuned
/// down for a test node).
const JVM_OPTIONS: [&str; 10] = [
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-Dio.netty.noUnsafe=true",
    "-Dio.netty.noKeySetOptimization=true",
    "-Dio.netty.recycler.maxCapacityPerThread=0",
    "-Dlog4j.shutdownHookEnabled=false",
    "-Dlog4j2.disable.jmx=true",
    "-Djava.awt.headless=true",
    "-Dfile.encoding=UTF-8",
];

/// A running search node of engine `E`; killed on drop and its directory
/// removed.
pub struct SearchNode<E> {
    engine: PhantomData<E>,
    slot: ServerSlot,
    install: JvmInstall,
    /// Extra node settings (`key=value`), passed after the ports.
    settings: Vec<String>,
    /// The HTTP port.
    pub port: u16,
    pub transport_port: u16,
}

impl<E: Engine> SearchNode<E> {
    /// Starts a node and waits (up to 180 s) until `GET /` answers 200.
    pub fn start() -> SearchNode<E> {
        SearchNode::start_with(&[])
    }

    /// Starts a node with extra node settings (given to the launcher as
    /// `key=value` after the ports; OpenSearch's launcher applies them), e.g.
    /// `[("thread_pool.write.queue_size", "1")]` for real back-pressure.
    pub fn start_with(settings: &[(&str, &str)]) -> SearchNode<E> {
        let name = E::LAUNCHER.name;
        crate::retry_on_port_clash(|| {
            let [port, transport_port] = free_ports();
            let node = SearchNode {
                engine: PhantomData,
                slot: ServerSlot::new(name),
                install: JvmInstall::find(name),
                settings: settings.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                port,
                transport_port,
            };
            node.start_server();
            node
        })
    }

    /// One node for the whole test binary, started on first use and gone
    /// with the process. Tests share it: use distinct index names.
    pub fn shared() -> &'static SearchNode<E> {
        E::shared_cell().get_or_init(SearchNode::start)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts (or restarts after [`stop`](Self::stop)) the node on the same
    /// ports and data.
    pub fn start_server(&self) {
        self.slot.start(|| {
            let (install, engine) = (&self.install, &E::LAUNCHER);
            let mut jvm_args: Vec<String> = JVM_OPTIONS.iter().chain(engine.jvm_options).map(|s| s.to_string()).collect();
            let home = self.slot.dir().join("home");
            let mut args = vec![home.display().to_string(), self.port.to_string(), self.transport_port.to_string()];
            let classpath = if engine.module_path {
                jvm_args.push("--add-modules=ALL-MODULE-PATH".into());
                jvm_args.push(format!("--module-path={}", install.dir.join("lib").display()));
                args.push(install.dir.join("modules").display().to_string());
                install.dir.join("classes").display().to_string()
            } else {
                install.classpath()
            };
            jvm_args.push(format!("-Dpgfanout.log4j2={}", install.conf("log4j2.properties").display()));
            args.extend(self.settings.iter().cloned());
            let mut p = install.spawn(&self.slot, &classpath, &jvm_args, engine.main, &args);
            let port = self.port;
            p.wait_until(Duration::from_secs(180), "READY and GET / = 200", |out| {
                out.contains("READY") && http_status(port, "/") == Some(200)
            });
            p
        });
    }

    /// Stops the node gracefully (SIGTERM, ~0.5-2 s; SIGKILL after 60 s) and
    /// waits until the port is closed.
    pub fn stop(&self) {
        self.slot.stop(self.port);
    }

    /// The JVM's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.slot.pid()
    }

    /// The node's log so far (for failure messages).
    pub fn log(&self) -> String {
        self.slot.log()
    }
}
