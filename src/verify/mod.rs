//! `pgfanout verify`: does every store still hold what its pipelines say
//! it must, for the rows PostgreSQL has now?
//!
//! Per pipeline whose sink can be read back (the connector's
//! [`Verifier`](pgfanout_sdk::Verifier)):
//!
//! 1. **Extras first**: where the store can list the route's key space, the
//!    entry ids are listed *before* the source is read, so every listed
//!    entry was written for a row that existed at or before the read.
//! 2. **Source pass**: in one REPEATABLE READ transaction (position `S` =
//!    `pg_current_wal_insert_lsn()` in it), each table is read in key order in
//!    chunks ([`KeyedTable`]), sampled with `random() < f` when asked and
//!    throttled to a row rate; each row goes through the pipeline as an
//!    `op: read` record, the verifier says which entries it must produce,
//!    the store is read for them in batches of 500 and compared field by
//!    field. Listed ids no row produced are extra candidates.
//! 3. **Recheck** (only when something differs): a live write load makes
//!    the store and a snapshot disagree on rows written since `S`. The
//!    replication slot's `confirmed_flush_lsn` passing `S` means every sink
//!    has everything committed before `S`; then the candidate rows are read
//!    again by key under a new snapshot `S2`, the store is read again once
//!    the stream passed `S2` (what it holds is then at least `S2`'s state,
//!    maybe newer); an entry that still differs is compared once more with
//!    its row under a snapshot `S3` taken after that read, and counts as
//!    equal when it holds `S3`'s state. Up to three such rounds. Extra
//!    candidates are rechecked by reading them again (gone = a delete in
//!    flight) and against a fresh pass over the source's keys. What still
//!    differs is reported. When the stream does not pass a position within
//!    `--settle` (pgfanout stopped or far behind), what differs is
//!    reported as it stands, with a warning.
//! 4. **Repair** (`--repair`): divergent rows are written again through the
//!    sink itself, as `op: read` records versioned at the position they
//!    were read at (so a newer streamed change still wins); extra entries
//!    are removed.
//!
//! Results go to stdout (and `--json FILE`) and to
//! `pgfanout.verify_results` in the source database, which the daemon
//! exports as `pgfanout_verify_divergent_keys{pipeline}`.
//!
//! The command (`crate::commands::verify`) prints the outcomes and exits 0
//! when every verified pipeline is equal (after repair, when asked), 1 when
//! divergent or failed, 2 for bad usage.

mod options;
mod outcome;
mod pass;

use std::time::{Duration, Instant};

use pgfanout_postgres::conn::connect_sql;

use crate::config::Config;
use crate::pipeline::Router;
pub use options::{ProgressFn, VerifyOptions};
pub use outcome::{render, to_json, Divergence, Kind, Outcome};

/// One pipeline's verification.
pub struct PipelineOutcome {
    pub pipeline: String,
    pub sink: String,
    /// The sink's `type`.
    pub kind: String,
    pub outcome: Outcome,
    pub took: Duration,
    /// Why the result could not be recorded in `pgfanout.verify_results`.
    pub not_recorded: Option<String>,
}

/// Why verify did not run.
#[derive(Debug)]
pub enum VerifyError {
    /// Bad options or pipelines (exit 2).
    Usage(String),
    /// The source cannot be reached (exit 1).
    Source(String),
}

/// Verifies the chosen pipelines in file order, calling `progress` as the
/// source is read and `each` as each pipeline is done; records each
/// verified outcome in `pgfanout.verify_results`.
pub async fn run(
    cfg: &Config,
    opts: &VerifyOptions,
    progress: &ProgressFn<'_>,
    mut each: impl FnMut(&PipelineOutcome),
) -> Result<Vec<PipelineOutcome>, VerifyError> {
    if let Some(f) = opts.sample {
        if !(f > 0.0 && f <= 1.0) {
            return Err(VerifyError::Usage(format!("--sample {f}: must be a fraction above 0 and at most 1 (e.g. 0.05)")));
        }
    }
    for name in &opts.pipelines {
        if !cfg.pipelines.iter().any(|p| &p.name == name) {
            let names: Vec<&str> = cfg.pipelines.iter().map(|p| p.name.as_str()).collect();
            return Err(VerifyError::Usage(format!("--pipeline {name:?}: no such pipeline; the pipelines are: {}", names.join(", "))));
        }
    }
    let router = Router::new(cfg).map_err(|e| VerifyError::Usage(e.to_string()))?;
    let pg = &cfg.source.postgres;
    let conn = pg.connect_options().map_err(|e| VerifyError::Usage(format!("source.postgres.url: {e}")))?;
    // The tables are read on the primary; the slot is on the standby when
    // decoding on one.
    let connect =
        |o| async move { connect_sql(o).await.map_err(|e| VerifyError::Source(format!("cannot connect to {}: {e}", o.redacted()))) };
    let client = connect(conn.writer()).await?;
    let standby = match &conn.primary {
        Some(_) => Some(connect(&conn).await?),
        None => None,
    };
    let ctx = pass::Ctx { cfg, opts, router: &router, client: &client, slot_client: standby.as_ref().unwrap_or(&client), progress };
    let mut done = Vec::new();
    for (index, p) in cfg.pipelines.iter().enumerate() {
        if !opts.pipelines.is_empty() && !opts.pipelines.contains(&p.name) {
            continue;
        }
        let started = Instant::now();
        let outcome = ctx.pipeline(index).await;
        let took = started.elapsed();
        let mut not_recorded = None;
        if outcome.skipped.is_none() && outcome.error.is_none() {
            if let Err(e) = outcome::record(&client, &p.name, &outcome).await {
                not_recorded = Some(e.to_string());
            }
        }
        let kind = cfg.sinks.get(&p.to).map(|s| s.kind.clone()).unwrap_or_default();
        let result = PipelineOutcome { pipeline: p.name.clone(), sink: p.to.clone(), kind, outcome, took, not_recorded };
        each(&result);
        done.push(result);
    }
    Ok(done)
}
