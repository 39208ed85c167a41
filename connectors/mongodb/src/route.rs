//! Routes: a pipeline's `mongodb:` mapping compiled once, and the
//! document operations ([`DocOp`]) it makes of a change.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use mongodb::bson::{Bson, Document};
use pgfanout_sdk::{Change, Op, Row, Template};

use crate::config::{MongoMapping, TruncateMode};
use crate::convert::{id_text, Convert};
use crate::error::MongoError;

/// A compiled mapping.
pub(crate) struct Route {
    collection: Template,
    /// The collection when the template has no placeholder.
    constant: Option<Arc<str>>,
    id: Option<Template>,
    /// Column -> field path (split on dots), for renamed columns.
    fields: HashMap<String, Vec<String>>,
    exclude: HashSet<String>,
    pub(crate) convert: Convert,
    pub(crate) truncate: TruncateMode,
    /// `embed:`: rows are elements of an array in a parent's document.
    pub(crate) embed: Option<Embed>,
}

/// A compiled `embed:` mapping.
pub(crate) struct Embed {
    pub(crate) field: Arc<str>,
    parent: ParentId,
}

/// How the parent's `_id` is made.
enum ParentId {
    /// `{column}` alone: the column's own value, converted.
    Column(String),
    Template(Template),
}

/// What a change does to one embedded element.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ElemBody {
    /// The whole element (the row's fields).
    Full(Document),
    /// Some fields: unchanged TOAST columns were not sent, and are named.
    Partial(Vec<(String, Bson)>, Vec<String>),
    Remove,
}

/// One operation on an embedded element.
#[derive(Debug, Clone)]
pub(crate) struct ElemOp {
    pub(crate) collection: Arc<str>,
    pub(crate) field: Arc<str>,
    /// The parent document the element belongs in; `None` for a removal
    /// (the element is found wherever it is).
    pub(crate) parent: Option<Bson>,
    /// The row's key as text (the element's [`crate::ELEMENT_KEY_FIELD`]).
    pub(crate) element: String,
    pub(crate) body: ElemBody,
    /// A key change: the element the row was before (its stored fields
    /// complete a partial change).
    pub(crate) moved_from: Option<String>,
}

/// Where a document lives. Equal and hashed by collection and the `_id`'s
/// extended JSON text (BSON values are neither `Eq` nor `Hash`).
#[derive(Debug, Clone)]
pub(crate) struct DocKey {
    pub(crate) collection: Arc<str>,
    pub(crate) id: Bson,
    pub(crate) text: String,
}

impl DocKey {
    pub(crate) fn new(collection: Arc<str>, id: Bson) -> DocKey {
        DocKey { text: id_text(&id), collection, id }
    }

    /// `collection/id` as reports print it (and tombstones are keyed).
    pub(crate) fn name(&self) -> String {
        format!("{}/{}", self.collection, self.text)
    }
}

impl PartialEq for DocKey {
    fn eq(&self, other: &Self) -> bool {
        self.collection == other.collection && self.text == other.text
    }
}

impl Eq for DocKey {}

impl Hash for DocKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.collection.hash(state);
        self.text.hash(state);
    }
}

/// A partial change: (field path, value) of the columns sent, and the
/// unchanged TOAST columns it lacks.
type PartialFields = (Vec<(String, Bson)>, Vec<String>);

/// What a change does to one document.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Body {
    /// The whole document (without `_id` and the version field).
    Full(Document),
    /// Some fields (field paths -> values): unchanged TOAST columns were
    /// not sent, and are named.
    Partial(Vec<(String, Bson)>, Vec<String>),
    Delete,
}

/// One document operation of a change.
#[derive(Debug, Clone)]
pub(crate) struct DocOp {
    pub(crate) key: DocKey,
    pub(crate) body: Body,
    /// A key change: the document the row had before (its stored fields
    /// complete a partial change).
    pub(crate) moved_from: Option<DocKey>,
}

/// What a change becomes.
#[derive(Debug)]
pub(crate) enum Planned {
    /// Applied in order.
    Ops(Vec<DocOp>),
    /// Remove every document of the collection.
    Truncate(Arc<str>),
    /// Embedded elements, applied in order.
    Elements(Vec<ElemOp>),
    Nothing,
}

pub(crate) fn compile(m: &MongoMapping, convert: Convert) -> Result<Route, MongoError> {
    let t = |field: &'static str, s: &str| Template::parse(s).map_err(|source| MongoError::Template { field, source });
    let collection = t("collection", &m.collection)?;
    Ok(Route {
        constant: collection.is_constant().then(|| Arc::from(m.collection.as_str())),
        collection,
        id: m.id.as_deref().map(|s| t("id", s)).transpose()?,
        fields: m.fields.iter().map(|(c, p)| (c.clone(), p.split('.').map(str::to_string).collect())).collect(),
        exclude: m.exclude.iter().cloned().collect(),
        convert,
        truncate: m.truncate,
        embed: m
            .embed
            .as_ref()
            .map(|e| {
                let template = t("embed.parent_id", &e.parent_id)?;
                Ok::<_, MongoError>(Embed {
                    field: e.field.as_str().into(),
                    parent: match template.single_column() {
                        Some(c) => ParentId::Column(c.to_string()),
                        None => ParentId::Template(template),
                    },
                })
            })
            .transpose()?,
    })
}

impl Route {
    /// The constant collection, if the template has no placeholder.
    pub(crate) fn constant_collection(&self) -> Option<&Arc<str>> {
        self.constant.as_ref()
    }

    pub(crate) fn plan(&self, change: &Change) -> Result<Planned, MongoError> {
        if let Some(embed) = &self.embed {
            return self.plan_elements(embed, change);
        }
        match change.op {
            Op::Truncate => Ok(match (self.truncate, &self.constant) {
                (TruncateMode::DeleteAll, Some(c)) => Planned::Truncate(c.clone()),
                (TruncateMode::DeleteAll, None) => Planned::Truncate(self.collection_of(change)?),
                (TruncateMode::Ignore, _) => Planned::Nothing,
            }),
            Op::Delete => Ok(Planned::Ops(vec![DocOp { key: self.key(change, false)?, body: Body::Delete, moved_from: None }])),
            Op::Insert | Op::Update | Op::Read | Op::Message => {
                let Some(after) = &change.after else { return Ok(Planned::Nothing) };
                let key = self.key(change, false)?;
                let mut moved_from = None;
                if change.op == Op::Update && change.before.is_some() {
                    let old = self.key(change, true)?;
                    if old != key {
                        moved_from = Some(old);
                    }
                }
                let body = match self.contents(change, after) {
                    Ok(doc) => Body::Full(doc),
                    Err((fields, missing)) => Body::Partial(fields, missing),
                };
                let mut ops = vec![DocOp { key, body, moved_from: moved_from.clone() }];
                if let Some(old) = moved_from {
                    ops.push(DocOp { key: old, body: Body::Delete, moved_from: None });
                }
                Ok(Planned::Ops(ops))
            }
        }
    }

    /// An `embed:` route's plan: the row is an element of its parent's
    /// array. A truncate does nothing (the parents stay).
    fn plan_elements(&self, embed: &Embed, change: &Change) -> Result<Planned, MongoError> {
        let collection = self.collection_of(change)?;
        let op = |parent, element, body, moved_from| ElemOp {
            collection: collection.clone(),
            field: embed.field.clone(),
            parent,
            element,
            body,
            moved_from,
        };
        match change.op {
            Op::Truncate => Ok(Planned::Nothing),
            Op::Delete => Ok(Planned::Elements(vec![op(None, self.key(change, false)?.text, ElemBody::Remove, None)])),
            Op::Insert | Op::Update | Op::Read | Op::Message => {
                let Some(after) = &change.after else { return Ok(Planned::Nothing) };
                let element = self.key(change, false)?.text;
                let parent = match &embed.parent {
                    ParentId::Column(c) => match change.column(c) {
                        Some(v) if !v.is_null() => self.convert.value(v),
                        _ => return Err(MongoError::NoParent(c.clone())),
                    },
                    ParentId::Template(t) => {
                        Bson::String(t.render(change).map_err(|source| MongoError::Template { field: "embed.parent_id", source })?)
                    }
                };
                let mut moved_from = None;
                if change.op == Op::Update && change.before.is_some() {
                    let old = self.key(change, true)?.text;
                    if old != element {
                        moved_from = Some(old);
                    }
                }
                let body = match self.contents(change, after) {
                    Ok(doc) => ElemBody::Full(doc),
                    Err((fields, missing)) => ElemBody::Partial(fields, missing),
                };
                let mut ops = vec![op(Some(parent), element, body, moved_from.clone())];
                if let Some(old) = moved_from {
                    ops.push(op(None, old, ElemBody::Remove, None));
                }
                Ok(Planned::Elements(ops))
            }
        }
    }

    /// What an insert, update or read writes: the whole document, or
    /// (`Err`) the fields sent and the unchanged TOAST columns missing.
    /// Unchanged TOAST columns are completed from the old row under
    /// REPLICA IDENTITY FULL; otherwise the change is partial.
    fn contents(&self, change: &Change, after: &Row) -> Result<Document, PartialFields> {
        let mut row = after.clone();
        let mut missing = Vec::new();
        for col in &change.unchanged_toast {
            match change.before.as_ref().and_then(|b| b.get(col)) {
                Some(v) => row.set(col.clone(), v.clone()),
                None => missing.push(col.to_string()),
            }
        }
        if missing.is_empty() {
            Ok(self.document(&row))
        } else {
            Err((self.fields(&row).collect(), missing.into_iter().filter(|c| !self.exclude.contains(c)).collect()))
        }
    }

    /// The row's fields as (field path, value), excluded columns left out.
    fn fields<'a>(&'a self, row: &'a Row) -> impl Iterator<Item = (String, Bson)> + 'a {
        row.iter().filter(|(c, _)| !self.exclude.contains(*c)).map(|(c, v)| {
            let path = self.fields.get(c).map(|p| p.join(".")).unwrap_or_else(|| c.to_string());
            (path, self.convert.value(v))
        })
    }

    /// The whole document of a row (nested where field paths have dots).
    pub(crate) fn document(&self, row: &Row) -> Document {
        let mut doc = Document::new();
        for (c, v) in row.iter() {
            if self.exclude.contains(c) {
                continue;
            }
            let value = self.convert.value(v);
            match self.fields.get(c) {
                Some(path) => set_path(&mut doc, path, value),
                None => {
                    doc.insert(c, value);
                }
            }
        }
        doc
    }

    fn collection_of(&self, change: &Change) -> Result<Arc<str>, MongoError> {
        if let Some(c) = &self.constant {
            return Ok(c.clone());
        }
        let name = self.collection.render(change).map_err(|source| MongoError::Template { field: "collection", source })?;
        if name.is_empty() || name.len() > 120 || name.contains(['$', '\0']) || name.starts_with("system.") {
            return Err(MongoError::BadCollection(name));
        }
        Ok(name.into())
    }

    /// The document a change addresses: from its new row, or from its old
    /// row only (`old`, for the document a key change leaves).
    pub(crate) fn key(&self, change: &Change, old: bool) -> Result<DocKey, MongoError> {
        let view;
        let c = if old {
            view = Change { after: None, ..change.clone() };
            &view
        } else {
            change
        };
        let collection = self.collection_of(c)?;
        let id = match &self.id {
            Some(t) => Bson::String(t.render(c).map_err(|source| MongoError::Template { field: "id", source })?),
            None => {
                let key = c.key.as_ref().ok_or(MongoError::NoKey)?;
                // The key columns' values: the new ones from `key`, the old
                // ones from `before` (under REPLICA IDENTITY FULL it holds
                // more than the key: only the key columns count).
                let value = |name: &str, v| match (old, c.before.as_ref().and_then(|b| b.get(name))) {
                    (true, Some(o)) => o,
                    _ => v,
                };
                match key.len() {
                    0 => return Err(MongoError::NoKey),
                    1 => {
                        let (name, v) = key.iter().next().ok_or(MongoError::NoKey)?;
                        self.convert.value(value(name, v))
                    }
                    _ => Bson::String(key.iter().map(|(n, v)| value(n, v).to_template_text().into_owned()).collect::<Vec<_>>().join(":")),
                }
            }
        };
        Ok(DocKey::new(collection, id))
    }
}

/// Sets `path` (split on dots) in `doc`, creating embedded documents.
pub(crate) fn set_path(doc: &mut Document, path: &[String], value: Bson) {
    match path {
        [] => {}
        [last] => {
            doc.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            if !matches!(doc.get(first), Some(Bson::Document(_))) {
                doc.insert(first.clone(), Document::new());
            }
            if let Some(Bson::Document(inner)) = doc.get_mut(first) {
                set_path(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JsonMode;
    use crate::convert::Inexact;
    use mongodb::bson::doc;
    use pgfanout_sdk::testing::{row, At, Table};

    fn route(yaml: &str) -> Route {
        let m: MongoMapping = serde_json::from_str(yaml).unwrap();
        assert!(m.validate().is_empty(), "{:?}", m.validate());
        compile(&m, Convert { inexact: Inexact::String, json: JsonMode::Document }).unwrap()
    }

    #[test]
    fn rows_become_nested_documents_keyed_by_their_key() {
        let r = route(r#"{"collection":"profiles","fields":{"city":"address.city","zip":"address.zip"},"exclude":["secret"]}"#);
        let c = Table("users")
            .insert(At(10, 0), &[("id", "7"), ("name", "\"ann\""), ("city", "\"Oslo\""), ("zip", "\"0150\""), ("secret", "\"x\"")]);
        let Planned::Ops(ops) = r.plan(&c).unwrap() else { panic!() };
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].key.id, Bson::Int32(7));
        assert_eq!(ops[0].body, Body::Full(doc! {"id": 7, "name": "ann", "address": {"city": "Oslo", "zip": "0150"}}));
    }

    #[test]
    fn a_key_change_moves_the_document_and_toast_is_partial() {
        let r = route(r#"{"collection":"p"}"#);
        let c = Table("t").change(
            Op::Update,
            At(10, 0),
            row(&[("id", "2")]),
            Some(row(&[("id", "1")])),
            Some(row(&[("id", "2"), ("name", "\"b\"")])),
            &["bio"],
        );
        let Planned::Ops(ops) = r.plan(&c).unwrap() else { panic!() };
        assert_eq!(ops[0].key.id, Bson::Int32(2));
        assert_eq!(ops[0].moved_from.as_ref().map(|k| k.id.clone()), Some(Bson::Int32(1)));
        assert!(matches!(&ops[0].body, Body::Partial(f, m) if f.len() == 2 && m == &vec!["bio".to_string()]));
        assert_eq!((ops[1].key.id.clone(), ops[1].body.clone()), (Bson::Int32(1), Body::Delete));
    }
}
