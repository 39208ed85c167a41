//! Decoded pgoutput messages turned into changes the way the source does
//! (a relation cache, a type registry, each transaction's ordinals), for
//! the tests that read a slot with `pg_logical_slot_peek_binary_changes`
//! (`decoder.rs`, `values.rs` include this file).

use pgfanout_postgres::catalog::TypeRegistry;
use pgfanout_postgres::pgoutput::LogicalMessage;
use pgfanout_postgres::relation::{build_change, build_truncates, RelationCache, TxMeta};
use pgfanout_sdk::{Change, Lsn};

/// Replays decoded messages like the source does and returns the changes.
pub async fn build_all(client: &tokio_postgres::Client, msgs: Vec<(Lsn, LogicalMessage)>) -> Vec<Change> {
    let mut types = TypeRegistry::new();
    let mut relations = RelationCache::new();
    let mut tx: Option<TxMeta> = None;
    let mut ordinal = 0;
    let mut out = Vec::new();
    for (lsn, msg) in msgs {
        match msg {
            LogicalMessage::Begin { .. } => {
                tx = TxMeta::from_begin(&msg);
                ordinal = 0;
            }
            LogicalMessage::Type { id, .. } => types.invalidate(id),
            LogicalMessage::Relation(r) => {
                relations.on_relation(r, &mut types, client).await.unwrap();
            }
            LogicalMessage::Truncate { ref relation_ids, .. } => {
                let t = build_truncates(&relations, relation_ids, lsn, &tx.unwrap(), ordinal).unwrap();
                ordinal += t.len() as u32;
                out.extend(t);
            }
            LogicalMessage::Insert { relation_id, .. }
            | LogicalMessage::Update { relation_id, .. }
            | LogicalMessage::Delete { relation_id, .. } => {
                let rel = relations.get(relation_id).unwrap().clone();
                out.push(build_change(&rel, &msg, lsn, &tx.unwrap(), ordinal).unwrap());
                ordinal += 1;
            }
            _ => {}
        }
    }
    out
}
