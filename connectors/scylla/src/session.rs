//! Opening the driver session, and `create: true`'s schema.
//!
//! One session serves the sink (and, separately, `verify` and `doctor`):
//! token-aware routing, preferring `local_datacenter` when set, the
//! configured consistency and request timeout as the default profile.
//! Bad credentials are permanent (with the fix), an unreachable cluster
//! retriable: the runtime keeps trying to start the sink.

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;

use crate::config::{ScyllaMapping, ScyllaSettings};
use crate::error::ScyllaError;
use crate::statements::create_statements;

/// The session for these settings.
pub(crate) async fn open_session(s: &ScyllaSettings) -> Result<Session, ScyllaError> {
    if s.tls_enabled() {
        return Err(ScyllaError::TlsUnsupported);
    }
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &s.local_datacenter {
        policy = policy.prefer_datacenter(dc.clone()).permit_dc_failover(false);
    }
    let profile = ExecutionProfile::builder()
        .consistency(s.consistency.to_driver())
        .request_timeout(Some(s.request_timeout))
        .load_balancing_policy(policy.build())
        .build()
        .into_handle();
    let mut builder =
        SessionBuilder::new().known_nodes(&s.nodes).connection_timeout(s.connect_timeout).default_execution_profile_handle(profile);
    if let Some(user) = &s.username {
        builder = builder.user(user, s.password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default());
    }
    builder.build().await.map_err(|e| ScyllaError::session(&s.nodes, &e))
}

/// `create: true` (demos): creates the keyspaces and the mapped tables that
/// say how ([`create_statements`]), then waits for the cluster to agree on
/// the schema and reads it again.
pub(crate) async fn create_schema(session: &Session, s: &ScyllaSettings, maps: &[ScyllaMapping]) -> Result<(), ScyllaError> {
    for cql in create_statements(s, maps) {
        if let Err(e) = session.query_unpaged(cql.as_str(), ()).await {
            return Err(ScyllaError::from(e).during(format!("create: {cql}")));
        }
    }
    session.await_schema_agreement().await.map_err(|e| ScyllaError::NoAnswer(e.to_string()).during("schema agreement"))?;
    session.refresh_metadata().await.map_err(|e| ScyllaError::from(e).during("metadata"))?;
    Ok(())
}
