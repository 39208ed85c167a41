//! The benchmark's own PostgreSQL: a throwaway cluster (testkit's, with
//! fsync off as the tests use it), one database, and the slot and LSN
//! helpers every workload needs.
//!
//! The rule that keeps comparisons fair lives here: [`Db::prepare_drain`]
//! checkpoints and advances every slot that is not about to be drained, so no
//! tool pays for decoding WAL that belongs to another run.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use testkit::PgCluster;

/// Publication every workload streams through.
pub const PUBLICATION: &str = "bench_pub";

/// A running cluster with a connected client on database `bench`.
pub struct Db {
    pub pg: PgCluster,
    pub name: String,
    pub client: tokio_postgres::Client,
}

impl Db {
    /// Starts a cluster with the given extra settings and creates the database.
    pub async fn start(settings: &[(&str, &str)]) -> Result<Db> {
        let owned: Vec<(String, String)> = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let pg = tokio::task::spawn_blocking(move || {
            let refs: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            PgCluster::start_with(&refs)
        })
        .await
        .context("start PostgreSQL")?;
        let name = pg.create_database("bench").await;
        let client = pg.client(&name).await;
        Ok(Db { pg, name, client })
    }

    /// Runs SQL statements (simple protocol, one after the other).
    pub async fn exec(&self, sql: &str) -> Result<()> {
        self.client.batch_execute(sql).await.with_context(|| format!("run SQL: {}", short(sql)))
    }

    async fn lsn_of(&self, sql: &str) -> Result<u64> {
        let row = self.client.query_one(sql, &[]).await.with_context(|| format!("query {sql}"))?;
        let text: Option<String> = row.get(0);
        text.as_deref().map(parse_lsn).transpose()?.context("NULL LSN")
    }

    /// The end of the WAL written so far (`pg_current_wal_insert_lsn()`, as
    /// synchronous_commit is off), once the server has also flushed it, so
    /// that a walsender can send everything up to it.
    pub async fn end_lsn(&self) -> Result<u64> {
        let end = self.lsn_of("SELECT pg_current_wal_insert_lsn()::text").await?;
        let start = Instant::now();
        while self.lsn_of("SELECT pg_current_wal_flush_lsn()::text").await? < end {
            if start.elapsed() > Duration::from_secs(30) {
                bail!("WAL not flushed up to {} after 30 s", fmt_lsn(end));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(end)
    }

    pub async fn create_slot(&self, slot: &str) -> Result<()> {
        self.client
            .execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot])
            .await
            .with_context(|| format!("create slot {slot}"))?;
        Ok(())
    }

    /// Drops a slot if it exists (waiting for its consumer to let go).
    pub async fn drop_slot(&self, slot: &str) -> Result<()> {
        let start = Instant::now();
        loop {
            let r = self
                .client
                .execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
                .await;
            match r {
                Ok(_) => return Ok(()),
                Err(_) if start.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("drop slot {slot}")),
            }
        }
    }

    /// The slot's confirmed_flush_lsn (0 when unknown).
    pub async fn confirmed_flush(&self, slot: &str) -> Result<u64> {
        let row = self
            .client
            .query_opt("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .context("read slot position")?;
        match row.and_then(|r| r.get::<_, Option<String>>(0)) {
            Some(s) => parse_lsn(&s),
            None => Ok(0),
        }
    }

    /// Before a timed drain: `CHECKPOINT`, then advance every slot except
    /// `keep` to the flushed end of WAL, so that no slot holds old WAL that a
    /// tool (or the server on its behalf) would decode again.
    pub async fn prepare_drain(&self, keep: &[&str]) -> Result<()> {
        self.exec("CHECKPOINT").await?;
        let rows = self.client.query("SELECT slot_name::text FROM pg_replication_slots WHERE NOT active", &[]).await?;
        for r in rows {
            let slot: String = r.get(0);
            if keep.contains(&slot.as_str()) {
                continue;
            }
            self.client
                .execute("SELECT pg_replication_slot_advance($1, pg_current_wal_flush_lsn())", &[&slot])
                .await
                .with_context(|| format!("advance slot {slot}"))?;
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        self.pg.url(&self.name)
    }
}

fn short(sql: &str) -> String {
    let s: String = sql.chars().take(120).collect();
    if s.len() < sql.len() {
        format!("{s}…")
    } else {
        s
    }
}

/// Parses `X/Y` (hex) into a number.
pub fn parse_lsn(s: &str) -> Result<u64> {
    let (hi, lo) = s.split_once('/').with_context(|| format!("bad LSN {s:?}"))?;
    let hi = u64::from_str_radix(hi, 16).with_context(|| format!("bad LSN {s:?}"))?;
    let lo = u64::from_str_radix(lo, 16).with_context(|| format!("bad LSN {s:?}"))?;
    Ok((hi << 32) | lo)
}

/// Formats a number as `X/Y`.
pub fn fmt_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip() {
        assert_eq!(parse_lsn("16/B374D848").unwrap(), 0x16_B374_D848);
        assert_eq!(fmt_lsn(0x16_B374_D848), "16/B374D848");
        assert!(parse_lsn("nope").is_err());
    }
}
