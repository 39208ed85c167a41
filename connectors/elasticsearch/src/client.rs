//! A small HTTP client for the few endpoints the sink uses (`_bulk`,
//! `_mget`, index create/exists, `_delete_by_query`, `GET /`), with node
//! failover, basic or API-key auth and TLS.
//!
//! Why not the `elasticsearch` crate: its 8.x client sends
//! `compatible-with=8` media types that OpenSearch refuses, and it brings a
//! large generated API for five endpoints; `opensearch` would be the mirror
//! problem. Plain JSON over `reqwest` serves both engines the same way.
//!
//! Transport failures and statuses that concern the whole cluster are
//! classified here, once ([`Client::cluster_status`], [`Response::success`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::config::SearchSinkConfig;
use crate::error::{ErrorReply, EsError};

/// A response: status and body.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub body: bytes::Bytes,
}

impl Response {
    pub fn json(&self) -> Result<serde_json::Value, EsError> {
        serde_json::from_slice(&self.body).map_err(|source| EsError::NotJson { source, text: self.text(200) })
    }

    /// The response when its status is a success, else `request`'s error
    /// (retriable: the sink sends it again later).
    pub fn success(self, request: impl Into<String>) -> Result<Response, EsError> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(EsError::Request { request: request.into(), reply: self.error_reply(300) })
        }
    }

    /// The response as an error: its status, the engine's error type and
    /// `max` characters of its body.
    pub fn error_reply(&self, max: usize) -> ErrorReply {
        ErrorReply::new(self.status, &self.body, max)
    }

    pub fn text(&self, max: usize) -> String {
        let s = String::from_utf8_lossy(&self.body);
        s.chars().take(max).collect()
    }
}

pub struct Client {
    http: reqwest::Client,
    urls: Vec<String>,
    /// The node tried first (the last one that answered).
    current: AtomicUsize,
    auth: Auth,
}

enum Auth {
    None,
    Basic(String, String),
    ApiKey(String),
}

impl Client {
    pub fn new(cfg: &SearchSinkConfig) -> Result<Client, EsError> {
        let mut builder = reqwest::Client::builder().timeout(cfg.request_timeout).connect_timeout(Duration::from_secs(5)).use_rustls_tls();
        if let Some(ca) = &cfg.tls.ca_file {
            let pem = pgfanout_sdk::settings::TlsFiles::read(ca).map_err(|e| EsError::Tls(e.to_string()))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| EsError::Tls(format!("{}: {e}", ca.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        if let (Some(cert), Some(key)) = (&cfg.tls.cert_file, &cfg.tls.key_file) {
            // reqwest's rustls identity: the key and the certificate chain in one PEM buffer
            let mut pem = pgfanout_sdk::settings::TlsFiles::read(key).map_err(EsError::Tls)?;
            pem.push(b'\n');
            pem.extend(pgfanout_sdk::settings::TlsFiles::read(cert).map_err(EsError::Tls)?);
            let identity =
                reqwest::Identity::from_pem(&pem).map_err(|e| EsError::Tls(format!("{} / {}: {e}", cert.display(), key.display())))?;
            builder = builder.identity(identity);
        }
        if cfg.tls.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(EsError::HttpClient)?;
        let auth = match (&cfg.username, &cfg.password, &cfg.api_key) {
            (_, _, Some(key)) => Auth::ApiKey(format!("ApiKey {}", key.expose())),
            (Some(user), password, None) => {
                Auth::Basic(user.clone(), password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default())
            }
            _ => Auth::None,
        };
        let urls = cfg.urls.iter().map(|u| u.trim_end_matches('/').to_string()).collect();
        Ok(Client { http, urls, current: AtomicUsize::new(0), auth })
    }

    /// Sends a request to the current node, failing over to the next on a
    /// connection error. Transport failures are retriable errors.
    pub async fn send(&self, method: Method, path: &str, body: Option<(Vec<u8>, &str)>) -> Result<Response, EsError> {
        self.send_tagged(method, path, body.map(|(bytes, content_type)| (bytes::Bytes::from(bytes), content_type)), None).await
    }

    /// [`send`](Self::send) with an `X-Opaque-Id` header, which the node
    /// shows on the request's tasks (`GET _tasks`).
    pub async fn send_tagged(
        &self,
        method: Method,
        path: &str,
        body: Option<(bytes::Bytes, &str)>,
        opaque_id: Option<&str>,
    ) -> Result<Response, EsError> {
        let n = self.urls.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = EsError::NoNode;
        for k in 0..n {
            let i = (start + k) % n;
            let mut req = self.http.request(method.clone(), format!("{}{path}", self.urls[i]));
            req = match &self.auth {
                Auth::None => req,
                Auth::Basic(user, password) => req.basic_auth(user, Some(password)),
                Auth::ApiKey(header) => req.header(reqwest::header::AUTHORIZATION, header),
            };
            if let Some(id) = opaque_id {
                req = req.header("X-Opaque-Id", id);
            }
            // Shared, not copied, for each node tried.
            if let Some((bytes, content_type)) = &body {
                req = req.header(reqwest::header::CONTENT_TYPE, *content_type).body(bytes.clone());
            }
            match req.send().await {
                Ok(resp) => {
                    self.current.store(i, Ordering::Relaxed);
                    let status = resp.status();
                    let body = resp.bytes().await.map_err(|source| EsError::BodyLost { node: self.urls[i].clone(), source })?;
                    return Ok(Response { status, body });
                }
                Err(source) => last = EsError::Unreachable { node: self.urls[i].clone(), source },
            }
        }
        Err(last)
    }

    /// Like [`send`](Self::send), turning statuses that concern the whole
    /// cluster (429, 5xx, auth) into retriable errors.
    pub async fn call(&self, method: Method, path: &str, body: Option<(Vec<u8>, &str)>) -> Result<Response, EsError> {
        Self::cluster_status(self.send(method, path, body).await?)
    }

    /// Statuses that concern the whole cluster (429, 5xx, auth) as
    /// retriable errors; any other response as it is.
    pub fn cluster_status(resp: Response) -> Result<Response, EsError> {
        match resp.status.as_u16() {
            401 | 403 => Err(EsError::Credentials(resp.error_reply(300))),
            429 | 500..=599 => Err(EsError::Cluster(resp.error_reply(300))),
            _ => Ok(resp),
        }
    }

    /// `GET /`: the engine and version (`opensearch 2.19.0`), or why it
    /// does not answer.
    pub async fn info(&self) -> Result<String, EsError> {
        let resp = self.call(Method::GET, "/", None).await?;
        if !resp.status.is_success() {
            return Err(EsError::Cluster(resp.error_reply(300)));
        }
        let j = resp.json()?;
        let dist = j["version"]["distribution"].as_str().unwrap_or("elasticsearch");
        Ok(format!("{dist} {}", j["version"]["number"].as_str().unwrap_or("?")))
    }
}
