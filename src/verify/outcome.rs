//! What verifying one pipeline found, and its forms: the text `pgfanout
//! verify` prints, the `--json` report, and the row in
//! `pgfanout.verify_results` the daemon exports as metrics.

use std::fmt::Write as _;
use std::time::Duration;

use pgfanout_postgres::snapshot::keyed::KeyText;
use serde_json::{json, Value as Json};
use tokio_postgres::Client;

/// `writeln!` into a `String` (which cannot fail).
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}

/// One divergent entry.
#[derive(Debug, Clone)]
pub struct Divergence {
    pub id: String,
    pub kind: Kind,
    /// The source row it belongs to (table index, key), none for extras.
    pub source: Option<(usize, KeyText)>,
    /// What the store held when it was read (none: absent).
    pub stored: Option<Json>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Missing,
    Different(Vec<String>),
    Extra,
}

impl Kind {
    pub fn label(&self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Different(_) => "different",
            Kind::Extra => "extra",
        }
    }
}

/// What one pipeline's verification found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub rows: u64,
    pub entries: u64,
    /// Rows the pipeline's filter or transforms or the mapping refuse (the
    /// daemon dead-letters them): not expected in the store.
    pub unmappable: u64,
    pub divergent: Vec<Divergence>,
    pub extras_checked: bool,
    /// The stream did not pass the snapshot in time: not rechecked.
    pub unsettled: bool,
    /// Entries that differed in the first pass (before rechecks).
    pub candidates: u64,
    pub repaired: u64,
    pub skipped: Option<String>,
    pub error: Option<String>,
}

/// The outcome as the command prints it: a line, then up to `show`
/// divergent entries and notes.
pub fn render(out: &mut String, name: &str, sink: &str, kind: &str, o: &Outcome, show: usize, took: Duration) {
    let head = format!("pipeline {name} -> {sink} ({kind})");
    if let Some(why) = &o.skipped {
        say!(out, "{head}: not verified: {why}");
        return;
    }
    if let Some(e) = &o.error {
        say!(out, "{head}: FAILED: {e}");
        return;
    }
    let count = |k: &str| o.divergent.iter().filter(|d| d.kind.label() == k).count();
    let extras = if o.extras_checked { format!("{} extra", count("extra")) } else { "extras not checked".into() };
    let status = if o.divergent.is_empty() { "equal" } else { "DIVERGENT" };
    say!(
        out,
        "{head}: {status}: {} rows, {} entries checked in {:.1}s: {} missing, {} different, {extras}{}",
        o.rows,
        o.entries,
        took.as_secs_f64(),
        count("missing"),
        count("different"),
        if o.unmappable > 0 { format!(", {} rows not mappable (dead-lettered by the daemon)", o.unmappable) } else { String::new() }
    );
    for d in o.divergent.iter().take(show) {
        match &d.kind {
            Kind::Different(fields) => say!(out, "  different  {}  fields: {}", d.id, fields.join(", ")),
            k => say!(out, "  {:<9}  {}", k.label(), d.id),
        }
    }
    if o.divergent.len() > show {
        say!(out, "  ... and {} more (--json FILE lists them all)", o.divergent.len() - show);
    }
    if o.unsettled {
        say!(out, "  warning: the stream did not pass the verify's snapshot within --settle (is pgfanout running?): not rechecked");
    }
    if o.repaired > 0 {
        say!(out, "  repaired {} entries (run verify again to confirm)", o.repaired);
    }
}

/// The outcome in `--json FILE`.
pub fn to_json(name: &str, sink: &str, kind: &str, o: &Outcome) -> Json {
    let status = if o.skipped.is_some() {
        "skipped"
    } else if o.error.is_some() {
        "failed"
    } else if o.divergent.is_empty() {
        "equal"
    } else {
        "divergent"
    };
    let list = |k: &str| o.divergent.iter().filter(|d| d.kind.label() == k).map(|d| Json::from(d.id.clone())).collect::<Vec<_>>();
    let different: Vec<Json> = o
        .divergent
        .iter()
        .filter_map(|d| match &d.kind {
            Kind::Different(f) => Some(json!({ "id": d.id, "fields": f })),
            _ => None,
        })
        .collect();
    json!({
        "pipeline": name, "sink": sink, "type": kind, "status": status,
        "reason": o.skipped, "error": o.error,
        "rows": o.rows, "entries": o.entries, "unmappable": o.unmappable,
        "missing": list("missing"), "different": different,
        "extra": if o.extras_checked { Json::from(list("extra")) } else { Json::Null },
        "first_pass_candidates": o.candidates, "rechecked": !o.unsettled, "repaired": o.repaired,
    })
}

/// Records the outcome for the daemon's metrics (best effort).
pub async fn record(client: &Client, pipeline: &str, o: &Outcome) -> Result<(), pgfanout_postgres::SourceError> {
    let result = async {
        pgfanout_postgres::schema::migrate(client).await?;
        client
            .execute(
                "INSERT INTO pgfanout.verify_results VALUES ($1, $2, $3, $4, now()) ON CONFLICT (pipeline) DO UPDATE \
                 SET divergent = EXCLUDED.divergent, rows_checked = EXCLUDED.rows_checked, repaired = EXCLUDED.repaired, \
                 finished_at = EXCLUDED.finished_at",
                &[&pipeline, &(o.divergent.len() as i64), &(o.rows as i64), &(o.repaired as i64)],
            )
            .await
            .map_err(pgfanout_postgres::SourceError::from)
    }
    .await;
    result.map(|_| ())
}
