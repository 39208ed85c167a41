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

use pgfanout_sdk::connector::{boxed_sink, TypedConnector};

/// The connector: `type: neo4j`, settings [`Neo4jSinkConfig`], a `neo4j:` mapping
/// ([`Neo4jMapping`]) per pipeline; `verify` reads back node and
/// relationship mappings (a route's verifier knows the other routes, which
/// may own the same nodes).
pub static CONNECTOR: TypedConnector<Neo4jSinkConfig, Neo4jMapping> =
    TypedConnector::new("neo4j", Neo4jSinkConfig::validate, Neo4jMapping::validate, |settings, mappings| {
        boxed_sink(async move { Ok(Neo4jSink::connect(settings, mappings.to_vec()).await?) })
    })
    .with_verifier(verify::verifiable, |settings, mappings, route| Box::pin(verify::connect(settings, mappings, route)));
