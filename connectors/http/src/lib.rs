//! The `http` sink: change records POSTed to a webhook.
//!
//! - **Requests.** By default each batch is one `POST` of a JSON array of
//!   change records (the native format); `batch: false` sends one record per
//!   request. Headers: `Content-Type: application/json`, the configured
//!   `headers`, `Authorization` (`bearer_token` or `basic`),
//!   `X-Pgfanout-Signature: sha256=<hex HMAC-SHA256 of the body>` with
//!   `hmac_secret`, and `Idempotency-Key`: the first and last positions of
//!   the body, the same on every retry of it.
//! - **Outcomes.** 2xx: durable. 429 and 503 with `Retry-After` (seconds or
//!   an HTTP date): waited for (at most `max_retry_after`), then sent again
//!   here. Other 5xx, 408, 429 without `Retry-After`, timeouts and network
//!   errors: retriable, the runtime sends the batch again with backoff.
//!   Other 4xx: the receiver refuses the records for good; the runtime then
//!   sends them one by one and dead-letters those refused.
//! - **Order.** One request at a time, in commit order: a receiver sees each
//!   key's changes in order, and after a retry or a restart (at-least-once)
//!   a copy of changes it already has, with the same positions to drop
//!   them by (`commit_lsn`, then `lsn`, in each record).

use std::collections::BTreeMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use pgfanout_sdk::connector::{boxed_sink, TypedConnector};
use pgfanout_sdk::settings::{duration, Problems, Secret};
use pgfanout_sdk::{BatchOutcome, Check, Sink, SinkError, SinkRecord};
use serde::Deserialize;
use sha2::Sha256;
use tracing::{debug, warn};

/// The connector: `type: http`, settings [`HttpSettings`], no mapping.
pub static CONNECTOR: TypedConnector<HttpSettings, ()> =
    TypedConnector::without_mapping("http", HttpSettings::validate, |settings, _| boxed_sink(async move { Ok(HttpSink::new(settings)?) }))
        .with_aliases(&["webhook"])
        .with_doctor(|settings, _| Box::pin(async move { settings.doctor().await }));

/// `sinks.<name>` with `type: http`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// The endpoint records are POSTed to (`http://` or `https://`).
    pub url: String,
    /// More request headers (e.g. `X-Tenant: shop`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `Authorization: Bearer <token>`.
    pub bearer_token: Option<Secret>,
    /// `Authorization: Basic ...`.
    pub basic: Option<BasicAuth>,
    /// Signs each body: `X-Pgfanout-Signature: sha256=<hex HMAC-SHA256>`.
    pub hmac_secret: Option<Secret>,
    /// One request per batch, a JSON array (default true); false: one
    /// request per record, a JSON object.
    #[serde(default = "default_true")]
    pub batch: bool,
    /// How long one request may take (default 10s).
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// The longest `Retry-After` honoured (default 60s; longer ones wait
    /// this long).
    #[serde(default = "default_max_retry_after", with = "duration")]
    pub max_retry_after: Duration,
}

/// `basic: { username, password }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    pub password: Secret,
}

fn default_true() -> bool {
    true
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_retry_after() -> Duration {
    Duration::from_secs(60)
}

/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Pgfanout-Signature";

/// `sha256=<hex>` of `body` under `secret`, as [`SIGNATURE_HEADER`] carries it.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl HttpSettings {
    fn validate(&self) -> Vec<(String, String)> {
        let mut p = Problems::default();
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            p.add("url", "expected an http:// or https:// URL");
        } else if reqwest::Url::parse(&self.url).is_err() {
            p.add("url", "is not a valid URL");
        }
        if self.bearer_token.is_some() && self.basic.is_some() {
            p.add("basic", "give bearer_token or basic, not both");
        }
        for name in self.headers.keys() {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                p.add(format!("headers.{name}"), "is not a valid header name");
            }
        }
        p.nonzero(&[("timeout", self.timeout)]);
        p.into()
    }

    /// `doctor`: the endpoint answers (any status: a GET or HEAD may not be
    /// what it serves, but it is reachable).
    async fn doctor(&self) -> Vec<Check> {
        let what = format!("{} reachable", self.url);
        let client = match reqwest::Client::builder().timeout(self.timeout).build() {
            Ok(c) => c,
            Err(e) => return vec![Check::failed(what, e.to_string())],
        };
        match client.head(&self.url).send().await {
            Ok(r) => vec![Check::ok(format!("{what} (HEAD answered {})", r.status().as_u16()))],
            Err(e) => vec![Check::failed(what, e.to_string())],
        }
    }
}

/// The sink: one client, one request at a time.
pub struct HttpSink {
    settings: HttpSettings,
    client: reqwest::Client,
    /// The size of the last body, to size the next one.
    last_body: usize,
}

impl HttpSink {
    pub fn new(settings: &HttpSettings) -> Result<HttpSink, HttpSinkError> {
        let client = reqwest::Client::builder().timeout(settings.timeout).build().map_err(|e| HttpSinkError::Invalid(e.to_string()))?;
        Ok(HttpSink { settings: settings.clone(), client, last_body: 0 })
    }

    /// Sends `records` as one body until the receiver answers for good.
    async fn send(&mut self, records: &[SinkRecord]) -> Result<(), HttpSinkError> {
        let (Some(first), Some(last)) = (records.first(), records.last()) else { return Ok(()) };
        let mut body = Vec::with_capacity(self.last_body);
        if self.settings.batch {
            body.push(b'[');
            for (i, r) in records.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                r.change.write_json(&mut body);
            }
            body.push(b']');
        } else {
            first.change.write_json(&mut body);
        }
        self.last_body = body.len();
        let key = format!("{}-{}", first.change.position(), last.change.position());
        // Built and signed once: a retry sends the same bytes (a reference
        // count, not a copy).
        let signature = self.settings.hmac_secret.as_ref().map(|secret| signature(secret.expose(), &body));
        let payload = bytes::Bytes::from(body);
        loop {
            let mut req = self
                .client
                .post(&self.settings.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", &key)
                .body(payload.clone());
            for (k, v) in &self.settings.headers {
                req = req.header(k, v);
            }
            if let Some(t) = &self.settings.bearer_token {
                req = req.bearer_auth(t.expose());
            }
            if let Some(b) = &self.settings.basic {
                req = req.basic_auth(&b.username, Some(b.password.expose()));
            }
            if let Some(signature) = &signature {
                req = req.header(SIGNATURE_HEADER, signature);
            }
            let response = req.send().await.map_err(|e| HttpSinkError::Network(e.without_url().to_string()))?;
            let status = response.status();
            if status.is_success() {
                debug!(records = records.len(), status = status.as_u16(), "webhook accepted");
                return Ok(());
            }
            let retry_after =
                response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
            let text = response.text().await.unwrap_or_default();
            let text: String = text.chars().take(300).collect();
            match (status.as_u16(), retry_after) {
                (429 | 503, Some(wait)) => {
                    let wait = wait.min(self.settings.max_retry_after);
                    warn!(status = status.as_u16(), ?wait, "webhook asked to retry later");
                    tokio::time::sleep(wait).await;
                }
                (408 | 429, None) | (500..=599, _) => return Err(HttpSinkError::Status { status: status.as_u16(), body: text }),
                _ => return Err(HttpSinkError::Refused { status: status.as_u16(), body: text }),
            }
        }
    }
}

/// `Retry-After`: delay-seconds or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate(v.trim())?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or_default())
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn httpdate(v: &str) -> Option<std::time::SystemTime> {
    let parts: Vec<&str> = v.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else { return None };
    let month =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"].iter().position(|m| m == month)? as i64 + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else { return None };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + m * 60 + s;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// A failure of the `http` sink.
#[derive(Debug, thiserror::Error)]
pub enum HttpSinkError {
    /// Settings the client refuses. Permanent.
    #[error("http sink: {0}")]
    Invalid(String),
    /// No answer (connection refused, timeout). Retriable.
    #[error("webhook unreachable: {0}")]
    Network(String),
    /// 5xx, 408, or 429 without Retry-After. Retriable.
    #[error("webhook answered {status}: {body}")]
    Status { status: u16, body: String },
    /// Another 4xx: the records are refused. Permanent.
    #[error("webhook refused the records with {status}: {body}")]
    Refused { status: u16, body: String },
}

impl pgfanout_sdk::StoreError for HttpSinkError {
    fn is_retriable(&self) -> bool {
        matches!(self, HttpSinkError::Network(_) | HttpSinkError::Status { .. })
    }
}

impl Sink for HttpSink {
    async fn write(&mut self, batch: &[SinkRecord]) -> BatchOutcome {
        if self.settings.batch {
            self.send(batch).await.map_err(SinkError::from)?;
        } else {
            for one in batch.chunks(1) {
                self.send(one).await.map_err(SinkError::from)?;
            }
        }
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        let past = parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(past, Duration::ZERO, "a date in the past: no wait");
        assert_eq!(httpdate("Sun, 06 Nov 1994 08:49:37 GMT"), Some(std::time::UNIX_EPOCH + Duration::from_secs(784_111_777)));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn the_signature_is_the_hmac_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn settings_are_checked() {
        let s: HttpSettings = serde_json::from_value(serde_json::json!({"url": "ftp://x"})).unwrap();
        assert!(s.validate().iter().any(|(p, _)| p == "url"));
        let s: HttpSettings = serde_json::from_value(
            serde_json::json!({"url": "http://h/x", "bearer_token": "t", "basic": {"username": "u", "password": "p"}}),
        )
        .unwrap();
        assert!(s.validate().iter().any(|(p, _)| p == "basic"));
    }
}
