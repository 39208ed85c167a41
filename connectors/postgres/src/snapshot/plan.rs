//! What to read: each table's columns, key and ctid block ranges.
//!
//! Planning runs on the first snapshot connection, inside the snapshot, so
//! the columns are the ones the snapshot's rows have. Each table becomes one
//! or more [`Piece`]s: a table larger than `chunk_rows` is cut into ctid
//! block ranges (`ctid >= '(a,0)' AND ctid < '(b,0)'`, a TID Range Scan on
//! PostgreSQL 14+, so each piece reads only its own blocks), the last range
//! left open so blocks added after planning are still covered. Partitioned
//! tables are read leaf by leaf, every row under the root table's name, as
//! pgoutput streams their changes with `publish_via_partition_root`.

use std::sync::Arc;

use tokio_postgres::Client;

use crate::catalog::TypeRegistry;
use crate::error::SourceError;
use crate::relation::ColumnInfo;
use crate::slot::{quote_ident, TableName};

/// Rows per 8 kB block assumed when a table has never been analyzed and
/// its sampled blocks are empty.
const FALLBACK_ROWS_PER_BLOCK: f64 = 60.0;

/// One relation to copy (a table, or a leaf partition of a given table).
#[derive(Debug)]
pub struct RelationPlan {
    /// Index of the table in the caller's list (progress is per given table).
    pub given: usize,
    pub schema: Arc<str>,
    pub table: Arc<str>,
    /// Columns in table order, generated columns excluded (pgoutput does
    /// not send them either), with the key chosen as pgoutput marks it.
    pub columns: Vec<ColumnInfo>,
    /// `SELECT <columns> FROM ONLY <table>`, without the range condition.
    pub select: String,
    pub blocks: u64,
    pub estimate: u64,
}

impl RelationPlan {
    pub fn has_key(&self) -> bool {
        self.columns.iter().any(|c| c.is_key)
    }
}

/// A block range of one relation: `[start, end)`, `end = None` = to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRange {
    pub start: u64,
    pub end: Option<u64>,
}

impl BlockRange {
    pub const ALL: BlockRange = BlockRange { start: 0, end: None };

    /// The `WHERE` clause that selects this range (empty for the whole table).
    pub fn condition(&self) -> String {
        match (self.start, self.end) {
            (0, None) => String::new(),
            (s, None) => format!(" WHERE ctid >= '({s},0)'::tid"),
            (0, Some(e)) => format!(" WHERE ctid < '({e},0)'::tid"),
            (s, Some(e)) => format!(" WHERE ctid >= '({s},0)'::tid AND ctid < '({e},0)'::tid"),
        }
    }
}

/// Cuts `blocks` blocks into ranges of about `chunk_rows` rows at
/// `rows_per_block`; the last range is open. One open range when the table
/// fits in one chunk.
pub fn block_ranges(blocks: u64, rows_per_block: f64, chunk_rows: u64) -> Vec<BlockRange> {
    let per_chunk = if rows_per_block > 0.0 { (chunk_rows as f64 / rows_per_block).floor() as u64 } else { blocks };
    let per_chunk = per_chunk.max(1);
    if blocks <= per_chunk {
        return vec![BlockRange::ALL];
    }
    let mut out = Vec::with_capacity((blocks / per_chunk + 1) as usize);
    let mut start = 0;
    while start + per_chunk < blocks {
        out.push(BlockRange { start, end: Some(start + per_chunk) });
        start += per_chunk;
    }
    out.push(BlockRange { start, end: None });
    out
}

/// Plans every table of `tables` (in order): one [`RelationPlan`] per
/// relation with its block ranges. Permanent error for a table that does
/// not exist or is not a table.
pub async fn plan_tables(
    c: &Client,
    types: &mut TypeRegistry,
    tables: &[TableName],
    chunk_rows: u64,
    publication: Option<&str>,
) -> Result<Vec<(RelationPlan, Vec<BlockRange>)>, SourceError> {
    let row = c.query_one("SELECT current_setting('block_size')::int8, current_setting('server_version_num')::int4", &[]).await?;
    let block_size: i64 = row.try_get(0)?;
    let block_size = block_size.max(1) as u64;
    let server: i32 = row.try_get(1)?;
    let mut out = Vec::new();
    for (given, table) in tables.iter().enumerate() {
        let columns = Columns { published: published_columns(c, server, publication, table).await?, generated: server >= 180_000 };
        let row = c
            .query_opt(
                "SELECT c.oid, c.relkind::text FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
                &[&table.schema, &table.name],
            )
            .await?;
        let Some(row) = row else {
            return Err(SourceError::permanent(format!("cannot snapshot {}: no such table", table.quoted())));
        };
        let oid: u32 = row.try_get(0)?;
        let kind: String = row.try_get(1)?;
        let oids = match kind.as_str() {
            "r" => vec![oid],
            "p" => {
                let rows = c
                    .query(
                        "SELECT t.relid::oid FROM pg_partition_tree($1::oid::regclass) t \
                         JOIN pg_catalog.pg_class c ON c.oid = t.relid WHERE t.isleaf AND c.relkind = 'r' ORDER BY 1",
                        &[&oid],
                    )
                    .await?;
                rows.iter().map(|r| r.try_get::<_, u32>(0)).collect::<Result<Vec<_>, _>>()?
            }
            other => {
                return Err(SourceError::permanent(format!("cannot snapshot {}: it is not a table (relkind {other})", table.quoted())))
            }
        };
        for oid in oids {
            let mut plan = plan_relation(c, types, given, oid, block_size, &columns).await?;
            // Leaves of a partitioned table carry the root's name, as the
            // stream does (publish_via_partition_root).
            plan.schema = Arc::from(table.schema.as_str());
            plan.table = Arc::from(table.name.as_str());
            let rows_per_block = rows_per_block(c, &plan).await?;
            plan.estimate = estimate_rows(&plan, rows_per_block);
            let ranges = block_ranges(plan.blocks, rows_per_block, chunk_rows);
            out.push((plan, ranges));
        }
    }
    Ok(out)
}

/// Which columns of a table the stream carries, so that copied rows have
/// the same: pgoutput sends a publication's column list (15+) and, on 18,
/// stored generated columns when the publication says
/// `publish_generated_columns = stored`; before 18 never a generated one.
struct Columns {
    /// `pg_publication_tables.attnames` (None: no publication given, 14,
    /// or the table not in it: every column that is not generated).
    published: Option<Vec<String>>,
    /// The server publishes generated columns that `published` names (18+;
    /// 15-17 list them in `attnames` but do not send them).
    generated: bool,
}

impl Columns {
    fn keeps(&self, name: &str, generated: &str) -> bool {
        let listed = self.published.as_ref().is_none_or(|names| names.iter().any(|n| n == name));
        listed && (generated.is_empty() || (self.generated && generated == "s" && self.published.is_some()))
    }
}

/// `attnames` of `table` in `publication` (15+), if it is published there.
async fn published_columns(
    c: &Client,
    server: i32,
    publication: Option<&str>,
    table: &TableName,
) -> Result<Option<Vec<String>>, SourceError> {
    let Some(publication) = publication.filter(|_| server >= 150_000) else {
        return Ok(None);
    };
    let row = c
        .query_opt(
            "SELECT attnames::text[] FROM pg_catalog.pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
            &[&publication, &table.schema, &table.name],
        )
        .await?;
    Ok(match row {
        Some(r) => r.try_get(0)?,
        None => None,
    })
}

async fn plan_relation(
    c: &Client,
    types: &mut TypeRegistry,
    given: usize,
    oid: u32,
    block_size: u64,
    wanted: &Columns,
) -> Result<RelationPlan, SourceError> {
    let row = c
        .query_one(
            "SELECT n.nspname::text, c.relname::text, c.relreplident::text, c.reltuples::float8, \
                    pg_relation_size(c.oid)::int8 \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[&oid],
        )
        .await?;
    let schema: String = row.try_get(0)?;
    let table: String = row.try_get(1)?;
    let identity: String = row.try_get(2)?;
    let reltuples: f64 = row.try_get(3)?;
    let size: i64 = row.try_get(4)?;
    let blocks = size.max(0) as u64 / block_size;

    let index_rows = c
        .query(
            "SELECT i.indkey::int2[], i.indisprimary, i.indisreplident FROM pg_catalog.pg_index i \
             WHERE i.indrelid = $1 AND (i.indisprimary OR i.indisreplident)",
            &[&oid],
        )
        .await?;
    // pgoutput's key columns: replica identity index (default: the primary
    // key; index: the chosen index; nothing: none). relation.rs turns FULL
    // into the primary key. No key columns = the whole row is the key.
    let mut key_attnums: Vec<i16> = Vec::new();
    for r in &index_rows {
        let attnums: Vec<i16> = r.try_get(0)?;
        let primary: bool = r.try_get(1)?;
        let replident: bool = r.try_get(2)?;
        let wanted = match identity.as_str() {
            "d" | "f" => primary,
            "i" => replident,
            _ => false,
        };
        if wanted {
            key_attnums = attnums;
        }
    }

    let col_rows = c
        .query(
            "SELECT a.attname::text, a.atttypid, a.attnum, a.attgenerated::text FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid],
        )
        .await?;
    let mut columns = Vec::with_capacity(col_rows.len());
    for r in &col_rows {
        let name: String = r.try_get(0)?;
        let type_oid: u32 = r.try_get(1)?;
        let attnum: i16 = r.try_get(2)?;
        let generated: String = r.try_get(3)?;
        if !wanted.keeps(&name, &generated) {
            continue;
        }
        let decoder = match types.resolve_cached(type_oid) {
            Some(d) => d,
            None => types.resolve(c, type_oid).await?,
        };
        columns.push(ColumnInfo { name: Arc::from(name), type_oid, is_key: key_attnums.contains(&attnum), decoder });
    }
    let list = columns.iter().map(|col| quote_ident(&col.name)).collect::<Vec<_>>().join(", ");
    let qualified = TableName::new(schema.clone(), table.clone()).quoted();
    let select = format!("SELECT {list} FROM ONLY {qualified}");
    let estimate = if reltuples >= 0.0 { reltuples as u64 } else { 0 };
    Ok(RelationPlan { given, schema: Arc::from(schema), table: Arc::from(table), columns, select, blocks, estimate })
}

/// Rows per block: from the statistics when the table was analyzed, else
/// counted in its first and middle blocks (two one-block TID range scans
/// inside the snapshot).
async fn rows_per_block(c: &Client, plan: &RelationPlan) -> Result<f64, SourceError> {
    if plan.blocks == 0 {
        return Ok(FALLBACK_ROWS_PER_BLOCK);
    }
    if plan.estimate > 0 {
        return Ok(plan.estimate as f64 / plan.blocks as f64);
    }
    let mut counted = 0i64;
    let samples = if plan.blocks > 1 { vec![0, plan.blocks / 2] } else { vec![0] };
    for &b in &samples {
        let sql = format!(
            "SELECT count(*) FROM ONLY {}.{}{}",
            quote_ident(&plan.schema),
            quote_ident(&plan.table),
            BlockRange { start: b, end: Some(b + 1) }.condition()
        );
        let n: i64 = c.query_one(sql.as_str(), &[]).await?.try_get(0)?;
        counted += n;
    }
    let per_block = counted as f64 / samples.len() as f64;
    Ok(if per_block > 0.0 { per_block } else { FALLBACK_ROWS_PER_BLOCK })
}

/// The row estimate of a relation: its statistics, else blocks times the
/// sampled rows per block.
fn estimate_rows(plan: &RelationPlan, rows_per_block: f64) -> u64 {
    if plan.estimate > 0 {
        plan.estimate
    } else {
        (plan.blocks as f64 * rows_per_block) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_block_once() {
        assert_eq!(block_ranges(0, 60.0, 1000), vec![BlockRange::ALL]);
        assert_eq!(block_ranges(10, 60.0, 1000), vec![BlockRange::ALL]);
        let r = block_ranges(100, 10.0, 250);
        assert_eq!(r.len(), 4);
        assert_eq!(r[0], BlockRange { start: 0, end: Some(25) });
        assert_eq!(r[3], BlockRange { start: 75, end: None });
        for w in r.windows(2) {
            assert_eq!(w[0].end, Some(w[1].start));
        }
        // Tiny chunks still make progress (one block per range).
        assert_eq!(block_ranges(3, 500.0, 1).len(), 3);
    }

    #[test]
    fn conditions() {
        assert_eq!(BlockRange::ALL.condition(), "");
        assert_eq!(BlockRange { start: 0, end: Some(5) }.condition(), " WHERE ctid < '(5,0)'::tid");
        assert_eq!(BlockRange { start: 5, end: None }.condition(), " WHERE ctid >= '(5,0)'::tid");
        assert_eq!(BlockRange { start: 5, end: Some(9) }.condition(), " WHERE ctid >= '(5,0)'::tid AND ctid < '(9,0)'::tid");
    }
}
