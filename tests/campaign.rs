//! The crash campaign: pgfanout SIGKILLed at random moments across the
//! initial snapshot, streaming with DDL, backfills and sink outages, against
//! a real PostgreSQL and two stores: a real (persistent) Redis and the file
//! sink (a JSON-lines log, read back as a replaying consumer would).
//!
//! Each run makes a database with a pre-filled table, starts pgfanout with
//! `snapshot: initial`, then takes random steps while a writer commits
//! random transactions (inserts of fresh ids, updates, deletes): a SIGKILL
//! after a random delay, an `ALTER TABLE` (a column added or dropped), a
//! backfill of the table, a Redis outage (with a SIGKILL inside it, or
//! not), or nothing. After every kill, with pgfanout dead, the ack rule is
//! checked in each store: every transaction whose commit is at or before
//! the slot's `confirmed_flush_lsn` must be there (a row it wrote holds
//! that version or a newer one; a row it deleted is absent: ids are never
//! reused). After each run, each store equals the table.
//!
//! The seed is printed; `PGFANOUT_CAMPAIGN_SEED` replays one and
//! `PGFANOUT_CAMPAIGN_RUNS` sets the runs (2 here; `scripts/campaign.sh
//! --runs 1000` for the long campaign).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use testkit::RedisServer;

/// What one committed transaction did to one row.
#[derive(Debug, Clone, Copy)]
enum Effect {
    /// Inserted or updated it to version `v`.
    Put(i32, i64),
    Deleted(i32),
}

/// The writer's log: per transaction, an upper bound of its commit LSN
/// (`pg_current_wal_insert_lsn()` read right after the commit) and what it
/// did.
type Log = Arc<Mutex<Vec<(u64, Vec<Effect>)>>>;

/// What a campaign counted.
#[derive(Default)]
struct Totals {
    kills: usize,
    checked: usize,
    txns: usize,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A store's row states: id -> (v, note).
type Rows = BTreeMap<i32, (i64, String)>;

/// The row states in Redis.
fn stored(redis: &RedisServer) -> Rows {
    const SCRIPT: &str = "local out = {} for _, k in ipairs(redis.call('KEYS', 'item:*')) do \
        table.insert(out, k) table.insert(out, redis.call('HGET', k, 'v') or '') \
        table.insert(out, redis.call('HGET', k, 'note') or '') end return out";
    let flat: Vec<String> = redis.cmd(&["EVAL", SCRIPT, "0"]).array().iter().map(|r| r.text()).collect();
    flat.chunks(3)
        .map(|c| {
            let id = c[0]["item:".len()..].parse().unwrap_or_else(|_| panic!("a key item:<id>: {}", c[0]));
            (id, (c[1].parse().unwrap_or_else(|_| panic!("{}: v is {:?}", c[0], c[1])), c[2].clone()))
        })
        .collect()
}

/// The row states the file sink's output replays to (the last record per
/// key). Only `v` and `note` are compared: a column added by the campaign's
/// DDL is in the table's rows but not in records of rows untouched since.
fn replayed(out: &std::path::Path) -> Rows {
    live(final_state(&records(out), "items"))
        .into_values()
        .map(|after| {
            let id = after["id"].as_i64().unwrap_or_else(|| panic!("a record with an id: {after}")) as i32;
            (id, (after["v"].as_i64().unwrap(), after["note"].as_str().unwrap().to_string()))
        })
        .collect()
}

/// Both stores' row states, by name.
fn stores(redis: &RedisServer, out: &std::path::Path) -> [(&'static str, Rows); 2] {
    [("Redis", stored(redis)), ("the file sink's output", replayed(out))]
}

/// Commits random transactions until `stop`, logging each.
fn writer(
    c: tokio_postgres::Client,
    rng_seed: u64,
    first_id: i32,
    live: Vec<i32>,
    log: Log,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<i32>> {
    tokio::spawn(async move {
        let mut rng = Rng(rng_seed | 1);
        let mut live = live;
        let mut next_id = first_id;
        while !stop.load(Ordering::SeqCst) {
            let mut sql = String::from("BEGIN;");
            let mut effects = Vec::new();
            let seq: i64 = c.query_one("SELECT nextval('versions')", &[]).await.unwrap().get(0);
            for _ in 0..1 + rng.below(4) {
                match rng.below(10) {
                    0..=3 => {
                        next_id += 1;
                        sql.push_str(&format!("INSERT INTO items (id, v, note) VALUES ({next_id}, {seq}, 'n{next_id}');"));
                        effects.push(Effect::Put(next_id, seq));
                        live.push(next_id);
                    }
                    4..=8 if !live.is_empty() => {
                        let id = live[rng.below(live.len() as u64) as usize];
                        sql.push_str(&format!("UPDATE items SET v = {seq}, note = note || '.' WHERE id = {id};"));
                        effects.push(Effect::Put(id, seq));
                    }
                    _ if !live.is_empty() => {
                        let id = live.swap_remove(rng.below(live.len() as u64) as usize);
                        sql.push_str(&format!("DELETE FROM items WHERE id = {id};"));
                        effects.push(Effect::Deleted(id));
                    }
                    _ => {}
                }
            }
            sql.push_str("COMMIT;");
            c.batch_execute(&sql).await.unwrap();
            let bound = insert_lsn(&c).await;
            log.lock().unwrap().push((bound, effects));
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        live
    })
}

/// The ack rule after a kill: every transaction committed at or before the
/// slot's confirmed position is in the store `name` holding `held` (or
/// overtaken there by a later one: a store may be ahead of the slot).
/// `from` skips the pre-fill (the snapshot's rows: an unfinished snapshot
/// starts over).
fn check_durable(name: &str, held: &Rows, confirmed: u64, log: &Log, from: usize, when: &str) -> usize {
    let log = log.lock().unwrap();
    let mut required: BTreeMap<i32, Effect> = BTreeMap::new();
    for (bound, effects) in &log[from..] {
        if *bound > confirmed {
            continue;
        }
        for e in effects {
            let id = match e {
                Effect::Put(id, _) | Effect::Deleted(id) => *id,
            };
            required.insert(id, *e);
        }
    }
    // A store may be ahead of the confirmed position: a row deleted by any
    // later transaction may be gone already (ids are never reused).
    let deleted: std::collections::HashSet<i32> = log
        .iter()
        .flat_map(|(_, effects)| effects.iter().filter_map(|e| if let Effect::Deleted(id) = e { Some(*id) } else { None }))
        .collect();
    for (id, e) in &required {
        match (e, held.get(id)) {
            (Effect::Put(_, v), Some((have, _))) => {
                assert!(have >= v, "{when}: {name}: row {id} holds version {have} but {v} was confirmed (confirmed_flush {confirmed:X})")
            }
            (Effect::Put(..), None) if deleted.contains(id) => {}
            (Effect::Put(_, v), None) => panic!(
                "{when}: {name}: row {id} at version {v} was confirmed (confirmed_flush {confirmed:X}) but is missing; it holds {} rows, e.g. {:?}",
                held.len(),
                held.iter().take(3).collect::<Vec<_>>()
            ),
            (Effect::Deleted(_), Some((have, _))) => {
                panic!("{when}: {name}: row {id} was deleted before confirmed_flush {confirmed:X} but it holds version {have}")
            }
            (Effect::Deleted(_), None) => {}
        }
    }
    required.len()
}

/// Each store equals the table: every row with its version and note, no
/// other.
async fn assert_equal(c: &tokio_postgres::Client, redis: &RedisServer, out: &std::path::Path, when: &str) -> usize {
    let rows = c.query("SELECT id, v, note FROM items", &[]).await.unwrap();
    let want: Rows = rows.iter().map(|r| (r.get(0), (r.get(1), r.get(2)))).collect();
    for (name, held) in stores(redis, out) {
        if held != want {
            let missing: Vec<_> = want.keys().filter(|k| !held.contains_key(k)).take(5).collect();
            let extra: Vec<_> = held.keys().filter(|k| !want.contains_key(k)).take(5).collect();
            let stale: Vec<_> = want.iter().filter(|(k, v)| held.get(k).is_some_and(|h| h != *v)).map(|(k, _)| k).take(5).collect();
            panic!("{when}: {name} differs from the table: missing {missing:?}, extra {extra:?}, stale {stale:?}");
        }
    }
    want.len()
}

/// One run: a fresh database, a random series of steps.
async fn run(pg: &PgCluster, admin: &tokio_postgres::Client, redis: &RedisServer, rng: &mut Rng, n: usize, totals: &mut Totals) {
    let db = format!("camp{n}");
    admin.batch_execute(&format!("CREATE DATABASE {db}")).await.unwrap();
    let c = pg.client(&db).await;
    redis.cmd(&["FLUSHALL"]);
    let prefill = 500 + rng.below(20_000) as i32;
    c.batch_execute(&format!(
        "CREATE SEQUENCE versions; CREATE TABLE items (id int PRIMARY KEY, v bigint NOT NULL, note text NOT NULL);
         INSERT INTO items SELECT g, nextval('versions'), 'n' || g FROM generate_series(1, {prefill}) g;"
    ))
    .await
    .unwrap();
    let prefilled = insert_lsn(&c).await;
    let log: Log = Arc::new(Mutex::new(vec![(prefilled, Vec::new())]));
    let dir = scratch();
    let out = out_path(dir.path(), "items");
    let pipelines = "  - name: items\n    from: public.items\n    to: cache\n    redis: { type: hash, key: \"item:{id}\" }\n  \
                     - name: items-log\n    from: public.items\n    to: out";
    let cfg = redis_config(pg, &db, &db, &redis.url(), pipelines, dir.path())
        .replace("    snapshot: never\n", "    snapshot: initial\n    receive_timeout: 10s\n")
        .replacen("sinks:\n", &format!("sinks:\n  out: {{ type: file, path: \"{}\" }}\n", out.display()), 1);
    let mut d = Daemon::start(bin(), dir.path(), &db, &cfg);
    let mut said = Vec::new();
    if rng.below(2) == 0 {
        // While the slot is made or the snapshot copies (an unfinished
        // snapshot starts over).
        let delay = Duration::from_millis(rng.below(400));
        tokio::time::sleep(delay).await;
        d.kill9();
        totals.kills += 1;
        said.push(format!("start: kill after {delay:?}"));
        d.spawn(bin());
    }
    // Transactions before the slot are the snapshot's; the writer starts
    // after it.
    wait_slot(&c, &db, &d).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut live: Vec<i32> = (1..=prefill).collect();
    let mut next_id = prefill + 1_000_000;
    let mut added = 0;
    let steps = 3 + rng.below(4);
    for step in 0..steps {
        stop.store(false, Ordering::SeqCst);
        let w = writer(pg.client(&db).await, rng.below(u64::MAX), next_id, std::mem::take(&mut live), log.clone(), stop.clone());
        next_id += 1_000_000;
        let delay = Duration::from_millis(rng.below(2500));
        let mut kill = |d: &mut Daemon, what: String, said: &mut Vec<String>| {
            d.kill9();
            totals.kills += 1;
            said.push(what);
        };
        let action = rng.below(6);
        let mut outage = false;
        match action {
            0 | 1 => {
                tokio::time::sleep(delay).await;
                kill(&mut d, format!("step {step}: kill after {delay:?}"), &mut said);
            }
            2 => {
                added += 1;
                let ddl = if added % 2 == 1 {
                    format!("ALTER TABLE items ADD COLUMN extra{added} int DEFAULT {added}")
                } else {
                    format!("ALTER TABLE items DROP COLUMN extra{}", added - 1)
                };
                tokio::time::sleep(delay / 2).await;
                c.batch_execute(&ddl).await.unwrap();
                tokio::time::sleep(delay / 2).await;
                kill(&mut d, format!("step {step}: {ddl}, kill after {delay:?}"), &mut said);
            }
            3 => {
                let out = tokio::task::block_in_place(|| {
                    std::process::Command::new(bin())
                        .args(["backfill", "-c"])
                        .arg(&d.config_path)
                        .args(["--table", "public.items"])
                        .output()
                        .unwrap()
                });
                assert!(out.status.success(), "backfill: {}", String::from_utf8_lossy(&out.stderr));
                tokio::time::sleep(delay).await;
                kill(&mut d, format!("step {step}: backfill, kill after {delay:?}"), &mut said);
            }
            4 => {
                tokio::task::block_in_place(|| redis.kill());
                outage = true;
                tokio::time::sleep(delay).await;
                if rng.below(2) == 0 {
                    kill(&mut d, format!("step {step}: Redis down, kill after {delay:?}"), &mut said);
                } else {
                    said.push(format!("step {step}: Redis down for {delay:?}"));
                }
            }
            _ => {
                tokio::time::sleep(delay).await;
                said.push(format!("step {step}: {delay:?} of streaming"));
            }
        }
        stop.store(true, Ordering::SeqCst);
        live = w.await.unwrap();
        if outage {
            tokio::task::block_in_place(|| redis.start_server());
        }
        if !d.is_running() {
            // pgfanout is dead: what the slot confirmed must be in each store.
            let confirmed = confirmed_flush(&c, &db).await;
            let when = format!("{}\n--- daemon log ---\n{}", said.last().unwrap(), d.log());
            for (name, held) in stores(redis, &out) {
                totals.checked += check_durable(name, &held, confirmed, &log, 1, &when);
            }
            d.spawn(bin());
        }
    }
    // An interrupted initial snapshot goes on as a backfill while
    // streaming (so does a requested one): the stores are complete once
    // every backfill is done and the stream caught up.
    testkit::wait_for(Duration::from_secs(300), "the run's backfills to finish", || async {
        let active: Option<i64> = c
            .query_opt("SELECT count(*) FROM pgfanout.backfills WHERE slot = $1 AND status IN ('pending', 'running', 'paused')", &[&db])
            .await
            .ok()
            .flatten()
            .map(|r| r.get(0));
        active.unwrap_or(0) == 0
    })
    .await;
    wait_confirmed(&c, &db, &d, Duration::from_secs(180)).await;
    let rows = assert_equal(&c, redis, &out, &format!("run {n} ({})", said.join("; "))).await;
    totals.txns += log.lock().unwrap().len() - 1;
    d.signal("TERM");
    assert!(d.wait(Duration::from_secs(30)).is_some_and(|s| s.success()), "clean stop:\n{}", d.log());
    // The cluster has a few slots: each run frees its own.
    c.batch_execute(&format!("SELECT pg_drop_replication_slot('{db}')")).await.unwrap();
    eprintln!(
        "run {n}: {rows} rows equal; {} (so far: {} kills, {} transactions, {} row states checked, 0 lost)",
        said.join("; "),
        totals.kills,
        totals.txns,
        totals.checked
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_across_snapshot_ddl_backfill_and_outages_lose_nothing() {
    let seed = env_u64("PGFANOUT_CAMPAIGN_SEED")
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    let runs = env_u64("PGFANOUT_CAMPAIGN_RUNS").unwrap_or(2) as usize;
    eprintln!("campaign seed {seed} (PGFANOUT_CAMPAIGN_SEED={seed} replays it), {runs} runs");
    let (pg, admin) = cluster("camp").await;
    let redis = RedisServer::start_persistent();
    let mut rng = Rng(seed | 1);
    let mut totals = Totals::default();
    for n in 0..runs {
        run(&pg, &admin, &redis, &mut rng, n, &mut totals).await;
    }
    eprintln!(
        "campaign: {runs} runs, {} kills, {} transactions, {} confirmed row states checked after kills, 0 lost (seed {seed})",
        totals.kills, totals.txns, totals.checked
    );
}
