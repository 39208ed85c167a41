//! The CQL text the sink sends.
//!
//! A write is `INSERT ... USING [TTL t AND] TIMESTAMP ?` of exactly the
//! columns the change carries (an unchanged TOASTed column is not written,
//! so its stored value stays), a delete `DELETE ... USING TIMESTAMP ? WHERE
//! <primary key>`. Each distinct text is one prepared statement: the
//! [`StatementTexts`] cache builds a shape's text once and hands the same
//! `Arc<str>` back (the key of the prepared statement), without allocating
//! on a hit.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Order, ScyllaMapping, ScyllaSettings};
use crate::route::Route;

/// The CQL text per statement shape: `[route, 0]` for a route's delete,
/// `[route, 1, primary key columns..., written columns...]` for an insert.
#[derive(Default)]
pub(crate) struct StatementTexts {
    texts: HashMap<Vec<usize>, Arc<str>>,
    /// The shape being looked up (reused: lookups do not allocate).
    shape: Vec<usize>,
}

impl StatementTexts {
    /// The insert of route `route`'s primary key, then the columns `cols`
    /// (indexes into the route's columns), values bound in that order and
    /// the timestamp last.
    pub(crate) fn insert<'a>(&mut self, routes: &[Route], route: usize, cols: impl Iterator<Item = &'a usize>) -> Arc<str> {
        self.shape.clear();
        self.shape.extend([route, 1]);
        self.shape.extend(routes[route].pk.iter().copied());
        self.shape.extend(cols.copied());
        self.lookup(|shape| insert_cql(&routes[route], &shape[2..]))
    }

    /// The delete of route `route` by primary key, the timestamp bound first.
    pub(crate) fn delete(&mut self, routes: &[Route], route: usize) -> Arc<str> {
        self.shape.clear();
        self.shape.extend([route, 0]);
        self.lookup(|_| delete_cql(&routes[route]))
    }

    fn lookup(&mut self, build: impl FnOnce(&[usize]) -> String) -> Arc<str> {
        if let Some(text) = self.texts.get(self.shape.as_slice()) {
            return text.clone();
        }
        let text: Arc<str> = build(&self.shape).into();
        self.texts.insert(self.shape.clone(), text.clone());
        text
    }
}

fn insert_cql(route: &Route, cols: &[usize]) -> String {
    let names: Vec<&str> = cols.iter().map(|&i| route.cols[i].name.as_str()).collect();
    let marks = vec!["?"; names.len()].join(", ");
    let ttl = route.ttl.map(|t| format!("TTL {t} AND ")).unwrap_or_default();
    format!("INSERT INTO {} ({}) VALUES ({marks}) USING {ttl}TIMESTAMP ?", route.qualified, names.join(", "))
}

fn delete_cql(route: &Route) -> String {
    let wh: Vec<String> = route.pk.iter().map(|&i| format!("{} = ?", route.cols[i].name)).collect();
    format!("DELETE FROM {} USING TIMESTAMP ? WHERE {}", route.qualified, wh.join(" AND "))
}

/// CREATE statements for `create: true`: the sink's keyspace and each
/// mapping's (SimpleStrategy, `replication_factor`), and each mapped table
/// that names its `partition_key` (other columns `text` unless `types` says).
pub(crate) fn create_statements(s: &ScyllaSettings, maps: &[ScyllaMapping]) -> Vec<String> {
    let mut out = vec![format!(
        "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': {}}}",
        s.keyspace, s.replication_factor
    )];
    for m in maps {
        let (ks, table) = m.qualified(&s.keyspace);
        if ks != s.keyspace {
            out.push(format!(
                "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': {}}}",
                s.replication_factor
            ));
        }
        if m.partition_key.is_empty() {
            continue;
        }
        let cols: Vec<String> = m.columns.keys().map(|c| format!("{c} {}", m.types.get(c).map(String::as_str).unwrap_or("text"))).collect();
        let mut cql = format!(
            "CREATE TABLE IF NOT EXISTS {ks}.{table} ({}, PRIMARY KEY (({}){}{}))",
            cols.join(", "),
            m.partition_key.join(", "),
            if m.clustering_key.is_empty() { "" } else { ", " },
            m.clustering_key.join(", ")
        );
        if !m.clustering_key.is_empty() && m.clustering_order == Order::Desc {
            let order: Vec<String> = m.clustering_key.iter().map(|c| format!("{c} DESC")).collect();
            cql.push_str(&format!(" WITH CLUSTERING ORDER BY ({})", order.join(", ")));
        }
        out.push(cql);
    }
    out
}
