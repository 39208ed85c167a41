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

/// The connector of crate `$krate`, behind cargo feature `$feature`; or,
/// in a build without the feature, what says so.
macro_rules! feature_entry {
    ($feature:literal, $krate:ident) => {{
        #[cfg(feature = $feature)]
        let entry = Entry::Built(&$krate::CONNECTOR);
        #[cfg(not(feature = $feature))]
        let entry = Entry::Missing($feature);
        entry
    }};
}

/// Every connector, in the order `check` lists them. Adding a store adds
/// one line here.
pub fn connectors() -> Vec<Entry> {
    vec![
        Entry::Built(&pgfanout_file::CONNECTOR),
        Entry::Built(&pgfanout_http::CONNECTOR),
        feature_entry!("redis", pgfanout_redis),
        feature_entry!("kafka", pgfanout_kafka),
        feature_entry!("neo4j", pgfanout_neo4j),
        feature_entry!("elasticsearch", pgfanout_elasticsearch),
        feature_entry!("scylla", pgfanout_scylla),
        feature_entry!("mongodb", pgfanout_mongodb),
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
