//! `pgfanout dead-letters list | replay`: the letters of the configured
//! destination (`dead_letter.to`), and sending them again through the
//! current config (`crate::dead_letter::replay`).
//!
//! Exit codes: `list` 0; `replay` 0 when every selected letter was
//! delivered or filtered out, 1 when some remain (refused again or not
//! tried), 2 for bad options.

use std::time::{Duration, SystemTime};

use super::{connect_source, Exit, Report};
use crate::config::Config;
use crate::dead_letter::replay;
use crate::dead_letter::store::{Filter, Store};

/// What was asked.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub sink: Option<String>,
    pub pipeline: Option<String>,
    /// RFC 3339 or an age (`2h`).
    pub since: Option<String>,
    pub replay: bool,
    pub dry_run: bool,
    pub json: bool,
}

pub async fn dead_letters(cfg: &Config, req: Request) -> Report {
    let since = match req.since.as_deref().map(parse_since).transpose() {
        Ok(s) => s,
        Err(e) => return Report::error(Exit::Usage, e),
    };
    let filter = Filter { sink: req.sink.clone(), pipeline: req.pipeline.clone(), since };
    let client = match connect_source(cfg).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(e) = pgfanout_postgres::schema::migrate(&client).await {
        return Report::error(Exit::Failed, format_args!("cannot bring schema pgfanout up to date: {e}"));
    }
    let store = match Store::of(cfg, client) {
        Ok(s) => s,
        Err(e) => return Report::error(Exit::Usage, e),
    };
    if req.replay {
        // A second connection: the first may belong to the table store.
        let source = match connect_source(cfg).await {
            Ok(c) => c,
            Err(r) => return r,
        };
        return replay_report(cfg, &source, &store, &filter, req.dry_run).await;
    }
    let loaded = match store.load(&filter).await {
        Ok(l) => l,
        Err(e) => return Report::error(Exit::Failed, e),
    };
    let mut r = Report::default();
    for l in &loaded.letters {
        if req.json {
            let v = serde_json::json!({
                "id": l.id, "at": l.at, "attempts": l.attempts, "stage": l.stage.as_str(), "pipeline": l.pipeline,
                "sink": l.sink, "error": l.error, "position": l.position.to_string(), "table": l.table, "change": l.change,
            });
            r.say(v);
        } else {
            let key = l.change.get("key").map(|k| k.to_string()).unwrap_or_default();
            r.say(format_args!(
                "{}  {}  {} -> {}  {} {} {}  tried {}x  {}",
                l.id,
                l.at,
                l.pipeline,
                l.sink,
                l.position,
                l.table,
                key,
                l.attempts,
                one_line(&l.error, 200)
            ));
        }
    }
    for u in &loaded.unreadable {
        r.complain(format_args!("not a readable dead letter: {u}"));
    }
    if !req.json {
        r.complain(format_args!("{} dead letters in {}", loaded.letters.len(), store.describe()));
    }
    r
}

async fn replay_report(cfg: &Config, source: &tokio_postgres::Client, store: &Store, filter: &Filter, dry_run: bool) -> Report {
    let out = match replay::replay(cfg, source, store, filter, dry_run).await {
        Ok(o) => o,
        Err(e) => return Report::error(Exit::Failed, e),
    };
    let mut r = Report::default();
    let verb = if dry_run { "would send" } else { "delivered" };
    let mut sinks = std::collections::BTreeMap::<&str, usize>::new();
    for (_, sink) in &out.delivered {
        *sinks.entry(sink).or_default() += 1;
    }
    for (sink, n) in &sinks {
        r.say(format_args!("{verb} {n} to {sink}"));
    }
    if !out.filtered.is_empty() {
        r.say(format_args!("{} filtered out by their pipeline now{}", out.filtered.len(), if dry_run { "" } else { " (removed)" }));
    }
    if !out.superseded.is_empty() {
        r.say(format_args!(
            "{} whose row is gone from PostgreSQL since (deleted or re-keyed){}",
            out.superseded.len(),
            if dry_run { "" } else { " (removed, not written)" }
        ));
    }
    for (id, e) in &out.refused {
        r.say(format_args!("refused again {id}: {}", one_line(e, 300)));
    }
    for (id, why) in &out.skipped {
        r.say(format_args!("not tried {id}: {why}"));
    }
    for u in &out.unreadable {
        r.complain(format_args!("not a readable dead letter: {u}"));
    }
    r.say(format_args!(
        "{} {verb}, {} filtered out, {} superseded, {} refused again, {} not tried ({})",
        out.delivered.len(),
        out.filtered.len(),
        out.superseded.len(),
        out.refused.len(),
        out.skipped.len(),
        store.describe()
    ));
    if !dry_run && (!out.refused.is_empty() || !out.skipped.is_empty()) {
        r.ends(Exit::Failed)
    } else {
        r
    }
}

/// `--since`: RFC 3339, or an age before now (`2h`, `30m`).
fn parse_since(s: &str) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    let age: Duration =
        humantime::parse_duration(s).map_err(|_| format!("--since {s:?}: expected a time (2026-12-07T10:00:00Z) or an age (2h, 30m)"))?;
    Ok(SystemTime::now() - age)
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() > max {
        flat.chars().take(max).collect::<String>() + "…"
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_an_age() {
        let t = parse_since("2026-12-07T10:00:00Z").unwrap();
        assert_eq!(humantime::format_rfc3339_seconds(t).to_string(), "2026-12-07T10:00:00Z");
        let age = SystemTime::now().duration_since(parse_since("2h").unwrap()).unwrap();
        assert!(age >= Duration::from_secs(7199) && age < Duration::from_secs(7300), "{age:?}");
        assert!(parse_since("yesterday").unwrap_err().contains("--since"));
    }
}
