//! `pgfanout dead-letters replay`: send dead letters again through the
//! current config (after a mapping, template or transform was fixed) and
//! remove the ones that now succeed.
//!
//! Each letter's source change (as read from PostgreSQL, kept exactly) runs
//! through its pipeline as configured now, oldest position first, and goes
//! to that pipeline's sink. Then:
//!
//! - written: the letter is removed;
//! - filtered out by the pipeline now: removed too (nothing is owed);
//! - its row is gone from PostgreSQL (deleted or re-keyed since): removed
//!   without writing ([`super::gone`]): a store that no longer remembers
//!   the delete would take the old row back;
//! - refused again (by the pipeline or the store): kept, with the new error
//!   and `attempts + 1`;
//! - not tried (pipeline gone, a sink that cannot be reached, a sink that
//!   writes exactly once, an undecodable row): kept as it is, with the
//!   reason in the report.
//!
//! Sinks version their writes by position, so a replayed change older than
//! what a store holds by now changes nothing there: replay never brings an
//! old value back over a newer one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pgfanout_sdk::settings::Backoff;
use pgfanout_sdk::{SinkError, SinkRecord};

use super::record::{Stage, Stored};
use super::store::{Filter, Store};
use crate::config::Config;
use crate::pipeline::{Routed, Router};

/// What a replay did, letter by letter.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Written to their sink (and removed).
    pub delivered: Vec<(String, String)>,
    /// The current pipeline filters them out (removed).
    pub filtered: Vec<String>,
    /// Their row is no longer in PostgreSQL (removed, not written).
    pub superseded: Vec<String>,
    /// Refused again: id and the new error (kept, attempts + 1).
    pub refused: Vec<(String, String)>,
    /// Not tried: id and why (kept as they are).
    pub skipped: Vec<(String, String)>,
    /// Entries of the destination that are not readable letters.
    pub unreadable: Vec<String>,
}

/// Replays the letters `filter` selects from `store` through `cfg`. With
/// `dry_run`, routes them and says what would be sent, writing nothing.
pub async fn replay(
    cfg: &Config,
    source: &tokio_postgres::Client,
    store: &Store,
    filter: &Filter,
    dry_run: bool,
) -> Result<Outcome, String> {
    let loaded = store.load(filter).await?;
    let gone = super::gone::gone(source, &loaded.letters.iter().collect::<Vec<_>>()).await?;
    let router = Router::new(cfg).map_err(|e| e.to_string())?;
    let sink_names = router.sink_names();
    let mut out = Outcome { unreadable: loaded.unreadable, ..Outcome::default() };
    // Per sink: the letters routed to it and their records, in position order.
    let mut per_sink: BTreeMap<String, (Vec<&Stored>, Vec<SinkRecord>)> = BTreeMap::new();
    for l in &loaded.letters {
        let why_not = match (l.stage, &l.source, cfg.pipelines.iter().position(|p| p.name == l.pipeline)) {
            (Stage::Decode, _, _) => Some("an undecodable row keeps only raw text: fix the cause, then backfill its table".to_string()),
            (_, None, _) => Some("written by an older pgfanout without its source change; cannot be replayed exactly".into()),
            (_, _, None) => Some(format!("pipeline {:?} is no longer in the config", l.pipeline)),
            _ => None,
        };
        if let Some(why) = why_not {
            out.skipped.push((l.id.clone(), why));
            continue;
        }
        if gone.contains(&l.id) {
            out.superseded.push(l.id.clone());
            continue;
        }
        let (Some(source), Some(index)) = (&l.source, cfg.pipelines.iter().position(|p| p.name == l.pipeline)) else { continue };
        match router.route_pipeline(index, &Arc::new(source.clone())) {
            None => out.filtered.push(l.id.clone()),
            Some(Routed::DeadLetter { error, .. }) => out.refused.push((l.id.clone(), error)),
            Some(Routed::Deliver { sink, record }) => {
                let name = sink_names.get(sink).cloned().unwrap_or_default();
                let entry = per_sink.entry(name).or_default();
                entry.0.push(l);
                entry.1.push(record);
            }
        }
    }
    for (name, (letters, records)) in per_sink {
        if dry_run {
            out.delivered.extend(letters.iter().map(|l| (l.id.clone(), name.clone())));
            continue;
        }
        match deliver(cfg, &name, &records).await {
            Ok(refused) => {
                for (i, l) in letters.iter().enumerate() {
                    match refused.get(&i) {
                        Some(e) => out.refused.push((l.id.clone(), e.clone())),
                        None => out.delivered.push((l.id.clone(), name.clone())),
                    }
                }
            }
            Err(why) => out.skipped.extend(letters.iter().map(|l| (l.id.clone(), why.clone()))),
        }
    }
    if !dry_run {
        let by_id: BTreeMap<&str, &Stored> = loaded.letters.iter().map(|l| (l.id.as_str(), l)).collect();
        let done: Vec<&str> =
            out.delivered.iter().map(|(id, _)| id.as_str()).chain(out.filtered.iter().chain(&out.superseded).map(String::as_str)).collect();
        store.resolve(&done).await?;
        let refused: Vec<(&Stored, String)> =
            out.refused.iter().filter_map(|(id, e)| by_id.get(id.as_str()).map(|l| (*l, e.clone()))).collect();
        store.refused(&refused).await?;
    }
    Ok(out)
}

/// Writes `records` to sink `name`, in order; returns the index and error
/// of each record the store refused. `Err` when the sink cannot be used
/// (nothing is then counted as delivered).
async fn deliver(cfg: &Config, name: &str, records: &[SinkRecord]) -> Result<BTreeMap<usize, String>, String> {
    let sink_cfg = cfg.sinks.get(name).ok_or_else(|| format!("sink {name:?} is not configured"))?;
    if sink_cfg.settings.get("delivery").and_then(|d| d.as_str()) == Some("exactly_once") {
        // Its progress marks these positions as delivered (they would be
        // skipped), and a second transactional producer would fence the
        // daemon's.
        return Err(format!("sink {name:?} writes exactly once; replay to it is not supported (use delivery: at_least_once to replay)"));
    }
    let configured = sink_cfg.configured.clone().ok_or_else(|| format!("sink {name:?} is not configured"))?;
    let mut sink = configured.build().await.map_err(|e| format!("sink {name}: cannot connect: {e}"))?;
    let mut refused = BTreeMap::new();
    for (n, batch) in records.chunks(500).enumerate() {
        let base = n * 500;
        match write(&mut *sink, batch).await {
            Ok(rejected) => refused.extend(rejected.into_iter().map(|(i, e)| (base + i, e))),
            Err(SinkError::Permanent(_)) if batch.len() > 1 => {
                for (i, one) in batch.chunks(1).enumerate() {
                    match write(&mut *sink, one).await {
                        Ok(rejected) => refused.extend(rejected.into_iter().map(|(_, e)| (base + i, e))),
                        Err(SinkError::Permanent(e)) => {
                            refused.insert(base + i, e);
                        }
                        Err(e) => return Err(format!("sink {name}: {e} (letters from the {}th on were not written)", base + i + 1)),
                    }
                }
            }
            Err(SinkError::Permanent(e)) => {
                refused.insert(base, e);
            }
            Err(e) => return Err(format!("sink {name}: {e}")),
        }
    }
    sink.close_boxed().await.map_err(|e| format!("sink {name}: closing: {e}"))?;
    Ok(refused)
}

/// One batch, retried while the store is briefly unavailable.
async fn write(sink: &mut dyn pgfanout_sdk::DynSink, batch: &[SinkRecord]) -> Result<Vec<(usize, String)>, SinkError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut attempts = 0;
    loop {
        match sink.write_boxed(batch).await {
            Ok(rejected) => return Ok(rejected.into_iter().map(|r| (r.index, r.error)).collect()),
            Err(e) if e.is_retriable() && attempts < 10 => {
                attempts += 1;
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e),
        }
    }
}
