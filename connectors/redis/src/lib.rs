//! Redis sink: keeps hashes, strings, RedisJSON documents, sets, sorted sets
//! and streams in step with PostgreSQL tables.
//!
//! Each pipeline's [`RedisMapping`] turns a change into operations on a key
//! built from a `{column}` template (see README.md for every option and the
//! keys the e-commerce example produces).
//!
//! Why a script: delivery is at-least-once, so after a crash Redis receives
//! changes it already has. Every written target (a whole key, or one field or
//! member of a key) records the position of the last change applied to it in
//! a companion hash `pgfanout:v:<key>` (field `_key`, or the field/member), and
//! `apply.lua` compares that version before writing, atomically, skipping a
//! write whose stored version is strictly newer. Deletes leave the version as
//! a tombstone (expiring after `tombstone_ttl` once the key is gone) so an
//! older insert replayed later cannot bring the row back. The companion hash,
//! rather than a hidden field inside the data, keeps user-visible values
//! exactly what the mapping says and works for every data type; it costs one
//! extra key per data key.

mod args;
mod calls;
mod client;
mod config;
mod encode;
mod error;
mod exact_json;
mod lanes;
mod moves;
mod reply;
mod sink;
mod toast;
mod verify;

use pgfanout_sdk::connector::{boxed_sink, TypedConnector};

pub use config::{MappingKind, RedisMapping, RedisSinkConfig};
pub use error::RedisSinkError;
pub use sink::RedisSink;

/// The connector: `type: redis`, settings [`RedisSinkConfig`], a `redis:` mapping
/// ([`RedisMapping`]) per pipeline; `verify` reads back every mapping type
/// but `stream`.
pub static CONNECTOR: TypedConnector<RedisSinkConfig, RedisMapping> =
    TypedConnector::new("redis", RedisSinkConfig::validate, RedisMapping::validate, |settings, mappings| {
        boxed_sink(async move { Ok(RedisSink::connect(settings, mappings.to_vec()).await?) })
    })
    .with_verifier(verify::verifiable, |settings, mappings, route| Box::pin(verify::connect(settings, &mappings[route])));
