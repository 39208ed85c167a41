//! The column types pgfanout last saw per table (`pgfanout.relation_shapes`),
//! to notice `ALTER COLUMN ... TYPE ... USING`: such a rewrite streams no
//! row changes, and the stream only describes the table again (a Relation
//! message) at its next change, maybe after a restart. Comparing that
//! description with the recorded one (recorded from the catalog at start for
//! every published table, then from the stream) catches the change either
//! way.

use std::collections::HashMap;

use pgfanout_postgres::slot::TableName;
use pgfanout_postgres::SourceError;
use tokio_postgres::Client;

/// Column name and type OID, in column order.
pub type Shape = Vec<(String, u32)>;

/// (schema, table) -> shape.
pub type Shapes = HashMap<(String, String), Shape>;

/// Records the catalog's shape of each table not recorded yet.
pub async fn record_current(c: &Client, slot: &str, tables: &[TableName]) -> Result<(), SourceError> {
    pgfanout_postgres::schema::migrate(c).await?;
    for t in tables {
        c.execute(
            "INSERT INTO pgfanout.relation_shapes (slot, schema_name, table_name, columns)
             SELECT $1, n.nspname, c.relname, jsonb_agg(jsonb_build_array(a.attname, a.atttypid::int8) ORDER BY a.attnum)
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid
             WHERE n.nspname = $2 AND c.relname = $3 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
             GROUP BY n.nspname, c.relname
             ON CONFLICT DO NOTHING",
            &[&slot, &t.schema, &t.name],
        )
        .await?;
    }
    Ok(())
}

pub async fn load(c: &Client, slot: &str) -> Result<Shapes, SourceError> {
    pgfanout_postgres::schema::migrate(c).await?;
    let rows = c.query("SELECT schema_name, table_name, columns::text FROM pgfanout.relation_shapes WHERE slot = $1", &[&slot]).await?;
    let mut out = Shapes::new();
    for r in rows {
        let cols: Vec<(String, u32)> = serde_json::from_str::<Vec<(String, i64)>>(&r.get::<_, String>(2))
            .unwrap_or_default()
            .into_iter()
            .map(|(n, o)| (n, o as u32))
            .collect();
        out.insert((r.get(0), r.get(1)), cols);
    }
    Ok(out)
}

pub async fn save(c: &Client, slot: &str, schema: &str, table: &str, shape: &Shape) -> Result<(), SourceError> {
    let json = serde_json::to_string(&shape.iter().map(|(n, o)| (n.as_str(), i64::from(*o))).collect::<Vec<_>>()).unwrap_or_default();
    c.execute(
        "INSERT INTO pgfanout.relation_shapes (slot, schema_name, table_name, columns) VALUES ($1, $2, $3, $4::text::jsonb)
         ON CONFLICT (slot, schema_name, table_name) DO UPDATE SET columns = EXCLUDED.columns, updated_at = now()",
        &[&slot, &schema, &table, &json],
    )
    .await?;
    Ok(())
}

/// Columns present in both whose type differs.
pub fn type_changes(old: &Shape, new: &Shape) -> Vec<String> {
    new.iter().filter(|(n, t)| old.iter().any(|(o, ot)| o == n && ot != t)).map(|(n, _)| n.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_retyped_columns_count() {
        let old: Shape = vec![("id".into(), 23), ("price".into(), 23), ("gone".into(), 25)];
        let new: Shape = vec![("id".into(), 23), ("price".into(), 1700), ("added".into(), 25)];
        assert_eq!(type_changes(&old, &new), vec!["price"]);
        assert!(type_changes(&new, &new).is_empty());
    }
}
