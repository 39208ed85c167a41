//! A test CA and a server certificate, made with `openssl` for servers that
//! speak TLS in tests: the certificate is for `localhost` and 127.0.0.1,
//! signed by a CA made for it; a second CA signed nothing (for the test
//! that a wrong CA is refused).

use std::path::{Path, PathBuf};

/// The files [`make_certificates`] wrote (PEM).
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// The CA that signed the server's certificate.
    pub ca_file: PathBuf,
    /// Another CA, which signed nothing the server has.
    pub other_ca_file: PathBuf,
    /// The server's certificate (for `localhost`, IP 127.0.0.1).
    pub cert_file: PathBuf,
    /// Its private key (unencrypted).
    pub key_file: PathBuf,
}

/// Makes, in `dir`, `ca.pem`, `other-ca.pem`, and `server.pem` /
/// `server.key` signed by `ca.pem`, valid for two days.
pub fn make_certificates(dir: &Path) -> TestCerts {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    for ca in ["ca", "other-ca"] {
        let subject = format!("/CN=pgfanout test {ca}");
        let (key, pem) = (format!("{ca}.key"), format!("{ca}.pem"));
        run(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subject, "-keyout", &key, "-out", &pem]);
    }
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("write san.ext");
    run(&["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr"]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
    TestCerts {
        ca_file: dir.join("ca.pem"),
        other_ca_file: dir.join("other-ca.pem"),
        cert_file: dir.join("server.pem"),
        key_file: dir.join("server.key"),
    }
}

impl TestCerts {
    /// Writes `server.p12` beside the server's certificate: its certificate
    /// and key in a PKCS12 keystore with the password `changeit`, for JVM
    /// servers. Returns its path.
    pub fn pkcs12(&self) -> PathBuf {
        let dir = self.cert_file.parent().expect("the certificates' directory");
        let out = std::process::Command::new("openssl")
            .args(["pkcs12", "-export", "-in", "server.pem", "-inkey", "server.key", "-out", "server.p12", "-passout", "pass:changeit"])
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(out.status.success(), "openssl pkcs12: {}", String::from_utf8_lossy(&out.stderr));
        dir.join("server.p12")
    }
}
