//! Read-merge-write: partial changes (unchanged TOAST columns, soft
//! deletes) completed from the stored document before they are sent.
//!
//! A partial action's base is the document's state left by the batch's
//! earlier actions, else the stored document, read with `_mget` after the
//! lanes drained (safe because one document's changes are written by one
//! lane, in order). The merge keeps every value as its text (serde_json with
//! `arbitrary_precision`, never `f64`).
//!
//! A partial change whose document is missing is never written half. It is
//! first checked against the index's delete tombstones: when a newer change
//! (or a later statement of its own transaction) already deleted or moved
//! the document (a replay after a crash), the change is superseded and
//! skipped; otherwise it is rejected with the reason (a dead letter).

use std::collections::{HashMap, HashSet};

use pgfanout_sdk::Rejected;
use reqwest::Method;
use serde_json::{Map, Value as Json};
use tracing::debug;

use crate::client::{Client, Response};
use crate::encode::encode_action;
use crate::error::EsError;
use crate::plan::{Action, Planned};
use crate::reply::{self, BulkReply, BULK_PATH};
use crate::route::DocRef;

/// Resolves partial actions into whole documents (`Index` actions); a
/// record whose document is gone is cleared and rejected, or skipped when
/// a newer change removed it. Call it only with the lanes drained.
pub(crate) async fn resolve(client: &Client, planned: &mut [(Planned, usize)], rejected: &mut Vec<Rejected>) -> Result<(), EsError> {
    let mut seen_full: HashSet<DocRef> = HashSet::new();
    let mut need: Vec<DocRef> = Vec::new();
    // The documents partial actions read: only their content is tracked
    // through the batch.
    let mut relevant: HashSet<DocRef> = HashSet::new();
    for (p, _) in planned.iter() {
        if let Planned::Actions(_, actions) = p {
            for a in actions {
                match a {
                    // Content written earlier in the batch needs no read.
                    Action::Index { doc, .. } => {
                        seen_full.insert(doc.clone());
                    }
                    Action::Delete { .. } => {}
                    Action::Partial { doc, moved_from, .. } => {
                        for d in std::iter::once(doc).chain(moved_from.as_ref()) {
                            relevant.insert(d.clone());
                            if !seen_full.contains(d) && !need.contains(d) {
                                need.push(d.clone());
                            }
                        }
                    }
                }
            }
        }
    }
    let stored = if need.is_empty() { HashMap::new() } else { fetch(client, &need).await? };
    // Per document: its state after the batch's actions so far (None:
    // deleted), and the last content it had (kept across a delete, for a
    // document that moves).
    let mut last_live: HashMap<DocRef, Map<String, Json>> = stored.clone();
    let mut state: HashMap<DocRef, Option<Map<String, Json>>> = stored.into_iter().map(|(k, v)| (k, Some(v))).collect();
    // Partials whose document is gone: (record, document, version).
    let mut unresolved: Vec<(usize, DocRef, i64)> = Vec::new();
    // Per document: the newest version this batch deletes it at. A batch
    // from Kafka appliers (`source.kafka`) holds several partitions' records,
    // so a removal (a move, on the new key's partition) may come before an
    // older partial change of the document (on its own partition).
    let mut removed: HashMap<DocRef, i64> = HashMap::new();
    for (p, _) in planned.iter_mut() {
        let Planned::Actions(record, actions) = p else { continue };
        let mut failed = None;
        let mut superseded = false;
        for a in actions.iter_mut() {
            match a {
                Action::Index { doc, source, .. } => {
                    if relevant.contains(doc) {
                        let m = serde_json::from_slice::<Map<String, Json>>(source).unwrap_or_default();
                        last_live.insert(doc.clone(), m.clone());
                        state.insert(doc.clone(), Some(m));
                    }
                }
                Action::Delete { doc, version } => {
                    state.insert(doc.clone(), None);
                    let at = removed.entry(doc.clone()).or_insert(*version);
                    *at = (*at).max(*version);
                }
                Action::Partial { doc, version, fields, pipeline, missing_ok, moved_from } => {
                    let base =
                        state.get(doc).cloned().flatten().or_else(|| moved_from.as_ref().and_then(|old| last_live.get(old).cloned()));
                    let merged = match base {
                        Some(mut m) => {
                            for (k, v) in std::mem::take(fields) {
                                m.insert(k, v);
                            }
                            m
                        }
                        None if *missing_ok => std::mem::take(fields),
                        None if removed.get(doc).is_some_and(|&at| at >= *version) => {
                            superseded = true;
                            break;
                        }
                        None => {
                            failed = Some((doc.clone(), *version));
                            break;
                        }
                    };
                    state.insert(doc.clone(), Some(merged.clone()));
                    last_live.insert(doc.clone(), merged.clone());
                    *a = Action::Index {
                        doc: doc.clone(),
                        version: *version,
                        source: serde_json::to_vec(&merged).unwrap_or_default(),
                        pipeline: pipeline.clone(),
                    };
                }
            }
        }
        if superseded {
            // The batch itself removes the document at this version or a
            // newer one: the change is older than that removal.
            debug!(record = *record, "partial change skipped: a newer change in the batch removes its document");
            actions.clear();
        } else if let Some((doc, version)) = failed {
            // Nothing of the record is written until the store says whether
            // a newer change removed the document.
            actions.clear();
            unresolved.push((*record, doc, version));
        }
    }
    if !unresolved.is_empty() {
        let newer = removed_by_newer(client, &unresolved).await?;
        for ((record, doc, _), newer) in unresolved.into_iter().zip(newer) {
            if newer {
                // Replayed after a crash: a later change already moved or
                // deleted the document, so this one is superseded.
                debug!(id = %doc.id, index = %doc.index, "partial change skipped: a newer change removed its document");
            } else {
                let error = EsError::PartialOfMissing { id: doc.id, index: doc.index.to_string() };
                rejected.push(Rejected { index: record, error: error.to_string() });
            }
        }
    }
    Ok(())
}

/// Reads the stored documents that partial actions merge into (`_mget`);
/// missing ones are absent from the map.
async fn fetch(client: &Client, docs: &[DocRef]) -> Result<HashMap<DocRef, Map<String, Json>>, EsError> {
    let mut found = HashMap::new();
    for chunk in docs.chunks(500) {
        let j = mget(client, chunk).await?;
        let docs = j["docs"].as_array().map(Vec::as_slice).unwrap_or_default();
        if docs.len() != chunk.len() {
            return Err(EsError::Mismatch { request: "_mget", got: docs.len(), asked: chunk.len(), what: "documents asked" });
        }
        for (d, got) in chunk.iter().zip(docs) {
            // A document the node could not read is not a missing one:
            // taking it for missing would dead-letter its partial change (or
            // write it half).
            if let Some(error) = got.get("error") {
                return Err(EsError::Unreadable { id: d.id.clone(), index: d.index.to_string(), error: error.clone() });
            }
            if got["found"] == true {
                if let Some(src) = got["_source"].as_object() {
                    found.insert(d.clone(), src.clone());
                }
            }
        }
    }
    Ok(found)
}

/// `_mget` of `docs` (at most a few hundred): the engine's answer,
/// `{"docs":[{"found":…,"_source":…},…]}` in the order asked.
pub(crate) async fn mget(client: &Client, docs: &[DocRef]) -> Result<Json, EsError> {
    let body = serde_json::json!({ "docs": docs.iter().map(DocRef::to_json).collect::<Vec<_>>() });
    let resp = client.call(Method::POST, "/_mget", Some((serde_json::to_vec(&body).unwrap_or_default(), "application/json"))).await?;
    resp.success("_mget")?.json()
}

/// For each (record, document, version): whether the index remembers a
/// removal of the document at `version` or later, although it is gone (a
/// delete or move by a later change, or by a later statement of the same
/// transaction: versions are commit LSNs, so an update and the delete
/// after it in one transaction share one). Asked with a versioned delete
/// of the missing document at `version - 1` (`version_type=external_gte`,
/// so a conflict means a tombstone at `version` or above); "not found"
/// means none (the delete then leaves a tombstone at `version - 1`, which
/// changes nothing: the document is not there, every write of this change
/// or a newer one passes it, and asking again gives the same answer, so a
/// redelivered batch dead-letters the same records). Tombstones live for the index's
/// `index.gc_deletes` (60 s by default); an older delete is not seen and
/// the change is dead-lettered. The lanes are drained, so nothing of this
/// sink is in flight meanwhile.
async fn removed_by_newer(client: &Client, docs: &[(usize, DocRef, i64)]) -> Result<Vec<bool>, EsError> {
    let mut body = Vec::new();
    for (_, doc, version) in docs {
        encode_action(&mut body, &Action::Delete { doc: doc.clone(), version: version.saturating_sub(1) });
    }
    let resp: Response = Client::cluster_status(client.send(Method::POST, BULK_PATH, Some((body, "application/x-ndjson"))).await?)?;
    let results = match reply::read(&resp.success("_bulk (tombstone check)")?, docs.len(), "_bulk", "tombstone checks")? {
        BulkReply::AllApplied => return Ok(vec![false; docs.len()]),
        BulkReply::Items(results) => results,
    };
    results
        .iter()
        .map(|r| match r.status {
            409 => Ok(true),
            200..=299 | 404 => Ok(false),
            _ => Err(EsError::TombstoneCheck(Box::new(r.error()))),
        })
        .collect()
}
