//! Debezium's PostgreSQL connector (3.6.1.Final, in its embedded engine)
//! writing its change events to a Kafka broker, as a Kafka Connect worker
//! would: `testkit/jvm/debezium/src/DebeziumMain.java`, installed by
//! `scripts/install-jvm-servers.sh debezium`. The topics are
//! `<topic.prefix>.<schema>.<table>`; keys and values are the
//! JsonConverter's text (with or without schemas); offsets are kept in a file
//! in the slot's directory, so a restart resumes where the last flushed batch
//! ended.

use std::time::Duration;

use crate::jvm::JvmInstall;
use crate::process::{Server, ServerSlot};
use crate::{free_port, PgCluster};

/// A running Debezium engine.
pub struct Debezium {
    slot: ServerSlot,
    install: JvmInstall,
    properties: String,
    /// JVM options in place of `conf/jvm.options` (the tests' small heap,
    /// serial GC and C1 only, chosen for fast starts).
    jvm_options: Option<Vec<String>>,
}

/// The JVM options of a Kafka Connect worker as Kafka's scripts start one
/// (`connect-distributed.sh`: `-Xms256M -Xmx2G`; `kafka-run-class.sh`: G1
/// with 20 ms pauses): what the benchmark runs Debezium with.
pub const CONNECT_WORKER_JVM: &[&str] = &[
    "-Xms256M",
    "-Xmx2G",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
    "-Djava.net.preferIPv4Stack=true",
];

impl Debezium {
    /// Starts Debezium on `db` of `pg` (user `postgres`, no password),
    /// producing to `bootstrap`, with the engine `properties` given after
    /// the defaults (so they win): `topic.prefix`, `slot.name` and
    /// `publication.name` are the test's to choose, e.g.
    /// `[("topic.prefix", "dbz"), ("slot.name", "dbz"), ("converter.schemas.enable", "true")]`.
    /// Waits (up to 120 s) until the connector streams: everything committed
    /// after this returns is captured (the initial snapshot, `snapshot.mode`
    /// `initial` by default, captures what was there before).
    pub fn start(pg: &PgCluster, db: &str, bootstrap: &str, properties: &[(&str, &str)]) -> Debezium {
        Debezium::start_with_jvm(pg, db, bootstrap, properties, None)
    }

    /// [`start`](Self::start) with `jvm_options` in place of the tests'
    /// (e.g. [`CONNECT_WORKER_JVM`]).
    pub fn start_with_jvm(
        pg: &PgCluster,
        db: &str,
        bootstrap: &str,
        properties: &[(&str, &str)],
        jvm_options: Option<&[&str]>,
    ) -> Debezium {
        let slot = ServerSlot::new("debezium", free_port());
        let offsets = slot.dir().join("offsets.dat");
        let mut props = vec![
            ("name".to_string(), "pgfanout-testkit-debezium".to_string()),
            ("connector.class".into(), "io.debezium.connector.postgresql.PostgresConnector".into()),
            ("offset.storage".into(), "org.apache.kafka.connect.storage.FileOffsetBackingStore".into()),
            ("offset.storage.file.filename".into(), offsets.display().to_string()),
            ("offset.flush.interval.ms".into(), "500".into()),
            ("database.hostname".into(), "127.0.0.1".into()),
            ("database.port".into(), pg.port.to_string()),
            ("database.user".into(), "postgres".into()),
            ("database.password".into(), "postgres".into()),
            ("database.dbname".into(), db.to_string()),
            ("plugin.name".into(), "pgoutput".into()),
            ("publication.autocreate.mode".into(), "all_tables".into()),
            ("status.update.interval.ms".into(), "500".into()),
            ("kafka.bootstrap.servers".into(), bootstrap.to_string()),
        ];
        for (k, v) in properties {
            props.retain(|(key, _)| key != k);
            props.push((k.to_string(), v.to_string()));
        }
        let mut text = String::new();
        for (k, v) in &props {
            // java.util.Properties: backslashes escaped
            text.push_str(&format!("{k}={}\n", v.replace('\\', "\\\\")));
        }
        let jvm_options = jvm_options.map(|o| o.iter().map(|s| s.to_string()).collect());
        let d = Debezium { slot, install: JvmInstall::find("debezium"), properties: text, jvm_options };
        d.start_server();
        d
    }
}

impl Server for Debezium {
    fn slot(&self) -> &ServerSlot {
        &self.slot
    }

    fn start_server(&self) {
        self.slot.start(|| {
            let file = self.slot.dir().join("engine.properties");
            std::fs::write(&file, &self.properties).expect("write engine.properties");
            let log4j2 = format!("-Dlog4j2.configurationFile={}", self.install.conf("log4j2.properties").display());
            let options = self.jvm_options.clone().unwrap_or_else(|| self.install.jvm_options());
            let mut p = self.install.spawn_with_options(
                options,
                &self.slot,
                &self.install.classpath(),
                &[log4j2],
                "pgfanout.testkit.DebeziumMain",
                &[file.display().to_string()],
            );
            p.wait_until(Duration::from_secs(120), "Debezium streams changes", |log| log.contains("Processing messages"));
            p
        });
    }
}
