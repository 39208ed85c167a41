//! ScyllaDB / Cassandra sink: keeps CQL tables in step with PostgreSQL
//! tables (`mode: upsert`) or appends one row per change (`mode: append`,
//! feeds and histories). See README.md for the settings and mappings.
//!
//! # Versions: `USING TIMESTAMP`
//!
//! Delivery is at-least-once and CQL has no compare-and-set that is cheap,
//! so every write carries `USING TIMESTAMP` derived from the change's
//! position, and Cassandra/ScyllaDB's last-write-wins by timestamp does the
//! rest: a replayed or reordered write loses against a newer one by commit
//! order, and an equal replay is a no-op.
//!
//! The timestamp is the transaction's commit LSN ([`Position::commit_version`],
//! an i64 that cannot overflow for 8 EiB of WAL), never a packed
//! `commit_lsn << k | ordinal` (which overflows or collides, docs/design.md
//! section 5). Two changes of one row inside one transaction share that
//! commit LSN, and equal timestamps are resolved by Cassandra by value
//! (a tombstone wins a tie), not by order. So:
//!
//! - **upsert**: within one batch, the changes of one row in one
//!   transaction are collapsed (last wins; partial TOAST updates merge their
//!   columns; a delete followed by an insert becomes a delete then a write).
//!   Each statement a row gets within a transaction takes the next of
//!   [`SLOTS`] + 1 timestamps `commit_lsn - 16 ..= commit_lsn` (a counter per
//!   row, carried across the batches of a transaction and replayed
//!   identically, since replays restart at a transaction boundary). These
//!   never reach the previous transaction: two commit records are at least
//!   24 bytes of WAL apart. A row written more than 17 times in one
//!   transaction *across batches* shares the last timestamp (Cassandra then
//!   breaks the tie by value); within a batch it is collapsed.
//! - **append**: each change writes its own row (its clustering key comes
//!   from the mapping, e.g. `$position` or `$commit_ts` plus `$ordinal`),
//!   with the commit LSN as timestamp; a replay rewrites the same row with
//!   the same values.
//!
//! Other writers of these tables must not write with wall-clock (driver
//! default, microseconds since 1970, ~1.7e15) timestamps: those are far
//! larger than WAL positions and would win forever. Give them
//! `USING TIMESTAMP` below the current WAL position, or keep the tables to
//! pgfanout.
//!
//! # Pipelining
//!
//! Because every statement carries its own timestamp, the order statements
//! reach the store in does not matter: batches are pipelined
//! (`in_flight_batches`, default 4). A batch is planned (its timestamps and
//! the per-row slot counters fixed) and its requests start while earlier
//! batches finish; all batches share `concurrency` request permits. A
//! failed request (unavailable, timeout, overloaded, connection lost) is
//! retried with the same statements and timestamps until it goes through;
//! the runtime confirms positions batch by batch, in order.
//!
//! [`Position::commit_version`]: pgfanout_sdk::Position::commit_version
//!
//! Apache Cassandra 5 speaks the same CQL protocol as ScyllaDB; the tests
//! run against Cassandra (ScyllaDB cannot run on the test machines).

mod config;
mod datetime;
mod encode;
mod error;
mod execute;
mod plan;
mod route;
mod session;
mod sink;
mod slots;
mod statements;
mod types;
mod verify;

pub use config::{ConsistencyName, Meta, Mode, ScyllaMapping, ScyllaSettings, Source};
pub use error::{RecordError, SchemaProblem, ScyllaError, ValueError};
pub use sink::ScyllaSink;
pub use slots::SLOTS;

use pgfanout_sdk::connector::{boxed_sink, TypedConnector};

/// The connector: `type: scylla` (alias `cassandra`), settings
/// [`ScyllaSettings`], a `scylla:` mapping ([`ScyllaMapping`]) per pipeline;
/// `doctor` checks that every mapped table and column exists, `verify`
/// reads back `mode: upsert` tables.
pub static CONNECTOR: TypedConnector<ScyllaSettings, ScyllaMapping> =
    TypedConnector::new("scylla", ScyllaSettings::validate, ScyllaMapping::validate, |settings, mappings| {
        boxed_sink(async move { Ok(ScyllaSink::connect(settings, mappings).await?) })
    })
    .with_aliases(&["cassandra"])
    .with_doctor(|settings, mappings| Box::pin(route::doctor(settings, mappings)))
    .with_verifier(verify::verifiable, |settings, mappings, route| Box::pin(verify::connect(settings, &mappings[route])));

/// The CQL driver this sink uses (for tests and tools reading the tables).
pub use scylla as driver;
