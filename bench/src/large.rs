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
//!
//! Then, per run and mode, the interleaved case: pgfanout streaming live
//! while small transactions (10 rows every 10 ms, `synchronous_commit=on`)
//! commit on one connection and one large transaction (the same rows, at
//! most 1,000,000) runs on another. The small ones go to a file that a
//! reader tails and fdatasyncs (as in the latency workload); reported: their
//! commit→durable p99 while the large transaction runs (goal: 50 ms), the
//! worst one committed after it (they wait for it: commit order), and the
//! peak RSS.

use std::time::Duration;

use anyhow::{bail, Result};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::db::{Db, PUBLICATION};
use crate::latency::{now_us, spawn_tailer};
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
    db.exec("CREATE TABLE bench_small (id bigint PRIMARY KEY, v int NOT NULL, note text NOT NULL)").await?;
    db.exec(&format!("CREATE PUBLICATION {PUBLICATION} FOR TABLE {table}, bench_small")).await?;
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
    let name = "large transaction, interleaved";
    let mut during = Figure::new(name, "small txn commit→durable p99 during it", "ms", Better::Lower)
        .with_baseline("streaming: off")
        .with_goal(Goal::AtMost(50.0));
    let mut after = Figure::new(name, "small txn commit→durable max after its commit", "ms", Better::Lower).with_baseline("streaming: off");
    let mut irss = Figure::new(name, "peak RSS", "MB", Better::Lower).with_baseline("streaming: off");
    let big_rows = ctx.rows.min(1_000_000);
    for run in 0..ctx.runs {
        for turn in 0..2 {
            let streaming = (turn + run) % 2 == 0;
            let r = interleaved(ctx, &db, big_rows, streaming, run).await?;
            eprintln!(
                "  interleaved run {}/{} streaming {}: {} small transactions' rows during the {big_rows}-row one: p99 {:.1} ms; after its commit: max {:.1} ms; peak RSS {:.0} MB, server spilled {:.0} MB",
                run + 1,
                ctx.runs,
                if streaming { "auto" } else { "off" },
                r.samples,
                r.p99_during,
                r.max_after,
                r.rss_mb,
                r.spilled_mb,
            );
            let (d, a, m) = if streaming {
                (&mut during.pgfanout, &mut after.pgfanout, &mut irss.pgfanout)
            } else {
                (&mut during.baseline, &mut after.baseline, &mut irss.baseline)
            };
            d.push(r.p99_during);
            a.push(r.max_after);
            m.push(r.rss_mb);
            tools::quiet_before("the next run").await;
        }
    }
    Ok(vec![time, rss, spill, streamed, during, after, irss])
}

struct Interleaved {
    samples: usize,
    p99_during: f64,
    max_after: f64,
    rss_mb: f64,
    spilled_mb: f64,
}

/// One interleaved run: see the module doc.
async fn interleaved(ctx: &Ctx, db: &Db, big_rows: u64, streaming: bool, run: usize) -> Result<Interleaved> {
    let shape = Shape::Big;
    db.exec(&format!("{}; TRUNCATE bench_small", shape.reset_sql(big_rows))).await?;
    db.prepare_drain(&[]).await?;
    let slot = format!("mixed_{}_{run}", if streaming { "on" } else { "off" });
    db.create_slot(&slot).await?;
    let out = ctx.dir.join(format!("{slot}.jsonl"));
    std::fs::write(&out, b"")?;
    let yaml = format!(
        "source:\n  postgres:\n    url: {url}\n    slot: {slot}\n    publication: {PUBLICATION}\n    snapshot: never\n    status_interval: 1s\n    streaming: {mode}\n\
         sinks:\n  big: {{ type: file, path: /dev/null }}\n  small: {{ type: file, path: \"{out}\" }}\n\
         pipelines:\n  - {{ name: big, from: public.{table}, to: big }}\n  - {{ name: small, from: public.bench_small, to: small }}\n\
         dead_letter:\n  path: \"{dlq}\"\nhttp:\n  enabled: false\n",
        url = db.url(),
        mode = if streaming { "auto" } else { "off" },
        out = out.display(),
        table = shape.table(),
        dlq = ctx.dir.join(format!("{slot}.dead.jsonl")).display(),
    );
    let mut f = Fanout::spawn_yaml(&ctx.bin, &ctx.dir, &slot, &yaml, "warn")?;
    db.exec("INSERT INTO bench_small VALUES (0, 0, 'warm-up')").await?;
    f.wait_confirmed(db, &slot, db.end_lsn().await?, Duration::from_secs(60)).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let tailer = spawn_tailer(out.clone(), stop.clone());

    // The small transactions, on a connection of their own.
    let (small, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    small.batch_execute("SET synchronous_commit = on").await?;
    let load_stop = Arc::new(AtomicBool::new(false));
    let load = {
        let load_stop = load_stop.clone();
        tokio::spawn(async move {
            let insert = small
                .prepare("INSERT INTO bench_small SELECT g, (g % 1000)::int, 'note ' || g FROM generate_series($1::bigint, $2::bigint) g")
                .await?;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut next = 1i64;
            while !load_stop.load(Ordering::Acquire) {
                tick.tick().await;
                small.execute(&insert, &[&next, &(next + 9)]).await?;
                next += 10;
            }
            anyhow::Ok(())
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The large transaction, on the main connection.
    let (big, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    big.batch_execute("SET synchronous_commit = on").await?;
    let big_start = now_us();
    big.batch_execute(&shape.load_sql(big_rows)).await?;
    let big_commit = now_us();
    // Small transactions go on after it until the sink has caught up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    load_stop.store(true, Ordering::Release);
    load.await??;
    f.wait_confirmed(db, &slot, db.end_lsn().await?, Duration::from_secs(300)).await?;
    let usage = f.usage()?;
    f.stop();
    stop.store(true, Ordering::Release);
    let seen = tailer.join().map_err(|_| anyhow::anyhow!("file reader panicked"))??;
    let (spilled, _) = slot_stats(db, &slot).await?;
    db.drop_slot(&slot).await?;
    // During: committed after the large one began (plus a moment for its
    // first changes) and before it committed.
    let mut during: Vec<i64> = seen.iter().filter(|(c, _)| *c >= big_start + 200_000 && *c < big_commit).map(|(c, t)| t - c).collect();
    let after = seen.iter().filter(|(c, _)| *c >= big_commit).map(|(c, t)| t - c).max().unwrap_or(0);
    if during.is_empty() {
        bail!("no small transaction committed while the large one ran ({} rows seen)", seen.len());
    }
    during.sort_unstable();
    let p99 = during[((during.len() as f64 - 1.0) * 0.99).round() as usize].max(0) as f64 / 1000.0;
    Ok(Interleaved {
        samples: during.len(),
        p99_during: p99,
        max_after: after.max(0) as f64 / 1000.0,
        rss_mb: usage.peak_rss_kib as f64 / 1024.0,
        spilled_mb: spilled as f64 / 1e6,
    })
}
