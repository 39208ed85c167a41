//! The options of `pgfanout verify` (and of the reconciliation after a
//! recreated slot).

use std::path::PathBuf;
use std::time::Duration;

/// Options of `pgfanout verify`.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Only these pipelines (all when empty).
    pub pipelines: Vec<String>,
    /// Check this fraction of the rows (0 < f <= 1); extras are not
    /// checked when sampling.
    pub sample: Option<f64>,
    pub repair: bool,
    pub json: Option<PathBuf>,
    /// Source rows read per second at most.
    pub max_rows_per_second: Option<u64>,
    /// Rows per keyset chunk.
    pub chunk_rows: usize,
    /// How long to wait for the stream to pass a snapshot before a recheck.
    pub settle: Duration,
    /// Divergent entries printed per pipeline.
    pub show: usize,
}

/// Progress of a source pass: (pipeline, rows read so far, estimated rows).
pub type ProgressFn<'a> = dyn Fn(&str, u64, Option<u64>) + Send + Sync + 'a;
