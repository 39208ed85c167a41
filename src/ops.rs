//! Operator commands that talk to live systems: `doctor`, `status` and `wait`.
//!
//! `doctor` prints one line per check (`ok` / `FAIL` / `warn`) and, for each
//! failure, the fix. `status` prints the slot's position and lag and, when
//! the daemon's HTTP listener answers, each sink's durable position.

use pgfanout_postgres::conn::connect_sql;
use pgfanout_postgres::slot::{self, TableName};
use pgfanout_sdk::Lsn;

use crate::config::Config;
use crate::pipeline::Router;

struct Report {
    failures: usize,
}

impl Report {
    fn ok(&self, what: &str) {
        println!("ok    {what}");
    }

    fn warn(&self, what: &str, fix: &str) {
        println!("warn  {what}\n      fix: {fix}");
    }

    fn fail(&mut self, what: &str, fix: &str) {
        self.failures += 1;
        println!("FAIL  {what}\n      fix: {fix}");
    }
}

/// `pgfanout doctor`: exit 0 when every check passes, 1 otherwise.
pub async fn doctor(cfg: &Config) -> i32 {
    let mut r = Report { failures: 0 };
    let pg = &cfg.source.postgres;
    let opts = match pg.connect_options() {
        Ok(o) => o,
        Err(e) => {
            r.fail(&format!("source.postgres.url: {e}"), "write a URL like postgres://user:password@host:5432/db");
            return 1;
        }
    };
    let client = match connect_sql(&opts).await {
        Ok(c) => {
            r.ok(&format!("connected to {}", opts.redacted()));
            c
        }
        Err(e) => {
            r.fail(
                &format!("cannot connect to {}: {e}", opts.redacted()),
                "check the host, port, database, user and password in source.postgres.url, and pg_hba.conf",
            );
            return 1;
        }
    };
    match slot::server_info(&client).await {
        Ok(info) => {
            if info.version_num >= 140000 {
                r.ok(&format!("server version {}", info.version_num));
            } else {
                r.fail(&format!("server version {} is older than 14", info.version_num), "upgrade PostgreSQL to 14 or newer");
            }
            if info.wal_level == "logical" {
                r.ok("wal_level = logical");
            } else {
                r.fail(
                    &format!("wal_level = {}", info.wal_level),
                    "set wal_level = logical in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL",
                );
            }
            let used: i64 = client.query_one("SELECT count(*) FROM pg_replication_slots", &[]).await.map(|row| row.get(0)).unwrap_or(0);
            if i64::from(info.max_replication_slots) > used {
                r.ok(&format!("max_replication_slots = {} ({used} in use)", info.max_replication_slots));
            } else {
                r.fail(
                    &format!("max_replication_slots = {} and {used} are in use", info.max_replication_slots),
                    "raise max_replication_slots in postgresql.conf and restart, or drop unused slots",
                );
            }
            if info.max_wal_senders > 0 {
                r.ok(&format!("max_wal_senders = {}", info.max_wal_senders));
            } else {
                r.fail("max_wal_senders = 0", "set max_wal_senders to at least 1 (10 is the default) and restart");
            }
        }
        Err(e) => r.fail(&format!("cannot read server settings: {e}"), "grant the role access to pg_settings"),
    }
    let role = client
        .query_one("SELECT rolname, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user", &[])
        .await
        .map(|row| (row.get::<_, String>(0), row.get::<_, bool>(1)));
    match role {
        Ok((name, true)) => r.ok(&format!("role {name} has REPLICATION")),
        Ok((name, false)) => r.fail(&format!("role {name} lacks the REPLICATION attribute"), &format!("ALTER ROLE {name} REPLICATION;")),
        Err(e) => r.fail(&format!("cannot read the role: {e}"), "check the connection user"),
    }
    let router = match Router::new(cfg) {
        Ok(router) => router,
        Err(e) => {
            r.fail(&format!("pipelines: {e}"), "fix the configuration (pgfanout check -c FILE)");
            return 1;
        }
    };
    let tables: Vec<TableName> = match slot::resolve_tables(&client, &router.table_patterns()).await {
        Ok(t) => {
            r.ok(&format!("{} table(s) matched by the pipelines", t.len()));
            t
        }
        Err(e) => {
            r.fail(&format!("pipeline tables: {e}"), "create the tables or fix the `from` patterns");
            Vec::new()
        }
    };
    for t in &tables {
        let q = t.quoted();
        let can =
            client.query_one("SELECT has_table_privilege($1, 'SELECT')", &[&q]).await.map(|row| row.get::<_, bool>(0)).unwrap_or(false);
        if !can {
            r.fail(&format!("no SELECT privilege on {t}"), &format!("GRANT SELECT ON {q} TO <the pgfanout role>;"));
        }
    }
    match slot::replica_identity_problems(&client, &tables).await {
        Ok(problems) if problems.is_empty() => r.ok("every table has a replica identity for updates and deletes"),
        Ok(problems) => {
            for p in problems {
                r.fail(&p, "ALTER TABLE <table> REPLICA IDENTITY FULL, or add a primary key");
            }
        }
        Err(e) => r.fail(&format!("cannot check replica identity: {e}"), "grant access to pg_class / pg_index"),
    }
    let publication = client.query("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1", &[&pg.publication]).await;
    let pub_exists = client
        .query_one("SELECT count(*) FROM pg_publication WHERE pubname = $1", &[&pg.publication])
        .await
        .map(|row| row.get::<_, i64>(0) > 0)
        .unwrap_or(false);
    match publication {
        Ok(rows) if pub_exists => {
            let covered: Vec<(String, String)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
            let missing: Vec<String> =
                tables.iter().filter(|t| !covered.iter().any(|(s, n)| *s == t.schema && *n == t.name)).map(|t| t.to_string()).collect();
            if missing.is_empty() {
                r.ok(&format!("publication {} covers the tables", pg.publication));
            } else {
                r.fail(
                    &format!("publication {} does not cover {}", pg.publication, missing.join(", ")),
                    &format!("ALTER PUBLICATION {} ADD TABLE {};", pg.publication, missing.join(", ")),
                );
            }
        }
        Ok(_) => r.warn(
            &format!("publication {} does not exist yet", pg.publication),
            "nothing to do if the role may CREATE in the database: `pgfanout run` creates it for the configured tables",
        ),
        Err(e) => r.fail(&format!("cannot read publications: {e}"), "check privileges"),
    }
    match slot::slot_info(&client, &pg.slot).await {
        Ok(Some(info)) => match slot::check_slot(&pg.slot, &info, &opts.dbname) {
            Ok(()) => r.ok(&format!(
                "slot {} confirmed at {}, retaining {} bytes of WAL{}",
                pg.slot,
                info.confirmed_flush_lsn.unwrap_or_default(),
                info.retained_bytes.unwrap_or(0),
                if info.active { " (active)" } else { "" }
            )),
            Err(e) => r.fail(&format!("slot {}: {e}", pg.slot), "see the message"),
        },
        Ok(None) => r.warn(&format!("slot {} does not exist yet", pg.slot), "nothing to do: `pgfanout run` creates it"),
        Err(e) => r.fail(&format!("cannot read slot {}: {e}", pg.slot), "check privileges"),
    }
    for (name, checks) in check_all(cfg).await {
        for check in checks {
            match check.problem {
                None => r.ok(&format!("sink {name}: {}", check.what)),
                Some(e) => {
                    r.fail(&format!("sink {name}: {}: {e}", check.what), "check the sink's address, credentials and that it is running")
                }
            }
        }
    }
    if r.failures == 0 {
        println!("all checks passed");
        0
    } else {
        println!("{} check(s) failed", r.failures);
        1
    }
}

/// `pgfanout status`: exit 0 when the slot exists.
pub async fn status(cfg: &Config) -> i32 {
    let pg = &cfg.source.postgres;
    let client = match pg.connect_options() {
        Ok(opts) => match connect_sql(&opts).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cannot connect to {}: {e}", opts.redacted());
                return 1;
            }
        },
        Err(e) => {
            eprintln!("source.postgres.url: {e}");
            return 2;
        }
    };
    let row = client
        .query_opt(
            "SELECT active, confirmed_flush_lsn::text, restart_lsn::text,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, wal_status
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&pg.slot],
        )
        .await;
    match row {
        Ok(Some(row)) => {
            let active: bool = row.get(0);
            println!("slot              {}", pg.slot);
            println!("active            {active}");
            println!("confirmed_flush   {}", row.get::<_, Option<String>>(1).unwrap_or_default());
            println!("restart_lsn       {}", row.get::<_, Option<String>>(2).unwrap_or_default());
            println!("lag_bytes         {}", row.get::<_, Option<i64>>(3).unwrap_or(0));
            println!("retained_wal      {}", row.get::<_, Option<i64>>(4).unwrap_or(0));
            println!("wal_status        {}", row.get::<_, Option<String>>(5).unwrap_or_default());
        }
        Ok(None) => {
            println!("slot {} does not exist (pgfanout has not run yet, or it was dropped)", pg.slot);
            return 1;
        }
        Err(e) => {
            eprintln!("cannot read pg_replication_slots: {e}");
            return 1;
        }
    }
    match sink_positions(&cfg.http.listen).await {
        Some(positions) if !positions.is_empty() => {
            for (sink, lsn) in positions {
                println!("sink {sink:<12} durable {lsn}");
            }
        }
        _ => println!("sinks             (daemon status at http://{}/status not reachable)", cfg.http.listen),
    }
    0
}

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

/// `pgfanout wait`: asks the daemon's `/wait` and exits 0 once the position
/// is durable, 1 on timeout or when the daemon cannot be reached, 2 for a
/// bad LSN or sink.
pub async fn wait(cfg: &Config, lsn: &str, sink: Option<&str>, timeout: std::time::Duration) -> i32 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if lsn.parse::<Lsn>().is_err() {
        eprintln!("--lsn {lsn:?}: not an LSN like 0/16B3748 (take pg_current_wal_insert_lsn() after the commit)");
        return 2;
    }
    if let Some(s) = sink {
        if !cfg.sinks.contains_key(s) {
            let names: Vec<&str> = cfg.sinks.keys().map(String::as_str).collect();
            eprintln!("--sink {s:?}: no such sink; the sinks are: {}", names.join(", "));
            return 2;
        }
    }
    if !cfg.http.enabled {
        eprintln!("wait asks the daemon's HTTP listener, which this config disables (http.enabled: false)");
        return 2;
    }
    let listen = &cfg.http.listen;
    let mut path = format!("/wait?lsn={lsn}&timeout={}ms", timeout.as_millis());
    if let Some(s) = sink {
        path.push_str(&format!("&sink={}", url_escape(s)));
    }
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(listen.as_str()).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {listen}\r\n\r\n").as_bytes()).await?;
        let mut response = String::new();
        s.read_to_string(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = match tokio::time::timeout(timeout + std::time::Duration::from_secs(5), exchange).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            eprintln!("cannot reach the daemon at http://{listen}/wait: {e} (is pgfanout running with this config?)");
            return 1;
        }
        Err(_) => {
            eprintln!("the daemon at http://{listen} did not answer within {timeout:?}");
            return 1;
        }
    };
    let status = response.split_whitespace().nth(1).unwrap_or_default().to_string();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    println!("{}", body.trim());
    match status.as_str() {
        "200" => 0,
        "400" => 2,
        _ => 1,
    }
}

/// Percent-encodes what a query parameter cannot hold as is.
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// `pgfanout backfill`'s arguments.
#[derive(Debug)]
pub struct BackfillRequest {
    pub table: Option<String>,
    pub filter: Option<String>,
    pub chunk_size: Option<i64>,
    pub max_rows_per_second: Option<i64>,
    pub wait: bool,
    pub list: bool,
    pub pause: Option<i64>,
    pub resume: Option<i64>,
    pub cancel: Option<i64>,
}

/// `pgfanout backfill`: writes the request to `pgfanout.signals` (the
/// daemon applies it), lists backfills, or waits for one to finish.
pub async fn backfill(cfg: &Config, r: BackfillRequest) -> i32 {
    use crate::backfill::state::{self, BackfillStatus, SignalKind};
    let pg = &cfg.source.postgres;
    let client = match pg.connect_options() {
        Ok(opts) => match connect_sql(&opts).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cannot connect to {}: {e}", opts.redacted());
                return 1;
            }
        },
        Err(e) => {
            eprintln!("source.postgres.url: {e}");
            return 2;
        }
    };
    if r.list {
        return match state::list(&client, &pg.slot).await {
            Ok(list) => {
                println!("{:>5}  {:<10} {:<32} {:>12} {:>8}  where", "id", "status", "table", "rows", "chunks");
                for b in list {
                    println!(
                        "{:>5}  {:<10} {:<32} {:>12} {:>8}  {}",
                        b.id,
                        b.status,
                        b.table,
                        b.rows,
                        b.chunks,
                        b.filter.unwrap_or_default()
                    );
                }
                0
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        };
    }
    let (kind, data) = match (&r.table, r.pause, r.resume, r.cancel) {
        (Some(t), ..) => {
            let table = match crate::backfill::parse_table(t) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("--table: {e}");
                    return 2;
                }
            };
            let router = match Router::new(cfg) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{e}");
                    return 2;
                }
            };
            let read = router
                .table_patterns()
                .iter()
                .filter_map(|p| crate::config::TablePattern::parse(p).ok())
                .any(|p| p.matches(&table.schema, &table.name));
            if !read {
                eprintln!("--table {table}: no pipeline of this config reads it (its rows would go nowhere)");
                return 2;
            }
            (
                SignalKind::Backfill,
                serde_json::json!({"table": table.to_string(), "where": r.filter, "chunk_size": r.chunk_size,
                                   "max_rows_per_second": r.max_rows_per_second, "slot": pg.slot, "reason": "cli"}),
            )
        }
        (None, Some(id), _, _) => (SignalKind::Pause, serde_json::json!({"id": id, "slot": pg.slot})),
        (None, _, Some(id), _) => (SignalKind::Resume, serde_json::json!({"id": id, "slot": pg.slot})),
        (None, _, _, Some(id)) => (SignalKind::Cancel, serde_json::json!({"id": id, "slot": pg.slot})),
        _ => {
            eprintln!("give --table, --list, --pause ID, --resume ID or --cancel ID");
            return 2;
        }
    };
    let signal = match state::signal(&client, kind, &data).await {
        Ok(id) => id,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    println!("signal {signal}: {kind} {data}");
    if !r.wait {
        println!("the running daemon applies it within a second (pgfanout backfill -c FILE --list shows progress)");
        return 0;
    }
    // Wait for the daemon to take the signal, then for the backfill to end.
    let mut backfill_id: Option<i64> = None;
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
                        println!("{result}");
                        return if result.starts_with("refused") { 1 } else { 0 };
                    }
                }
            }
        }
        if let Some(id) = backfill_id {
            match state::status(&client, id).await {
                Ok(Some(BackfillStatus::Done)) => {
                    println!("backfill {id} done");
                    return 0;
                }
                Ok(Some(s @ (BackfillStatus::Failed | BackfillStatus::Cancelled))) => {
                    println!("backfill {id} {s}");
                    return 1;
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("{e}");
                    return 1;
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// For `doctor`: per sink, its checks as (what, problem or None).
async fn check_all(cfg: &Config) -> Vec<(String, Vec<pgfanout_sdk::Check>)> {
    let mut out = Vec::new();
    for (name, sink_cfg) in &cfg.sinks {
        let checks = match &sink_cfg.configured {
            Some(c) => c.doctor().await,
            None => vec![pgfanout_sdk::Check::failed("configure", "not configured (internal error)")],
        };
        out.push((name.clone(), checks));
    }
    out
}
