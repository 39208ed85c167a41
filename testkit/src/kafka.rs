//! An ephemeral Apache Kafka broker on a free loopback port.
//!
//! Apache Kafka 4.4 (`org.apache.kafka:kafka_2.13`, installed by
//! `scripts/install-jvm-servers.sh`) in KRaft combined mode: one process is
//! broker and controller. The log directory is formatted on first start
//! (`kafka-storage format`, done by the launcher `pgfanout.testkit.KafkaMain`
//! in the same JVM) and kept on disk, so [`KafkaBroker::stop`] followed by
//! [`KafkaBroker::start_server`] brings back the same broker, on the same
//! ports, with every acknowledged message. Transactions work (the
//! transaction and offsets topics have replication factor 1).
//!
//! Start: ~4 s, RSS ~330 MB (`-Xmx384m`).

use std::time::Duration;

use crate::free_ports;
use crate::jvm::JvmInstall;
use crate::process::{Server, ServerSlot};

/// A running Kafka broker on a free loopback port; killed on drop, its
/// directory removed. [`Server`]: stop (a controlled shutdown that flushes
/// and closes the logs, ~3 s), kill (acknowledged messages are in the OS
/// page cache and survive; the logs are recovered on the next start), pid,
/// log.
pub struct KafkaBroker {
    slot: ServerSlot,
    pub port: u16,
    controller_port: u16,
    install: JvmInstall,
    /// A second listener with TLS and SASL ([`KafkaBroker::start_secured`]).
    pub secured: Option<Secured>,
    /// A second plaintext listener for clients behind a proxy
    /// ([`KafkaBroker::start_behind`]).
    pub behind: Option<Behind>,
}

/// The `PROXIED` listener of a [`KafkaBroker::start_behind`] broker: it
/// listens on `port` and tells its clients that the broker is at
/// `127.0.0.1:<proxy_port>` (the proxy, forwarding to `port`), so that
/// everything a client bootstrapped through the proxy sends goes through
/// it. Clients of the plain listener ([`KafkaBroker::bootstrap`]) reach the
/// broker directly.
#[derive(Debug, Clone, Copy)]
pub struct Behind {
    pub port: u16,
    pub proxy_port: u16,
}

/// The `SASL_SSL` listener of a [`KafkaBroker::start_secured`] broker:
/// TLS with a certificate for `localhost` and 127.0.0.1 signed by a CA made
/// for it, SASL with SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN for
/// [`SASL_USER`] / [`SASL_PASSWORD`].
#[derive(Debug, Clone)]
pub struct Secured {
    pub port: u16,
    /// The CA that signed the broker's certificate (PEM).
    pub ca_file: std::path::PathBuf,
    /// Another CA, which signed nothing the broker has (PEM).
    pub other_ca_file: std::path::PathBuf,
}

/// The SASL user of a secured broker.
pub const SASL_USER: &str = "alice";
/// Its password.
pub const SASL_PASSWORD: &str = "alice-secret";

/// The listener a broker has beside its plaintext one.
#[derive(Clone, Copy)]
enum Extra {
    None,
    Secured,
    /// Behind a proxy on this port.
    Behind(u16),
}

impl KafkaBroker {
    /// Starts a broker and waits (up to 120 s) until it serves clients.
    pub fn start() -> KafkaBroker {
        KafkaBroker::launch(Extra::None)
    }

    /// A broker with, beside its plaintext listener, a `SASL_SSL` one
    /// ([`Secured`]; certificates made with `openssl` in its directory).
    pub fn start_secured() -> KafkaBroker {
        KafkaBroker::launch(Extra::Secured)
    }

    /// A broker with, beside its plaintext listener, a [`Behind`] one
    /// advertising `127.0.0.1:<proxy_port>`: put a proxy from `proxy_port`
    /// to `behind.port` (e.g. `Toxiproxy::link_on`) and bootstrap clients
    /// at the proxy.
    pub fn start_behind(proxy_port: u16) -> KafkaBroker {
        KafkaBroker::launch(Extra::Behind(proxy_port))
    }

    /// Free ports for the broker, its controller and the extra listener,
    /// then start (again on a port clash).
    fn launch(extra: Extra) -> KafkaBroker {
        crate::retry_on_port_clash(|| {
            let [port, controller_port, extra_port] = free_ports();
            let slot = ServerSlot::new("kafka", port);
            let (secured, behind) = match extra {
                Extra::None => (None, None),
                Extra::Secured => (Some(make_certificates(slot.dir(), extra_port)), None),
                Extra::Behind(proxy_port) => (None, Some(Behind { port: extra_port, proxy_port })),
            };
            KafkaBroker { slot, port, controller_port, install: JvmInstall::find("kafka"), secured, behind }.started()
        })
    }

    /// `localhost:<port>` of the secured listener (the name its
    /// certificate is for).
    pub fn secured_bootstrap(&self) -> String {
        format!("localhost:{}", self.secured.as_ref().expect("a secured broker").port)
    }

    /// One broker for the whole test binary, started on first use and gone
    /// with the process (the launcher's stdin watchdog). Topics and groups of
    /// other tests are visible: use unique names.
    pub fn shared() -> &'static KafkaBroker {
        crate::process::shared(KafkaBroker::start)
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn write_config(&self) {
        let (p, c) = (self.port, self.controller_port);
        let data = self.slot.dir().join("data");
        let props = format!(
            "process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{c}
listeners=PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}
advertised.listeners=PLAINTEXT://127.0.0.1:{p}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.check.interval.ms=3600000
",
            data = data.display()
        );
        let mut props = props;
        if let Some(sec) = &self.secured {
            let dir = self.slot.dir();
            props = props
                .replace(
                    &format!("CONTROLLER://127.0.0.1:{c}\n"),
                    &format!("CONTROLLER://127.0.0.1:{c},SASL_SSL://127.0.0.1:{}\n", sec.port),
                )
                .replace(
                    &format!("advertised.listeners=PLAINTEXT://127.0.0.1:{p}\n"),
                    &format!("advertised.listeners=PLAINTEXT://127.0.0.1:{p},SASL_SSL://localhost:{}\n", sec.port),
                )
                .replace("PLAINTEXT:PLAINTEXT\n", "PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL\n");
            props.push_str(&format!(
                "sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256,PLAIN
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_{SASL_USER}=\"{SASL_PASSWORD}\";
ssl.keystore.type=PKCS12
ssl.keystore.location={keystore}
ssl.keystore.password=changeit
ssl.key.password=changeit
pgfanout.testkit.add.scram=SCRAM-SHA-512=[name={SASL_USER},password={SASL_PASSWORD}];SCRAM-SHA-256=[name={SASL_USER},password={SASL_PASSWORD}]
",
                keystore = dir.join("server.p12").display()
            ));
        }
        if let Some(b) = self.behind {
            props = props
                .replace(&format!("CONTROLLER://127.0.0.1:{c}\n"), &format!("CONTROLLER://127.0.0.1:{c},PROXIED://127.0.0.1:{}\n", b.port))
                .replace(
                    &format!("advertised.listeners=PLAINTEXT://127.0.0.1:{p}\n"),
                    &format!("advertised.listeners=PLAINTEXT://127.0.0.1:{p},PROXIED://127.0.0.1:{}\n", b.proxy_port),
                )
                .replace("PLAINTEXT:PLAINTEXT\n", "PLAINTEXT:PLAINTEXT,PROXIED:PLAINTEXT\n");
        }
        std::fs::write(self.slot.dir().join("server.properties"), props).expect("write server.properties");
    }
}

impl Server for KafkaBroker {
    fn slot(&self) -> &ServerSlot {
        &self.slot
    }

    fn start_server(&self) {
        self.slot.start(|| {
            self.write_config();
            let log4j2 = format!("-Dlog4j2.configurationFile={}", self.install.conf("log4j2.properties").display());
            let props = self.slot.dir().join("server.properties").display().to_string();
            let mut p = self.install.spawn(&self.slot, &self.install.classpath(), &[log4j2], "pgfanout.testkit.KafkaMain", &[props]);
            p.wait_ready(Duration::from_secs(120), self.port, "Kafka Server started");
            p
        });
    }
}

/// Makes, in `dir`, a CA and a broker certificate for `localhost` and
/// 127.0.0.1 signed by it (`server.p12`, password `changeit`), and a second
/// CA that signed nothing ([`crate::tls::make_certificates`]).
fn make_certificates(dir: &std::path::Path, port: u16) -> Secured {
    let certs = crate::tls::make_certificates(dir);
    certs.pkcs12();
    Secured { port, ca_file: certs.ca_file, other_ca_file: certs.other_ca_file }
}
