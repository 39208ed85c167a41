//! `pgfanout status`: the slot's position and lag, the instance leading it
//! (with `ha`) and, when the daemon's HTTP listener answers, each sink's
//! durable position.

use pgfanout_sdk::Lsn;

use super::{Exit, Report};
use crate::config::Config;

/// `pgfanout status`: exit 0 when the slot exists.
pub async fn status(cfg: &Config) -> Report {
    let mut r = Report::default();
    let pg = &cfg.source.postgres;
    // The slot's server: the standby when decoding on one.
    let client = match super::connect_slot_server(cfg).await {
        Ok(c) => c,
        Err(failed) => return failed,
    };
    let end = pgfanout_postgres::slot::WAL_END;
    let query = format!(
        "SELECT active, confirmed_flush_lsn::text, restart_lsn::text,
                pg_wal_lsn_diff({end}, confirmed_flush_lsn)::bigint, pg_wal_lsn_diff({end}, restart_lsn)::bigint, wal_status
         FROM pg_replication_slots WHERE slot_name = $1"
    );
    let row = client.query_opt(&query, &[&pg.slot]).await;
    match row {
        Ok(Some(row)) => {
            let active: bool = row.get(0);
            r.say(format_args!("slot              {}", pg.slot));
            r.say(format_args!("active            {active}"));
            r.say(format_args!("confirmed_flush   {}", row.get::<_, Option<String>>(1).unwrap_or_default()));
            r.say(format_args!("restart_lsn       {}", row.get::<_, Option<String>>(2).unwrap_or_default()));
            r.say(format_args!("lag_bytes         {}", row.get::<_, Option<i64>>(3).unwrap_or(0)));
            r.say(format_args!("retained_wal      {}", row.get::<_, Option<i64>>(4).unwrap_or(0)));
            r.say(format_args!("wal_status        {}", row.get::<_, Option<String>>(5).unwrap_or_default()));
        }
        Ok(None) => {
            r.say(format_args!("slot {} does not exist (pgfanout has not run yet, or it was dropped)", pg.slot));
            return r.ends(Exit::Failed);
        }
        Err(e) => {
            r.complain(format_args!("cannot read pg_replication_slots: {e}"));
            return r.ends(Exit::Failed);
        }
    }
    match crate::runtime::lease::holder(&client, &pg.slot).await {
        Ok(Some(h)) => {
            let state = if h.expires_in_ms >= 0 { format!("expires in {} ms", h.expires_in_ms) } else { "expired".into() };
            r.say(format_args!("leader            {} (lease epoch {}, {state})", h.instance, h.epoch));
        }
        Ok(None) if cfg.ha.enabled => r.say(format_args!("leader            none yet (ha enabled; no instance has taken the lease)")),
        Ok(None) => {}
        Err(e) => r.complain(format_args!("cannot read pgfanout.leases: {e}")),
    }
    group_status(cfg, &mut r).await;
    match sink_positions(&cfg.http.listen).await {
        Some(positions) if !positions.is_empty() => {
            for (sink, lsn) in positions {
                r.say(format_args!("sink {sink:<12} durable {lsn}"));
            }
        }
        _ => r.say(format_args!("sinks             (daemon status at http://{}/status not reachable)", cfg.http.listen)),
    }
    r
}

/// With `source.kafka` (an applier's config): the consumer group's state,
/// its members and their partitions, and the lag of every partition.
#[cfg(feature = "kafka")]
async fn group_status(cfg: &Config, r: &mut Report) {
    let (group, view) = match super::describe_group(cfg).await {
        None => return,
        Some(Ok(x)) => x,
        Some(Err(e)) => {
            r.complain(format_args!("source.kafka: cannot describe the consumer group: {e}"));
            r.exit = Exit::Failed;
            return;
        }
    };
    let state = if view.state.is_empty() { "unknown to the coordinator" } else { &view.state };
    r.say(format_args!("kafka group       {group} ({state}, {} member(s))", view.members.len()));
    for m in &view.members {
        r.say(format_args!("member            {} {} [{}]", m.client_id, m.host, m.assigned.join(", ")));
    }
    for p in &view.partitions {
        let committed = p.committed.map_or("none".to_string(), |c| c.to_string());
        r.say(format_args!("partition         {}/{} committed {committed} end {} lag {}", p.topic, p.partition, p.end, p.lag()));
    }
    if view.partitions.is_empty() {
        r.say("partition         (no topic matches source.kafka.topics yet: the reader creates it on its first write)");
    }
    r.say(format_args!("kafka_lag         {}", view.lag()));
}

#[cfg(not(feature = "kafka"))]
async fn group_status(_cfg: &Config, _r: &mut Report) {}

/// Reads the per-sink durable positions from the daemon's `/status`.
async fn sink_positions(listen: &str) -> Option<Vec<(String, Lsn)>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(std::time::Duration::from_secs(2), tokio::net::TcpStream::connect(listen)).await.ok()?.ok()?;
    s.write_all(format!("GET /status HTTP/1.0\r\nHost: {listen}\r\n\r\n").as_bytes()).await.ok()?;
    let mut response = String::new();
    tokio::time::timeout(std::time::Duration::from_secs(2), s.read_to_string(&mut response)).await.ok()?.ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    let status: serde_json::Value = serde_json::from_str(body).ok()?;
    status["sinks"].as_array()?.iter().map(|s| Some((s["name"].as_str()?.to_string(), s["durable_lsn"].as_str()?.parse().ok()?))).collect()
}
