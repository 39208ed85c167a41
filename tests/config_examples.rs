//! Every example configuration in `config/` loads and validates, and builds
//! a router (the same steps `pgfanout check` and `pgfanout run` take before
//! any I/O).

use std::collections::HashMap;
use std::path::Path;

use pgfanout::config::load_with_env;
use pgfanout::pipeline::Router;

#[test]
fn every_example_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            continue;
        }
        // No variables set: the examples carry defaults for every ${VAR}.
        let cfg = match load_with_env(&path, &HashMap::new()) {
            Ok(cfg) => cfg,
            Err(e) => panic!("{e}"),
        };
        let router = Router::new(&cfg).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!router.table_patterns().is_empty(), "{}", path.display());
        seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    for required in ["ecommerce.yaml", "minimal.yaml"] {
        assert!(seen.iter().any(|s| s == required), "config/{required} is missing (found {seen:?})");
    }
}

#[test]
fn ecommerce_example_routes_as_documented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ecommerce.yaml");
    let cfg = load_with_env(&path, &HashMap::new()).unwrap();
    let router = Router::new(&cfg).unwrap();
    assert_eq!(router.sink_names(), vec!["cache", "search", "graph", "feed", "events", "audit"]);
    let patterns = router.table_patterns();
    for t in ["public.cart_items", "public.products", "public.order_items", "public.orders", "public.users", "public.outbox"] {
        assert!(patterns.iter().any(|p| p == t), "{t} not in {patterns:?}");
    }
    let events = router.routes_for_sink(4);
    assert_eq!(events.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>(), vec!["events", "user-events", "order-events"]);
    assert!(events.iter().all(|(_, m)| m.as_ref().and_then(|m| m.get("topic")).is_some()));
}
