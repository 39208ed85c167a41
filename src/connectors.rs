//! The connector list: the one place the daemon names a store.
//!
//! Every store is a connector crate exporting a value that implements
//! [`pgfanout_sdk::Connector`] (see `connectors/README.md`). The daemon
//! knows the list below and nothing else about any store: the `type:` of a
//! sink picks its connector ([`find`]), which parses the sink's settings and
//! its pipelines' mappings once at load time (`config::sinks`), builds the
//! running sink (`runtime::sinks`) and runs the online checks (`doctor`).
//! This module depends on nothing else of the daemon, so the config can use
//! it while it loads.
//!
//! Heavy client libraries live in their connector crates behind cargo
//! features; a binary built without one answers a config that names it with
//! the feature to rebuild with.

use pgfanout_sdk::Connector;

/// One entry of the connector list.
#[derive(Clone, Copy)]
pub enum Entry {
    /// Compiled into this binary.
    Built(&'static dyn Connector),
    /// Known, but its cargo feature is off in this build.
    Missing(&'static str),
}

/// Every connector, in the order `check` lists them. Adding a store adds
/// one line here (and its `cfg(not)` twin naming the feature).
pub fn connectors() -> Vec<Entry> {
    vec![
        Entry::Built(&pgfanout_file::CONNECTOR),
        #[cfg(feature = "redis")]
        Entry::Built(&pgfanout_redis::CONNECTOR),
        #[cfg(not(feature = "redis"))]
        Entry::Missing("redis"),
        #[cfg(feature = "kafka")]
        Entry::Built(&pgfanout_kafka::CONNECTOR),
        #[cfg(not(feature = "kafka"))]
        Entry::Missing("kafka"),
        #[cfg(feature = "neo4j")]
        Entry::Built(&pgfanout_neo4j::CONNECTOR),
        #[cfg(not(feature = "neo4j"))]
        Entry::Missing("neo4j"),
        #[cfg(feature = "elasticsearch")]
        Entry::Built(&pgfanout_elasticsearch::CONNECTOR),
        #[cfg(not(feature = "elasticsearch"))]
        Entry::Missing("elasticsearch"),
        #[cfg(feature = "scylla")]
        Entry::Built(&pgfanout_scylla::CONNECTOR),
        #[cfg(not(feature = "scylla"))]
        Entry::Missing("scylla"),
    ]
}

/// The `type:` values (and aliases) compiled into this binary.
pub fn available_kinds() -> Vec<&'static str> {
    let mut kinds = Vec::new();
    for e in connectors() {
        if let Entry::Built(c) = e {
            kinds.push(c.kind());
            kinds.extend(c.aliases());
        }
    }
    kinds
}

/// Every `type:` value this binary knows (built or not), for messages.
pub fn known_kinds() -> Vec<&'static str> {
    let mut kinds = Vec::new();
    for e in connectors() {
        match e {
            Entry::Built(c) => {
                kinds.push(c.kind());
                kinds.extend(c.aliases());
            }
            Entry::Missing(k) => kinds.push(k),
        }
    }
    kinds
}

/// The connector for a `type:` value, or the error to report at
/// `sinks.<name>.type`.
pub fn find(kind: &str) -> Result<&'static dyn Connector, String> {
    for e in connectors() {
        match e {
            Entry::Built(c) if c.kind() == kind || c.aliases().contains(&kind) => return Ok(c),
            Entry::Missing(k) if k == kind => {
                return Err(format!("this pgfanout was built without the `{k}` feature; rebuild with --features {k}"))
            }
            _ => {}
        }
    }
    Err(format!("unknown sink type {kind:?}; expected one of {}", known_kinds().join(", ")))
}

/// Whether `key` in a pipeline is a mapping section (some connector's type).
pub fn is_mapping_key(key: &str) -> bool {
    known_kinds().contains(&key)
}

/// Whether a pipeline's mapping key belongs to the sink's connector.
pub fn key_matches(connector: &dyn Connector, key: &str) -> bool {
    connector.kind() == key || connector.aliases().contains(&key)
}
