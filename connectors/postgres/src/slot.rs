//! Slot and publication management and the start-up checks.
//!
//! Everything here runs on a normal SQL connection ([`crate::conn::connect_sql`])
//! before streaming starts, and turns the conditions that would make
//! streaming fail later, or silently lose data, into Permanent errors that
//! say what to change: a server that cannot decode logically, tables that do
//! not exist, a slot that was invalidated or belongs to another database,
//! tables whose updates and deletes cannot be replicated.
//!
//! The slot itself is created on the replication connection
//! ([`crate::replication::ReplicationClient::create_logical_slot`]) because
//! only there can its snapshot be exported; it is never dropped here.

use std::collections::HashSet;
use std::fmt;

use pgfanout_sdk::Lsn;
use tokio_postgres::Client;

use crate::error::SourceError;

/// Schema holding pgfanout's own tables; never expanded by wildcards.
pub const INTERNAL_SCHEMA: &str = "pgfanout";

/// A table, by schema and name (both as stored in the catalog, unquoted).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableName { schema: schema.into(), name: name.into() }
    }

    /// `schema.name` with each part double-quoted when SQL needs it
    /// (upper case, special characters, reserved words).
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// Same as [`TableName::quoted`].
impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.quoted())
    }
}

/// PostgreSQL's reserved key words (those that cannot be a bare table or
/// schema name).
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// Quotes an identifier unless it is a plain lower-case name.
pub fn quote_ident(s: &str) -> String {
    let plain = s.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'$')
        && !RESERVED.contains(&s);
    if plain {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

/// Server settings the source depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub version_num: i32,
    pub wal_level: String,
    pub max_replication_slots: i32,
    pub max_wal_senders: i32,
}

/// Reads [`ServerInfo`].
pub async fn server_info(c: &Client) -> Result<ServerInfo, SourceError> {
    let row = c
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('wal_level'), \
             current_setting('max_replication_slots')::int, current_setting('max_wal_senders')::int",
            &[],
        )
        .await?;
    Ok(ServerInfo {
        version_num: row.try_get(0)?,
        wal_level: row.try_get(1)?,
        max_replication_slots: row.try_get(2)?,
        max_wal_senders: row.try_get(3)?,
    })
}

/// [`server_info`], then a Permanent error with the fix if the server is
/// older than 14, `wal_level` is not `logical`, or it allows no replication
/// slots or WAL senders.
pub async fn check_server(c: &Client) -> Result<ServerInfo, SourceError> {
    let info = server_info(c).await?;
    check_server_info(&info)?;
    Ok(info)
}

fn check_server_info(info: &ServerInfo) -> Result<(), SourceError> {
    if info.version_num < 140000 {
        return Err(SourceError::permanent(format!(
            "PostgreSQL {} is not supported: pgfanout needs PostgreSQL 14 or later",
            info.version_num
        )));
    }
    if info.wal_level != "logical" {
        return Err(SourceError::permanent(format!(
            "wal_level is {:?}: set wal_level = logical in postgresql.conf and restart PostgreSQL",
            info.wal_level
        )));
    }
    if info.max_replication_slots < 1 || info.max_wal_senders < 1 {
        return Err(SourceError::permanent(
            "max_replication_slots or max_wal_senders is 0: raise both (e.g. to 10) in postgresql.conf and restart PostgreSQL",
        ));
    }
    Ok(())
}

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

/// A row of `pg_replication_slots`, with the WAL it retains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub active: bool,
    pub active_pid: Option<i32>,
    pub restart_lsn: Option<Lsn>,
    pub confirmed_flush_lsn: Option<Lsn>,
    /// reserved | extended | unreserved | lost.
    pub wal_status: Option<String>,
    /// Bytes of WAL between restart_lsn and the current WAL position.
    pub retained_bytes: Option<i64>,
}

/// The slot's row, or None if there is no such slot.
pub async fn slot_info(c: &Client, slot: &str) -> Result<Option<SlotInfo>, SourceError> {
    let row = c
        .query_opt(
            "SELECT plugin::text, database::text, active, active_pid, restart_lsn::text, confirmed_flush_lsn::text, wal_status, \
               pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END, \
                               restart_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let lsn = |i: usize| -> Result<Option<Lsn>, SourceError> {
        let s: Option<String> = row.try_get(i)?;
        s.map(|s| s.parse().map_err(|_| SourceError::transient(format!("invalid LSN {s:?} in pg_replication_slots")))).transpose()
    };
    Ok(Some(SlotInfo {
        plugin: row.try_get(0)?,
        database: row.try_get(1)?,
        active: row.try_get(2)?,
        active_pid: row.try_get(3)?,
        restart_lsn: lsn(4)?,
        confirmed_flush_lsn: lsn(5)?,
        wal_status: row.try_get(6)?,
        retained_bytes: row.try_get(7)?,
    }))
}

/// Permanent error, saying what to do, if the slot cannot be streamed from:
/// invalidated (`wal_status = 'lost'`), not a pgoutput logical slot, or
/// created in another database than `dbname`.
pub fn check_slot(slot: &str, info: &SlotInfo, dbname: &str) -> Result<(), SourceError> {
    if info.wal_status.as_deref() == Some("lost") {
        return Err(SourceError::permanent(format!(
            "replication slot {slot:?} was invalidated (the WAL it needed was removed, see max_slot_wal_keep_size): \
             drop it with SELECT pg_drop_replication_slot('{slot}') and start again; data changed since is lost to this slot"
        )));
    }
    match info.plugin.as_deref() {
        Some("pgoutput") => {}
        None => {
            return Err(SourceError::permanent(format!(
                "replication slot {slot:?} is a physical slot: choose another slot name for pgfanout"
            )))
        }
        Some(other) => {
            return Err(SourceError::permanent(format!(
                "replication slot {slot:?} uses output plugin {other:?} but pgfanout needs pgoutput: choose another slot name, \
                 or drop it with SELECT pg_drop_replication_slot('{slot}') if nothing else uses it"
            )))
        }
    }
    if info.database.as_deref() != Some(dbname) {
        return Err(SourceError::permanent(format!(
            "replication slot {slot:?} belongs to database {:?}, not {dbname:?}: choose another slot name or connect to that database",
            info.database.as_deref().unwrap_or("?")
        )));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> SlotInfo {
        SlotInfo {
            plugin: Some("pgoutput".into()),
            database: Some("shop".into()),
            active: false,
            active_pid: None,
            restart_lsn: Some(Lsn(1)),
            confirmed_flush_lsn: Some(Lsn(2)),
            wal_status: Some("reserved".into()),
            retained_bytes: Some(0),
        }
    }

    #[test]
    fn check_slot_cases() {
        assert!(check_slot("s", &info(), "shop").is_ok());
        let lost = SlotInfo { wal_status: Some("lost".into()), ..info() };
        let e = check_slot("s", &lost, "shop").unwrap_err();
        assert!(!e.is_retriable());
        assert!(e.to_string().contains("pg_drop_replication_slot('s')"), "{e}");
        let other_plugin = SlotInfo { plugin: Some("wal2json".into()), ..info() };
        assert!(check_slot("s", &other_plugin, "shop").unwrap_err().to_string().contains("wal2json"));
        let physical = SlotInfo { plugin: None, database: None, ..info() };
        assert!(check_slot("s", &physical, "shop").unwrap_err().to_string().contains("physical"));
        let e = check_slot("s", &info(), "other").unwrap_err();
        assert!(e.to_string().contains("belongs to database \"shop\""), "{e}");
    }

    #[test]
    fn check_server_cases() {
        let ok = ServerInfo { version_num: 150004, wal_level: "logical".into(), max_replication_slots: 10, max_wal_senders: 10 };
        assert!(check_server_info(&ok).is_ok());
        let e = check_server_info(&ServerInfo { wal_level: "replica".into(), ..ok.clone() }).unwrap_err();
        assert!(e.to_string().contains("set wal_level = logical in postgresql.conf and restart PostgreSQL"));
        assert!(check_server_info(&ServerInfo { version_num: 130010, ..ok.clone() }).unwrap_err().to_string().contains("14"));
        assert!(check_server_info(&ServerInfo { max_replication_slots: 0, ..ok }).is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(TableName::new("public", "users").quoted(), "public.users");
        assert_eq!(TableName::new("Sales", "order items").quoted(), "\"Sales\".\"order items\"");
        assert_eq!(TableName::new("public", "user").to_string(), "public.\"user\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("1abc"), "\"1abc\"");
    }

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
