//! What a settings struct's `validate()` found, collected the same way by
//! every connector.
//!
//! `validate()` is pure and reports every problem at once, each as (dotted
//! path below the struct, message); the daemon prefixes the path with where
//! the struct sits (`sinks.cache.`). The rules every store shares (a count
//! within bounds, a duration above zero, a nested section such as `tls`)
//! are written here once, with their messages, so the same mistake reads
//! the same whatever the store.

use std::time::Duration;

/// Problems in the order found. Build one, record what is wrong, and
/// return it as the `Vec<(String, String)>` that `validate()` returns.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems(Vec<(String, String)>);

impl Problems {
    /// Records `message` for the field at `path`.
    pub fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push((path.into(), message.into()));
    }

    /// Records the problems of the nested section `section` (its own
    /// `validate()`), each path under `section.`.
    pub fn nested(&mut self, section: &str, problems: Vec<(String, String)>) {
        self.0.extend(problems.into_iter().map(|(path, message)| (format!("{section}.{path}"), message)));
    }

    /// A count that must lie in `min..=max`: "must be between {min} and {max}".
    pub fn between(&mut self, path: &str, value: usize, min: usize, max: usize) {
        if value < min || value > max {
            self.add(path, format!("must be between {min} and {max}"));
        }
    }

    /// Durations that must be more than zero: "must be greater than zero"
    /// for each that is not.
    pub fn nonzero(&mut self, durations: &[(&str, Duration)]) {
        for (path, duration) in durations {
            if duration.is_zero() {
                self.add(*path, "must be greater than zero");
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Problems> for Vec<(String, String)> {
    fn from(problems: Problems) -> Self {
        problems.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_order_found_and_nests_paths() {
        let mut p = Problems::default();
        p.between("connections", 0, 1, 64);
        p.between("in_flight_batches", 64, 1, 64);
        p.nonzero(&[("connect_timeout", Duration::ZERO), ("request_timeout", Duration::from_secs(1))]);
        p.nested("tls", vec![("cert_file".into(), "set both".into())]);
        p.add("url", "is not a URL");
        let found: Vec<(String, String)> = p.into();
        let expected = [
            ("connections", "must be between 1 and 64"),
            ("connect_timeout", "must be greater than zero"),
            ("tls.cert_file", "set both"),
            ("url", "is not a URL"),
        ];
        assert_eq!(found, expected.map(|(p, m)| (p.to_string(), m.to_string())));
        assert!(Problems::default().is_empty());
    }
}
