//! Broken configurations: each must be rejected with exit code 2 and an
//! error that names the file and the dotted path of the problem, without
//! ever echoing a secret. Checked twice: through `pgfanout::config` (fast,
//! exact) and through `pgfanout check -c FILE` (the exit code operators see).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use pgfanout::config::load_with_env;

const SOURCE: &str = "source:\n  postgres:\n    url: postgres://rep:pw@localhost/shop\n";
const SINKS: &str = "sinks:\n  audit: { type: file, path: a.jsonl }\n  cache: { type: redis, url: redis://localhost }\n";
const PIPELINE: &str = "pipelines:\n  - { name: p, from: public.users, to: audit }\n";

/// A configuration whose only pipelines are `pipelines` (YAML list items).
fn with_pipelines(pipelines: &str) -> String {
    format!("{SOURCE}{SINKS}pipelines:\n{pipelines}")
}

/// A configuration with `extra` appended (a section of its own).
fn with_section(extra: &str) -> String {
    format!("{SOURCE}{SINKS}{PIPELINE}{extra}")
}

/// A configuration with `fields` added under source.postgres.
fn with_source(fields: &str) -> String {
    format!("{SOURCE}{fields}{SINKS}{PIPELINE}")
}

struct Case {
    name: &'static str,
    yaml: String,
    env: &'static [(&'static str, &'static str)],
    /// A dotted path (or prefix) one error line must name.
    path: &'static str,
    /// More text that line must contain (what is expected).
    also: &'static str,
}

fn case(name: &'static str, yaml: String, path: &'static str, also: &'static str) -> Case {
    Case { name, yaml, env: &[], path, also }
}

fn cases() -> Vec<Case> {
    vec![
        // unknown fields, at every level
        case("unknown section", with_section("extras: 1\n"), "extras", "unknown section"),
        case("unknown source field", with_source("    slott: x\n"), "source.postgres.slott", "unknown field"),
        case("unknown tls field", with_source("    tls: { ca: x }\n"), "source.postgres.tls.ca", "unknown field"),
        case(
            "kafka source without topics",
            format!("{SOURCE}  kafka: {{ brokers: \"k:9092\", topics: [] }}\n{SINKS}{PIPELINE}"),
            "source.kafka.topics",
            "at least one topic",
        ),
        case(
            "kafka source with ha",
            format!("{SOURCE}  kafka: {{ brokers: \"k:9092\", topics: [cdc] }}\n{SINKS}{PIPELINE}ha: {{ enabled: true }}\n"),
            "ha.enabled",
            "consumer group",
        ),
        case(
            "kafka source unknown field",
            format!("{SOURCE}  kafka: {{ brokers: \"k:9092\", topics: [cdc], groupid: x }}\n{SINKS}{PIPELINE}"),
            "source.kafka.groupid",
            "unknown field",
        ),
        case("receive buffer too small", with_source("    receive_buffer: 1KiB\n"), "source.postgres.receive_buffer", "at least 4KiB"),
        case("receive buffer not a size", with_source("    receive_buffer: small\n"), "source.postgres.receive_buffer", "auto, kernel"),
        case(
            "unknown file sink field",
            format!("{SOURCE}sinks:\n  audit: {{ type: file, path: a, mode: x }}\n{PIPELINE}"),
            "sinks.audit.mode",
            "unknown field",
        ),
        case(
            "unknown pipeline field",
            with_pipelines("  - { name: p, from: users, to: audit, form: users }\n"),
            "pipelines[0].form",
            "unknown field",
        ),
        case("unknown http field", with_section("http: { lissen: 1.2.3.4:5 }\n"), "http.lissen", "unknown field"),
        case("unknown runtime field", with_section("runtime: { batchsize: 5 }\n"), "runtime.batchsize", "unknown field"),
        case("unknown dead_letter field", with_section("dead_letter: { file: x }\n"), "dead_letter.file", "unknown field"),
        case(
            "unknown mask field",
            with_pipelines("  - { name: p, from: users, to: audit, transforms: [ { mask: { columns: [a], width: 3 } } ] }\n"),
            "pipelines[0].transforms[0].mask",
            "width",
        ),
        // sinks
        case("unknown sink", with_pipelines("  - { name: p, from: users, to: nope }\n"), "pipelines[0].to", "defined sinks: audit, cache"),
        case("unknown sink type", format!("{SOURCE}sinks:\n  audit: {{ type: mongo }}\n{PIPELINE}"), "sinks.audit.type", "elasticsearch"),
        case("missing sink type", format!("{SOURCE}sinks:\n  audit: {{ path: a }}\n{PIPELINE}"), "sinks.audit.type", "missing"),
        case(
            "bad sink name",
            format!("{SOURCE}sinks:\n  \"au dit\": {{ type: file, path: a }}\n{PIPELINE}"),
            "sinks.au dit",
            "not a valid sink name",
        ),
        case("missing sinks", format!("{SOURCE}{PIPELINE}"), "sinks", "missing"),
        // pipelines
        case(
            "duplicate pipeline name",
            with_pipelines("  - { name: p, from: users, to: audit }\n  - { name: p, from: orders, to: audit }\n"),
            "pipelines[1].name",
            "duplicate",
        ),
        case("no pipelines", format!("{SOURCE}{SINKS}pipelines: []\n"), "pipelines", "at least one"),
        case("missing to", with_pipelines("  - { name: p, from: users }\n"), "pipelines[0].to", "missing"),
        case(
            "bad from pattern",
            with_pipelines("  - { name: p, from: [users, a.b.c], to: audit }\n"),
            "pipelines[0].from[1]",
            "schema.table",
        ),
        case("bare star", with_pipelines("  - { name: p, from: \"*\", to: audit }\n"), "pipelines[0].from", "public.*"),
        case(
            "bad op",
            with_pipelines("  - { name: p, from: users, to: audit, ops: [insert, upsert] }\n"),
            "pipelines[0].ops[1]",
            "insert, update, delete",
        ),
        case("empty ops", with_pipelines("  - { name: p, from: users, to: audit, ops: [] }\n"), "pipelines[0].ops", "at least one"),
        case(
            "mapping for another sink type",
            with_pipelines("  - { name: p, from: users, to: audit, redis: { key: \"u:{id}\" } }\n"),
            "pipelines[0].redis",
            "file sink",
        ),
        case(
            "second mapping section",
            with_pipelines("  - { name: p, from: users, to: cache, redis: { key: \"u:{id}\" }, kafka: { topic: t } }\n"),
            "pipelines[0].kafka",
            "redis sink",
        ),
        // templates
        case(
            "template with unclosed brace",
            with_pipelines("  - { name: p, from: users, to: cache, redis: { type: hash, key: \"user:{id\" } }\n"),
            "pipelines[0].redis.key",
            "unclosed",
        ),
        case(
            "template with bad column name",
            with_pipelines(
                "  - { name: p, from: users, to: cache, redis: { type: hash, key: \"u\", field: \"{a;b}\", value: \"{v}\" } }\n",
            ),
            "pipelines[0].redis.field",
            "not a column name",
        ),
        case(
            "empty template placeholder",
            with_pipelines("  - { name: p, from: users, to: cache, redis: { type: hash, key: \"u:{}\" } }\n"),
            "pipelines[0].redis.key",
            "empty placeholder",
        ),
        // expressions
        case(
            "bad CEL",
            with_pipelines("  - { name: p, from: users, to: audit, filter: \"after.quantity >\" }\n"),
            "pipelines[0].filter",
            "invalid CEL",
        ),
        case(
            "non-bool CEL",
            with_pipelines("  - { name: p, from: users, to: audit, filter: \"1 + 2\" }\n"),
            "pipelines[0].filter",
            "expected a bool",
        ),
        case(
            "unknown CEL variable",
            with_pipelines("  - { name: p, from: users, to: audit, filter: \"afterr.quantity > 0\" }\n"),
            "pipelines[0].filter",
            "afterr",
        ),
        case(
            "bad CEL in set",
            with_pipelines("  - { name: p, from: users, to: audit, transforms: [ { set: { total: \"after.a *\" } } ] }\n"),
            "pipelines[0].transforms[0].set.total",
            "invalid CEL",
        ),
        // transforms
        case(
            "unknown transform",
            with_pipelines("  - { name: p, from: users, to: audit, transforms: [ { explode: [a] } ] }\n"),
            "pipelines[0].transforms[0]",
            "keep, drop, rename",
        ),
        case(
            "empty column name",
            with_pipelines("  - { name: p, from: users, to: audit, transforms: [ { drop: [\"\"] } ] }\n"),
            "pipelines[0].transforms[0].drop[0]",
            "column name",
        ),
        case(
            "rename collision",
            with_pipelines("  - { name: p, from: users, to: audit, transforms: [ { rename: { a: c, b: c } } ] }\n"),
            "pipelines[0].transforms[0].rename.b",
            "both renamed",
        ),
        case(
            "two transforms in one item",
            with_pipelines("  - { name: p, from: users, to: audit, transforms: [ { drop: [a], keep: [b] } ] }\n"),
            "pipelines[0].transforms[0]",
            "",
        ),
        // the document sink
        case(
            "mongodb+srv uri",
            format!(
                "{SOURCE}sinks:\n  docs: {{ type: mongodb, uri: \"mongodb+srv://h/\", database: shop }}\n{}",
                "pipelines:\n  - { name: p, from: users, to: docs, mongodb: { collection: profiles } }\n"
            ),
            "sinks.docs.uri",
            "list the hosts",
        ),
        case(
            "overlapping mongodb field paths",
            format!(
                "{SOURCE}sinks:\n  docs: {{ type: mongodb, uri: \"mongodb://h/\", database: shop }}\n{}",
                "pipelines:\n  - { name: p, from: users, to: docs, mongodb: { collection: profiles, fields: { a: addr, b: addr.city } } }\n"
            ),
            "pipelines[0].mongodb.fields",
            "overlap",
        ),
        // durations and sizes
        case("duration without unit", with_source("    status_interval: 10\n"), "source.postgres.status_interval", "like 10s"),
        case("bad heartbeat duration", with_source("    heartbeat_interval: soon\n"), "source.postgres.heartbeat_interval", "like 10s"),
        case(
            "bad shutdown duration",
            with_section("runtime: { shutdown_timeout: 5 parsecs }\n"),
            "runtime.shutdown_timeout",
            "invalid duration",
        ),
        case(
            "bad ttl in a mapping",
            with_pipelines("  - { name: p, from: users, to: cache, redis: { key: \"u:{id}\", ttl: 7 days please } }\n"),
            "pipelines[0].redis.ttl",
            "invalid duration",
        ),
        case("bad size", with_section("http: { ready_max_lag: 12 parsecs }\n"), "http.ready_max_lag", "64MiB"),
        case("negative size", with_section("http: { ready_max_lag: -5 }\n"), "http.ready_max_lag", "negative"),
        // environment
        Case {
            name: "missing env var",
            yaml: format!("source:\n  postgres:\n    url: postgres://rep:${{NOPE_PASSWORD}}@h/db\n{SINKS}{PIPELINE}"),
            env: &[],
            path: "source.postgres.url",
            also: "NOPE_PASSWORD is not set",
        },
        Case {
            name: "missing env var in a mapping",
            yaml: with_pipelines("  - { name: p, from: users, to: cache, redis: { key: \"${KEY_PREFIX}:{id}\" } }\n"),
            env: &[],
            path: "pipelines[0].redis.key",
            also: "KEY_PREFIX",
        },
        Case {
            name: "bad env override",
            yaml: with_source(""),
            env: &[("PGFANOUT__SOURCE__POSTGRES__SLOT", "Bad-Slot")],
            path: "source.postgres.slot",
            also: "lowercase",
        },
        case("unclosed interpolation", with_source("    publication: \"${PUB\"\n"), "source.postgres.publication", "unclosed"),
        // wrong types
        case("string for a list", with_pipelines("  - { name: p, from: users, to: audit, ops: insert }\n"), "pipelines[0].ops", "sequence"),
        case(
            "list for a string",
            format!("{SOURCE}sinks:\n  audit: {{ type: file, path: [a, b] }}\n{PIPELINE}"),
            "sinks.audit.path",
            "string",
        ),
        case("map for a string", with_pipelines("  - { name: p, from: users, to: { sink: audit } }\n"), "pipelines[0].to", ""),
        case("string for a number", with_section("runtime: { batch_size: lots }\n"), "runtime.batch_size", "integer"),
        case("map for a table list", with_pipelines("  - { name: p, from: { users: 1 }, to: audit }\n"), "pipelines[0].from", "table name"),
        case("bad snapshot mode", with_source("    snapshot: sometimes\n"), "source.postgres.snapshot", "initial or never"),
        // values
        case("missing url", "source:\n  postgres:\n    slot: s\n".to_string() + SINKS + PIPELINE, "source.postgres.url", "missing"),
        case(
            "bad url scheme",
            "source:\n  postgres:\n    url: mysql://u@h/db\n".to_string() + SINKS + PIPELINE,
            "source.postgres.url",
            "postgres://",
        ),
        case("bad slot name", with_source("    slot: My-Slot\n"), "source.postgres.slot", "lowercase"),
        case("bad listen address", with_section("http: { listen: nowhere }\n"), "http.listen", "host:port"),
        case("zero batch size", with_section("runtime: { batch_size: 0 }\n"), "runtime.batch_size", "out of range"),
        case("empty dead letter path", with_section("dead_letter: { path: \"\" }\n"), "dead_letter.path", "file path"),
        case(
            "unknown dead letter destination",
            with_section("dead_letter: { to: s3 }\n"),
            "dead_letter.to",
            "expected file, postgres or kafka",
        ),
        case("kafka dead letters without a sink", with_section("dead_letter: { to: kafka }\n"), "dead_letter.sink", "name the Kafka sink"),
        case(
            "kafka dead letters on a file sink",
            with_section("dead_letter: { to: kafka, sink: cache }\n"),
            "dead_letter.sink",
            "needs a Kafka sink",
        ),
        case(
            "a topic for file dead letters",
            with_section("dead_letter: { topic: t }\n"),
            "dead_letter.topic",
            "only used with `to: kafka`",
        ),
        case("lease too short", with_section("ha: { enabled: true, lease: 200ms }\n"), "ha.lease", "wal_sender_timeout"),
        case("unknown ha field", with_section("ha: { enabled: true, leader: me }\n"), "ha", "leader"),
    ]
}

fn write(dir: &Path, i: usize, yaml: &str) -> PathBuf {
    let path = dir.join(format!("case-{i:02}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

fn env_of(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn assert_names(case: &Case, file: &Path, errors: &str) {
    let file = file.display().to_string();
    for line in errors.lines() {
        assert!(line.starts_with(&format!("{file}: ")), "{}: every line names the file:\n{errors}", case.name);
    }
    let wanted = format!("{file}: {}", case.path);
    let found = errors.lines().any(|l| l.starts_with(&wanted) && l.contains(case.also));
    assert!(
        found,
        "{}: expected a line starting with {wanted:?} and containing {:?}, got:\n{errors}\n--- yaml:\n{}",
        case.name, case.also, case.yaml
    );
}

#[test]
fn each_broken_config_names_its_dotted_path() {
    let dir = tempfile::tempdir().unwrap();
    let cases = cases();
    assert!(cases.len() >= 30);
    for (i, case) in cases.iter().enumerate() {
        let file = write(dir.path(), i, &case.yaml);
        match load_with_env(&file, &env_of(case.env)) {
            Ok(_) => panic!("{}: accepted:\n{}", case.name, case.yaml),
            Err(e) => assert_names(case, &file, &e.to_string()),
        }
    }
}

fn check_cli(file: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgfanout"));
    cmd.env_clear().arg("check").arg("-c").arg(file);
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn check_exits_2_and_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    for (i, case) in cases().iter().enumerate() {
        let file = write(dir.path(), i, &case.yaml);
        let (code, _, stderr) = check_cli(&file, case.env);
        assert_eq!(code, 2, "{}: exit code; stderr:\n{stderr}", case.name);
        let wanted = format!("{}: {}", file.display(), case.path);
        assert!(stderr.contains(&wanted), "{}: stderr should contain {wanted:?}:\n{stderr}", case.name);
    }
}

#[test]
fn all_errors_are_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "source:\n  postgres:\n    url: postgres://rep:pw@localhost/shop\n    slot: Bad\n\
                sinks:\n  audit: { type: file, path: a }\n  weird: { type: mongo }\n\
                pipelines:\n  - { name: p, from: users, to: nope }\n  - { name: q, from: users, to: audit, filter: \"op ==\" }\n  - { name: r, from: users, to: audit, bogus: 1 }\n\
                http: { listen: nowhere }\nruntime: { batch_size: lots }\n";
    let file = write(dir.path(), 0, yaml);
    let err = load_with_env(&file, &HashMap::new()).unwrap_err().to_string();
    for path in [
        "source.postgres.slot",
        "sinks.weird.type",
        "pipelines[0].to",
        "pipelines[1].filter",
        "pipelines[2].bogus",
        "http.listen",
        "runtime.batch_size",
    ] {
        assert!(err.contains(&format!(": {path}:")), "missing {path} in:\n{err}");
    }
    assert_eq!(err.lines().count(), 7, "{err}");
}

#[test]
fn secrets_never_appear_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Each line below produces an error whose natural message would quote
    // a secret: the slot (from ${PGPASSWORD}), the publication (equal to the
    // URL's password), a filter (from ${API_TOKEN}), a sink password.
    let yaml = "source:\n  postgres:\n    url: postgres://rep:Url-Pass-77@localhost/shop\n    slot: \"${PGPASSWORD}\"\n    publication: Url-Pass-77\n\
                sinks:\n  audit: { type: file, path: a }\n  graph: { type: neo4j, uri: \"bolt://neo4j:Bolt-Pass-55@h\", password: \"${NEO4J_PASSWORD}\" }\n\
                pipelines:\n  - { name: p, from: users, to: audit, filter: \"${API_TOKEN}\" }\n  - { name: q, from: users, to: graph, redis: { key: \"Bolt-Pass-55{\" } }\n";
    let env = [("PGPASSWORD", "Hunter-2-Pg"), ("API_TOKEN", "op == Tok-99"), ("NEO4J_PASSWORD", "Neo-Pass-33")];
    let secrets = ["Hunter-2-Pg", "Url-Pass-77", "Tok-99", "Bolt-Pass-55", "Neo-Pass-33"];
    let file = write(dir.path(), 0, yaml);
    let err = load_with_env(&file, &env_of(&env)).unwrap_err().to_string();
    for path in ["source.postgres.slot", "source.postgres.publication", "pipelines[0].filter", "pipelines[1].redis"] {
        assert!(err.contains(&format!(": {path}")), "missing {path} in:\n{err}");
    }
    let (code, stdout, stderr) = check_cli(&file, &env);
    assert_eq!(code, 2, "{stderr}");
    for s in secrets {
        assert!(!err.contains(s), "{s} leaked:\n{err}");
        assert!(!stderr.contains(s) && !stdout.contains(s), "{s} leaked by the CLI:\n{stderr}");
    }
    assert!(err.contains("***"), "{err}");
}

#[test]
fn env_overrides_and_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "source:\n  postgres:\n    url: postgres://rep@${PGHOST:-db.internal}:5432/shop\n    slot: from_file\n\
                sinks:\n  audit: { type: file, path: \"${OUT_DIR:-/var/lib}/a.jsonl\" }\n\
                pipelines:\n  - { name: p, from: users, to: audit }\nruntime: { batch_size: 10 }\n";
    let file = write(dir.path(), 0, yaml);
    let env = env_of(&[("PGFANOUT__SOURCE__POSTGRES__SLOT", "from_env"), ("PGFANOUT__RUNTIME__BATCH_SIZE", "77"), ("OUT_DIR", "/data")]);
    let cfg = load_with_env(&file, &env).unwrap();
    assert_eq!(cfg.source.postgres.slot, "from_env");
    assert_eq!(cfg.runtime.batch_size, 77);
    assert_eq!(cfg.source.postgres.url, "postgres://rep@db.internal:5432/shop");
    assert_eq!(cfg.sinks["audit"].kind, "file");
    assert_eq!(cfg.sinks["audit"].settings["path"], "/data/a.jsonl");
    // Defaults of optional settings.
    assert_eq!(cfg.dead_letter.path, "pgfanout-dead-letters.jsonl");
    assert_eq!(cfg.http.ready_max_lag.bytes(), 1 << 30);
    assert!(cfg.source.postgres.heartbeat_interval.is_none());

    // The same through the CLI: the override is what gets validated.
    let (code, stdout, stderr) = check_cli(&file, &[("PGFANOUT__SOURCE__POSTGRES__SLOT", "from_env")]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, _, stderr) = check_cli(&file, &[("PGFANOUT__SOURCE__POSTGRES__SLOT", "Not Valid")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("source.postgres.slot"), "{stderr}");
}

#[test]
fn env_overrides_of_a_sinks_numbers_and_booleans_are_read_as_such() {
    // An environment variable is a string; a sink's settings reach its
    // connector as JSON, where "3" used to be refused as a number.
    let dir = tempfile::tempdir().unwrap();
    let yaml = "source:\n  postgres:\n    url: postgres://rep@db:5432/shop\n\
                sinks:\n  events: { type: kafka, brokers: \"k:9092\" }\n\
                pipelines:\n  - { name: p, from: users, to: events, kafka: { topic: t } }\n";
    let file = write(dir.path(), 0, yaml);
    let env = env_of(&[("PGFANOUT__SINKS__EVENTS__IN_FLIGHT_BATCHES", "3")]);
    let cfg = load_with_env(&file, &env).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.sinks["events"].configured.is_some());
    let (code, stdout, stderr) = check_cli(&file, &[("PGFANOUT__SINKS__EVENTS__IN_FLIGHT_BATCHES", "3")]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // What is not a number is still refused, naming the field.
    let (code, _, stderr) = check_cli(&file, &[("PGFANOUT__SINKS__EVENTS__IN_FLIGHT_BATCHES", "three")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("sinks.events.in_flight_batches") && stderr.contains("\"three\""), "{stderr}");
    let (code, _, stderr) = check_cli(&file, &[("PGFANOUT__SINKS__EVENTS__IN_FLIGHT_BATCHES", "0")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("in_flight_batches") && stderr.contains("between 1 and 64"), "{stderr}");
}

#[test]
fn receive_buffer_takes_auto_kernel_or_a_size() {
    use pgfanout::config::ReceiveBufferConfig;
    use pgfanout_postgres::replication::ReceiveBuffer;
    let dir = tempfile::tempdir().unwrap();
    let load = |i: usize, fields: &str, env: &[(&str, &str)]| {
        let file = write(dir.path(), i, &with_source(fields));
        load_with_env(&file, &env_of(env)).unwrap_or_else(|e| panic!("{fields}: {e}")).source.postgres.receive_buffer
    };
    assert_eq!(load(0, "", &[]), ReceiveBufferConfig(ReceiveBuffer::Auto));
    assert_eq!(load(1, "    receive_buffer: kernel\n", &[]), ReceiveBufferConfig(ReceiveBuffer::Kernel));
    assert_eq!(load(2, "    receive_buffer: 64KiB\n", &[]), ReceiveBufferConfig(ReceiveBuffer::Bytes(65536)));
    assert_eq!(load(3, "    receive_buffer: 8192\n", &[]), ReceiveBufferConfig(ReceiveBuffer::Bytes(8192)));
    assert_eq!(load(4, "", &[("PGFANOUT__SOURCE__POSTGRES__RECEIVE_BUFFER", "32768")]), ReceiveBufferConfig(ReceiveBuffer::Bytes(32768)));
}

#[test]
fn sinks_keep_their_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("{SOURCE}sinks:\n  zeta: {{ type: file, path: z }}\n  alpha: {{ type: file, path: a }}\n  Mid: {{ type: redis, url: redis://h }}\n{PIPELINE}");
    let yaml = yaml.replace("to: audit", "to: zeta");
    let file = write(dir.path(), 0, &yaml);
    let cfg = load_with_env(&file, &HashMap::new()).unwrap();
    assert_eq!(cfg.sinks.keys().collect::<Vec<_>>(), vec!["zeta", "alpha", "Mid"]);
}
