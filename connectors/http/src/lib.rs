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
//!   errors: the request is sent again here (up to 5 times, 100 ms
//!   doubling), then the batch fails and the runtime sends it again with
//!   backoff.
//!   Other 4xx: the receiver refuses the records for good; the runtime then
//!   sends them one by one and dead-letters those refused.
//! - **Order.** One request at a time, in commit order: a receiver sees each
//!   key's changes in order, and after a retry or a restart (at-least-once)
//!   a copy of changes it already has, with the same positions to drop
//!   them by (`commit_lsn`, then `lsn`, in each record).
//! - **Mapping** (optional, per pipeline: `http: { path, format }`).
//!   `path` is a template appended to `url` (`/events/{table}`); records of
//!   one batch bound for different paths go in separate requests, in order.
//!   `format: outbox` is the outbox event router: each outbox insert (or
//!   transactional logical message) is one request whose body is the
//!   event's payload, with headers `X-Event-Id` and `X-Event-Type` and
//!   `Idempotency-Key` the event id (else its position); other changes are
//!   not sent.

use std::collections::BTreeMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use pgfanout_sdk::connector::{boxed_sink, TypedConnector};
use pgfanout_sdk::settings::{duration, Problems, Secret};
use pgfanout_sdk::{BatchOutcome, Check, OutboxColumns, Rejected, Sink, SinkError, SinkRecord, Template};
use serde::Deserialize;
use sha2::Sha256;
use tracing::{debug, warn};

/// The connector: `type: http`, settings [`HttpSettings`], an optional
/// mapping [`HttpMapping`].
pub static CONNECTOR: TypedConnector<HttpSettings, HttpMapping> =
    TypedConnector::new("http", HttpSettings::validate, HttpMapping::validate, |settings, mappings| {
        boxed_sink(async move { Ok(HttpSink::new(settings, mappings)?) })
    })
    .with_optional_mapping()
    .with_aliases(&["webhook"])
    .with_doctor(|settings, _| Box::pin(async move { settings.doctor().await }));

/// A pipeline's `http:` section (optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpMapping {
    /// A template appended to the sink's `url`, e.g. `/events/{table}` or,
    /// for outbox events, `/{aggregatetype}`.
    pub path: Option<String>,
    #[serde(default)]
    pub format: HttpFormat,
    /// `format: outbox`: the outbox table's columns (Debezium's defaults).
    #[serde(default)]
    pub outbox: OutboxColumns,
}

/// What a request carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpFormat {
    /// Change records (one, or a batch as an array).
    #[default]
    Native,
    /// Outbox events, one per request, the payload as the body.
    Outbox,
}

impl HttpMapping {
    fn validate(&self) -> Vec<(String, String)> {
        let mut p = Problems::default();
        if let Some(path) = &self.path {
            if let Err(e) = Template::parse(path) {
                p.add("path", e.to_string());
            }
        }
        if self.format != HttpFormat::Outbox && self.outbox != OutboxColumns::default() {
            p.add("outbox", "only applies with format: outbox");
        }
        p.into()
    }
}

/// A route's mapping, compiled.
#[derive(Debug, Clone)]
struct Route {
    path: Option<Template>,
    outbox: Option<OutboxColumns>,
}

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

/// How often one request is sent again before its batch fails.
const IN_PLACE_RETRIES: u32 = 5;

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
            Err(e) => vec![Check::failed(what, pgfanout_sdk::causes(&e))],
        }
    }
}

/// The sink: one client, one request at a time.
pub struct HttpSink {
    settings: HttpSettings,
    routes: Vec<Route>,
    client: reqwest::Client,
    /// The size of the last body, to size the next one.
    last_body: usize,
}

/// One request: where, what, and its extra headers.
struct Request {
    url: String,
    body: Vec<u8>,
    idempotency_key: String,
    headers: Vec<(&'static str, String)>,
}

impl HttpSink {
    pub fn new(settings: &HttpSettings, mappings: &[HttpMapping]) -> Result<HttpSink, HttpSinkError> {
        let client = reqwest::Client::builder().timeout(settings.timeout).build().map_err(|e| HttpSinkError::Invalid(e.to_string()))?;
        let routes = mappings
            .iter()
            .map(|m| {
                let path = m.path.as_deref().map(Template::parse).transpose().map_err(|e| HttpSinkError::Invalid(format!("path: {e}")))?;
                Ok(Route { path, outbox: (m.format == HttpFormat::Outbox).then(|| m.outbox.clone()) })
            })
            .collect::<Result<_, HttpSinkError>>()?;
        Ok(HttpSink { settings: settings.clone(), routes, client, last_body: 0 })
    }

    fn route(&self, record: &SinkRecord) -> Option<&Route> {
        self.routes.get(record.route)
    }

    /// The URL of `record`: the sink's `url` plus its route's `path`.
    fn url(&self, record: &SinkRecord) -> Result<String, String> {
        match self.route(record).and_then(|r| r.path.as_ref()) {
            None => Ok(self.settings.url.clone()),
            Some(t) => {
                let mut url = self.settings.url.trim_end_matches('/').to_string();
                let path = t.render(&record.change).map_err(|e| format!("path: {e}"))?;
                if !path.starts_with('/') {
                    url.push('/');
                }
                url.push_str(&path);
                reqwest::Url::parse(&url).map_err(|e| format!("path: {url:?} is not a valid URL: {e}"))?;
                Ok(url)
            }
        }
    }

    /// Sends `records` (one route format, one URL) as one body.
    async fn send_records(&mut self, url: String, records: &[SinkRecord]) -> Result<(), HttpSinkError> {
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
        let idempotency_key = format!("{}-{}", first.change.position(), last.change.position());
        self.send(Request { url, body, idempotency_key, headers: Vec::new() }, records.len()).await
    }

    /// After a retriable failure of one request: waits (100 ms, doubling,
    /// at most 2 s) and says to send it again, up to [`IN_PLACE_RETRIES`]
    /// times; then the batch fails and the runtime retries it with its own
    /// backoff. Retrying the request in place keeps a batch of many
    /// requests (outbox events, one per path) from starting over, and
    /// re-sending what was accepted, at every failure.
    async fn retry_in_place(&self, attempts: &mut u32, error: &HttpSinkError) -> bool {
        if *attempts >= IN_PLACE_RETRIES {
            return false;
        }
        let wait = Duration::from_millis(100 << (*attempts).min(5)).min(Duration::from_secs(2));
        *attempts += 1;
        debug!(%error, ?wait, attempt = *attempts, "webhook request failed; sending it again");
        pgfanout_sdk::health::retrying(error);
        tokio::time::sleep(wait).await;
        true
    }

    /// Sends one request until the receiver answers for good.
    async fn send(&mut self, request: Request, records: usize) -> Result<(), HttpSinkError> {
        let Request { url, body, idempotency_key: key, headers } = request;
        // Built and signed once: a retry sends the same bytes (a reference
        // count, not a copy).
        let signature = self.settings.hmac_secret.as_ref().map(|secret| signature(secret.expose(), &body));
        let payload = bytes::Bytes::from(body);
        let mut attempts = 0u32;
        loop {
            let mut req = self
                .client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", &key)
                .body(payload.clone());
            for (k, v) in &headers {
                req = req.header(*k, v);
            }
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
            let response = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    let error = HttpSinkError::Network(pgfanout_sdk::causes(&e.without_url()));
                    if self.retry_in_place(&mut attempts, &error).await {
                        continue;
                    }
                    return Err(error);
                }
            };
            let status = response.status();
            if status.is_success() {
                debug!(records, status = status.as_u16(), "webhook accepted");
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
                (408 | 429, None) | (500..=599, _) => {
                    let error = HttpSinkError::Status { status: status.as_u16(), body: text };
                    if !self.retry_in_place(&mut attempts, &error).await {
                        return Err(error);
                    }
                }
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
        let mut rejected = Vec::new();
        let mut i = 0;
        while i < batch.len() {
            let record = &batch[i];
            let outbox = self.route(record).is_some_and(|r| r.outbox.is_some());
            if outbox && !OutboxColumns::publishes(&record.change) {
                i += 1; // the outbox row's delete, an update, a snapshot row
                continue;
            }
            let url = match self.url(record) {
                Ok(url) => url,
                Err(error) => {
                    rejected.push(Rejected { index: i, error });
                    i += 1;
                    continue;
                }
            };
            if let Some(cols) = self.route(record).and_then(|r| r.outbox.clone()) {
                i += 1;
                let mut body = Vec::new();
                match cols.payload(&record.change) {
                    Ok(v) => v.write_json(&mut body),
                    Err(error) => {
                        rejected.push(Rejected { index: i - 1, error });
                        continue;
                    }
                }
                let headers: Vec<(&'static str, String)> = cols
                    .headers(&record.change)
                    .into_iter()
                    .map(|(name, v)| (if name == "id" { "X-Event-Id" } else { "X-Event-Type" }, v))
                    .collect();
                let idempotency_key = headers
                    .iter()
                    .find(|(name, _)| *name == "X-Event-Id")
                    .map_or_else(|| record.change.position().to_string(), |(_, id)| id.clone());
                self.send(Request { url, body, idempotency_key, headers }, 1).await.map_err(SinkError::from)?;
                continue;
            }
            // Native: the run of records for the same URL (one when not
            // batching) in one request.
            let mut end = i + 1;
            if self.settings.batch {
                while end < batch.len()
                    && self.route(&batch[end]).is_none_or(|r| r.outbox.is_none())
                    && self.url(&batch[end]).as_deref() == Ok(url.as_str())
                {
                    end += 1;
                }
            }
            self.send_records(url, &batch[i..end]).await.map_err(SinkError::from)?;
            i = end;
        }
        Ok(rejected)
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
