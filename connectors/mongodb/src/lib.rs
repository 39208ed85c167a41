//! Document sink: MongoDB collections kept in step with PostgreSQL tables
//! (`type: mongodb`), with the official `mongodb` driver.
//!
//! Each pipeline's [`MongoMapping`] names the collection (a template such
//! as `profiles` or `{table}`), the `_id` (default: the key column's own
//! value, a number staying a number; several key columns joined with `:`),
//! field renames and nesting (`fields: {city: address.city}`), excluded
//! columns, how json/jsonb columns are stored (embedded documents by
//! default) and what a TRUNCATE does (`ignore`, or `delete_all`). Values
//! keep every digit ([`convert`]).
//!
//! # Versions: replays never bring back an older document
//!
//! Every document carries `version_field` (default `_pgfanout_version`):
//! the position of the change that wrote it, as fixed-width text that
//! sorts like positions. A batch first reads the stored versions of the
//! documents it touches and the tombstones of deleted ones, skips every
//! operation older than what is stored, and writes with a filter that
//! repeats the check (`version <= mine`, or no version: a document
//! pgfanout did not write), so equal versions apply and a replay after a
//! crash converges. A delete leaves a tombstone (the version, in
//! `tombstone_collection`, for `tombstone_ttl`, default a day), so a late
//! older write of a deleted document (a replay, a backfill row) is
//! skipped instead of bringing it back. Tombstones live beside the
//! collections, not in them: readers see only live documents. Expired
//! ones are removed by the sink (FerretDB has no TTL indexes).
//!
//! # One write per document per batch
//!
//! A batch is resolved in order into one final write per document: the
//! whole document (replaced), a `$set` of some fields, or a delete. So the
//! `update` and `delete` commands never hold two statements for one
//! document, and their order inside a command does not matter.
//!
//! # Unchanged TOAST columns
//!
//! A change without its unchanged TOAST columns is completed from `before`
//! under REPLICA IDENTITY FULL; otherwise it becomes a `$set` of the
//! columns sent (the stored ones stay), or, after a key change, the moved
//! document's stored fields complete it. A partial change of a document
//! that is not stored is dead-lettered, unless a newer delete of it is
//! remembered (a replay: superseded).
//!
//! # Errors
//!
//! Network errors, server selection timeouts, write concern errors and the
//! transient server codes (elections, shutdowns, `WriteConflict`, labels
//! `RetryableWriteError` / `TransientTransactionError`) fail the batch,
//! which the runtime retries (versions make that harmless). A statement
//! the server refuses for good (validation, a document too large) rejects
//! its record: it goes to the dead-letter destination and the rest of the
//! batch is written.
//!
//! # Servers
//!
//! Tested against FerretDB 1.24 (the MongoDB wire protocol over
//! PostgreSQL); MongoDB's own server cannot be had on the test machine.
//! The sink uses only the commands both have (`update`, `delete`, `find`,
//! `buildInfo`, `ping`). FerretDB has no decimal128: with `decimals: auto`
//! numbers no double holds are stored as their exact text there.

mod config;
mod convert;
mod elements;
mod error;
mod route;
mod sink;
mod verify;

use pgfanout_sdk::connector::{boxed_sink, TypedConnector};
use pgfanout_sdk::Check;

pub use config::{Decimals, EmbedMapping, JsonMode, MongoMapping, MongoSinkConfig, TruncateMode, ELEMENT_KEY_FIELD};
pub use error::MongoError;
pub use sink::MongoSink;

/// The connector: `type: mongodb`, settings [`MongoSinkConfig`], a
/// `mongodb:` mapping ([`MongoMapping`]) per pipeline; `verify` reads every
/// route back.
pub static CONNECTOR: TypedConnector<MongoSinkConfig, MongoMapping> =
    TypedConnector::new("mongodb", MongoSinkConfig::validate, MongoMapping::validate, |settings, mappings| {
        boxed_sink(MongoSink::connect(settings, mappings.to_vec()))
    })
    .with_doctor(|settings, mappings| Box::pin(doctor(settings, mappings)))
    .with_verifier(|_| Ok(()), |settings, mappings, route| Box::pin(verify::connect(settings, &mappings[route])));

/// `doctor`: the server answers with these credentials, which server it
/// is and how numbers no double holds will be stored; each constant
/// collection exists (or will be created at the first write).
async fn doctor(settings: &MongoSinkConfig, mappings: &[MongoMapping]) -> Vec<Check> {
    let server = match sink::connect_server(settings).await {
        Ok(s) => s,
        Err(e) => {
            return vec![Check::failed(
                "server reachable with these credentials",
                format!("{e}; check uri (host, port, credentials, authSource, tls) and that the server runs"),
            )]
        }
    };
    let mut checks = vec![Check::ok(format!(
        "{} reachable; numbers no double holds are stored as {}",
        server.description,
        match server.inexact {
            convert::Inexact::Decimal128 => "decimal128",
            convert::Inexact::String => "their exact text (decimals: string)",
        }
    ))];
    let existing = server.db.list_collection_names().await;
    for m in mappings {
        if m.collection.contains('{') {
            continue;
        }
        let what = format!("collection {}.{}", settings.database, m.collection);
        checks.push(match &existing {
            Ok(names) if names.contains(&m.collection) => Check::ok(format!("{what} exists")),
            Ok(_) => Check::ok(format!("{what} does not exist yet; the first write creates it")),
            Err(e) => Check::failed(what, format!("listing collections failed: {e}; the user needs the read role on the database")),
        });
    }
    server.client.shutdown().await;
    checks
}
