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
    if s.tls_enabled() {
        builder = builder.tls_context(Some(tls_context(s)?));
    }
    builder.build().await.map_err(|e| ScyllaError::session(&s.nodes, &e))
}

/// TLS with OpenSSL: the node's certificate must chain to `tls.ca_file` (or
/// the system roots) and name the node's IP address (the driver checks it
/// against the address it connects to, as nodes are found by address);
/// `cert_file`/`key_file` for client authentication; `insecure` turns the
/// checks off (testing only).
fn tls_context(s: &ScyllaSettings) -> Result<scylla::client::session::OpenSsl010Config, ScyllaError> {
    use openssl::pkey::PKey;
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    use openssl::x509::X509;

    let tls = &s.tls;
    let err = |what: &str, e: &dyn std::fmt::Display| ScyllaError::Tls(format!("{what}: {e}"));
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| ScyllaError::Tls(format!("{}: {e}", p.display())));
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| err("openssl", &e))?;
    if let Some(ca) = &tls.ca_file {
        for cert in X509::stack_from_pem(&read(ca)?).map_err(|e| err(&format!("ca_file {}", ca.display()), &e))? {
            b.cert_store_mut().add_cert(cert).map_err(|e| err("ca_file", &e))?;
        }
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        let chain = X509::stack_from_pem(&read(cert)?).map_err(|e| err(&format!("cert_file {}", cert.display()), &e))?;
        let mut chain = chain.into_iter();
        let leaf = chain.next().ok_or_else(|| ScyllaError::Tls(format!("cert_file {}: no certificate", cert.display())))?;
        b.set_certificate(&leaf).map_err(|e| err("cert_file", &e))?;
        for extra in chain {
            b.add_extra_chain_cert(extra).map_err(|e| err("cert_file", &e))?;
        }
        let pem = read(key)?;
        let pkey = match &tls.key_password {
            Some(pw) => PKey::private_key_from_pem_passphrase(&pem, pw.expose().as_bytes()),
            None => PKey::private_key_from_pem(&pem),
        }
        .map_err(|e| err(&format!("key_file {}", key.display()), &e))?;
        b.set_private_key(&pkey).map_err(|e| err("key_file", &e))?;
        b.check_private_key().map_err(|e| err("key_file does not match cert_file", &e))?;
    }
    if tls.insecure {
        b.set_verify(SslVerifyMode::NONE);
    }
    Ok(scylla::client::session::OpenSsl010Config::new(b))
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
