//! Column type changes the stream does not show as rows: `ALTER COLUMN
//! ... TYPE ... USING` rewrites every row of a table without streaming one
//! change, and the stream only describes the table again (a Relation
//! message) at its next change. Each description is compared with the shape
//! last recorded for the table (`pgfanout.relation_shapes`, see
//! `crate::backfill::shapes`); with `on_type_change: backfill` a changed
//! type gets the table backfilled, so the sinks get the rewritten values.

use pgfanout_postgres::relation::RelationInfo;
use tracing::{info, warn};

use crate::backfill::shapes;
use crate::config::OnTypeChange;

pub struct TypeChangeWatch {
    slot: String,
    on_type_change: OnTypeChange,
    /// Column types last recorded per table (loaded on first use).
    shapes: Option<shapes::Shapes>,
}

impl TypeChangeWatch {
    pub fn new(slot: String, on_type_change: OnTypeChange) -> Self {
        TypeChangeWatch { slot, on_type_change, shapes: None }
    }

    /// Compares a table's description with the shape last recorded for it
    /// (`crate::backfill::shapes`): a column whose type changed (`ALTER
    /// COLUMN ... TYPE ... USING` rewrites every row without streaming them)
    /// gets the table backfilled with `on_type_change: backfill`, so the
    /// sinks get the rewritten values. Seen at the table's next change.
    pub async fn on_relation(&mut self, info: &RelationInfo, sql: &tokio_postgres::Client) {
        if self.on_type_change == OnTypeChange::Ignore {
            return;
        }
        if self.shapes.is_none() {
            match shapes::load(sql, &self.slot).await {
                Ok(s) => self.shapes = Some(s),
                Err(e) => {
                    warn!(error = %e, "cannot read pgfanout.relation_shapes: column type changes are not detected");
                    return;
                }
            }
        }
        let Some(known) = self.shapes.as_mut() else { return };
        let shape: shapes::Shape = info.columns.iter().map(|c| (c.name.to_string(), c.type_oid)).collect();
        let key = (info.schema.to_string(), info.table.to_string());
        if known.get(&key) == Some(&shape) {
            return;
        }
        let changed = known.get(&key).map(|old| shapes::type_changes(old, &shape)).unwrap_or_default();
        if let Err(e) = shapes::save(sql, &self.slot, &key.0, &key.1, &shape).await {
            warn!(error = %e, "cannot record a table's shape in pgfanout.relation_shapes");
        }
        known.insert(key, shape);
        if changed.is_empty() {
            return;
        }
        let table = info.qualified_name();
        let data = serde_json::json!({
            "table": table, "slot": self.slot,
            "reason": format!("type of {} changed", changed.join(", ")),
        });
        match crate::backfill::state::signal(sql, crate::backfill::state::SignalKind::Backfill, &data).await {
            Ok(id) => info!(table = %table, columns = %changed.join(", "), signal = id, "column type changed; the table is backfilled"),
            Err(e) => {
                warn!(table = %table, error = %e, "column type changed but a backfill could not be requested; run pgfanout backfill --table {table}")
            }
        }
    }
}
