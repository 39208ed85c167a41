//! A Bolt client of the test's Neo4j server, to read the graph back.
//! Shared by the end-to-end tests and the Neo4j connector's own tests
//! (`connectors/neo4j/tests/neo4j.rs` includes this file).
// Each includer uses a part of it.
#![allow(dead_code)]

use pgfanout_neo4j::neo4rs::{ConfigBuilder, Graph};
use testkit::Neo4jServer;

/// A client of `server`'s database, as its user.
pub async fn graph(server: &Neo4jServer) -> Graph {
    let cfg = ConfigBuilder::new()
        .uri(server.uri())
        .user(server.user.as_str())
        .password(server.password.as_str())
        .db(server.database.as_str())
        .build()
        .expect("client config");
    Graph::connect(cfg).await.expect("client connects")
}
