//! `pgfanout backfill`: writes a request to `pgfanout.signals` (the running
//! daemon applies it within a second), lists backfills, or waits for one to
//! finish.

use super::{Exit, Report};
use crate::config::Config;
use crate::pipeline::Router;

/// `pgfanout backfill`'s arguments.
#[derive(Debug)]
pub struct BackfillRequest {
    pub table: Option<String>,
    pub filter: Option<String>,
    pub chunk_size: Option<i64>,
    pub max_rows_per_second: Option<i64>,
    pub wait: bool,
    /// Show progress while waiting.
    pub follow: bool,
    pub list: bool,
    pub pause: Option<i64>,
    pub resume: Option<i64>,
    pub cancel: Option<i64>,
}

/// `pgfanout backfill`: writes the request to `pgfanout.signals` (the
/// daemon applies it), lists backfills, or waits for one to finish.
pub async fn backfill(cfg: &Config, req: BackfillRequest) -> Report {
    let mut r = Report::default();
    use crate::backfill::state::{self, BackfillStatus, SignalKind};
    let pg = &cfg.source.postgres;
    let client = match super::connect_source(cfg).await {
        Ok(c) => c,
        Err(failed) => return failed,
    };
    if req.list {
        return match state::list(&client, &pg.slot).await {
            Ok(list) => {
                r.say(format_args!("{:>5}  {:<10} {:<32} {:>12} {:>8}  where", "id", "status", "table", "rows", "chunks"));
                for b in list {
                    r.say(format_args!(
                        "{:>5}  {:<10} {:<32} {:>12} {:>8}  {}",
                        b.id,
                        b.status,
                        b.table,
                        b.rows,
                        b.chunks,
                        b.filter.unwrap_or_default()
                    ));
                }
                r
            }
            Err(e) => {
                r.complain(format_args!("{e}"));
                r.ends(Exit::Failed)
            }
        };
    }
    let (kind, data) = match (&req.table, req.pause, req.resume, req.cancel) {
        (Some(t), ..) => {
            let table = match crate::backfill::parse_table(t) {
                Ok(t) => t,
                Err(e) => {
                    r.complain(format_args!("--table: {e}"));
                    return r.ends(Exit::Usage);
                }
            };
            let router = match Router::new(cfg) {
                Ok(r) => r,
                Err(e) => {
                    r.complain(format_args!("{e}"));
                    return r.ends(Exit::Usage);
                }
            };
            let read = router
                .table_patterns()
                .iter()
                .filter_map(|p| crate::config::TablePattern::parse(p).ok())
                .any(|p| p.matches(&table.schema, &table.name));
            if !read {
                r.complain(format_args!("--table {table}: no pipeline of this config reads it (its rows would go nowhere)"));
                return r.ends(Exit::Usage);
            }
            (
                SignalKind::Backfill,
                serde_json::json!({"table": table.to_string(), "where": req.filter, "chunk_size": req.chunk_size,
                                   "max_rows_per_second": req.max_rows_per_second, "slot": pg.slot, "reason": "cli"}),
            )
        }
        (None, Some(id), _, _) => (SignalKind::Pause, serde_json::json!({"id": id, "slot": pg.slot})),
        (None, _, Some(id), _) => (SignalKind::Resume, serde_json::json!({"id": id, "slot": pg.slot})),
        (None, _, _, Some(id)) => (SignalKind::Cancel, serde_json::json!({"id": id, "slot": pg.slot})),
        _ => {
            r.complain(format_args!("give --table, --list, --pause ID, --resume ID or --cancel ID"));
            return r.ends(Exit::Usage);
        }
    };
    let signal = match state::signal(&client, kind, &data).await {
        Ok(id) => id,
        Err(e) => {
            r.complain(format_args!("{e}"));
            return r.ends(Exit::Failed);
        }
    };
    r.say(format_args!("signal {signal}: {kind} {data}"));
    if !req.wait {
        r.say(format_args!("the running daemon applies it within a second (pgfanout backfill -c FILE --list shows progress)"));
        return r;
    }
    // Wait for the daemon to take the signal, then for the backfill to end.
    let mut backfill_id: Option<i64> = None;
    let mut progress: Option<crate::progress::Progress> = None;
    loop {
        if backfill_id.is_none() {
            let result: Option<String> = client
                .query_opt("SELECT result FROM pgfanout.signals WHERE id = $1 AND processed_at IS NOT NULL", &[&signal])
                .await
                .ok()
                .flatten()
                .and_then(|row| row.get(0));
            if let Some(result) = result {
                match result.strip_prefix("backfill ").and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()) {
                    Some(id) if kind == SignalKind::Backfill => backfill_id = Some(id),
                    _ => {
                        r.say(format_args!("{result}"));
                        return if result.starts_with("refused") { r.ends(Exit::Failed) } else { r };
                    }
                }
            }
        }
        if let Some(id) = backfill_id {
            if req.follow {
                follow(&client, id, &mut progress).await;
            }
            match state::status(&client, id).await {
                Ok(Some(BackfillStatus::Done)) => {
                    if let Some(p) = &mut progress {
                        p.finish("done");
                    }
                    r.say(format_args!("backfill {id} done"));
                    return r;
                }
                Ok(Some(s @ (BackfillStatus::Failed | BackfillStatus::Cancelled))) => {
                    if let Some(p) = &mut progress {
                        p.finish(s.as_str());
                    }
                    r.say(format_args!("backfill {id} {s}"));
                    return r.ends(Exit::Failed);
                }
                Ok(_) => {}
                Err(e) => {
                    r.complain(format_args!("{e}"));
                    return r.ends(Exit::Failed);
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// One progress update of backfill `id`: rows done against the table's
/// estimated row count (`pg_class.reltuples`; none before an `ANALYZE`).
async fn follow(client: &tokio_postgres::Client, id: i64, progress: &mut Option<crate::progress::Progress>) {
    let row = client
        .query_opt(
            "SELECT b.table_name::text, b.rows_done::int8, \
                    (SELECT greatest(c.reltuples, 0)::int8 FROM pg_class c WHERE c.oid = to_regclass(b.table_name)) \
             FROM pgfanout.backfills b WHERE b.id = $1",
            &[&id],
        )
        .await;
    let Ok(Some(row)) = row else { return };
    let (table, done, total): (String, i64, Option<i64>) = (row.get(0), row.get(1), row.get(2));
    let p = progress.get_or_insert_with(|| crate::progress::Progress::new(format!("backfill {id} {table}"), "rows"));
    p.set(done.max(0) as u64, total.map(|t| t.max(0) as u64));
}
