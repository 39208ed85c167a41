//! rustls client configuration for each [`SslMode`], shared by the
//! replication connection and the tokio-postgres connections.
//!
//! libpq's modes do not map onto rustls' single "verify everything" default:
//! `prefer`/`require` encrypt without checking the certificate (unless a CA
//! file is given, which makes `require` act as `verify-ca`, as libpq does),
//! `verify-ca` checks the chain but not the host name, and `verify-full`
//! checks both. The two relaxed behaviours are the small verifiers below;
//! handshake signatures are always checked, so the session keys really belong
//! to whoever holds the certificate's key.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::conn::{SslMode, TlsFiles};
use crate::error::SourceError;

/// Builds the client config for `mode`. Errors (unreadable or invalid PEM
/// files) are Permanent and name the file.
pub(crate) fn client_config(mode: SslMode, files: &TlsFiles) -> Result<Arc<ClientConfig>, SourceError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, &files.ca_file) {
        (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => Arc::new(Lenient { chain: None, provider: provider.clone() }),
        (SslMode::Require | SslMode::VerifyCa, _) => {
            Arc::new(Lenient { chain: Some(webpki_verifier(files, &provider)?), provider: provider.clone() })
        }
        (SslMode::VerifyFull, _) => webpki_verifier(files, &provider)?,
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SourceError::permanent(format!("TLS setup failed: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => {
            let certs = load_certs(cert)?;
            let key = load_key(key)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| SourceError::permanent(format!("invalid TLS client certificate/key: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(SourceError::permanent("TLS client authentication needs both cert_file and key_file")),
    };
    Ok(Arc::new(config))
}

/// The name the certificate is checked against (`verify-full`); IP
/// addresses are matched against IP SANs. Modes that do not check names
/// accept any host string.
pub(crate) fn server_name(mode: SslMode, host: &str) -> Result<ServerName<'static>, SourceError> {
    match ServerName::try_from(host.to_string()) {
        Ok(n) => Ok(n),
        Err(_) if mode != SslMode::VerifyFull => Ok(ServerName::try_from("localhost").map_err(|e| SourceError::permanent(e.to_string()))?),
        Err(e) => Err(SourceError::permanent(format!("host {host:?} cannot be verified by sslmode=verify-full: {e}"))),
    }
}

fn webpki_verifier(files: &TlsFiles, provider: &Arc<CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>, SourceError> {
    let mut roots = RootCertStore::empty();
    match &files.ca_file {
        Some(path) => {
            for cert in load_certs(path)? {
                roots.add(cert).map_err(|e| SourceError::permanent(format!("invalid CA certificate in {}: {e}", path.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| SourceError::permanent(format!("TLS CA setup failed: {e}")))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SourceError> {
    let file = File::open(path).map_err(|e| SourceError::permanent(format!("cannot read {}: {e}", path.display())))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SourceError::permanent(format!("invalid PEM in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(SourceError::permanent(format!("no certificate found in {}", path.display())));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, SourceError> {
    let file = File::open(path).map_err(|e| SourceError::permanent(format!("cannot read {}: {e}", path.display())))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| SourceError::permanent(format!("invalid PEM in {}: {e}", path.display())))?
        .ok_or_else(|| SourceError::permanent(format!("no private key found in {}", path.display())))
}

/// The checks libpq makes below `verify-full`: none at all (`prefer`, and
/// `require` without a CA: encryption only), or the chain without the name
/// (`verify-ca`, and `require` with a CA). A name mismatch, which webpki
/// reports only after the chain verified, is what `chain` lets through.
/// Handshake signatures are always checked.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
