//! The outbox event router's reading of a change, shared by the sinks that
//! publish events (`format: outbox` in Kafka and HTTP).
//!
//! An insert into an outbox table is an event: its payload column is the
//! event's body, its id and type columns travel as headers. A transactional
//! logical message ([`Op::Message`]) is an event too: when its content is a
//! JSON object its fields are columns (see [`crate::message_row`]), and
//! without a payload field its whole content is the body. The outbox row's
//! later delete, updates and snapshot rows publish nothing.

use serde::Deserialize;

use crate::{Change, Op, Value};

/// The outbox table's columns, Debezium's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxColumns {
    /// The event id, sent as header `id` (default `id`).
    pub id: String,
    /// The event type, sent as header `eventType` (default `type`; a
    /// missing column sends no header).
    #[serde(rename = "type")]
    pub event_type: String,
    /// The event's value (default `payload`): JSON as it is, text as a
    /// JSON string.
    pub payload: String,
}

impl Default for OutboxColumns {
    fn default() -> Self {
        OutboxColumns { id: "id".into(), event_type: "type".into(), payload: "payload".into() }
    }
}

impl OutboxColumns {
    /// Whether `change` is an event: an insert or a logical message.
    pub fn publishes(change: &Change) -> bool {
        matches!(change.op, Op::Insert | Op::Message)
    }

    /// The event's body: the payload column, or a logical message's whole
    /// content when it has no payload field.
    pub fn payload<'c>(&self, change: &'c Change) -> Result<&'c Value, String> {
        let after = change.after.as_ref();
        after
            .and_then(|a| a.get(&self.payload))
            .or_else(|| match change.op {
                Op::Message => after.and_then(|a| a.get("content")),
                _ => None,
            })
            .ok_or_else(|| format!("outbox: the row has no column {:?} (outbox.payload)", self.payload))
    }

    /// The event's `id` and `eventType` headers, as the columns' text (a
    /// column that is missing or NULL sends no header).
    pub fn headers(&self, change: &Change) -> Vec<(&'static str, String)> {
        let Some(after) = &change.after else { return Vec::new() };
        [("id", &self.id), ("eventType", &self.event_type)]
            .into_iter()
            .filter_map(|(name, col)| after.get(col).filter(|v| !v.is_null()).map(|v| (name, v.to_template_text().into_owned())))
            .collect()
    }
}
