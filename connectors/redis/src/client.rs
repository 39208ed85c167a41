//! The Redis client of the sink and of its verifier: URL, ACL credentials,
//! database and TLS files, from the sink's settings.

use pgfanout_sdk::settings::TlsFiles;
use redis::{Client, IntoConnectionInfo};

use crate::config::{redact, RedisSinkConfig};
use crate::error::RedisSinkError;

/// Builds the client: URL, ACL credentials, database, TLS. Nothing is
/// connected yet; every failure here is permanent (a setting to fix).
pub(crate) fn build_client(cfg: &RedisSinkConfig) -> Result<Client, RedisSinkError> {
    let mut url = cfg.url.clone();
    if cfg.is_tls() && cfg.tls.insecure && !url.contains('#') {
        url.push_str("#insecure");
    }
    let bad_url = |source: redis::RedisError| RedisSinkError::Url { url: redact(&cfg.url), source };
    let mut info = url.as_str().into_connection_info().map_err(bad_url)?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &cfg.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &cfg.password {
        settings = settings.set_password(password.expose());
    }
    info = info.set_redis_settings(settings);
    let tls = &cfg.tls;
    if cfg.is_tls() && (tls.ca_file.is_some() || tls.cert_file.is_some()) {
        let read = |p: &std::path::Path| TlsFiles::read(p).map_err(|e| RedisSinkError::TlsFile(e.to_string()));
        let root_cert = tls.ca_file.as_deref().map(read).transpose()?;
        let client_tls = match (&tls.cert_file, &tls.key_file) {
            (Some(c), Some(k)) => Some(redis::ClientTlsConfig { client_cert: read(c)?, client_key: read(k)? }),
            _ => None,
        };
        Client::build_with_tls(info, redis::TlsCertificates { client_tls, root_cert }).map_err(bad_url)
    } else {
        Client::open(info).map_err(bad_url)
    }
}
