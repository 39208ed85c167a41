//! An ephemeral Elasticsearch 8 node on a free loopback port.
//!
//! Elasticsearch 8.19 from the artifacts Elastic publishes on Maven Central
//! (`org.elasticsearch:elasticsearch` and the `transport-netty4` module,
//! installed by `scripts/install-jvm-servers.sh`), run by the launcher
//! `pgfanout.testkit.ElasticsearchMain` with the server on the module path:
//! one node, `discovery.type=single-node`, HTTP and transport on 127.0.0.1,
//! no X-Pack (no security: plain HTTP, no auth), new indexes without
//! replicas (green). Started and stopped by [`crate::search`], as OpenSearch is.
//!
//! Not there, because Elastic does not publish those modules on Maven
//! Central: painless scripts (`lang-painless`), the extra analyzers of
//! `analysis-common`, reindex, X-Pack. `GET /` (the unpublished `rest-root`
//! module) is served by a small module of ours built at install time
//! (`testkit/jvm/elasticsearch/plugin`). The document, `_bulk`, search,
//! mapping and index APIs are in the server and work.
//!
//! Start: ~3-5 s, RSS ~300 MB (`-Xmx512m`).

use crate::search::{Engine, Launcher, SearchNode};

/// A running Elasticsearch node ([`SearchNode`]: `start()`, `shared()`, `url()`,
/// `port`, ...); killed on drop and its directory removed.
pub type ElasticsearchNode = SearchNode<Elasticsearch>;

/// Elasticsearch, as a search [`Engine`].
pub struct Elasticsearch;

impl Engine for Elasticsearch {
    const LAUNCHER: Launcher = Launcher { name: "elasticsearch", main: "pgfanout.testkit.ElasticsearchMain", module_path: true };
}
