//! Which dead letters' rows are gone from PostgreSQL: a letter that wrote a
//! row (insert, update, snapshot or backfill read) whose key no longer
//! exists in its table was superseded by a later delete or key change.
//! Replaying it could bring the deleted row back into a store that no
//! longer remembers the delete (Elasticsearch forgets a delete's version
//! after `index.gc_deletes`, 60 s by default), so `replay` removes it
//! instead of writing it.

use std::collections::{HashMap, HashSet};

use pgfanout_postgres::table_name::quote_ident as ident;
use pgfanout_sdk::{Op, Value, MESSAGE_SCHEMA};
use tokio_postgres::Client;

use super::record::Stored;

/// The ids of `letters` whose row no longer exists. Letters of deletes,
/// truncates and messages, and letters whose key holds a composite or a
/// json value, are never counted as gone.
pub async fn gone(c: &Client, letters: &[&Stored]) -> Result<HashSet<String>, String> {
    let mut types: HashMap<(String, String), Option<HashMap<String, String>>> = HashMap::new();
    let mut gone = HashSet::new();
    for l in letters {
        let Some(change) = &l.source else { continue };
        if matches!(change.op, Op::Delete | Op::Truncate | Op::Message) || &*change.schema == MESSAGE_SCHEMA {
            continue;
        }
        let Some(key) = change.key.as_ref().filter(|k| !k.is_empty()) else { continue };
        if key.iter().any(|(_, v)| matches!(v, Value::Json(_) | Value::Array(_) | Value::Object(_) | Value::Null)) {
            continue;
        }
        let table = (change.schema.to_string(), change.table.to_string());
        if !types.contains_key(&table) {
            let columns = column_types(c, &table.0, &table.1).await?;
            types.insert(table.clone(), columns);
        }
        let Some(columns) = types.get(&table).and_then(Option::as_ref) else {
            // The table itself is gone.
            gone.insert(l.id.clone());
            continue;
        };
        let mut conditions = Vec::new();
        let mut params: Vec<String> = Vec::new();
        for (name, value) in key.iter() {
            let Some(ty) = columns.get(name) else { break };
            params.push(value.to_template_text().into_owned());
            conditions.push(format!("{} = ${}::text::{ty}", ident(name), params.len()));
        }
        if conditions.len() != key.len() {
            continue;
        }
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {}.{} WHERE {})", ident(&table.0), ident(&table.1), conditions.join(" AND "));
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let exists: bool = c.query_one(&sql, &refs).await.map_err(|e| format!("{}.{}: {e}", table.0, table.1))?.get(0);
        if !exists {
            gone.insert(l.id.clone());
        }
    }
    Ok(gone)
}

/// Column name -> SQL type of `schema.table`; `None` when the table does
/// not exist.
async fn column_types(c: &Client, schema: &str, table: &str) -> Result<Option<HashMap<String, String>>, String> {
    let rows = c
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
             FROM pg_attribute a JOIN pg_class r ON r.oid = a.attrelid JOIN pg_namespace n ON n.oid = r.relnamespace
             WHERE n.nspname = $1 AND r.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&schema, &table],
        )
        .await
        .map_err(|e| format!("{schema}.{table}: {e}"))?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
}
