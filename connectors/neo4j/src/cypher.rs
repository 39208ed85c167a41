//! The Cypher the sink generates for declarative mappings.
//!
//! Why these shapes: every statement takes a whole batch as `$rows` and
//! `UNWIND`s it, so one round trip writes up to `max_batch` rows. Each row
//! carries the change's version (`row.v`, the position as sortable text) and every
//! write is guarded by the version stored on the node or relationship
//! (`_pgfanout_version`): older writes are skipped, equal ones apply, so a replay
//! after a crash converges instead of rolling the graph back.
//!
//! Relationships are identified by their row (`_pgfanout_key`, the JSON of
//! the row's key columns), not by their endpoints: two purchases of the same
//! product by the same user stay two relationships, and an update that moves
//! an endpoint (a changed `user_id`) replaces the old relationship instead of
//! adding a second one. Properties are set with `+=` from the columns present
//! in the change, so an unchanged TOAST column (absent from `after`) keeps its
//! stored value.
//!
//! Only plain Cypher that Neo4j 4.4+/5 (and other Bolt servers' openCypher)
//! accept is generated (checked against Neo4j 5 in tests/neo4j.rs).

use crate::config::{EndpointMapping, NodeMapping, RelMapping, ROW_KEY_PROPERTY, VERSION_PROPERTY};
use crate::ownership::NodeOthers;

/// Quotes a label, type or property name for Cypher (backticks, doubled inside).
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `{`a`: row.k.`a`, …}` for the properties of a key map.
fn key_pattern<'a>(props: impl Iterator<Item = &'a String>, source: &str) -> String {
    let parts: Vec<String> = props.map(|p| format!("{}: {source}.{}", ident(p), ident(p))).collect();
    format!("{{{}}}", parts.join(", "))
}

fn guard(var: &str) -> String {
    let v = ident(VERSION_PROPERTY);
    format!("{var}.{v} IS NULL OR {var}.{v} <= row.v")
}

/// `n {.`a`, .`b`}`: the listed properties of `var` as a map (`{}` when none).
fn projection(var: &str, props: &[String]) -> String {
    if props.is_empty() {
        return "{}".into();
    }
    let parts: Vec<String> = props.iter().map(|p| format!(".{}", ident(p))).collect();
    format!("{var} {{{}}}", parts.join(", "))
}

/// Row shape: `{k: {prop…}, ok: {prop…} or null, p: {prop…}, f: bool, v}`
/// (see `encode::node_row`).
///
/// - A key change (`ok` set) moves the node: when no node holds the new key
///   the old node takes it (its relationships and the properties the change
///   did not send, unchanged TOAST, stay); when one does (an endpoint created
///   by a relationship, a replay), the old node's properties are copied into
///   it, relationships of the types `others` lists are re-created on it, and
///   the old node is deleted. An old node written by a newer change is left
///   alone, so replays converge.
/// - A full write (`f`: insert, snapshot, backfill, repair) replaces the
///   properties, keeping only those the sink's other routes write on the
///   label (stray ones go); other writes set the columns they carry.
pub fn node_upsert(m: &NodeMapping, others: &NodeOthers) -> String {
    let label = ident(&m.label);
    let v = ident(VERSION_PROPERTY);
    let mut carry = String::new();
    for t in &others.out_types {
        carry += &format!(
            " FOREACH (r IN [(x)-[q:{t}]->() | q] | FOREACH (y IN [endNode(r)] | CREATE (n)-[c:{t}]->(y) SET c = properties(r)))",
            t = ident(t)
        );
    }
    for t in &others.in_types {
        carry += &format!(
            " FOREACH (r IN [(x)<-[q:{t}]-() | q] | FOREACH (y IN [startNode(r)] | CREATE (y)-[c:{t}]->(n) SET c = properties(r)))",
            t = ident(t)
        );
    }
    let replace = match &others.keep {
        Some(keep) => format!(" FOREACH (_ IN CASE WHEN row.f THEN [1] ELSE [] END | SET n = {})", projection("n", keep)),
        None => String::new(),
    };
    format!(
        "UNWIND $rows AS row \
         OPTIONAL MATCH (o:{label} {old}) \
         WITH row, CASE WHEN o.{v} IS NULL OR o.{v} <= row.v THEN o END AS o \
         OPTIONAL MATCH (e:{label} {key}) \
         FOREACH (x IN CASE WHEN e IS NULL AND o IS NOT NULL THEN [o] ELSE [] END | SET x += row.k) \
         WITH row, o \
         MERGE (n:{label} {key}) WITH row, o, n WHERE {guard} \
         FOREACH (x IN CASE WHEN o IS NOT NULL AND o <> n THEN [o] ELSE [] END | SET n += properties(x){carry} DETACH DELETE x)\
         {replace} \
         SET n += row.k, n += row.p, n.{v} = row.v",
        old = key_pattern(m.key.keys(), "row.ok"),
        key = key_pattern(m.key.keys(), "row.k"),
        guard = guard("n"),
    )
}

/// Row shape: `{k: {prop: value…}, v: version}`. Detaches the node's
/// relationships; a node written by a newer change is left alone.
pub fn node_delete(m: &NodeMapping) -> String {
    format!(
        "UNWIND $rows AS row MATCH (n:{label} {key}) WHERE {guard} DETACH DELETE n",
        label = ident(&m.label),
        key = key_pattern(m.key.keys(), "row.k"),
        guard = guard("n"),
    )
}

/// Parameter `$v`: removes the nodes pgfanout wrote before the truncate.
pub fn node_truncate(m: &NodeMapping) -> String {
    format!("MATCH (n:{}) WHERE n.{v} <= $v DETACH DELETE n", ident(&m.label), v = ident(VERSION_PROPERTY))
}

fn endpoint(var: &str, ep: &EndpointMapping, source: &str) -> String {
    format!("MERGE ({var}:{} {})", ident(&ep.label), key_pattern(ep.key.keys(), source))
}

/// Row shape: `{id: row key string, oid: old row key or null, f: {prop…},
/// t: {prop…}, bf: {prop…} or null, p: {prop…}, full: bool, v}` (see
/// `encode::rel_row`).
///
/// Looks the relationship up by row key first, anchored on its endpoint
/// nodes (new from-node, new to-node, old from-node): ArcadeDB's planner
/// uses the node key index there but not a relationship property index
/// inside `UNWIND`, so an unanchored `()-[r {key}]->()` would scan every
/// relationship of the type per row. When a stored version is newer the row
/// is skipped; when the relationship exists between other endpoints it is
/// replaced (its properties carried over, then overwritten by the change's).
/// A change of the row's key (`oid`) moves the relationship the same way
/// (an old relationship written by a newer change is left alone). Without
/// `before`, a row whose two endpoint columns change at once leaves the old
/// relationship behind (give the table REPLICA IDENTITY FULL). A full write
/// (`full`) replaces the properties, keeping those in `keep` (the sink's
/// other routes of the type; `None`: unknown, nothing replaced).
pub fn rel_upsert(m: &RelMapping, keep: Option<&[String]>) -> String {
    let t = ident(&m.rel_type);
    let k = ident(ROW_KEY_PROPERTY);
    let v = ident(VERSION_PROPERTY);
    let (fl, tl) = (ident(&m.from.label), ident(&m.to.label));
    let (fk, tk) = (key_pattern(m.from.key.keys(), "row.f"), key_pattern(m.to.key.keys(), "row.t"));
    let bk = key_pattern(m.from.key.keys(), "row.bf");
    let distinct = |list: &str| format!("reduce(acc = [], o IN [{list}] | CASE WHEN o IS NULL OR o IN acc THEN acc ELSE acc + o END)");
    let replace = match keep {
        Some(keep) => format!(" FOREACH (_ IN CASE WHEN row.full THEN [1] ELSE [] END | SET r = {})", projection("r", keep)),
        None => String::new(),
    };
    format!(
        "UNWIND $rows AS row \
         OPTIONAL MATCH (fa:{fl} {fk}) OPTIONAL MATCH (fa)-[o1:{t} {{{k}: row.id}}]->() OPTIONAL MATCH (fa)-[o4:{t} {{{k}: row.oid}}]->() \
         OPTIONAL MATCH (tb:{tl} {tk}) OPTIONAL MATCH (tb)<-[o2:{t} {{{k}: row.id}}]-() OPTIONAL MATCH (tb)<-[o5:{t} {{{k}: row.oid}}]-() \
         OPTIONAL MATCH (ba:{fl} {bk}) OPTIONAL MATCH (ba)-[o3:{t} {{{k}: row.id}}]->() OPTIONAL MATCH (ba)-[o6:{t} {{{k}: row.oid}}]->() \
         WITH row, {olds} AS olds, [p IN {prev} WHERE p.{v} IS NULL OR p.{v} <= row.v] AS prev \
         WHERE all(o IN olds WHERE o.{v} IS NULL OR o.{v} <= row.v) \
         {from} {to} \
         MERGE (a)-[r:{t} {{{k}: row.id}}]->(b) \
         WITH row, r, [o IN olds + prev WHERE o <> r] AS moved \
         FOREACH (o IN CASE WHEN row.full THEN [] ELSE moved END | SET r += properties(o)){replace} \
         SET r += row.p, r.{k} = row.id, r.{v} = row.v \
         FOREACH (o IN moved | DELETE o)",
        olds = distinct("o1, o2, o3"),
        prev = distinct("o4, o5, o6"),
        from = endpoint("a", &m.from, "row.f"),
        to = endpoint("b", &m.to, "row.t"),
    )
}

/// Parameters `$id` (row key string) and `$v`. One record per statement: a
/// relationship property lookup uses its index only with a parameter, and a
/// delete usually carries only the row key, not the endpoints.
pub fn rel_delete(m: &RelMapping) -> String {
    format!(
        "MATCH ()-[r:{t} {{{k}: $id}}]->() WHERE r.{v} IS NULL OR r.{v} <= $v DELETE r",
        t = ident(&m.rel_type),
        k = ident(ROW_KEY_PROPERTY),
        v = ident(VERSION_PROPERTY),
    )
}

/// Parameter `$v`: removes the relationships pgfanout wrote before the truncate.
pub fn rel_truncate(m: &RelMapping) -> String {
    format!("MATCH ()-[r:{}]->() WHERE r.{v} <= $v DELETE r", ident(&m.rel_type), v = ident(VERSION_PROPERTY))
}

/// Index statements for a node key (`IF NOT EXISTS`, so restarts are no-ops).
pub fn node_index(label: &str, props: &[&String]) -> String {
    let list: Vec<String> = props.iter().map(|p| format!("n.{}", ident(p))).collect();
    format!("CREATE INDEX {} IF NOT EXISTS FOR (n:{}) ON ({})", ident(&index_name(label, props)), ident(label), list.join(", "))
}

/// Index on a relationship type's row key.
pub fn rel_index(rel_type: &str) -> String {
    let k = ident(ROW_KEY_PROPERTY);
    format!(
        "CREATE INDEX {} IF NOT EXISTS FOR ()-[r:{}]-() ON (r.{k})",
        ident(&index_name(rel_type, &[&ROW_KEY_PROPERTY.to_string()])),
        ident(rel_type)
    )
}

fn index_name(label: &str, props: &[&String]) -> String {
    let mut name = format!("pgfanout_{label}");
    for p in props {
        name.push('_');
        name.push_str(p);
    }
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use indexmap::IndexMap;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident("User"), "`User`");
        assert_eq!(ident("we`ird"), "`we``ird`");
    }

    #[test]
    fn node_statements_guard_on_version() {
        let m = NodeMapping { label: "User".into(), key: IndexMap::from([("id".into(), "id".into())]), properties: None };
        let others = NodeOthers { keep: Some(vec![]), out_types: vec!["BOUGHT".into()], in_types: vec![] };
        let upsert = node_upsert(&m, &others);
        assert!(upsert.starts_with("UNWIND $rows AS row OPTIONAL MATCH (o:`User` {`id`: row.ok.`id`})"), "{upsert}");
        assert!(
            upsert.contains(
                "MERGE (n:`User` {`id`: row.k.`id`}) WITH row, o, n WHERE n.`_pgfanout_version` IS NULL OR n.`_pgfanout_version` <= row.v"
            ),
            "{upsert}"
        );
        assert!(upsert.contains("CREATE (n)-[c:`BOUGHT`]->(y)"), "{upsert}");
        assert!(upsert.contains("SET n = {})"), "{upsert}");
        assert!(upsert.ends_with("SET n += row.k, n += row.p, n.`_pgfanout_version` = row.v"), "{upsert}");
        let keep = node_upsert(&m, &NodeOthers { keep: Some(vec!["views".into()]), ..NodeOthers::default() });
        assert!(keep.contains("SET n = n {.`views`})"), "{keep}");
        assert!(!node_upsert(&m, &NodeOthers::default()).contains("row.f"));
        assert!(node_delete(&m).ends_with("<= row.v DETACH DELETE n"));
        assert_eq!(node_index("User", &[&"id".to_string()]), "CREATE INDEX `pgfanout_User_id` IF NOT EXISTS FOR (n:`User`) ON (n.`id`)");
    }
}
