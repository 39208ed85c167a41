//! TLS files for a connection to a store.

use std::path::PathBuf;

use serde::Deserialize;

use super::Secret;

/// `tls: { ca_file, cert_file, key_file, insecure }`. Whether TLS is used at
/// all is the connector's business (a `rediss://` or `https://` URL, an
/// `enabled` flag); these say what to trust and who we are.
/// Every field is optional (absent: none, `insecure: false`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM file with the CA certificate(s) to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM client private key for mutual TLS (with `cert_file`).
    pub key_file: Option<PathBuf>,
    /// Password of an encrypted `key_file`, where the store's client
    /// supports one (Kafka).
    pub key_password: Option<Secret>,
    /// Skip certificate verification (testing only).
    pub insecure: bool,
}

impl TlsFiles {
    /// Errors as (field, message); pure (files are read at connect time).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        if self.cert_file.is_some() != self.key_file.is_some() {
            errors.push(("cert_file".into(), "cert_file and key_file go together; set both or neither".into()));
        }
        if self.key_password.is_some() && self.key_file.is_none() {
            errors.push(("key_password".into(), "only applies with key_file".into()));
        }
        for (field, path) in [("ca_file", &self.ca_file), ("cert_file", &self.cert_file), ("key_file", &self.key_file)] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                errors.push((field.into(), "expected a path to a PEM file".into()));
            }
        }
        errors
    }

    /// Reads a PEM file named by one of the fields, with its path in the error.
    pub fn read(path: &std::path::Path) -> Result<Vec<u8>, String> {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    }
}

/// What to do about a TLS failure in a store's error message, if it is one
/// (the wording of rustls, OpenSSL and librdkafka): `None` for any other
/// error.
pub fn certificate_fix(error: &str) -> Option<&'static str> {
    let e = error.to_ascii_lowercase();
    let unknown_ca = ["unknownissuer", "unknown ca", "self-signed certificate", "self signed certificate", "unable to get local issuer"];
    if unknown_ca.iter().any(|s| e.contains(s)) || (e.contains("certificate verify failed") && !e.contains("hostname")) {
        return Some(
            "the server's certificate is not signed by a CA pgfanout trusts: set tls.ca_file to the PEM file of the CA that signed it",
        );
    }
    if ["notvalidforname", "hostname mismatch", "not valid for name", "ip address mismatch"].iter().any(|s| e.contains(s)) {
        return Some(
            "the server's certificate is not for the host pgfanout connects to: use a host name the certificate lists (its \
             subjectAltName) in the URL",
        );
    }
    if ["certificaterequired", "certificate required", "badcertificate", "bad certificate", "certificate_required"]
        .iter()
        .any(|s| e.contains(s))
    {
        return Some(
            "the server wants a client certificate it trusts: set tls.cert_file and tls.key_file to a certificate (PEM) signed by a \
             CA the server trusts, and its key",
        );
    }
    if e.contains("expired") && e.contains("certificate") {
        return Some("the server's certificate has expired (or the clock is wrong): renew the certificate");
    }
    if ["handshake", "wrong version number", "invalidcontenttype", "corrupt message"].iter().any(|s| e.contains(s)) {
        return Some("the TLS handshake failed: check that the port speaks TLS and that the URL's scheme asks for it (or not)");
    }
    None
}

#[cfg(test)]
mod fix_tests {
    use super::certificate_fix;

    #[test]
    fn certificate_errors_get_their_fix_and_others_none() {
        let ca = certificate_fix("invalid peer certificate: UnknownIssuer").unwrap();
        assert!(ca.contains("tls.ca_file"));
        assert_eq!(certificate_fix("SSL routines::certificate verify failed: unable to get local issuer certificate"), Some(ca));
        assert!(certificate_fix("invalid peer certificate: NotValidForName").unwrap().contains("subjectAltName"));
        assert!(certificate_fix("received fatal alert: CertificateRequired").unwrap().contains("tls.cert_file"));
        assert_eq!(certificate_fix("Connection refused (os error 111)"), None);
    }
}
