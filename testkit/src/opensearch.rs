//! An ephemeral OpenSearch node on a free loopback port.
//!
//! OpenSearch 2.19 (`org.opensearch:opensearch` and the modules
//! `transport-netty4-client`, `analysis-common`, `lang-painless`, installed
//! by `scripts/install-jvm-servers.sh`) runs as one node under the launcher
//! `pgfanout.testkit.OpenSearchMain`: `discovery.type=single-node`, HTTP and
//! transport on 127.0.0.1, no security plugin (plain HTTP, or HTTPS with
//! `start_tls`; no auth), new
//! indexes without replicas (green). Started and stopped by
//! [`crate::search`], as Elasticsearch is. It stands in for Elasticsearch
//! too: the document, `_bulk` and search APIs the sink uses are the same.
//!
//! Start: ~7 s, RSS ~300 MB (`-Xmx512m`).

use crate::search::{Engine, Launcher, SearchNode};

/// A running OpenSearch node ([`SearchNode`]: `start()`, `shared()`, `url()`,
/// `port`, ...); killed on drop and its directory removed.
pub type OpenSearchNode = SearchNode<OpenSearch>;

/// OpenSearch, as a search [`Engine`].
pub struct OpenSearch;

impl Engine for OpenSearch {
    const LAUNCHER: Launcher = Launcher { name: "opensearch", main: "pgfanout.testkit.OpenSearchMain", module_path: false };
}
