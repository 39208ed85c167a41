//! The `pgfanout` schema's migrations against a real PostgreSQL: a fresh
//! database, an installation made by the releases before versioned
//! migrations (with rows that must survive), several processes migrating at
//! once, and a role that may not create the schema.

use pgfanout_postgres::schema::{applied, latest, migrate, MIGRATIONS};
use pgfanout_postgres::slot::TableName;
use pgfanout_postgres::snapshot::{mark_tables, snapshot_state, SnapshotStatus};
use testkit::PgCluster;

/// The layout as releases up to December 2026 created it: migration 1 is
/// those statements, frozen ([`migration_1_is_frozen`]).
fn unversioned_layout() -> String {
    format!("CREATE SCHEMA IF NOT EXISTS pgfanout; {}", MIGRATIONS[0].sql)
}

/// 64-bit FNV-1a: a checksum that stays the same across Rust releases.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Installations made before versioned migrations have migration 1's tables
/// and record it as applied on upgrade: editing it would make their layout
/// differ from a fresh one. Append a migration instead (as Flyway checks an
/// applied migration's checksum).
#[test]
fn migration_1_is_frozen() {
    assert_eq!(fnv1a(MIGRATIONS[0].sql), 0x0df5_9f3b_f681_0a02, "migration 1 was edited: append a migration instead");
}

/// The first column of every row `sql` returns, as text.
async fn strings(c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    c.query(sql, &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

/// Every column of every `pgfanout` table, as `table.column type`, sorted.
async fn columns(c: &tokio_postgres::Client) -> Vec<String> {
    let sql = "SELECT table_name || '.' || column_name || ' ' || data_type FROM information_schema.columns \
               WHERE table_schema = 'pgfanout' AND table_name <> 'schema_migrations' ORDER BY 1";
    strings(c, sql).await
}

async fn recorded(c: &tokio_postgres::Client) -> Vec<i32> {
    c.query("SELECT version FROM pgfanout.schema_migrations ORDER BY version", &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unversioned_installation_is_upgraded_keeping_its_rows() {
    let pg = PgCluster::start();
    pg.create_database("old").await;
    pg.create_database("fresh").await;
    let old = pg.client("old").await;
    old.batch_execute(&unversioned_layout()).await.unwrap();
    old.batch_execute(
        "INSERT INTO pgfanout.signals (type, data, processed_at, result) VALUES ('backfill', '{\"table\": \"public.a\"}', now(), 'backfill 1 created');
         INSERT INTO pgfanout.backfills (slot, table_name, status, last_key, rows_done, chunks_done, reason)
           VALUES ('s', 'public.a', 'running', '{41}', 40, 4, 'cli'), ('s', 'public.b', 'done', NULL, 7, 1, 'cli');
         INSERT INTO pgfanout.snapshot_state (slot, schema_name, table_name, status, version)
           VALUES ('s', 'public', 'a', 'done', '0/16B3748'), ('s', 'public', 'b', 'added-running', '0/0');
         INSERT INTO pgfanout.relation_shapes (slot, schema_name, table_name, columns) VALUES ('s', 'public', 'a', '[[\"id\", 23]]');
         INSERT INTO pgfanout.verify_results VALUES ('p', 0, 10, 0, now());",
    )
    .await
    .unwrap();
    let before: Vec<String> = dump(&old).await;
    assert_eq!(applied(&old).await.unwrap(), 0, "an unversioned installation has nothing recorded");

    let now = migrate(&old).await.expect("upgrade");
    assert_eq!(now, (1..=latest()).collect::<Vec<_>>(), "every migration applied once, in order");
    assert_eq!(recorded(&old).await, (1..=latest()).collect::<Vec<_>>());
    assert_eq!(dump(&old).await, before, "the upgrade keeps every row");

    // The upgraded layout is the one a fresh database gets.
    let fresh = pg.client("fresh").await;
    migrate(&fresh).await.expect("fresh install");
    assert_eq!(columns(&old).await, columns(&fresh).await);
    assert_eq!(constraints(&old).await, constraints(&fresh).await);

    // Once at the latest version, it does nothing.
    assert!(migrate(&old).await.unwrap().is_empty());
    assert_eq!(applied(&old).await.unwrap(), latest());

    // The rows read back as the release reads them, old states included.
    let state = snapshot_state(&old, "s").await.unwrap();
    assert_eq!(state[0].1, SnapshotStatus::Done);
    assert_eq!(state[1].1, SnapshotStatus::AddedRunning);
    // New writes of unknown states are refused by the database too.
    let bad = old.execute("UPDATE pgfanout.backfills SET status = 'half-done' WHERE table_name = 'public.b'", &[]).await;
    assert!(bad.is_err(), "a status outside the enum is refused after the upgrade");
    mark_tables(&old, "s", &[TableName::new("public", "b")], SnapshotStatus::Done, "0/1".parse().unwrap()).await.unwrap();
}

/// Every row of every `pgfanout` table, as text, sorted (timestamps
/// included: an upgrade must not rewrite them).
async fn dump(c: &tokio_postgres::Client) -> Vec<String> {
    let mut out = Vec::new();
    for t in ["signals", "backfills", "snapshot_state", "relation_shapes", "verify_results"] {
        for r in c.query(&format!("SELECT t::text FROM pgfanout.{t} t ORDER BY 1"), &[]).await.unwrap() {
            out.push(format!("{t}: {}", r.get::<_, String>(0)));
        }
    }
    out
}

async fn constraints(c: &tokio_postgres::Client) -> Vec<String> {
    let sql = "SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint \
               WHERE connamespace = 'pgfanout'::regnamespace ORDER BY 1";
    strings(c, sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_migrating_at_once_apply_each_migration_once() {
    let pg = PgCluster::start();
    pg.create_database("race").await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(pg.client("race").await);
    }
    let (a, b, c, d) = tokio::join!(migrate(&clients[0]), migrate(&clients[1]), migrate(&clients[2]), migrate(&clients[3]));
    let results = [a, b, c, d];
    let mut applied_by: Vec<i32> = Vec::new();
    for r in results {
        applied_by.extend(r.expect("every process migrates without an error"));
    }
    applied_by.sort();
    assert_eq!(applied_by, (1..=latest()).collect::<Vec<_>>(), "each migration applied by exactly one process");
    assert_eq!(recorded(&clients[0]).await.len(), MIGRATIONS.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_create_gets_the_grant_to_make() {
    let pg = PgCluster::start();
    pg.create_database("locked").await;
    let admin = pg.client("locked").await;
    admin
        .batch_execute(
            "CREATE ROLE reader LOGIN PASSWORD 'reader';
             REVOKE CREATE ON DATABASE locked FROM PUBLIC;
             REVOKE CREATE ON SCHEMA public FROM PUBLIC;",
        )
        .await
        .unwrap();
    let url = pg.url("locked").replacen("postgres@", "reader:reader@", 1);
    let (reader, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("reader connects");
    tokio::spawn(conn);
    let e = migrate(&reader).await.expect_err("no CREATE on the database");
    let text = e.to_string();
    assert!(!e.is_retriable(), "a missing grant is not retried: {text}");
    assert!(text.contains("migration 1") && text.contains("grant"), "{text}");
    assert_eq!(applied(&admin).await.unwrap(), 0, "nothing half-applied");
}
