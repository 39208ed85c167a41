//! Routes: a pipeline's `elasticsearch:` mapping compiled once, and the
//! document ([`DocRef`]: index, id, routing) it makes of a change.

use std::sync::Arc;

use pgfanout_sdk::{Change, Template};
use serde_json::Value as Json;

use crate::config::{DeleteMode, SearchMapping, TruncateMode};
use crate::error::EsError;

/// A compiled mapping.
pub(crate) struct Route {
    pub(crate) index: Template,
    /// The index name when the template has no placeholder (shared by
    /// every document instead of rendered per row).
    constant_index: Option<Arc<str>>,
    id: Option<Template>,
    routing: Option<Template>,
    /// `{"settings":..,"mappings":..}` for indexes the sink creates.
    pub(crate) create_body: Json,
    pub(crate) pipeline: Option<String>,
    pub(crate) delete: DeleteMode,
    pub(crate) soft_field: String,
    pub(crate) truncate: TruncateMode,
}

/// Where a document lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct DocRef {
    pub(crate) index: Arc<str>,
    pub(crate) id: String,
    pub(crate) routing: Option<String>,
}

impl DocRef {
    /// The document as `_mget` (and a `_bulk` delete) names it:
    /// `{"_index":…,"_id":…[,"routing":…]}`.
    pub(crate) fn to_json(&self) -> Json {
        let mut m = serde_json::json!({"_index": &*self.index, "_id": self.id});
        if let Some(r) = &self.routing {
            m["routing"] = Json::from(r.clone());
        }
        m
    }
}

/// Compiles a mapping: parses its templates and reads its `index_file`.
pub(crate) fn compile(m: &SearchMapping) -> Result<Route, EsError> {
    let t = |s: &str| Template::parse(s).map_err(EsError::BadTemplate);
    let mut create_body = serde_json::json!({});
    if let Some(file) = &m.index_file {
        let text = std::fs::read_to_string(file).map_err(|source| EsError::IndexFile { path: file.clone(), source })?;
        create_body = serde_json::from_str(&text).map_err(|source| EsError::IndexFileNotJson { path: file.clone(), source })?;
    }
    if let Some(s) = &m.settings {
        create_body["settings"] = s.clone();
    }
    if let Some(s) = &m.mappings {
        create_body["mappings"] = s.clone();
    }
    let index = t(&m.index)?;
    Ok(Route {
        constant_index: (index.is_constant() && !index.source().contains(['{', '}'])).then(|| Arc::from(index.source().to_lowercase())),
        index,
        id: m.id.as_deref().map(t).transpose()?,
        routing: m.routing.as_deref().map(t).transpose()?,
        create_body,
        pipeline: m.pipeline.clone(),
        delete: m.delete,
        soft_field: m.soft_delete_field.clone(),
        truncate: m.truncate,
    })
}

impl Route {
    /// The index a TRUNCATE of `change`'s table empties.
    pub(crate) fn truncated_index(&self, change: &Change) -> Result<String, EsError> {
        self.index.render(change).map(|i| i.to_lowercase()).map_err(|source| EsError::Template { field: "index", source })
    }

    /// The document a change addresses, rendered from `change` (its `after`
    /// first) or from its old row only (`old = true`).
    pub(crate) fn doc_ref(&self, change: &Change, old: bool) -> Result<DocRef, EsError> {
        let view;
        let c = if old {
            view = Change { after: None, ..change.clone() };
            &view
        } else {
            change
        };
        let index = match &self.constant_index {
            Some(name) => name.clone(),
            None => self.index.render(c).map_err(|source| EsError::Template { field: "index", source })?.to_lowercase().into(),
        };
        let id = match &self.id {
            Some(t) => t.render(c).map_err(|source| EsError::Template { field: "id", source })?,
            None => {
                // The key columns' values: the new ones from `key`, the old
                // ones from `before` (which under REPLICA IDENTITY FULL holds
                // more than the key: only the key columns count).
                let key = c.key.as_ref().ok_or(EsError::NoKey)?;
                key.iter()
                    .map(|(name, v)| match (old, c.before.as_ref().and_then(|b| b.get(name))) {
                        (true, Some(o)) => o.to_template_text(),
                        _ => v.to_template_text(),
                    })
                    .collect::<Vec<_>>()
                    .join(":")
            }
        };
        let routing =
            self.routing.as_ref().map(|t| t.render(c)).transpose().map_err(|source| EsError::Template { field: "routing", source })?;
        Ok(DocRef { index, id, routing })
    }
}
