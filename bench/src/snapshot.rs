//! The snapshot workload: how fast pgfanout's initial snapshot
//! (`snapshot: initial`) copies a table, next to `psql \copy` of the same
//! table to /dev/null, the plainest way to read it all out of PostgreSQL.
//!
//! The table (stream-big's shape, `--rows` rows) is filled and ANALYZEd once.
//! Each run starts pgfanout on a slot name that does not exist yet, so its
//! first start copies the table under an exported snapshot into the `file`
//! sink on /dev/null; it is timed from spawn until it logs `snapshot
//! complete` (logged once every sink has the rows durable). Its CPU time and
//! peak RSS are read from /proc at that moment. The baseline is timed in the
//! same run (the order alternates between runs); the slot is dropped after.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::db::{Db, PUBLICATION};
use crate::load::Shape;
use crate::report::{Better, Figure, Goal};
use crate::throughput::Ctx;
use crate::tools::{self, Fanout, FanoutConfig, PG_BIN};

/// The line pgfanout logs (at INFO) when the initial copy is durable.
const DONE: &str = "snapshot complete";

/// Runs the snapshot workload `ctx.runs` times; returns rows/s (with the
/// `psql \copy` baseline), pgfanout's CPU µs per row and peak RSS.
pub async fn run(ctx: &Ctx) -> Result<Vec<Figure>> {
    let name = "snapshot";
    let mut rate =
        Figure::new(name, "throughput", "rows/s", Better::Higher).with_baseline("psql \\copy").with_goal(Goal::RatioAtLeast(0.7));
    let mut cpu = Figure::new(name, "CPU per row", "µs", Better::Lower);
    let mut rss = Figure::new(name, "peak RSS", "MB", Better::Lower).with_goal(Goal::AtMost(32.0));

    let db = Db::start(&ctx.pg(&[])).await?;
    let shape = Shape::Big;
    let table = shape.table();
    db.exec(&shape.ddl()).await?;
    db.exec(&format!("CREATE PUBLICATION {PUBLICATION} FOR TABLE {table}")).await?;
    let started = Instant::now();
    db.exec(&shape.load_sql(ctx.rows)).await?;
    db.exec(&format!("VACUUM ANALYZE {table}")).await?;
    eprintln!("  snapshot: loaded {} rows in {:.1} s", ctx.rows, started.elapsed().as_secs_f64());
    let timeout = Duration::from_secs(300.max(ctx.rows / 2_000));

    for run in 0..ctx.runs {
        let slot = format!("snap_{run}");
        let mut fanout = None;
        let mut copy = None;
        for turn in 0..2 {
            db.exec("CHECKPOINT").await?;
            if (turn + run) % 2 == 0 {
                fanout = Some(snapshot_pgfanout(ctx, &db, &slot, table, timeout).await?);
                db.drop_slot(&slot).await?;
            } else {
                copy = Some(copy_psql(&db, table, timeout).await?);
            }
        }
        let (Some((secs, usage)), Some(base)) = (fanout, copy) else { bail!("a snapshot run did not happen") };
        let rows = ctx.rows as f64;
        eprintln!(
            "  snapshot run {}/{}: pgfanout {secs:.2} s ({:.0} rows/s, {:.2} µs CPU/row, {} MB), psql \\copy {base:.2} s ({:.0} rows/s)",
            run + 1,
            ctx.runs,
            rows / secs,
            usage.cpu_seconds * 1e6 / rows,
            usage.peak_rss_kib / 1024,
            rows / base,
        );
        rate.pgfanout.push(rows / secs);
        rate.baseline.push(rows / base);
        cpu.pgfanout.push(usage.cpu_seconds * 1e6 / rows);
        rss.pgfanout.push(usage.peak_rss_kib as f64 / 1024.0);
    }
    Ok(vec![rate, cpu, rss])
}

/// Starts pgfanout on a new slot with `snapshot: initial` and waits for
/// [`DONE`] in its log; returns the seconds since spawn and its usage then.
async fn snapshot_pgfanout(ctx: &Ctx, db: &Db, slot: &str, table: &str, timeout: Duration) -> Result<(f64, crate::procstat::Usage)> {
    db.drop_slot(slot).await?;
    let cfg = FanoutConfig {
        slot,
        table,
        sink: "{ type: file, path: /dev/null }".to_string(),
        mapping: String::new(),
        http_listen: None,
        batch_size: None,
    };
    let yaml = cfg.yaml(db, &ctx.dir);
    let yaml = yaml.replace("snapshot: never", "snapshot: initial");
    if !yaml.contains("snapshot: initial") {
        bail!("generated config has no `snapshot:` line to switch to initial");
    }
    let mut f = Fanout::spawn_yaml(&ctx.bin, &ctx.dir, slot, &yaml, "info")?;
    loop {
        let log = std::fs::read_to_string(&f.log_path).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains(DONE)) {
            let took = f.elapsed().as_secs_f64();
            let usage = f.usage()?;
            f.stop();
            check_rows(line, ctx.rows)?;
            return Ok((took, usage));
        }
        f.check_running()?;
        if f.elapsed() > timeout {
            bail!("pgfanout did not log {DONE:?} within {timeout:?}; log:\n{}", tools::tail(&f.log_path));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// When the completion line reports a row count (`rows=N` or `"rows":N`),
/// it must be the table's: a short copy would make the rate meaningless.
fn check_rows(line: &str, expected: u64) -> Result<()> {
    let Some(at) = line.find("rows=").map(|i| i + 5).or_else(|| line.find("\"rows\":").map(|i| i + 7)) else {
        return Ok(());
    };
    let digits: String = line[at..].chars().take_while(|c| c.is_ascii_digit()).collect();
    match digits.parse::<u64>() {
        Ok(n) if n != expected => bail!("pgfanout's snapshot copied {n} rows, expected {expected}: {line}"),
        _ => Ok(()),
    }
}

/// `psql -c "\copy (SELECT * FROM table) TO '/dev/null'"`, timed from spawn
/// to exit; returns seconds.
async fn copy_psql(db: &Db, table: &str, timeout: Duration) -> Result<f64> {
    let started = Instant::now();
    let mut child = Command::new(format!("{PG_BIN}/psql"))
        .args(["-X", "-q", "-h", "127.0.0.1", "-p", &db.pg.port.to_string(), "-U", "postgres", "-d", &db.name])
        .args(["-c", &format!("\\copy (SELECT * FROM {table}) TO '/dev/null'")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn psql")?;
    let Some(status) = tools::wait_child(&mut child, started, timeout, async || {}).await? else {
        bail!("psql \\copy did not finish within {timeout:?}");
    };
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        let out = child.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).unwrap_or_default();
        bail!("psql \\copy failed with {status}: {out}");
    }
    Ok(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_count_in_completion_line() {
        assert!(check_rows("INFO snapshot complete; streaming starts rows=10 seconds=1.0", 10).is_ok());
        assert!(check_rows("INFO snapshot complete; streaming starts rows=9 seconds=1.0", 10).is_err());
        assert!(check_rows("{\"rows\":9,\"msg\":\"snapshot complete\"}", 10).is_err());
        assert!(check_rows("snapshot complete", 10).is_ok());
    }
}
