//! `pgfanout run`: stream until SIGTERM/SIGINT (see `crate::runtime`).

use super::{Exit, Report};
use crate::config::Config;
use crate::runtime::RunError;

pub async fn run(cfg: Config, path: &std::path::Path) -> Report {
    // On a worker thread, not the main one: the worker that polls the
    // socket then runs the source loop itself instead of waking the main
    // thread for every read (two context switches each).
    let ended =
        tokio::spawn(crate::runtime::run(cfg)).await.unwrap_or_else(|e| Err(RunError::Fatal(format!("the runtime task failed: {e}"))));
    match ended {
        Ok(()) => Report::default(),
        Err(RunError::Config(m)) => Report::error(Exit::Usage, format_args!("{}: {m}", path.display())),
        Err(RunError::Fatal(m)) => Report::error(Exit::Failed, format_args!("pgfanout: {m}")),
    }
}
