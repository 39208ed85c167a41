//! The `pgfanout` schema in the source database: its one owner.
//!
//! pgfanout keeps its own state next to the data it describes, so that it is
//! backed up, restored and dropped with the database the slot belongs to:
//!
//! | table | what it holds | written by |
//! |---|---|---|
//! | `signals` | requests (backfill, pause, resume, cancel), as Debezium's signal table | CLI, HTTP, SQL |
//! | `backfills` | one row per backfill: status, the last durable key, counts | the backfill driver |
//! | `snapshot_state` | per slot and table: copied (`done`) or being copied, at which version | the initial snapshot |
//! | `relation_shapes` | the column types last seen per table, to notice `ALTER ... TYPE` | the reader |
//! | `verify_results` | the last `verify` outcome per pipeline, for the metrics | `pgfanout verify` |
//! | `leases` | per slot: the instance that leads (`ha`), its epoch and deadline | the daemon |
//! | `dead_letters` | records that could not be delivered (`dead_letter.to: postgres`) | the daemon, `pgfanout dead-letters` |
//! | `partition_leaves` | per slot: the leaf partitions of each published partitioned table last seen | the daemon |
//! | `schema_migrations` | which of the migrations below were applied, and when | [`migrate`] |
//!
//! Every change to these tables is a new entry at the end of [`MIGRATIONS`],
//! never an edit of an applied one: an installation is upgraded by applying,
//! in order, the entries it has not recorded. Migration 1 is the layout that
//! pgfanout created before migrations were versioned (`CREATE ... IF NOT
//! EXISTS` in four places); on such an installation it changes nothing and is
//! recorded, so an upgrade keeps every row.
//!
//! [`migrate`] is safe to call from several processes at once (a daemon, a
//! `pgfanout backfill` and a `verify` starting together): they take a
//! transaction-scoped advisory lock, and the second finds the work done.

use tokio_postgres::Client;

use crate::error::SourceError;
use crate::slot::INTERNAL_SCHEMA;

/// One step of the schema's history.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Position in the history, from 1, without gaps.
    pub version: i32,
    /// What it changes, recorded in `schema_migrations.name`.
    pub name: &'static str,
    pub sql: &'static str,
}

/// The schema's history, oldest first. Append only.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "signals, backfills, snapshot_state, relation_shapes, verify_results",
        sql: "CREATE TABLE IF NOT EXISTS pgfanout.signals (
              id bigserial PRIMARY KEY,
              type text NOT NULL,
              data jsonb NOT NULL DEFAULT '{}',
              created_at timestamptz NOT NULL DEFAULT now(),
              processed_at timestamptz,
              result text);
            CREATE TABLE IF NOT EXISTS pgfanout.backfills (
              id bigserial PRIMARY KEY,
              slot text NOT NULL,
              table_name text NOT NULL,
              filter text,
              status text NOT NULL DEFAULT 'pending',
              part int NOT NULL DEFAULT 0,
              last_key text[],
              rows_done bigint NOT NULL DEFAULT 0,
              chunks_done bigint NOT NULL DEFAULT 0,
              chunk_size int NOT NULL DEFAULT 1000,
              max_rows_per_second int,
              reason text,
              error text,
              created_at timestamptz NOT NULL DEFAULT now(),
              updated_at timestamptz NOT NULL DEFAULT now());
            CREATE TABLE IF NOT EXISTS pgfanout.snapshot_state (
              slot text NOT NULL, schema_name text NOT NULL, table_name text NOT NULL,
              status text NOT NULL, version pg_lsn NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),
              PRIMARY KEY (slot, schema_name, table_name));
            CREATE TABLE IF NOT EXISTS pgfanout.relation_shapes (
              slot text NOT NULL, schema_name text NOT NULL, table_name text NOT NULL, columns jsonb NOT NULL,
              updated_at timestamptz NOT NULL DEFAULT now(),
              PRIMARY KEY (slot, schema_name, table_name));
            CREATE TABLE IF NOT EXISTS pgfanout.verify_results (
              pipeline text PRIMARY KEY, divergent bigint NOT NULL, rows_checked bigint NOT NULL,
              repaired bigint NOT NULL, finished_at timestamptz NOT NULL)",
    },
    Migration {
        version: 2,
        name: "status values checked; an index for the active backfills of a slot",
        // NOT VALID: rows written by an older pgfanout are not rejected
        // (`added-running` was written until December 2026), new ones are.
        sql: "ALTER TABLE pgfanout.backfills ADD CONSTRAINT backfills_status_known
                CHECK (status IN ('pending', 'running', 'paused', 'done', 'cancelled', 'failed')) NOT VALID;
            ALTER TABLE pgfanout.snapshot_state ADD CONSTRAINT snapshot_state_status_known
                CHECK (status IN ('initial-running', 'added-running', 'done')) NOT VALID;
            CREATE INDEX IF NOT EXISTS backfills_slot_status ON pgfanout.backfills (slot, status)",
    },
    Migration {
        version: 3,
        name: "leases: which instance leads a slot, until when",
        sql: "CREATE TABLE IF NOT EXISTS pgfanout.leases (
              slot text PRIMARY KEY,
              holder text NOT NULL,
              epoch bigint NOT NULL,
              holder_pid int,
              holder_started timestamptz,
              acquired_at timestamptz NOT NULL,
              renewed_at timestamptz NOT NULL,
              expires_at timestamptz NOT NULL)",
    },
    Migration {
        version: 4,
        name: "dead_letters: records that could not be delivered (dead_letter.to: postgres)",
        sql: "CREATE TABLE IF NOT EXISTS pgfanout.dead_letters (
              id text PRIMARY KEY,
              slot text NOT NULL,
              at timestamptz NOT NULL DEFAULT now(),
              first_at timestamptz NOT NULL DEFAULT now(),
              attempts int NOT NULL DEFAULT 1,
              stage text NOT NULL CHECK (stage IN ('pipeline', 'sink', 'decode')),
              pipeline text NOT NULL,
              sink text NOT NULL,
              error text NOT NULL,
              commit_lsn pg_lsn NOT NULL,
              ordinal bigint NOT NULL,
              table_name text NOT NULL,
              change json NOT NULL,
              source json);
            CREATE INDEX IF NOT EXISTS dead_letters_slot_position ON pgfanout.dead_letters (slot, commit_lsn, ordinal)",
    },
    Migration {
        version: 5,
        name: "partition_leaves: the partitions of published tables last seen, to notice those attached while stopped",
        sql: "CREATE TABLE IF NOT EXISTS pgfanout.partition_leaves (
              slot text NOT NULL,
              root text NOT NULL,
              leaf oid NOT NULL,
              PRIMARY KEY (slot, root, leaf))",
    },
];

/// The version [`migrate`] brings a database to.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// An arbitrary constant naming pgfanout's schema lock among the server's
/// advisory locks ("pgfanout" in ASCII, truncated).
const LOCK_KEY: i64 = 0x7067_6661_6e6f_7574;

/// Brings schema `pgfanout` up to [`latest`], applying each migration the
/// database has not recorded, in order, each in its own transaction.
/// Returns the migrations applied now (none when it was up to date). Needs
/// CREATE on the database the first time (a definite error naming the
/// grant otherwise).
pub async fn migrate(c: &Client) -> Result<Vec<i32>, SourceError> {
    debug_assert_eq!(INTERNAL_SCHEMA, "pgfanout");
    if applied(c).await? >= latest() {
        return Ok(Vec::new());
    }
    let mut done = Vec::new();
    for m in MIGRATIONS {
        c.batch_execute("BEGIN").await?;
        let step = async {
            c.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY]).await?;
            c.batch_execute(
                "CREATE SCHEMA IF NOT EXISTS pgfanout;
                 CREATE TABLE IF NOT EXISTS pgfanout.schema_migrations (
                   version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await?;
            let row = c.query_one("SELECT EXISTS (SELECT 1 FROM pgfanout.schema_migrations WHERE version = $1)", &[&m.version]).await?;
            if row.get::<_, bool>(0) {
                return Ok::<bool, tokio_postgres::Error>(false);
            }
            c.batch_execute(m.sql).await?;
            c.execute("INSERT INTO pgfanout.schema_migrations (version, name) VALUES ($1, $2)", &[&m.version, &m.name]).await?;
            Ok(true)
        }
        .await;
        match step {
            Ok(applied_now) => {
                c.batch_execute("COMMIT").await?;
                if applied_now {
                    done.push(m.version);
                }
            }
            Err(e) => {
                let _ = c.batch_execute("ROLLBACK").await;
                return Err(SourceError::from(e)
                    .context(format!("cannot apply pgfanout schema migration {} ({})", m.version, m.name))
                    .definite_with_fix("grant the pgfanout role CREATE on the database (or create schema pgfanout owned by it)"));
            }
        }
    }
    if !done.is_empty() {
        tracing::info!(applied = ?done, version = latest(), "pgfanout schema migrated");
    }
    Ok(done)
}

/// The newest migration recorded (0: none, or no schema yet).
pub async fn applied(c: &Client) -> Result<i32, SourceError> {
    match c.query_one("SELECT coalesce(max(version), 0) FROM pgfanout.schema_migrations", &[]).await {
        Ok(r) => Ok(r.get::<_, i32>(0)),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Declares an enum stored as `text` in a `pgfanout` table: `as_str`,
/// `FromStr` (the error names the column and the known values), `Display`,
/// and `ToSql`/`FromSql` so it binds and reads as itself:
///
/// ```
/// pgfanout_postgres::sql_text_enum! {
///     /// A traffic light.
///     pub enum Light in "lights.color" { Red = "red", Green = "green" }
/// }
/// assert_eq!("red".parse::<Light>().unwrap(), Light::Red);
/// assert_eq!(Light::Green.as_str(), "green");
/// assert!("blue".parse::<Light>().unwrap_err().contains("lights.color"));
/// ```
#[macro_export]
macro_rules! sql_text_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident in $column:literal { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text stored in the column.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "{}: unknown value {:?} (expected one of: {})",
                        $column, other, [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl $crate::schema::postgres_types::ToSql for $name {
            fn to_sql(
                &self,
                ty: &$crate::schema::postgres_types::Type,
                out: &mut $crate::schema::postgres_types::private::BytesMut,
            ) -> Result<$crate::schema::postgres_types::IsNull, Box<dyn ::std::error::Error + Sync + Send>> {
                <&str as $crate::schema::postgres_types::ToSql>::to_sql(&self.as_str(), ty, out)
            }
            fn accepts(ty: &$crate::schema::postgres_types::Type) -> bool {
                <&str as $crate::schema::postgres_types::ToSql>::accepts(ty)
            }
            $crate::schema::postgres_types::to_sql_checked!();
        }

        impl<'a> $crate::schema::postgres_types::FromSql<'a> for $name {
            fn from_sql(
                ty: &$crate::schema::postgres_types::Type,
                raw: &'a [u8],
            ) -> Result<Self, Box<dyn ::std::error::Error + Sync + Send>> {
                let s = <&str as $crate::schema::postgres_types::FromSql>::from_sql(ty, raw)?;
                s.parse().map_err(Into::into)
            }
            fn accepts(ty: &$crate::schema::postgres_types::Type) -> bool {
                <&str as $crate::schema::postgres_types::FromSql>::accepts(ty)
            }
        }
    };
}

/// What [`sql_text_enum!`] expands to needs; not for other use.
#[doc(hidden)]
pub mod postgres_types {
    pub use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
    pub mod private {
        pub use bytes::BytesMut;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_is_numbered_from_one_without_gaps() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
            assert!(!m.sql.trim().is_empty());
        }
        assert_eq!(latest(), MIGRATIONS.len() as i32);
    }
}
