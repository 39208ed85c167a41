//! Neo4j sink: relational rows become nodes and relationships, for graph
//! queries such as "customers who bought this also bought".
//!
//! A pipeline maps its table with one of (see [`Neo4jMapping`]):
//! - `node`: each row is a node, MERGEd on its key properties;
//! - `relationship`: each row is a relationship between two MERGEd nodes
//!   (`order_items` -> `(:User)-[:BOUGHT]->(:Product)`);
//! - `cypher`: user statements per operation with `$after`, `$before`,
//!   `$key`, `$lsn`, `$ordinal`, `$version`, `$op` (or `$rows` for batched
//!   statements).
//!
//! Why versions on the graph: delivery is at-least-once, so after a crash the
//! server sees changes it already applied. Generated writes store the
//! change's version (its position as text that sorts like positions, see
//! `pgfanout_sdk::Position`) as `_pgfanout_version` on every node and
//! relationship and skip a write whose stored version is newer; equal
//! versions apply. Deletes of something newer are skipped as well.
//!
//! Tradeoff, no tombstones: a delete removes the node or relationship and its
//! version with it, so while a replay is in progress an older insert can bring
//! a deleted entity back for a moment. Replays always resend a contiguous
//! suffix of the stream in order, so the delete that follows is replayed too
//! and the graph converges; keeping tombstones would cost a lookup per write
//! and grow without bound.

mod config;
mod cypher;
mod encode;
mod error;
mod ownership;
mod sink;
mod verify;

pub use config::{
    CypherMapping, EndpointMapping, Neo4jMapping, Neo4jSinkConfig, NodeMapping, RelMapping, ROW_KEY_PROPERTY, VERSION_PROPERTY,
};
pub use error::Neo4jSinkError;
pub use sink::Neo4jSink;

/// The neo4rs this sink is built on, so code that reads the graph back (the
/// daemon's end-to-end tests, tools) uses the same client version.
pub use neo4rs;

use pgfanout_sdk::connector::{parse_sink, BoxFuture};
use pgfanout_sdk::{ConfigError, ConfiguredSink, Connector, DynSink, SinkError, SinkInput, Verifier};

/// The connector: `type: neo4j`, settings [`Neo4jSinkConfig`], a `neo4j:` mapping
/// ([`Neo4jMapping`]) per pipeline.
pub static CONNECTOR: Neo4jConnector = Neo4jConnector;

/// See [`CONNECTOR`].
pub struct Neo4jConnector;

impl Connector for Neo4jConnector {
    fn kind(&self) -> &'static str {
        "neo4j"
    }

    fn configure(&self, input: &SinkInput<'_>) -> Result<Box<dyn ConfiguredSink>, Vec<ConfigError>> {
        let (settings, mappings) = parse_sink(self.kind(), input, Neo4jSinkConfig::validate, Neo4jMapping::validate)?;
        Ok(Box::new(Configured { settings, mappings }))
    }
}

struct Configured {
    settings: Neo4jSinkConfig,
    mappings: Vec<Neo4jMapping>,
}

impl ConfiguredSink for Configured {
    fn build(&self) -> BoxFuture<'_, Result<Box<dyn DynSink>, SinkError>> {
        Box::pin(async move { Ok(Box::new(Neo4jSink::connect(&self.settings, self.mappings.clone()).await?) as Box<dyn DynSink>) })
    }

    fn verifiable(&self, route: usize) -> Result<(), String> {
        self.mappings.get(route).map_or_else(|| Err("no such route".into()), verify::verifiable)
    }

    fn verifier(&self, route: usize) -> BoxFuture<'_, Result<Box<dyn Verifier>, SinkError>> {
        Box::pin(async move {
            if route >= self.mappings.len() {
                return Err(SinkError::Permanent(format!("no route {route}")));
            }
            verify::connect(&self.settings, &self.mappings, route).await
        })
    }
}
