//! What the console and `/readyz` show that the metrics do not keep: each
//! sink's last error and since when it is failing, the latency of its last write, and
//! 15 minutes of per-sink rates (the latest dead letters are kept by
//! [`crate::dead_letter::recent`]).
//!
//! The runtime's workers report here as they go (a process-wide record,
//! like the metrics registry); the console and `/readyz` read a copy.

use std::collections::{HashMap, VecDeque};
use std::sync::{LazyLock, Mutex};

use serde::Serialize;

/// Samples kept per series: 15 minutes at one per [`SAMPLE_EVERY`].
pub const SAMPLES: usize = 90;

/// How often rates are sampled.
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

static ACTIVITY: LazyLock<Mutex<Activity>> = LazyLock::new(|| Mutex::new(Activity::default()));

/// One sink's recent activity.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SinkActivity {
    /// The last failure's message (cleared by the next success).
    pub error: Option<String>,
    /// When the current run of failures began (unix seconds).
    pub failing_since: Option<f64>,
    /// Commit time of the oldest change waiting on the failing write
    /// (unix seconds): how far behind the sink is while it fails.
    pub waiting_since: Option<f64>,
    /// Failed attempts since start.
    pub retries: u64,
    /// When a write last succeeded (unix seconds).
    pub last_write: Option<f64>,
    /// Commit to durable, in seconds, of the last write's newest change.
    pub latency: Option<f64>,
    /// Records written per second, oldest first, one per sample.
    pub rate: VecDeque<f64>,
    #[serde(skip)]
    written: Option<f64>,
}

#[derive(Debug, Default)]
struct Activity {
    sinks: HashMap<String, SinkActivity>,
    /// Changes read from the slot per second, one per sample.
    read_rate: VecDeque<f64>,
    read: Option<f64>,
}

fn with<T>(f: impl FnOnce(&mut Activity) -> T) -> T {
    f(&mut ACTIVITY.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Unix time in seconds.
pub fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// A write to `sink` failed (it is retried); `oldest_commit_ts` is the
/// commit time (µs since 1970) of the oldest change it carries.
pub fn sink_failed(sink: &str, error: &str, oldest_commit_ts: Option<i64>) {
    with(|a| {
        let s = a.sinks.entry(sink.to_string()).or_default();
        s.error = Some(error.chars().take(2000).collect());
        s.failing_since.get_or_insert_with(now);
        if let Some(ts) = oldest_commit_ts {
            s.waiting_since.get_or_insert(ts as f64 / 1e6);
        }
        s.retries += 1;
    })
}

/// A write to `sink` succeeded; `latency` is its newest change's commit to
/// durable time in seconds.
pub fn sink_wrote(sink: &str, latency: Option<f64>) {
    with(|a| {
        let s = a.sinks.entry(sink.to_string()).or_default();
        s.error = None;
        s.failing_since = None;
        s.waiting_since = None;
        s.last_write = Some(now());
        if latency.is_some() {
            s.latency = latency;
        }
    })
}

/// Takes one rate sample from the counters' totals: `written` per sink and
/// `read` (changes read from the slot), over `secs` seconds.
pub fn sample(written: &HashMap<String, f64>, read: f64, secs: f64) {
    let push = |series: &mut VecDeque<f64>, v: f64| {
        if series.len() == SAMPLES {
            series.pop_front();
        }
        series.push_back(v);
    };
    with(|a| {
        for (name, total) in written {
            let s = a.sinks.entry(name.clone()).or_default();
            if let Some(before) = s.written {
                push(&mut s.rate, ((total - before) / secs).max(0.0));
            }
            s.written = Some(*total);
        }
        if let Some(before) = a.read {
            push(&mut a.read_rate, ((read - before) / secs).max(0.0));
        }
        a.read = Some(read);
    })
}

/// The sinks failing now: name, seconds since the failures began, the last
/// error; the longest-failing first.
pub fn failing() -> Vec<(String, f64, String)> {
    let now = now();
    let mut out: Vec<(String, f64, String)> = with(|a| {
        a.sinks.iter().filter_map(|(name, s)| Some((name.clone(), now - s.failing_since?, s.error.clone().unwrap_or_default()))).collect()
    });
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// A copy of what the console shows: per sink, and the read rate.
pub fn snapshot() -> (HashMap<String, SinkActivity>, Vec<f64>) {
    with(|a| (a.sinks.clone(), a.read_rate.iter().copied().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_kept_until_a_write_succeeds_and_rates_are_per_second() {
        sink_failed("t-sink", "connection refused", Some(1_000_000));
        sink_failed("t-sink", "connection refused again", Some(2_000_000));
        let (sinks, _) = snapshot();
        let s = &sinks["t-sink"];
        assert_eq!(s.error.as_deref(), Some("connection refused again"));
        assert_eq!(s.waiting_since, Some(1.0), "the oldest waiting change is kept");
        assert_eq!(s.retries, 2);
        sink_wrote("t-sink", Some(0.5));
        let s = &snapshot().0["t-sink"];
        assert!(s.error.is_none() && s.failing_since.is_none() && s.waiting_since.is_none());
        assert_eq!(s.latency, Some(0.5));
        let mut w = HashMap::new();
        w.insert("t-sink".to_string(), 100.0);
        sample(&w, 0.0, 10.0);
        w.insert("t-sink".to_string(), 300.0);
        sample(&w, 50.0, 10.0);
        let (sinks, _) = snapshot();
        assert_eq!(sinks["t-sink"].rate.back(), Some(&20.0));
    }
}
