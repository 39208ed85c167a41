//! Configuration of the Redis sink (`sinks.<name>` with `type: redis`) and of
//! one pipeline's Redis mapping (`pipelines[i].redis`).
//!
//! Both are plain serde structs with unknown fields rejected; `validate()` is
//! pure (no I/O) so `pgfanout check` can report every mistake with its dotted
//! path before anything connects. Durations, TLS files and secrets are the
//! SDK's shared settings types (`pgfanout_sdk::settings`).

use std::time::Duration;

use pgfanout_sdk::settings::{default_connect_timeout, duration, option_duration, Problems, Secret, TlsFiles};
use pgfanout_sdk::Template;
use serde::Deserialize;

/// The sink: where Redis is and how to write to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSinkConfig {
    /// `redis://[user:password@]host[:port][/db]` or `rediss://…` for TLS.
    pub url: String,
    /// ACL user; overrides a user in the URL.
    pub username: Option<String>,
    /// Password (use `${VAR}` interpolation); overrides one in the URL.
    pub password: Option<Secret>,
    /// TLS settings for `rediss://` URLs.
    #[serde(default)]
    pub tls: TlsFiles,
    /// Time allowed to open a connection (default `5s`).
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Time allowed for one batch's reply (default `30s`).
    #[serde(default = "default_response_timeout", with = "duration")]
    pub response_timeout: Duration,
    /// Upper bound of the reconnect backoff (default `5s`).
    #[serde(default = "default_reconnect_max_delay", with = "duration")]
    pub reconnect_max_delay: Duration,
    /// Connections, and key-hash lanes written in parallel (default 2).
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Records applied by one server-side script call (default 500). Larger
    /// calls cost fewer round trips but block Redis longer per call.
    #[serde(default = "default_records_per_call")]
    pub records_per_call: usize,
    /// Batches in flight at once (default 3; 1: one batch at a time). Each
    /// lane keeps sending the next batch's calls on its connection without
    /// waiting for the replies to the one before; Redis runs them in order.
    #[serde(default = "default_in_flight_batches")]
    pub in_flight_batches: usize,
    /// Prefix of the companion version hashes (default `pgfanout:v:`).
    #[serde(default = "default_version_prefix")]
    pub version_prefix: String,
    /// How long a delete's version tombstone is kept (default `1d`). It must
    /// outlive the longest replay: an older insert replayed after the
    /// tombstone expired would bring the row back.
    #[serde(default = "default_tombstone_ttl", with = "duration")]
    pub tombstone_ttl: Duration,
}

fn default_response_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_reconnect_max_delay() -> Duration {
    Duration::from_secs(5)
}
fn default_connections() -> usize {
    2
}
fn default_records_per_call() -> usize {
    500
}
fn default_in_flight_batches() -> usize {
    3
}
fn default_version_prefix() -> String {
    "pgfanout:v:".into()
}
fn default_tombstone_ttl() -> Duration {
    Duration::from_secs(86_400)
}

/// Which Redis data type a mapping writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MappingKind {
    Hash,
    String,
    Json,
    Set,
    SortedSet,
    Stream,
}

impl MappingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MappingKind::Hash => "hash",
            MappingKind::String => "string",
            MappingKind::Json => "json",
            MappingKind::Set => "set",
            MappingKind::SortedSet => "sorted_set",
            MappingKind::Stream => "stream",
        }
    }
}

/// One pipeline's mapping from a change to Redis keys. Which options apply
/// depends on `type` (see the crate README); `validate()` says which are
/// required and which are not allowed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisMapping {
    #[serde(rename = "type")]
    pub kind: MappingKind,
    /// Key template, e.g. `cart:{user_id}`.
    pub key: String,
    /// hash: field template; with it each row is one field of the key.
    pub field: Option<String>,
    /// hash with `field`: value template (default: the row as JSON).
    pub value: Option<String>,
    /// string: write only this column's JSON instead of the row.
    pub column: Option<String>,
    /// set / sorted_set: member template.
    pub member: Option<String>,
    /// sorted_set: the column holding the score (a number).
    pub score: Option<String>,
    /// stream: approximate MAXLEN trimming (`XADD key MAXLEN ~ n`).
    pub maxlen: Option<u64>,
    /// Expiry refreshed on every write, e.g. `7d`.
    #[serde(default, with = "option_duration")]
    pub ttl: Option<Duration>,
}

impl RedisSinkConfig {
    /// Every problem found, as (dotted sub-path, message). Empty when valid.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Problems::default();
        match self.url.split_once("://") {
            Some(("redis" | "rediss", _)) => {
                if redis::IntoConnectionInfo::into_connection_info(self.url.as_str()).is_err() {
                    problems.add("url", format!("{:?} is not a valid Redis URL", redact(&self.url)));
                }
            }
            _ => problems.add("url", format!("{:?} must start with redis:// or rediss://", redact(&self.url))),
        }
        problems.nonzero(&[
            ("connect_timeout", self.connect_timeout),
            ("response_timeout", self.response_timeout),
            ("reconnect_max_delay", self.reconnect_max_delay),
            ("tombstone_ttl", self.tombstone_ttl),
        ]);
        problems.between("connections", self.connections, 1, 64);
        problems.between("records_per_call", self.records_per_call, 1, 100_000);
        problems.between("in_flight_batches", self.in_flight_batches, 1, 64);
        if self.version_prefix.is_empty() {
            problems.add("version_prefix", "must not be empty (version hashes would collide with data keys)");
        }
        problems.nested("tls", self.tls.validate());
        problems.into()
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.url.starts_with("rediss://")
    }
}

/// The URL with any password replaced, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

impl RedisMapping {
    /// Every problem found, as (dotted sub-path, message). Empty when valid.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errors: Vec<(String, String)> = Vec::new();
        let mut template = |path: &str, t: &Option<String>| {
            if let Some(t) = t {
                if let Err(e) = Template::parse(t) {
                    errors.push((path.to_string(), e.to_string()));
                }
            }
        };
        template("key", &Some(self.key.clone()));
        template("field", &self.field);
        template("value", &self.value);
        template("member", &self.member);
        let kind = self.kind.as_str();
        let mut err = |path: &str, msg: String| errors.push((path.to_string(), msg));
        let allowed: &[&str] = match self.kind {
            MappingKind::Hash => &["field", "value"],
            MappingKind::String => &["column"],
            MappingKind::Json => &[],
            MappingKind::Set => &["member"],
            MappingKind::SortedSet => &["member", "score"],
            MappingKind::Stream => &["maxlen"],
        };
        for (name, set) in [
            ("field", self.field.is_some()),
            ("value", self.value.is_some()),
            ("column", self.column.is_some()),
            ("member", self.member.is_some()),
            ("score", self.score.is_some()),
            ("maxlen", self.maxlen.is_some()),
        ] {
            if set && !allowed.contains(&name) {
                err(name, format!("is not an option of type {kind} (it takes: {})", allowed.join(", ")));
            }
        }
        if self.key.trim().is_empty() {
            err("key", "must not be empty".into());
        }
        if self.kind == MappingKind::Hash && self.value.is_some() && self.field.is_none() {
            err("value", "needs `field` (a hash without `field` stores every column as a field)".into());
        }
        if matches!(self.kind, MappingKind::Set | MappingKind::SortedSet) && self.member.is_none() {
            err("member", format!("is required for type {kind} (a template such as \"{{id}}\")"));
        }
        if self.kind == MappingKind::SortedSet && self.score.is_none() {
            err("score", "is required for type sorted_set (the column holding the score)".into());
        }
        for (name, col) in [("score", &self.score), ("column", &self.column)] {
            if let Some(c) = col {
                if c.trim().is_empty() || c.contains('{') {
                    err(name, format!("{c:?} must be a plain column name, not a template"));
                }
            }
        }
        if self.maxlen == Some(0) {
            err("maxlen", "must be at least 1".into());
        }
        if self.ttl.is_some_and(|d| d.as_secs() == 0) {
            err("ttl", "must be at least 1s".into());
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(yaml: &str) -> RedisMapping {
        serde_json::from_str(yaml).unwrap()
    }

    fn paths(errors: Vec<(String, String)>) -> Vec<String> {
        errors.into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn cart_example_is_valid() {
        let m = mapping(r#"{"type":"hash","key":"cart:{user_id}","field":"{product_id}","value":"{quantity}","ttl":"7d"}"#);
        assert_eq!(m.validate(), vec![]);
    }

    #[test]
    fn required_and_foreign_options_are_reported() {
        let m = mapping(r#"{"type":"sorted_set","key":"k:{a}","maxlen":3}"#);
        assert_eq!(paths(m.validate()), vec!["maxlen", "member", "score"]);
        let m = mapping(r#"{"type":"hash","key":"k:{a","value":"{b}","ttl":"0s"}"#);
        assert_eq!(paths(m.validate()), vec!["key", "value", "ttl"]);
        assert!(serde_json::from_str::<RedisMapping>(r#"{"type":"hash","key":"k","ttl":"soon"}"#)
            .unwrap_err()
            .to_string()
            .contains("invalid duration"));
        let m = mapping(r#"{"type":"string","key":"k","column":"{c}"}"#);
        assert_eq!(paths(m.validate()), vec!["column"]);
    }

    #[test]
    fn unknown_fields_and_kinds_are_rejected() {
        assert!(serde_json::from_str::<RedisMapping>(r#"{"type":"hash","key":"k","feild":"x"}"#).is_err());
        assert!(serde_json::from_str::<RedisMapping>(r#"{"type":"list","key":"k"}"#).is_err());
        assert!(serde_json::from_str::<RedisSinkConfig>(r#"{"url":"redis://x","pasword":"x"}"#).is_err());
    }

    #[test]
    fn sink_defaults_and_checks() {
        let c: RedisSinkConfig = serde_json::from_str(r#"{"url":"redis://127.0.0.1:6379/2"}"#).unwrap();
        assert_eq!(c.validate(), vec![]);
        assert_eq!((c.connections, c.in_flight_batches), (2, 3));
        let c: RedisSinkConfig = serde_json::from_str(
            r#"{"url":"http://u:secret@h","connections":0,"in_flight_batches":0,"tombstone_ttl":"0s","tls":{"cert_file":"c.pem"}}"#,
        )
        .unwrap();
        let errors = c.validate();
        assert_eq!(paths(errors.clone()), vec!["url", "tombstone_ttl", "connections", "in_flight_batches", "tls.cert_file"]);
        assert!(!errors[0].1.contains("secret"), "{:?}", errors[0]);
    }
}
