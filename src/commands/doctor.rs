//! `pgfanout doctor`: checks the live system (server settings, privileges,
//! publication, replica identity, slot, every sink's own checks), one line
//! per check (`ok` / `FAIL` / `warn`) and, for each failure, the fix.

use pgfanout_postgres::conn::{connect_sql, PgConnectOptions};
use pgfanout_postgres::replication as pgoutput;
use pgfanout_postgres::slot::{self, TableName};

use super::{Exit, Report};
use crate::config::Config;
use crate::pipeline::Router;

/// The checks' lines, and how many failed.
struct Checks {
    report: Report,
    failures: usize,
}

impl Checks {
    fn ok(&mut self, what: &str) {
        self.report.say(format_args!("ok    {what}"));
    }

    fn warn(&mut self, what: &str, fix: &str) {
        self.report.say(format_args!("warn  {what}\n      fix: {fix}"));
    }

    fn fail(&mut self, what: &str, fix: &str) {
        self.failures += 1;
        self.report.say(format_args!("FAIL  {what}\n      fix: {fix}"));
    }
}

/// What pgfanout does differently on server major version `major`, one
/// line each.
fn server_features(major: u32, streaming: bool) -> Vec<String> {
    let protocol = pgoutput::Pgoutput::for_server(major, streaming);
    let mut out = vec![match (protocol.streaming, streaming) {
        (true, _) => format!(
            "pgoutput protocol {}: large transactions are streamed while they run (source.postgres.streaming: auto){}",
            protocol.proto_version,
            if major >= 15 { "; prepared transactions reach the sinks at COMMIT PREPARED" } else { "" }
        ),
        (false, false) => "pgoutput protocol 1: source.postgres.streaming is off (large transactions are spilled by the server and sent after their commit)".to_string(),
        (false, true) => "pgoutput protocol 1".to_string(),
    }];
    if major >= 17 {
        out.push(
            "failover slots: the slot is made a failover slot (source.postgres.failover_slot); on the standby set sync_replication_slots = on, hot_standby_feedback = on, primary_slot_name and a primary_conninfo with dbname; on the primary synchronized_standby_slots"
                .to_string(),
        );
    }
    if major == 14 {
        out.push(
            "PostgreSQL 14: a partition attached to a published table is streamed only to a new replication connection; pgfanout reconnects when one appears, and backfills its root when it holds rows"
                .to_string(),
        );
    }
    out
}

/// `pgfanout doctor`: exit 0 when every check passes, 1 otherwise.
pub async fn doctor(cfg: &Config) -> Report {
    let mut r = Checks { report: Report::default(), failures: 0 };
    let pg = &cfg.source.postgres;
    let opts = match pg.connect_options() {
        Ok(o) => o,
        Err(e) => {
            r.fail(&format!("source.postgres.url: {e}"), "write a URL like postgres://user:password@host:5432/db");
            return r.report.ends(Exit::Failed);
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
            return r.report.ends(Exit::Failed);
        }
    };
    match slot::server_info(&client).await {
        Ok(info) => {
            if info.version_num >= 140000 {
                r.ok(&format!("server version {}", info.version_num));
                let streaming = pg.streaming == crate::config::Streaming::Auto;
                for feature in server_features((info.version_num / 10_000) as u32, streaming) {
                    r.ok(&feature);
                }
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
        Ok((name, false)) if cfg.source.kafka.is_some() => {
            r.ok(&format!("role {name} lacks REPLICATION, which an applier does not need (the reader's role does)"))
        }
        Ok((name, false)) => r.fail(&format!("role {name} lacks the REPLICATION attribute"), &format!("ALTER ROLE {name} REPLICATION;")),
        Err(e) => r.fail(&format!("cannot read the role: {e}"), "check the connection user"),
    }
    let router = match Router::new(cfg) {
        Ok(router) => router,
        Err(e) => {
            r.fail(&format!("pipelines: {e}"), "fix the configuration (pgfanout check -c FILE)");
            return r.report.ends(Exit::Failed);
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
    let in_recovery = client.query_one("SELECT pg_is_in_recovery()", &[]).await.map(|row| row.get::<_, bool>(0)).unwrap_or(false);
    if let Ok(info) = slot::server_info(&client).await {
        if in_recovery || opts.primary.is_some() {
            standby_checks(&mut r, &opts, &client, in_recovery, info.version_num).await;
        } else {
            failover_checks(&mut r, cfg, &opts, &client, info.version_num / 10_000).await;
        }
    }
    group_checks(&mut r, cfg).await;
    for (name, checks) in check_all(cfg).await {
        for check in checks {
            match check.problem {
                None => r.ok(&format!("sink {name}: {}", check.what)),
                Some(e) => {
                    let fix = pgfanout_sdk::settings::certificate_fix(&e)
                        .unwrap_or("check the sink's address, credentials and that it is running");
                    r.fail(&format!("sink {name}: {}: {e}", check.what), fix)
                }
            }
        }
    }
    if r.failures == 0 {
        r.report.say("all checks passed");
        r.report
    } else {
        let failures = r.failures;
        r.report.say(format_args!("{failures} check(s) failed"));
        r.report.ends(Exit::Failed)
    }
}

/// Decoding on a physical standby (`source.postgres.url` in recovery): what
/// the standby and the primary (`primary_url`) need. Failures name the fix.
async fn standby_checks(r: &mut Checks, opts: &PgConnectOptions, standby: &tokio_postgres::Client, in_recovery: bool, version: i32) {
    if !in_recovery {
        r.warn(
            &format!("source.postgres.primary_url is set, but {} is not a standby (promoted?)", opts.endpoint()),
            "point url at a standby to decode there, or remove primary_url",
        );
        return;
    }
    if version >= 160000 {
        r.ok(&format!("{} is a standby: logical decoding on a standby (PostgreSQL 16+)", opts.endpoint()));
    } else {
        r.fail(
            &format!("{} is a standby running {version}: logical decoding on a standby needs PostgreSQL 16", opts.endpoint()),
            "point source.postgres.url at the primary, or upgrade to 16+",
        );
    }
    if setting(standby, "hot_standby_feedback").await == "on" {
        r.ok("standby: hot_standby_feedback = on");
    } else {
        r.fail(
            "standby: hot_standby_feedback = off (the primary may remove catalog rows the slot needs, and the slot is invalidated)",
            "ALTER SYSTEM SET hot_standby_feedback = on; SELECT pg_reload_conf(); on the standby",
        );
    }
    if setting(standby, "primary_slot_name").await.is_empty() {
        r.warn(
            "standby: primary_slot_name is not set (hot_standby_feedback then holds only while the standby is connected)",
            "SELECT pg_create_physical_replication_slot('standby1') on the primary; primary_slot_name = 'standby1' on the standby",
        );
    } else {
        r.ok("standby: streams from a physical slot (primary_slot_name)");
    }
    let Some(primary_opts) = &opts.primary else {
        r.fail(
            "source.postgres.url names a standby and source.postgres.primary_url is not set",
            "set source.postgres.primary_url to the primary: pgfanout writes its publication, state and heartbeats there",
        );
        return;
    };
    match connect_sql(primary_opts).await {
        Ok(primary) => {
            let read_only = setting(&primary, "transaction_read_only").await;
            let wal_level = setting(&primary, "wal_level").await;
            if read_only == "off" && wal_level == "logical" {
                r.ok(&format!("primary {}: takes writes, wal_level = logical", primary_opts.endpoint()));
            } else if read_only != "off" {
                r.fail(
                    &format!("primary {}: takes no writes", primary_opts.endpoint()),
                    "point source.postgres.primary_url at the primary",
                );
            } else {
                r.fail(
                    &format!("primary {}: wal_level = {wal_level}", primary_opts.endpoint()),
                    "set wal_level = logical on the primary and restart it (a standby decodes only what the primary logs)",
                );
            }
        }
        Err(e) => r.fail(&format!("cannot connect to the primary {}: {e}", primary_opts.endpoint()), "check source.postgres.primary_url"),
    }
}

/// A server setting's value; empty when it is unknown or cannot be read.
async fn setting(c: &tokio_postgres::Client, name: &str) -> String {
    c.query_one("SELECT current_setting($1, true)", &[&name]).await.ok().and_then(|row| row.get::<_, Option<String>>(0)).unwrap_or_default()
}

/// Whether the slot can survive a failover (PostgreSQL 17+): the slot is a
/// failover slot, the primary holds changes back for the standby
/// (`synchronized_standby_slots`), and every other host of the URL that is
/// a standby keeps a synchronized copy (`sync_replication_slots`,
/// `hot_standby_feedback`, `primary_slot_name`, a `primary_conninfo` with
/// `dbname`). Failures name the setting to change.
async fn failover_checks(
    r: &mut Checks,
    cfg: &Config,
    opts: &pgfanout_postgres::conn::PgConnectOptions,
    primary: &tokio_postgres::Client,
    major: i32,
) {
    let pg = &cfg.source.postgres;
    let hosts = opts.per_host();
    if major < 17 {
        if hosts.len() > 1 {
            r.warn(
                &format!("source.postgres.url lists {} hosts, but PostgreSQL {major} has no failover slots", hosts.len()),
                "after a failover the promoted standby has no slot (on_slot_lost decides what happens); upgrade to 17 for failover slots",
            );
        }
        return;
    }
    if !pg.failover_slot {
        r.warn("source.postgres.failover_slot is false: the slot does not survive a failover", "set it to true (the default)");
        return;
    }
    let failover: Option<bool> = primary
        .query_opt("SELECT failover FROM pg_replication_slots WHERE slot_name = $1", &[&pg.slot])
        .await
        .ok()
        .flatten()
        .map(|row| row.get(0));
    match failover {
        Some(true) => r.ok(&format!("slot {} is a failover slot", pg.slot)),
        Some(false) => {
            r.warn(&format!("slot {} is not a failover slot yet", pg.slot), "nothing to do: `pgfanout run` makes it one at start")
        }
        None => {}
    }
    let synchronized = setting(primary, "synchronized_standby_slots").await;
    if synchronized.is_empty() {
        r.warn(
            "synchronized_standby_slots is empty on the primary: changes can reach pgfanout before the standby has them, and a promoted standby may lack changes the sinks hold",
            "ALTER SYSTEM SET synchronized_standby_slots = '<the standby's physical slot>'; SELECT pg_reload_conf();",
        );
    } else {
        r.ok(&format!("synchronized_standby_slots = {synchronized} on the primary"));
    }
    if hosts.len() < 2 {
        r.warn(
            "source.postgres.url names one host: after a failover pgfanout cannot find the promoted standby",
            "list every host, primary first, with target_session_attrs=read-write: postgres://u@primary,standby/db?target_session_attrs=read-write",
        );
        return;
    }
    for mut host in hosts {
        // Each host on its own, standbys included.
        host.target_session_attrs = pgfanout_postgres::conn::TargetSessionAttrs::Any;
        let name = match &host.host {
            pgfanout_postgres::conn::Host::Tcp(h) => format!("{h}:{}", host.port),
            pgfanout_postgres::conn::Host::Unix(dir) => format!("{}:{}", dir.display(), host.port),
        };
        let c = match connect_sql(&host).await {
            Ok(c) => c,
            Err(e) => {
                r.warn(&format!("host {name}: cannot connect: {e}"), "check that the standby runs and accepts connections from pgfanout");
                continue;
            }
        };
        let standby: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).await.map(|row| row.get(0)).unwrap_or(false);
        if !standby {
            continue;
        }
        for (key, want, fix) in [
            ("sync_replication_slots", "on", "ALTER SYSTEM SET sync_replication_slots = on; SELECT pg_reload_conf();"),
            ("hot_standby_feedback", "on", "ALTER SYSTEM SET hot_standby_feedback = on; SELECT pg_reload_conf();"),
        ] {
            let have = setting(&c, key).await;
            if have == want {
                r.ok(&format!("standby {name}: {key} = {want}"));
            } else {
                r.fail(&format!("standby {name}: {key} = {have} (the slot is not kept there)"), fix);
            }
        }
        if setting(&c, "primary_slot_name").await.is_empty() {
            r.fail(
                &format!("standby {name}: primary_slot_name is not set"),
                "stream from a physical slot: SELECT pg_create_physical_replication_slot('standby1') on the primary, primary_slot_name = 'standby1' on the standby",
            );
        } else {
            r.ok(&format!("standby {name}: primary_slot_name is set"));
        }
        if setting(&c, "primary_conninfo").await.contains("dbname=") {
            r.ok(&format!("standby {name}: primary_conninfo names a database"));
        } else {
            r.fail(
                &format!("standby {name}: primary_conninfo names no database (slot synchronization needs one)"),
                "add dbname=<the source database> to primary_conninfo on the standby",
            );
        }
        let copy = c
            .query_opt("SELECT synced, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&pg.slot])
            .await
            .ok()
            .flatten()
            .map(|row| (row.get::<_, bool>(0), row.get::<_, Option<String>>(1).unwrap_or_default()));
        match copy {
            Some((true, at)) => r.ok(&format!("standby {name}: slot {} synchronized, confirmed at {at}", pg.slot)),
            _ => r.warn(
                &format!("standby {name}: no synchronized copy of slot {} yet", pg.slot),
                "it appears once the settings above are right and the slot exists on the primary (the standby syncs every few seconds)",
            ),
        }
    }
}

/// With `source.kafka` (an applier's config): the brokers answer, the
/// topics exist, and the consumer group's state and lag.
#[cfg(feature = "kafka")]
async fn group_checks(r: &mut Checks, cfg: &Config) {
    let Some(kafka) = &cfg.source.kafka else { return };
    let (brokers, topics) = (&kafka.brokers, kafka.topics.join(", "));
    let (group, view) = match super::describe_group(cfg).await {
        None => return,
        Some(Ok(x)) => x,
        Some(Err(e)) => {
            r.fail(
                &format!("source.kafka: cannot reach the brokers {brokers}: {e}"),
                "check source.kafka.brokers, its tls and sasl settings, and that the brokers are running",
            );
            return;
        }
    };
    r.ok(&format!("source.kafka: brokers {brokers} answer"));
    if view.partitions.is_empty() {
        r.warn(
            &format!("source.kafka: no topic matches {topics} yet"),
            "nothing to do if the reader has not written yet (its kafka sink creates the topic); otherwise fix source.kafka.topics to name the reader's topics",
        );
        return;
    }
    let shown: Vec<String> = view.topics().iter().map(|(t, n)| format!("{t} ({n} partition(s))")).collect();
    r.ok(&format!("source.kafka: topics {}", shown.join(", ")));
    if view.members.is_empty() {
        r.warn(
            &format!("group {group}: no applier is a member (state {}), {} record(s) not yet applied", view.state, view.lag()),
            "start `pgfanout run` with this configuration (one or more appliers)",
        );
    } else {
        r.ok(&format!("group {group}: {} applier(s), state {}, {} record(s) not yet applied", view.members.len(), view.state, view.lag()));
    }
    let gone: Vec<String> =
        view.partitions.iter().filter(|p| p.committed.is_some_and(|c| c < p.low)).map(|p| format!("{}/{}", p.topic, p.partition)).collect();
    if !gone.is_empty() {
        r.fail(
            &format!("group {group}: partitions {} lost records to retention before the group applied them", gone.join(", ")),
            "the stores miss those changes: run `pgfanout verify --repair`, and raise the topics' retention.ms above the appliers' longest outage",
        );
    }
}

#[cfg(not(feature = "kafka"))]
async fn group_checks(_r: &mut Checks, _cfg: &Config) {}

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
