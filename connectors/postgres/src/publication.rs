//! Which tables are streamed: table patterns from the configuration
//! resolved against the catalog, the publication created (or an existing
//! one read), and the tables whose updates and deletes PostgreSQL could not
//! replicate named, each with its fix. Runs on a normal SQL connection
//! before streaming starts; every problem is a Permanent error (or message)
//! that says what to change.

use std::collections::HashSet;

use tokio_postgres::Client;

use crate::error::SourceError;
use crate::table_name::{quote_ident, TableName, INTERNAL_SCHEMA};

/// One part of a table pattern, with SQL's identifier rules.
#[derive(Debug, PartialEq, Eq)]
enum Part {
    /// A name (quoted as given, unquoted folded to lower case).
    Name(String),
    /// `*`.
    Any,
}

/// Splits `schema.table` respecting double quotes; unquoted parts are
/// lower-cased, as PostgreSQL does.
fn parse_pattern(pattern: &str) -> Result<Vec<Part>, SourceError> {
    let bad = |why: &str| SourceError::permanent(format!("invalid table pattern {pattern:?}: {why}"));
    let mut parts = Vec::new();
    let mut chars = pattern.trim().chars().peekable();
    loop {
        let mut name = String::new();
        let mut quoted = false;
        if chars.peek() == Some(&'"') {
            quoted = true;
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        name.push('"');
                    }
                    Some('"') => break,
                    Some(c) => name.push(c),
                    None => return Err(bad("unterminated quote")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if c == '"' {
                    return Err(bad("quote in the middle of a name"));
                }
                name.push(c);
                chars.next();
            }
        }
        if name.is_empty() {
            return Err(bad("empty name"));
        }
        parts.push(if !quoted && name == "*" {
            Part::Any
        } else if quoted {
            Part::Name(name)
        } else {
            Part::Name(name.to_lowercase())
        });
        match chars.next() {
            None => break,
            Some('.') => continue,
            Some(_) => return Err(bad("expected '.' after a quoted name")),
        }
    }
    if parts.len() > 2 {
        return Err(bad("expected table, schema.table or schema.*"));
    }
    Ok(parts)
}

/// Expands table patterns into tables, in pattern order without duplicates:
/// `schema.table`, `table` (= `public.table`), `schema.*` (every ordinary
/// and partitioned table of the schema, partitions excluded since their root
/// covers them) and `*.*` (every such table outside the system schemas).
/// Wildcards never expand to schema `pgfanout`. Errors (Permanent): exact
/// tables that do not exist (all named in one message), names that are not
/// tables (views...), a wildcard that matches nothing.
pub async fn resolve_tables(c: &Client, patterns: &[String]) -> Result<Vec<TableName>, SourceError> {
    let mut out: Vec<TableName> = Vec::new();
    let mut seen = HashSet::new();
    let mut missing = Vec::new();
    for pattern in patterns {
        let parts = parse_pattern(pattern)?;
        let (schema, table) = match parts.as_slice() {
            [t] => (Part::Name("public".into()), t),
            [s, t] => (if let Part::Name(s) = s { Part::Name(s.clone()) } else { Part::Any }, t),
            _ => unreachable!("parse_pattern returns 1 or 2 parts"),
        };
        let found: Vec<TableName> = match (&schema, table) {
            (Part::Name(s), Part::Name(t)) => {
                let rows = c
                    .query(
                        "SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = $1 AND c.relname = $2",
                        &[s, t],
                    )
                    .await?;
                let table = TableName::new(s.clone(), t.clone());
                match rows.first().map(|r| r.try_get::<_, String>(0)).transpose()? {
                    None => {
                        missing.push(table.quoted());
                        continue;
                    }
                    Some(kind) if kind == "r" || kind == "p" => vec![table],
                    Some(kind) => {
                        return Err(SourceError::permanent(format!(
                            "{} is not a table (relkind {kind}): only tables can be published",
                            table.quoted()
                        )))
                    }
                }
            }
            (schema, Part::Any) => {
                let schema_name = match schema {
                    Part::Name(s) => Some(s.clone()),
                    Part::Any => None,
                };
                let rows = c
                    .query(
                        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
                           AND ($1::text IS NULL OR n.nspname = $1) \
                           AND n.nspname <> $2 AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                           AND n.nspname NOT LIKE 'pg\\_%' \
                         ORDER BY 1, 2",
                        &[&schema_name, &INTERNAL_SCHEMA],
                    )
                    .await?;
                let tables = rows
                    .iter()
                    .map(|r| Ok(TableName::new(r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?)))
                    .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
                if tables.is_empty() {
                    return Err(SourceError::permanent(format!(
                        "table pattern {pattern:?} matches no table: create the tables first or fix the pattern"
                    )));
                }
                tables
            }
            (Part::Any, Part::Name(_)) => {
                return Err(SourceError::permanent(format!(
                    "invalid table pattern {pattern:?}: a wildcard schema needs a wildcard table (*.*)"
                )))
            }
        };
        for t in found {
            if seen.insert(t.clone()) {
                out.push(t);
            }
        }
    }
    if !missing.is_empty() {
        return Err(SourceError::permanent(format!(
            "table(s) not found: {} (check the schema and the spelling; unquoted names are lower-cased)",
            missing.join(", ")
        )));
    }
    Ok(out)
}

/// Creates publication `name` without tables when it does not exist (a
/// configuration that reads only logical messages, which every publication
/// carries).
pub async fn ensure_empty_publication(c: &Client, name: &str) -> Result<(), SourceError> {
    if c.query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name]).await?.is_none() {
        match c.batch_execute(&format!("CREATE PUBLICATION {}", quote_ident(name))).await {
            Ok(()) => tracing::info!(publication = %name, "publication created without tables (logical messages only)"),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Creates publication `name` `FOR TABLE tables` if it does not exist; an
/// existing publication is used as it is (and the tables it lacks are
/// logged). Returns the tables it publishes (`pg_publication_tables`, which
/// lists the leaf partitions of partitioned tables).
pub async fn ensure_publication(c: &Client, name: &str, tables: &[TableName]) -> Result<Vec<TableName>, SourceError> {
    let exists = c.query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name]).await?.is_some();
    if !exists {
        if tables.is_empty() {
            return Err(SourceError::permanent(format!(
                "publication {name:?} does not exist and no table was given to create it: name tables in the pipelines"
            )));
        }
        let list = tables.iter().map(TableName::quoted).collect::<Vec<_>>().join(", ");
        // Partitioned tables publish their changes under the root's name, so
        // partitions created or attached later need no config change.
        let sql = format!("CREATE PUBLICATION {} FOR TABLE {list} WITH (publish_via_partition_root = true)", quote_ident(name));
        match c.batch_execute(&sql).await {
            Ok(()) => tracing::info!(publication = %name, tables = %list, "publication created"),
            // Created concurrently by another instance: use it.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
            Err(e) => {
                let err = SourceError::from(e);
                // 42501 insufficient_privilege: not the owner, or no CREATE.
                return Err(match err.sqlstate() {
                    Some("42501") => err.definite_with_fix(format!(
                        "create the publication as the tables' owner (CREATE PUBLICATION {} FOR TABLE {list}) \
                         or grant ownership/CREATE on the database to the pgfanout user",
                        quote_ident(name)
                    )),
                    _ => err,
                });
            }
        }
    }
    if exists {
        let via_root: bool = c.query_one("SELECT pubviaroot FROM pg_publication WHERE pubname = $1", &[&name]).await?.try_get(0)?;
        if !via_root {
            let alter = format!("ALTER PUBLICATION {} SET (publish_via_partition_root = true)", quote_ident(name));
            match c.batch_execute(&alter).await {
                Ok(()) => tracing::info!(publication = %name, "publication now publishes partitions under their root table"),
                Err(e) => tracing::warn!(
                    publication = %name,
                    error = %SourceError::from(e),
                    "cannot set publish_via_partition_root: changes of partitioned tables arrive under their partitions' names; run {alter} as the publication's owner"
                ),
            }
        }
    }
    let rows =
        c.query("SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2", &[&name]).await?;
    let published = rows
        .iter()
        .map(|r| Ok(TableName::new(r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?)))
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    if exists {
        let listed = published.iter().map(TableName::quoted).collect::<Vec<_>>().join(", ");
        tracing::info!(publication = %name, tables = %listed, "using existing publication");
        let have: HashSet<&TableName> = published.iter().collect();
        let lacking: Vec<String> = tables.iter().filter(|t| !have.contains(t)).map(TableName::quoted).collect();
        if !lacking.is_empty() {
            tracing::warn!(
                publication = %name,
                tables = %lacking.join(", "),
                "tables named by pipelines are not in the existing publication; their changes will not be streamed \
                 (ALTER PUBLICATION ... ADD TABLE to include them)"
            );
        }
    }
    Ok(published)
}

/// Tables whose updates and deletes PostgreSQL cannot replicate (it rejects
/// them on the primary once the table is published): replica identity
/// `default` without a primary key, `nothing`, or `index` whose index is
/// gone. One message per table, with the fix. Tables that do not exist are
/// skipped ([`resolve_tables`] reports them).
pub async fn replica_identity_problems(c: &Client, tables: &[TableName]) -> Result<Vec<String>, SourceError> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let rows = c
        .query(
            "SELECT n.nspname::text, c.relname::text, c.relreplident::text, \
               EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
               EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident) \
             FROM unnest($1::text[], $2::text[]) AS t(schema, name) \
             JOIN pg_namespace n ON n.nspname = t.schema \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.name \
             ORDER BY 1, 2",
            &[&schemas, &names],
        )
        .await?;
    let mut problems = Vec::new();
    for row in rows {
        let table = TableName::new(row.try_get::<_, String>(0)?, row.try_get::<_, String>(1)?);
        let ident: String = row.try_get(2)?;
        let has_pk: bool = row.try_get(3)?;
        let has_ident_index: bool = row.try_get(4)?;
        let why = match ident.as_str() {
            "d" if !has_pk => "has no primary key (replica identity default)",
            "n" => "has replica identity nothing",
            "i" if !has_ident_index => "has replica identity index but that index no longer exists",
            _ => continue,
        };
        let t = table.quoted();
        problems.push(format!(
            "table {t} {why}: its updates and deletes cannot be replicated; run ALTER TABLE {t} REPLICA IDENTITY FULL, or add a primary key"
        ));
    }
    Ok(problems)
}

/// Makes publication `name` send stored generated columns
/// (`publish_generated_columns = stored`, PostgreSQL 18+). Permanent error
/// before 18, which never sends them, and when the publication cannot be
/// altered.
pub async fn ensure_generated_columns(c: &Client, name: &str) -> Result<(), SourceError> {
    let server: i32 = c.query_one("SELECT current_setting('server_version_num')::int4", &[]).await?.try_get(0)?;
    if server < 180_000 {
        return Err(SourceError::permanent(format!(
            "source.postgres.publish_generated_columns needs PostgreSQL 18 or later (this server is {}): earlier servers never \
             stream generated columns; set it to false",
            server / 10_000
        )));
    }
    let current: String = c.query_one("SELECT pubgencols::text FROM pg_publication WHERE pubname = $1", &[&name]).await?.try_get(0)?;
    if current == "s" {
        return Ok(());
    }
    let alter = format!("ALTER PUBLICATION {} SET (publish_generated_columns = stored)", quote_ident(name));
    c.batch_execute(&alter).await.map_err(|e| {
        SourceError::from(e).definite_with_fix(format!("run {alter} as the publication's owner, or set publish_generated_columns: false"))
    })?;
    tracing::info!(publication = %name, "publication now publishes stored generated columns");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert_eq!(parse_pattern("Users").unwrap(), vec![Part::Name("users".into())]);
        assert_eq!(parse_pattern("s.*").unwrap(), vec![Part::Name("s".into()), Part::Any]);
        assert_eq!(parse_pattern("\"My.Schema\".\"T\"\"x\"").unwrap(), vec![Part::Name("My.Schema".into()), Part::Name("T\"x".into())]);
        assert_eq!(parse_pattern("\"*\"").unwrap(), vec![Part::Name("*".into())]);
        for bad in ["", "a.b.c", "\"open", "a.", "ab\"c\""] {
            assert!(parse_pattern(bad).is_err(), "{bad}");
        }
    }
}
