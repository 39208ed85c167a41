//! `scripts/demo.sh --all` as the README gives it, on the binaries this
//! test build made: `PGFANOUT_DEMO_BIN` and `PGFANOUT_DEMO_EXE` skip the
//! script's two `cargo build` steps (a separate build of the daemon would
//! take minutes); the rest (installing what is missing, every server, the
//! example, each store's query) runs as written. It runs alone
//! (`.config/nextest.toml`): it starts five JVM servers at once.

use std::path::Path;
use std::process::Command;

#[test]
fn demo_all_prints_what_landed_in_every_store() {
    let demo = Path::new(env!("CARGO_BIN_EXE_pgfanout-demo"));
    let pgfanout = demo.with_file_name("pgfanout");
    assert!(
        pgfanout.exists(),
        "{} is missing: run the workspace's tests (`cargo nextest run --workspace` builds it) or `cargo build --bin pgfanout`",
        pgfanout.display()
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    let out = Command::new("scripts/demo.sh")
        .arg("--all")
        .current_dir(root)
        .env("PGFANOUT_DEMO_BIN", &pgfanout)
        .env("PGFANOUT_DEMO_EXE", demo)
        .output()
        .expect("run scripts/demo.sh --all");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "scripts/demo.sh --all failed:\n{stdout}\n{stderr}");
    for store in ["Redis", "OpenSearch", "Neo4j", "Cassandra", "Kafka", "Webhook", "FerretDB", "File"] {
        assert!(stdout.contains(&format!("\n--- {store}")), "nothing printed for {store}:\n{stdout}\n{stderr}");
    }
    // What the example's changes leave in each store.
    for expected in [
        "10\n1\n11\n3\n",             // the cart hash before checkout: product 10 x1, 11 x3
        "\"title\": \"Keyboard\"",    // the catalog document
        "\"price\": 84.90",           // its price after the update, digits as in PostgreSQL
        "id=11 title=Mouse buyers=1", // the recommendation
        "orders.insert",              // the activity feed
        "\"table\":\"orders\"",       // the Kafka order event
        "\"display_name\":\"Ada\"",   // the profile document
        "\"city\":\"Cambridge\"",     // her work address, embedded and updated
        "key=100\n{\"items\": [",     // the outbox event in Kafka, its payload as jsonb prints it
        "POST /events/order",         // the outbox event at the webhook
        "X-Event-Type: order_placed",
        "\"audited_table\":\"public.orders\"", // the audit record
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
    // The heading names it; the document must not have it.
    let catalog = stdout.split("--- OpenSearch").nth(1).and_then(|s| s.split("\n---").next()).unwrap_or_default();
    assert!(catalog.contains("\"_source\"") && !catalog.contains("\"cost_price\""), "the catalog keeps the purchase price out:\n{catalog}");
    assert!(stderr.contains("stopping every server"), "{stderr}");
}
