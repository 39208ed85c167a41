//! Durations ("10s", "7d") and sizes ("64MiB", "1GB") as they are written in
//! the configuration file.
//!
//! Both are parsed by hand-written serde adapters so that a bad value fails
//! deserialization with a message that says what is expected; the loader then
//! prefixes it with the dotted path of the field.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Parses a duration such as `10s`, `500ms`, `7d` or `1h 30m`.
///
/// The error says what was wrong and what is expected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?} ({e}); expected a number with a unit, like 10s, 500ms, 5m or 7d"))
}

/// Parses a size: a plain number of bytes, or a number with a unit: `B`,
/// `kB`/`KB`, `MB`, `GB`, `TB` (powers of 1000) or `KiB`, `MiB`, `GiB`, `TiB`
/// (powers of 1024). Fractions are allowed (`1.5GiB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("invalid size {s:?} ({why}); expected bytes or a number with a unit, like 64MiB, 512kB or 1GB");
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(bad("no number"));
    }
    let mult: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "kB" | "KB" | "kb" | "k" | "K" => 1000,
        "MB" | "mb" | "M" => 1000 * 1000,
        "GB" | "gb" | "G" => 1000 * 1000 * 1000,
        "TB" | "tb" | "T" => 1000 * 1000 * 1000 * 1000,
        "KiB" | "kiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        "TiB" | "Ti" => 1 << 40,
        other => return Err(bad(&format!("unknown unit {other:?}"))),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(|| bad("too large"));
    }
    let f: f64 = num.parse().map_err(|_| bad("not a number"))?;
    let bytes = f * mult as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad("too large"));
    }
    Ok(bytes.round() as u64)
}

/// A size in bytes, written as a number or as `64MiB`-style text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: bytes or a number with a unit, like 64MiB or 1GB")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ByteSize, E> {
                if v >= 0.0 && v.is_finite() && v < u64::MAX as f64 {
                    Ok(ByteSize(v.round() as u64))
                } else {
                    Err(E::custom(format!("invalid size {v}")))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// serde adapter for a required [`Duration`] field (`with = "...::duration"`).
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// serde adapter for an optional [`Duration`] field; use with
/// `#[serde(default, with = "...::option_duration")]`.
pub mod option_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => super::parse_duration(&s).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("512kB"), Ok(512_000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size(" 2 MiB "), Ok(2 << 20));
        for bad in ["", "MiB", "12 parsecs", "1.2.3GB", "-5MB", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        let err = parse_duration("10").unwrap_err();
        assert!(err.contains("like 10s"), "{err}");
        assert!(parse_duration("ten seconds").is_err());
    }
}
