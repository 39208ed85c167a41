//! `pgfanout verify`: does every store still equal PostgreSQL? Prints one
//! block per pipeline (and `--json FILE`); exit 0 when every verified
//! pipeline is equal (after repair, when asked), 1 when divergent or failed,
//! 2 for bad options. The work is `crate::verify`.

use serde_json::json;
use tracing::info;

use super::{Exit, Report};
use crate::config::Config;
use crate::progress::Progress;
use crate::verify::{self, VerifyError, VerifyOptions};

pub async fn verify(cfg: &Config, opts: &VerifyOptions) -> Report {
    let mut r = Report::default();
    // Progress on stderr while each pipeline's source is read (a bar on a
    // terminal, a line every 5 s otherwise) and as each is done (a large
    // table takes minutes); the report on stdout at the end.
    let bars: std::sync::Mutex<Option<(String, Progress)>> = std::sync::Mutex::new(None);
    let progress = |pipeline: &str, rows: u64, estimate: Option<u64>| {
        let mut guard = bars.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_none_or(|(name, _)| name != pipeline) {
            *guard = Some((pipeline.to_string(), Progress::new(format!("verify {pipeline}"), "rows")));
        }
        if let Some((_, bar)) = guard.as_mut() {
            bar.set(rows, estimate);
        }
    };
    let done = verify::run(cfg, opts, &progress, |p| {
        if let Some((_, mut bar)) = bars.lock().unwrap_or_else(|p| p.into_inner()).take() {
            bar.finish("source read");
        }
        let status = if p.outcome.error.is_some() {
            "failed"
        } else if p.outcome.skipped.is_some() {
            "not verified"
        } else if p.outcome.divergent.is_empty() {
            "equal"
        } else {
            "divergent"
        };
        info!(pipeline = %p.pipeline, sink = %p.sink, status, divergent = p.outcome.divergent.len(), seconds = p.took.as_secs_f64(), "pipeline verified");
    })
    .await;
    let done = match done {
        Ok(done) => done,
        Err(VerifyError::Usage(m)) => return Report::error(Exit::Usage, m),
        Err(VerifyError::Source(m)) => return Report::error(Exit::Failed, m),
    };
    let mut failed = false;
    let mut divergent = 0usize;
    let mut pipelines = Vec::new();
    for p in &done {
        verify::render(&mut r.out, &p.pipeline, &p.sink, &p.kind, &p.outcome, opts.show, p.took);
        if let Some(e) = &p.not_recorded {
            r.say(format_args!("  note: cannot record the result in pgfanout.verify_results (for the daemon's metrics): {e}"));
        }
        failed |= p.outcome.error.is_some();
        if p.outcome.skipped.is_none() && p.outcome.error.is_none() {
            divergent += p.outcome.divergent.len();
        }
        pipelines.push(verify::to_json(&p.pipeline, &p.sink, &p.kind, &p.outcome));
    }
    if let Some(path) = &opts.json {
        let body = json!({ "pipelines": pipelines, "divergent": divergent, "repair": opts.repair });
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&body).unwrap_or_default()) {
            r.complain(format_args!("cannot write {}: {e}", path.display()));
            failed = true;
        }
    }
    if failed || divergent > 0 {
        r.ends(Exit::Failed)
    } else {
        r
    }
}
