//! One launcher for the two search engines the tests run: Elasticsearch 8
//! ([`crate::ElasticsearchNode`]) and OpenSearch 2 ([`crate::OpenSearchNode`]).
//!
//! The two are started the same way: one node under a small launcher class
//! of ours (`testkit/jvm/<engine>/src`), HTTP and transport on two free
//! loopback ports, `discovery.type=single-node`, no security plugin (no
//! auth), new indexes without replicas (green); ready when the launcher has
//! printed `READY` and `GET /` answers 200. OpenSearch can also serve HTTPS
//! ([`SearchNode::start_tls`]). What differs is an [`Engine`]:
//! the launcher class, a few JVM options, and whether the server's jars go
//! on the module path (Elasticsearch) or the class path (OpenSearch).

use std::marker::PhantomData;
use std::time::Duration;

use crate::free_ports;
use crate::jvm::{http_status, JvmInstall};
use crate::process::{Server, ServerSlot};

/// A search engine: how its node is launched.
pub trait Engine: Sized + Send + Sync + 'static {
    const LAUNCHER: Launcher;
}

/// What one search engine's node needs that the other's does not.
pub struct Launcher {
    /// The server's directory in the JVM cache, its scratch directory's
    /// prefix and its log's name.
    pub name: &'static str,
    /// The launcher class: `<main> <home> <http port> <transport port> [...]`.
    pub main: &'static str,
    /// The server on the module path (`--module-path lib`), and the modules
    /// directory as the launcher's fourth argument (Elasticsearch); else
    /// everything on the class path.
    pub module_path: bool,
}

/// A running search node of engine `E`; killed on drop and its directory
/// removed. [`Server`]: stop (SIGTERM, ~0.5-2 s), kill, pid, log. Its JVM
/// options are `testkit/jvm/<engine>/conf/jvm.options`.
pub struct SearchNode<E> {
    engine: PhantomData<E>,
    slot: ServerSlot,
    install: JvmInstall,
    /// Extra node settings (`key=value`), passed after the ports.
    settings: Vec<String>,
    /// HTTPS instead of HTTP ([`SearchNode::start_tls`]); `tls.port` is the
    /// HTTP port.
    pub tls: Option<crate::redis::Tls>,
    /// With `tls`: a client certificate signed by `tls.certs.ca_file` is
    /// required.
    client_auth: bool,
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
    /// `key=value` after its other arguments; they win over the defaults), e.g.
    /// `[("thread_pool.write.queue_size", "1")]` for real back-pressure.
    pub fn start_with(settings: &[(&str, &str)]) -> SearchNode<E> {
        SearchNode::launch(settings, None)
    }

    /// A node whose HTTP layer speaks only HTTPS (OpenSearch's own
    /// `SecureNetty4HttpServerTransport`, given an SSL engine by the
    /// launcher, where the security plugin would give one), with a
    /// certificate for `localhost` and 127.0.0.1 signed by
    /// `tls.certs.ca_file` ([`crate::make_certificates`]). It listens on
    /// 127.0.0.2 too (not in the certificate, for the hostname check). With
    /// `client_auth`, a client certificate signed by that CA is required
    /// (the server's own `cert_file`/`key_file` will do). OpenSearch only:
    /// Elasticsearch's TLS is in x-pack, which Maven Central does not have.
    pub fn start_tls(client_auth: bool) -> SearchNode<E> {
        SearchNode::launch(&[("http.bind_host", "127.0.0.1,127.0.0.2"), ("http.publish_host", "127.0.0.1")], Some(client_auth))
    }

    fn launch(settings: &[(&str, &str)], tls: Option<bool>) -> SearchNode<E> {
        let name = E::LAUNCHER.name;
        crate::retry_on_port_clash(|| {
            let [port, transport_port] = free_ports();
            let slot = ServerSlot::new(name, port);
            let certs = tls.map(|_| {
                let certs = crate::make_certificates(slot.dir());
                certs.pkcs12();
                crate::redis::Tls { port, certs }
            });
            let node = SearchNode {
                engine: PhantomData,
                slot,
                install: JvmInstall::find(name),
                settings: settings.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                tls: certs,
                client_auth: tls == Some(true),
                port,
                transport_port,
            };
            node.started()
        })
    }

    /// One node for the whole test binary, started on first use and gone
    /// with the process. Tests share it: use distinct index names.
    pub fn shared() -> &'static SearchNode<E> {
        crate::process::shared(SearchNode::start)
    }

    /// `http://127.0.0.1:<port>`, or `https://localhost:<port>` with TLS.
    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("https://localhost:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }
}

impl<E: Engine> Server for SearchNode<E> {
    fn slot(&self) -> &ServerSlot {
        &self.slot
    }

    fn start_server(&self) {
        self.slot.start(|| {
            let (install, engine) = (&self.install, &E::LAUNCHER);
            let mut jvm_args = Vec::new();
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
            if let Some(tls) = &self.tls {
                let dir = self.slot.dir();
                jvm_args.push(format!("-Dpgfanout.tls.keystore={}", dir.join("server.p12").display()));
                if self.client_auth {
                    jvm_args.push(format!("-Dpgfanout.tls.client_ca={}", tls.certs.ca_file.display()));
                }
            }
            args.extend(self.settings.iter().cloned());
            let mut p = install.spawn(&self.slot, &classpath, &jvm_args, engine.main, &args);
            let (port, plain) = (self.port, self.tls.is_none());
            // READY comes after the cluster is yellow; over HTTPS that is the check
            p.wait_until(Duration::from_secs(180), "READY and GET / = 200", |out| {
                out.contains("READY") && (!plain || http_status(port, "/") == Some(200))
            });
            p
        });
    }
}
