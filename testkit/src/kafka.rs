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
}

impl KafkaBroker {
    /// Starts a broker and waits (up to 120 s) until it serves clients.
    pub fn start() -> KafkaBroker {
        crate::retry_on_port_clash(|| {
            let [port, controller_port] = free_ports();
            KafkaBroker { slot: ServerSlot::new("kafka", port), port, controller_port, install: JvmInstall::find("kafka") }.started()
        })
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
