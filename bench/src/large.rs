//! Large transactions: one transaction of `--rows` rows (stream-big's
//! table and rows), drained by pgfanout twice per run: with `streaming:
//! auto`, where the server streams the transaction to pgfanout while
//! decoding it (pgoutput protocol 2+; pgfanout keeps it aside, spilling past
//! `streaming_memory`, until the commit), and with `streaming: off`
//! (protocol 1: the server spills the transaction to its own disk and sends
//! it after the commit), the baseline. PostgreSQL's
//! `logical_decoding_work_mem` is its default, 64MB, unless `--pg-set`
//! says otherwise.
//!
//! Reported per drain: time until every change is durable in the file sink
//! (`/dev/null`), pgfanout's peak RSS, and what the server spilled and
//! streamed for the slot (`pg_stat_replication_slots`).

use std::time::Duration;

use anyhow::{bail, Result};

use crate::db::{Db, PUBLICATION};
use crate::load::Shape;
use crate::report::{Better, Figure, Goal};
use crate::throughput::Ctx;
use crate::tools::{self, Fanout, FanoutConfig};

/// The slot's (spill_bytes, stream_bytes).
async fn slot_stats(db: &Db, slot: &str) -> Result<(i64, i64)> {
    let row = db
        .client
        .query_one(
            "SELECT coalesce(spill_bytes, 0), coalesce(stream_bytes, 0) FROM pg_stat_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Figure>> {
    let name = "large transaction";
    let mut time = Figure::new(name, "time to durable", "s", Better::Lower).with_baseline("streaming: off");
    let mut rss = Figure::new(name, "peak RSS", "MB", Better::Lower).with_baseline("streaming: off").with_goal(Goal::AtMost(64.0));
    let mut spill = Figure::new(name, "server spill", "MB", Better::Lower).with_baseline("streaming: off");
    let mut streamed = Figure::new(name, "server streamed", "MB", Better::Higher).with_baseline("streaming: off");

    let db = Db::start(&ctx.pg(&[])).await?;
    let shape = Shape::Big;
    let table = shape.table();
    db.exec(&shape.ddl()).await?;
    db.exec(&format!("CREATE PUBLICATION {PUBLICATION} FOR TABLE {table}")).await?;
    let rows = shape.changes(ctx.rows);
    let timeout = Duration::from_secs(300.max(rows / 2_000));
    for run in 0..ctx.runs {
        db.exec(&shape.reset_sql(ctx.rows)).await?;
        db.prepare_drain(&[]).await?;
        let (on, off) = (format!("large_on_{run}"), format!("large_off_{run}"));
        db.create_slot(&on).await?;
        db.create_slot(&off).await?;
        db.exec(&shape.load_sql(ctx.rows)).await?;
        let end = db.end_lsn().await?;
        let keep = [on.as_str(), off.as_str()];
        for turn in 0..2 {
            db.prepare_drain(&keep).await?;
            let streaming = (turn + run) % 2 == 0;
            let slot = if streaming { &on } else { &off };
            let cfg = FanoutConfig {
                slot,
                table,
                sink: "{ type: file, path: /dev/null }".into(),
                mapping: String::new(),
                http_listen: None,
                batch_size: None,
            };
            let mut yaml = cfg.yaml(&db, &ctx.dir);
            if !streaming {
                yaml = yaml.replacen("source:\n  postgres:\n", "source:\n  postgres:\n    streaming: off\n", 1);
                if !yaml.contains("streaming: off") {
                    bail!("could not set streaming: off in the config");
                }
            }
            let mut f = Fanout::spawn_yaml(&ctx.bin, &ctx.dir, slot, &yaml, "warn")?;
            let took = f.wait_confirmed(&db, slot, end, timeout).await?.as_secs_f64();
            let usage = f.usage()?;
            f.stop();
            let (spilled, streamed_bytes) = slot_stats(&db, slot).await?;
            let mb = |b: i64| b as f64 / 1e6;
            eprintln!(
                "  run {}/{} streaming {}: {rows} rows durable in {took:.2} s, peak RSS {} MB, server spilled {:.0} MB, streamed {:.0} MB",
                run + 1,
                ctx.runs,
                if streaming { "auto" } else { "off" },
                usage.peak_rss_kib / 1024,
                mb(spilled),
                mb(streamed_bytes)
            );
            let (t, r, s, st) = if streaming {
                (&mut time.pgfanout, &mut rss.pgfanout, &mut spill.pgfanout, &mut streamed.pgfanout)
            } else {
                (&mut time.baseline, &mut rss.baseline, &mut spill.baseline, &mut streamed.baseline)
            };
            t.push(took);
            r.push(usage.peak_rss_kib as f64 / 1024.0);
            s.push(mb(spilled));
            st.push(mb(streamed_bytes));
        }
        db.drop_slot(&on).await?;
        db.drop_slot(&off).await?;
        tools::quiet_before("the next run").await;
    }
    Ok(vec![time, rss, spill, streamed])
}
