//! Reading a table in key order, one chunk at a time (keyset pagination),
//! and re-reading rows by key: what `pgfanout verify` compares stores
//! against (and what backfills page with).
//!
//! Each chunk is `COPY (SELECT <columns> FROM ONLY t WHERE (k1, k2) >
//! (<last key>) ORDER BY k1, k2 LIMIT n) TO STDOUT`, decoded by the same
//! decoders as the snapshot and the stream, so a row read here equals the
//! row those deliver. The key is the one pgoutput uses (primary key, or the
//! replica identity index); keys of any type and composite keys work, the
//! last key is carried as each column's text and cast back to its type.
//! Run it inside a REPEATABLE READ transaction for a consistent view.

use std::sync::Arc;

use futures_util::StreamExt;
use pgfanout_sdk::{Change, Lsn};
use tokio_postgres::Client;

use super::copy_text::LineSplitter;
use super::decode_line;
use super::plan::{self, RelationPlan};
use crate::catalog::TypeRegistry;
use crate::error::SourceError;
use crate::slot::{quote_ident, TableName};

/// A row's key as the text of each key column, in key order.
pub type KeyText = Vec<String>;

/// One relation read in key order (a table, or one leaf of a partitioned
/// table: rows carry the leaf's name, as the stream does).
#[derive(Debug)]
pub struct KeyedTable {
    plan: Arc<RelationPlan>,
    /// (quoted column name, SQL type name) of the key columns, in table order.
    key: Vec<(String, String)>,
}

impl KeyedTable {
    /// Plans `table` (one entry per leaf when it is partitioned). A table
    /// without a primary key or replica identity index cannot be paged by
    /// key: Permanent error. Rows have the columns `publication` publishes
    /// (as the stream has them; every column that is not generated when None).
    pub async fn plan(
        c: &Client,
        types: &mut TypeRegistry,
        table: &TableName,
        publication: Option<&str>,
    ) -> Result<Vec<KeyedTable>, SourceError> {
        let planned = plan::plan_tables(c, types, std::slice::from_ref(table), u64::MAX, publication).await?;
        let mut out = Vec::with_capacity(planned.len());
        for (rel, _) in planned {
            if !rel.has_key() {
                return Err(SourceError::permanent(format!(
                    "{}.{} has no primary key (or replica identity index): it cannot be read in key order",
                    rel.schema, rel.table
                )));
            }
            let mut key = Vec::new();
            for col in rel.columns.iter().filter(|c| c.is_key) {
                let ty: String = c.query_one("SELECT format_type($1::oid, NULL)", &[&col.type_oid]).await?.try_get(0)?;
                key.push((quote_ident(&col.name), ty));
            }
            out.push(KeyedTable { plan: Arc::new(rel), key });
        }
        Ok(out)
    }

    /// `schema.table` of the rows (the leaf for partitions).
    pub fn name(&self) -> TableName {
        TableName::new(&*self.plan.schema, &*self.plan.table)
    }

    /// Names of the key columns, in key order.
    pub fn key_columns(&self) -> Vec<Arc<str>> {
        self.plan.columns.iter().filter(|c| c.is_key).map(|c| c.name.clone()).collect()
    }

    fn key_list(&self) -> String {
        self.key.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
    }

    fn literal(&self, key: &KeyText) -> String {
        let parts: Vec<String> = self.key.iter().zip(key).map(|((_, ty), v)| format!("'{}'::{}", v.replace('\'', "''"), ty)).collect();
        format!("({})", parts.join(", "))
    }

    /// Up to `limit` rows with a key above `after` (from the first when
    /// `None`), in key order, each as an `op: read` change at `version` with
    /// its key text. `filter` is an extra SQL condition (trusted: from the
    /// operator's command line).
    pub async fn chunk(
        &self,
        c: &Client,
        after: Option<&KeyText>,
        limit: usize,
        filter: Option<&str>,
        version: Lsn,
    ) -> Result<Vec<(Change, KeyText)>, SourceError> {
        let mut conds = Vec::new();
        if let Some(k) = after {
            conds.push(format!("({}) > {}", self.key_list(), self.literal(k)));
        }
        if let Some(f) = filter {
            conds.push(format!("({f})"));
        }
        let cond = if conds.is_empty() { String::new() } else { format!(" WHERE {}", conds.join(" AND ")) };
        let sql = format!("COPY ({}{cond} ORDER BY {} LIMIT {limit}) TO STDOUT", self.plan.select, self.key_list());
        self.copy(c, &sql, version).await
    }

    /// The rows (still) present for `keys`, in key order.
    pub async fn rows_by_key(&self, c: &Client, keys: &[KeyText], version: Lsn) -> Result<Vec<(Change, KeyText)>, SourceError> {
        let mut out = Vec::with_capacity(keys.len());
        for part in keys.chunks(500) {
            let list = part.iter().map(|k| self.literal(k)).collect::<Vec<_>>().join(", ");
            let sql = format!("COPY ({} WHERE ({}) IN ({list}) ORDER BY {}) TO STDOUT", self.plan.select, self.key_list(), self.key_list());
            out.extend(self.copy(c, &sql, version).await?);
        }
        Ok(out)
    }

    async fn copy(&self, c: &Client, sql: &str, version: Lsn) -> Result<Vec<(Change, KeyText)>, SourceError> {
        let stream = c.copy_out(sql).await?;
        let mut stream = std::pin::pin!(stream);
        let mut lines = LineSplitter::default();
        let mut scratch = Vec::new();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            lines.push(&chunk, |line| {
                let mut key = Vec::with_capacity(self.key.len());
                let change = decode_line(&self.plan, line, &mut scratch, version, &mut key)?;
                out.push((change, key));
                Ok::<_, SourceError>(())
            })?;
        }
        if !lines.is_empty() {
            return Err(SourceError::transient(format!("COPY of {}.{} ended in the middle of a row", self.plan.schema, self.plan.table)));
        }
        Ok(out)
    }
}
