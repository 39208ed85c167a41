//! Which properties of a node label or relationship type the sink's routes
//! write, so that a full write and `verify` can tell a stray property (set
//! behind pgfanout's back) from one another pipeline of the same sink owns.
//!
//! Why per sink: several pipelines may write one label (a node mapping of
//! `users`, relationship mappings whose endpoints are `User` nodes, a second
//! node mapping adding `views` from another table). A route owns the
//! properties it maps; what the sink's other routes map on the same label or
//! type is kept. When another route writes "every column" of its table, its
//! property names are unknown and nothing can be called stray: full writes
//! then only set what they carry, and verify compares the route's own
//! properties (README, "Verify").

use crate::config::Neo4jMapping;

/// What the sink's other routes write on a node route's label.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct NodeOthers {
    /// Properties the other routes write there; `None` when unknown.
    pub keep: Option<Vec<String>>,
    /// Relationship types the other routes write from nodes of the label
    /// (identified by the same key properties): carried over when a key
    /// change merges a node into one that already exists at the new key.
    pub out_types: Vec<String>,
    /// The same, for relationships that end at the label.
    pub in_types: Vec<String>,
}

fn push(list: &mut Vec<String>, s: &str) {
    if !list.iter().any(|x| x == s) {
        list.push(s.to_string());
    }
}

/// See [`NodeOthers`]; `me` must be a node route.
pub fn node_others(routes: &[Neo4jMapping], me: usize) -> NodeOthers {
    let Some(node) = routes.get(me).and_then(|m| m.node.as_ref()) else { return NodeOthers::default() };
    let mut keep = Some(Vec::new());
    let mut out = NodeOthers::default();
    let same_key = |k: &indexmap::IndexMap<String, String>| k.len() == node.key.len() && k.keys().all(|p| node.key.contains_key(p));
    for (i, r) in routes.iter().enumerate() {
        if i == me {
            continue;
        }
        if let Some(n) = r.node.as_ref().filter(|n| n.label == node.label) {
            match &n.properties {
                Some(props) => {
                    if let Some(k) = &mut keep {
                        n.key.keys().chain(props.keys()).for_each(|p| push(k, p));
                    }
                }
                None => keep = None,
            }
        }
        if let Some(rel) = &r.relationship {
            for (ep, types) in [(&rel.from, &mut out.out_types), (&rel.to, &mut out.in_types)] {
                if ep.label == node.label {
                    if let Some(k) = &mut keep {
                        ep.key.keys().for_each(|p| push(k, p));
                    }
                    if same_key(&ep.key) {
                        push(types, &rel.rel_type);
                    }
                }
            }
        }
    }
    out.keep = keep;
    out
}

/// The properties the sink's other routes write on a relationship route's
/// type; `None` when unknown. `me` must be a relationship route.
pub fn rel_others(routes: &[Neo4jMapping], me: usize) -> Option<Vec<String>> {
    let rel = routes.get(me).and_then(|m| m.relationship.as_ref())?;
    let mut keep = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        if let Some(o) = r.relationship.as_ref().filter(|o| i != me && o.rel_type == rel.rel_type) {
            o.properties.as_ref()?.keys().for_each(|p| push(&mut keep, p));
        }
    }
    Some(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(json: serde_json::Value) -> Vec<Neo4jMapping> {
        serde_json::from_value(json).expect("mappings")
    }

    #[test]
    fn other_routes_on_a_label_are_kept() {
        let r = routes(serde_json::json!([
            {"node": {"label": "User", "key": {"id": "id"}}},
            {"node": {"label": "User", "key": {"id": "user_id"}, "properties": {"views": "views"}}},
            {"relationship": {"type": "BOUGHT", "from": {"label": "User", "key": {"id": "user_id"}},
                "to": {"label": "Product", "key": {"id": "product_id"}}}},
            {"relationship": {"type": "REFERRED", "from": {"label": "Person", "key": {"id": "a"}},
                "to": {"label": "User", "key": {"email": "b"}}}},
        ]));
        let o = node_others(&r, 0);
        assert_eq!(o.keep, Some(vec!["id".to_string(), "views".into(), "email".into()]));
        assert_eq!(o.out_types, ["BOUGHT"]);
        assert!(o.in_types.is_empty(), "REFERRED ends at User by email, not by the node key");
        // route 1 sees route 0 write every column: nothing is known to be stray
        assert_eq!(node_others(&r, 1).keep, None);
        assert_eq!(rel_others(&r, 2), Some(vec![]));
    }
}
