//! Operator commands that talk to live systems: `doctor` and `status`.

use crate::config::Config;

/// `pgfanout doctor`: one line per check, with the fix for each failure.
pub async fn doctor(_cfg: &Config) -> i32 {
    eprintln!("doctor: not implemented yet");
    1
}

/// `pgfanout status`: slot lag, confirmed LSN, per-sink positions.
pub async fn status(_cfg: &Config) -> i32 {
    eprintln!("status: not implemented yet");
    1
}
