//! A small HTTP client for the few endpoints the sink uses (`_bulk`,
//! `_mget`, index create/exists, `_delete_by_query`, `GET /`), with node
//! failover, basic or API-key auth and TLS.
//!
//! Why not the `elasticsearch` crate: its 8.x client sends
//! `compatible-with=8` media types that OpenSearch refuses, and it brings a
//! large generated API for five endpoints; `opensearch` would be the mirror
//! problem. Plain JSON over `reqwest` serves both engines the same way.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pgfanout_sdk::SinkError;
use reqwest::{Method, StatusCode};

use crate::config::SearchSinkConfig;

/// A response: status and body.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub body: bytes::Bytes,
}

impl Response {
    pub fn json(&self) -> Result<serde_json::Value, SinkError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| SinkError::Retriable(format!("search node sent a non-JSON body ({e}): {}", self.text(200))))
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
    pub fn new(cfg: &SearchSinkConfig) -> Result<Client, SinkError> {
        let mut builder = reqwest::Client::builder().timeout(cfg.request_timeout).connect_timeout(Duration::from_secs(5)).use_rustls_tls();
        if let Some(ca) = &cfg.tls.ca_file {
            let pem = pgfanout_sdk::settings::TlsFiles::read(ca).map_err(|e| SinkError::Permanent(format!("search sink tls: {e}")))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| SinkError::Permanent(format!("search sink tls: {}: {e}", ca.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        if cfg.tls.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|e| SinkError::Permanent(format!("search sink: cannot build the HTTP client: {e}")))?;
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
    pub async fn send(&self, method: Method, path: &str, body: Option<(Vec<u8>, &str)>) -> Result<Response, SinkError> {
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
    ) -> Result<Response, SinkError> {
        let n = self.urls.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
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
                    let body = resp
                        .bytes()
                        .await
                        .map_err(|e| SinkError::Retriable(format!("search node {}: reading the response: {e}", self.urls[i])))?;
                    return Ok(Response { status, body });
                }
                Err(e) => last = format!("search node {}: {e}", self.urls[i]),
            }
        }
        Err(SinkError::Retriable(last))
    }

    /// Like [`send`](Self::send), turning statuses that concern the whole
    /// cluster (429, 5xx, auth) into retriable errors.
    pub async fn call(&self, method: Method, path: &str, body: Option<(Vec<u8>, &str)>) -> Result<Response, SinkError> {
        Self::cluster_status(self.send(method, path, body).await?)
    }

    /// Statuses that concern the whole cluster (429, 5xx, auth) as
    /// retriable errors; any other response as it is.
    pub fn cluster_status(resp: Response) -> Result<Response, SinkError> {
        match resp.status.as_u16() {
            401 | 403 => Err(SinkError::Retriable(format!(
                "search cluster refused the credentials ({}): check username/password or api_key: {}",
                resp.status,
                resp.text(300)
            ))),
            429 | 500..=599 => Err(SinkError::Retriable(format!("search cluster answered {}: {}", resp.status, resp.text(300)))),
            _ => Ok(resp),
        }
    }
}
