//! Settings types shared by every connector and the daemon, deserialized
//! once and the same way everywhere: durations (`10s`, `500ms`, `7d`), byte
//! sizes (`64MiB`), secrets that never print, TLS files, batching limits and
//! retry/backoff settings; and [`Problems`], how a `validate()` reports.
//!
//! A bad value fails deserialization with a message that says what is
//! expected; the caller prefixes it with the dotted path of the field.
//!
//! Why a connector's settings are one flat serde struct of its own, not
//! shared sections flattened in (`#[serde(flatten)]`): flatten buffers the
//! values, so [`lenient`] could no longer take `"3"` for a number, and an
//! unknown field would no longer be answered with the list of known ones.
//! What the stores share is the types of the fields (this module) and the
//! rules their `validate()` applies ([`Problems`]).

mod backoff;
pub mod lenient;
mod problems;
mod secret;
mod tls;
mod units;

use std::time::Duration;

use serde::Deserialize;

pub use backoff::Backoff;
pub use problems::Problems;
pub use secret::Secret;
pub use tls::{certificate_fix, TlsFiles};
pub use units::{duration, option_duration, parse_duration, parse_size, ByteSize};

/// The usual time allowed to open a connection to a store: 5s.
pub fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

/// How many records and bytes one request to a store may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchLimits {
    /// Most records (actions, statements, messages) per request.
    #[serde(default = "BatchLimits::default_records")]
    pub max_records: usize,
    /// Most bytes per request; a larger batch is split.
    #[serde(default = "BatchLimits::default_bytes")]
    pub max_bytes: ByteSize,
}

impl BatchLimits {
    fn default_records() -> usize {
        1000
    }

    fn default_bytes() -> ByteSize {
        ByteSize(10 << 20)
    }

    /// Errors as (field, message).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        if self.max_records == 0 || self.max_records > 100_000 {
            errors.push(("max_records".into(), format!("{} is out of range; expected 1 to 100000", self.max_records)));
        }
        if self.max_bytes.0 < 1024 {
            errors.push(("max_bytes".into(), format!("{} is too small; expected at least 1KiB, like 10MiB", self.max_bytes)));
        }
        errors
    }
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits { max_records: Self::default_records(), max_bytes: Self::default_bytes() }
    }
}

/// Capped exponential backoff for a connector's own retries (reconnects,
/// per-item retries inside one write).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// First delay (default 100ms).
    #[serde(default = "RetrySettings::default_initial", with = "duration")]
    pub initial_backoff: Duration,
    /// Longest delay (default 30s).
    #[serde(default = "RetrySettings::default_max", with = "duration")]
    pub max_backoff: Duration,
}

impl RetrySettings {
    fn default_initial() -> Duration {
        Duration::from_millis(100)
    }

    fn default_max() -> Duration {
        Duration::from_secs(30)
    }

    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.initial_backoff, self.max_backoff)
    }

    /// Errors as (field, message).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        if self.initial_backoff.is_zero() {
            errors.push(("initial_backoff".into(), "must be more than zero, like 100ms".into()));
        }
        if self.max_backoff < self.initial_backoff {
            errors.push(("max_backoff".into(), "must not be shorter than initial_backoff".into()));
        }
        errors
    }
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings { initial_backoff: Self::default_initial(), max_backoff: Self::default_max() }
    }
}
