//! The Helm chart of the "one reader, N appliers" layout
//! (`deploy/helm/pgfanout`, docs/operating.md#kubernetes-helm): `helm lint
//! --strict` passes, `helm template` renders one reader Deployment (one
//! replica, Recreate) and an applier Deployment with the replicas asked for,
//! and the configs the ConfigMaps carry are what the layout needs (the
//! reader's Kafka sink with `format: native` and `tombstones: true`, the
//! appliers' `source.kafka` on its topic with the brokers and group of the
//! values) and what `pgfanout check` accepts: it validates a config offline,
//! connecting to nothing, so every rendered config goes through the real
//! binary.
//!
//! Needs helm (`scripts/install-helm.sh`, which `scripts/install-servers.sh`
//! runs): without it every test here fails, naming the script.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/helm/pgfanout")
}

/// `$PGFANOUT_BIN/helm` or `~/.cache/pgfanout/bin/helm`; panics naming
/// scripts/install-helm.sh when it is missing.
fn helm() -> PathBuf {
    testkit::cached_bin("helm", "Helm", "scripts/install-helm.sh")
}

/// Runs helm with `args`, in a HOME of its own (helm keeps a cache and a
/// repository list there), and returns its stdout; panics on failure.
fn run_helm(args: &[&str]) -> String {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(helm())
        .args(args)
        .env("HOME", home.path())
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .output()
        .unwrap_or_else(|e| panic!("run helm: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "helm {}: {}\n{stdout}\n{}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr));
    stdout
}

/// One YAML document as JSON, read by the same YAML loader as pgfanout's
/// configs.
fn parse_yaml(text: &str) -> Value {
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Yaml))
        .build()
        .and_then(|c| c.try_deserialize::<Value>())
        .unwrap_or_else(|e| panic!("not valid YAML: {e}\n{text}"))
}

/// The manifests `helm template` renders with the release name `cdc` and
/// `extra` arguments (`--set`, `-f`).
fn render(extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec!["template", "cdc", chart.to_str().unwrap(), "--namespace", "shop"];
    args.extend_from_slice(extra);
    let out = run_helm(&args);
    let docs: Vec<Value> = out.split("\n---").map(parse_yaml).filter(|d| d.get("kind").is_some()).collect();
    assert!(!docs.is_empty(), "helm template rendered nothing:\n{out}");
    docs
}

fn component(doc: &Value) -> &str {
    doc["metadata"]["labels"]["app.kubernetes.io/component"].as_str().unwrap_or("")
}

/// The one manifest of `kind` for the role `role`.
fn one<'a>(docs: &'a [Value], kind: &str, role: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind && component(d) == role).collect();
    assert_eq!(found.len(), 1, "expected one {kind} of the {role}, found {}", found.len());
    found[0]
}

/// The pgfanout config a role's ConfigMap carries, as text.
fn config_text(docs: &[Value], role: &str) -> String {
    one(docs, "ConfigMap", role)["data"]["config.yaml"]
        .as_str()
        .unwrap_or_else(|| panic!("the {role} ConfigMap has no config.yaml"))
        .to_owned()
}

/// `pgfanout check -c` on `text` (written to a file); panics with its
/// output unless it exits 0.
fn check(text: &str, role: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{role}.yaml"));
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgfanout"));
    cmd.args(["check", "-c"]).arg(&path).env("PGPASSWORD", "from-the-secret");
    // The environment's PGFANOUT__... overrides would change the config.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PGFANOUT__")) {
        cmd.env_remove(k);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "pgfanout check refused the {role}'s rendered config ({}):\n{}{}\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Deployment of `role`: its replicas (None when unset) and its one
/// container.
fn deployment<'a>(docs: &'a [Value], role: &str) -> (Option<i64>, &'a Value, &'a Value) {
    let d = one(docs, "Deployment", role);
    let containers = d["spec"]["template"]["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{role}: one container");
    (d["spec"]["replicas"].as_i64(), &d["spec"], &containers[0])
}

/// What both roles' containers must have: `pgfanout run` on the mounted
/// config, the health probes on the metrics port, scrape annotations.
fn assert_container(spec: &Value, container: &Value, role: &str) {
    assert_eq!(container["args"], serde_json::json!(["run", "-c", "/etc/pgfanout/config.yaml", "--log-format", "json"]), "{role}");
    assert_eq!(container["ports"][0]["name"], "http", "{role}");
    assert_eq!(container["ports"][0]["containerPort"], 9187, "{role}");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz", "{role}");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz", "{role}");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "http", "{role}");
    let annotations = &spec["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true", "{role}");
    assert_eq!(annotations["prometheus.io/port"], "9187", "{role}");
    let mounts = container["volumeMounts"].as_array().unwrap();
    assert!(mounts.iter().any(|m| m["mountPath"] == "/etc/pgfanout"), "{role}: the config is not mounted");
}

/// The reader's config streams the slot into a Kafka sink in the format the
/// appliers read, with the old key's tombstone after a key change; returns
/// the topic.
fn assert_reader_config(text: &str, brokers: &str) -> String {
    let cfg = parse_yaml(text);
    assert!(cfg["source"].get("kafka").is_none(), "the reader has no source.kafka:\n{text}");
    assert_eq!(cfg["http"]["listen"], "0.0.0.0:9187", "{text}");
    let sinks = cfg["sinks"].as_object().expect("sinks");
    let kafka: Vec<&String> = sinks.iter().filter(|(_, s)| s["type"] == "kafka").map(|(name, _)| name).collect();
    assert_eq!(kafka.len(), 1, "one Kafka sink in the reader:\n{text}");
    assert_eq!(sinks[kafka[0]]["brokers"], brokers, "{text}");
    let pipelines = cfg["pipelines"].as_array().expect("pipelines");
    let to_kafka: Vec<&Value> = pipelines.iter().filter(|p| p["to"] == kafka[0].as_str()).collect();
    assert!(!to_kafka.is_empty(), "no pipeline to the Kafka sink:\n{text}");
    for p in &to_kafka {
        assert_eq!(p["kafka"]["format"], "native", "{text}");
        assert_eq!(p["kafka"]["tombstones"], true, "the reader needs tombstones: true:\n{text}");
    }
    to_kafka[0]["kafka"]["topic"].as_str().expect("topic").to_owned()
}

/// The appliers' config reads `topic` from `brokers` as `group`.
fn assert_applier_config(text: &str, brokers: &str, topic: &str, group: &str) -> Value {
    let cfg = parse_yaml(text);
    let kafka = &cfg["source"]["kafka"];
    assert_eq!(kafka["brokers"], brokers, "{text}");
    assert_eq!(kafka["topics"], serde_json::json!([topic]), "{text}");
    assert_eq!(kafka["group"], group, "{text}");
    assert_eq!(cfg["http"]["listen"], "0.0.0.0:9187", "{text}");
    cfg
}

#[test]
fn the_chart_passes_helm_lint_strict() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    run_helm(&["lint", "--strict", chart]);
    run_helm(&["lint", "--strict", chart, "--set", "appliers.replicas=5,reader.ha.enabled=true,appliers.keda.enabled=true"]);
}

#[test]
fn default_values_render_one_reader_and_three_appliers() {
    let docs = render(&[]);

    let (replicas, spec, container) = deployment(&docs, "reader");
    assert_eq!(replicas, Some(1), "one reader per slot");
    assert_eq!(spec["strategy"]["type"], "Recreate", "never two readers during a rollout");
    assert_container(spec, container, "reader");
    let (replicas, spec, container) = deployment(&docs, "applier");
    assert_eq!(replicas, Some(3));
    assert_container(spec, container, "applier");
    assert_eq!(one(&docs, "PodDisruptionBudget", "applier")["spec"]["maxUnavailable"], 1);
    assert!(docs.iter().all(|d| d["kind"] != "ScaledObject"), "KEDA is off by default");

    let reader = config_text(&docs, "reader");
    let topic = assert_reader_config(&reader, "kafka:9092");
    assert_eq!(topic, "pgfanout.changes");
    let applier = config_text(&docs, "applier");
    let cfg = assert_applier_config(&applier, "kafka:9092", &topic, "cdc-pgfanout-appliers");
    // Both roles look at the same slot (the appliers' /wait reads its position).
    assert_eq!(cfg["source"]["postgres"], parse_yaml(&reader)["source"]["postgres"]);
    // Without sinks of the user's, the appliers print the changes.
    assert_eq!(cfg["sinks"]["stdout"]["type"], "file", "{applier}");

    check(&reader, "reader");
    check(&applier, "applier");
}

#[test]
fn values_set_the_appliers_replicas_kafka_and_stores() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    // The stores' config, passed verbatim, as a user would.
    std::fs::write(
        &values,
        r#"
kafka:
  brokers: kafka-1.kafka:9092,kafka-2.kafka:9092
  topic: shop.cdc
  group: shop-appliers
  partitions: 6
postgres:
  url: "postgres://replicator:${PGPASSWORD}@db.shop:5432/shop?sslmode=require"
  slot: shop
  publication: shop
  passwordSecret: { name: shop-db, key: replicator-password }
reader:
  tables: [public.items, public.orders]
  config:
    runtime: { batch_size: 2048 }
    sinks:
      kafka: { properties: { compression.type: zstd } }
appliers:
  config:
    sinks:
      cache: { type: redis, url: "redis://redis:6379/0" }
      search: { type: opensearch, urls: ["http://opensearch:9200"] }
    pipelines:
      - { name: items, from: public.items, to: cache, redis: { type: string, key: "item:{id}" } }
      - { name: docs, from: public.items, to: search, elasticsearch: { index: items } }
    runtime: { batch_size: 512 }
"#,
    )
    .unwrap();
    let values = values.to_str().unwrap();
    run_helm(&["lint", "--strict", chart().to_str().unwrap(), "-f", values, "--set", "appliers.replicas=5"]);
    let docs = render(&["-f", values, "--set", "appliers.replicas=5"]);

    let (replicas, spec, container) = deployment(&docs, "reader");
    assert_eq!(replicas, Some(1));
    assert_eq!(spec["strategy"]["type"], "Recreate");
    let (replicas, _, applier_container) = deployment(&docs, "applier");
    assert_eq!(replicas, Some(5));
    // The password comes from the Secret, as PGPASSWORD, in both roles.
    for c in [container, applier_container] {
        let env = c["env"].as_array().expect("env");
        let pg = env.iter().find(|e| e["name"] == "PGPASSWORD").expect("PGPASSWORD");
        assert_eq!(pg["valueFrom"]["secretKeyRef"], serde_json::json!({"name": "shop-db", "key": "replicator-password"}));
    }

    let reader = config_text(&docs, "reader");
    let topic = assert_reader_config(&reader, "kafka-1.kafka:9092,kafka-2.kafka:9092");
    assert_eq!(topic, "shop.cdc");
    let r = parse_yaml(&reader);
    assert_eq!(r["sinks"]["kafka"]["topics"]["partitions"], 6, "{reader}");
    assert_eq!(r["sinks"]["kafka"]["properties"]["compression.type"], "zstd", "reader.config merges into the sink:\n{reader}");
    assert_eq!(r["runtime"]["batch_size"], 2048, "{reader}");
    assert_eq!(r["pipelines"][0]["from"], serde_json::json!(["public.items", "public.orders"]), "{reader}");

    let applier = config_text(&docs, "applier");
    let cfg = assert_applier_config(&applier, "kafka-1.kafka:9092,kafka-2.kafka:9092", &topic, "shop-appliers");
    assert_eq!(cfg["source"]["postgres"]["slot"], "shop", "{applier}");
    let sinks: Vec<&String> = cfg["sinks"].as_object().unwrap().keys().collect();
    assert_eq!(sinks, ["cache", "search"], "the user's sinks only:\n{applier}");
    assert_eq!(cfg["pipelines"].as_array().unwrap().len(), 2, "{applier}");
    assert_eq!(cfg["runtime"]["batch_size"], 512, "{applier}");

    check(&reader, "reader");
    check(&applier, "applier");
}

#[test]
fn ha_runs_a_standby_reader_and_keda_owns_the_appliers_replicas() {
    let docs = render(&["--set", "reader.ha.enabled=true,appliers.keda.enabled=true,appliers.keda.maxReplicas=50"]);
    let (replicas, spec, _) = deployment(&docs, "reader");
    assert_eq!(replicas, Some(2), "a leader and a warm standby");
    assert_eq!(spec["strategy"]["type"], "Recreate");
    let reader = config_text(&docs, "reader");
    assert_eq!(parse_yaml(&reader)["ha"]["enabled"], true, "{reader}");
    let (replicas, _, _) = deployment(&docs, "applier");
    assert_eq!(replicas, None, "with KEDA the Deployment leaves replicas to the ScaledObject");
    let scaled = docs.iter().find(|d| d["kind"] == "ScaledObject").expect("a ScaledObject");
    // Capped at the partitions: an applier more would hold none.
    assert_eq!(scaled["spec"]["maxReplicaCount"], 12);
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "kafka");
    assert_eq!(trigger["metadata"]["consumerGroup"], "cdc-pgfanout-appliers");
    assert_eq!(trigger["metadata"]["topic"], "pgfanout.changes");
    check(&reader, "reader");
}

/// The values shown in docs/operating.md ("Kubernetes (Helm)") render
/// configs that pgfanout accepts, with what they say.
#[test]
fn the_documented_values_render_configs_pgfanout_accepts() {
    let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operating.md")).unwrap();
    let section = page.split("\n### Kubernetes (Helm)\n").nth(1).expect("docs/operating.md has no \"### Kubernetes (Helm)\"");
    let yaml = section.split("```yaml\n").nth(1).and_then(|b| b.split("\n```").next()).expect("a yaml block of values");
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("shop-values.yaml");
    std::fs::write(&values, yaml).unwrap();
    let docs = render(&["-f", values.to_str().unwrap()]);
    let (replicas, _, container) = deployment(&docs, "reader");
    assert_eq!(replicas, Some(1));
    assert_eq!(container["image"], "registry.example.com/pgfanout:0.1.0");
    assert_eq!(deployment(&docs, "applier").0, Some(3));
    let reader = config_text(&docs, "reader");
    let topic = assert_reader_config(&reader, "kafka-1:9092,kafka-2:9092");
    assert_eq!(topic, "shop.cdc");
    let applier = config_text(&docs, "applier");
    assert_applier_config(&applier, "kafka-1:9092,kafka-2:9092", &topic, "shop-appliers");
    check(&reader, "reader");
    check(&applier, "applier");
}
