//! Embedded elements (`embed:` mappings): a child table's rows kept as an
//! array inside the parent's document.
//!
//! Each element carries its row's key ([`ELEMENT_KEY_FIELD`]) and its own
//! version (the sink's `version_field`), so the sink finds an element
//! wherever it is (a delete, or an update that moved the row to another
//! parent, does not say which parent held it) and skips an operation older
//! than the element it would overwrite. A removed element leaves a
//! tombstone (`<collection>#<field>/<key>`) beside the documents' ones, so
//! a late older write (a backfill row, a replay) does not bring it back.
//!
//! A batch reads the arrays of the parents it touches and of the parents
//! holding its elements, applies its operations in order in memory
//! ([`resolve`]), and writes each changed array once with `$set` (FerretDB
//! has no `arrayFilters`, so positional updates are not used; pgfanout is
//! the arrays' only writer, and a batch is resolved before it is written).

use std::collections::HashMap;
use std::sync::Arc;

use indexmap::IndexMap;
use mongodb::bson::{Bson, Document};
use pgfanout_sdk::Rejected;

use crate::config::ELEMENT_KEY_FIELD;
use crate::convert::id_text;
use crate::error::MongoError;
use crate::route::{set_path, ElemBody, ElemOp};

/// A batch segment's element operations: (record index, version, operations).
pub(crate) type ElemSegment = Vec<(usize, String, Vec<ElemOp>)>;

/// (collection, array field, parent `_id` as text).
pub(crate) type ParentRef = (Arc<str>, Arc<str>, String);

/// One parent document's array, as read and as the batch leaves it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Parent {
    pub(crate) id: Bson,
    /// Whether the document exists (else a write creates it, holding only
    /// the array until the parent's own pipeline writes the rest).
    pub(crate) exists: bool,
    pub(crate) elements: Vec<Bson>,
    /// Changed by the batch; the index of the last record that changed it.
    pub(crate) changed: Option<usize>,
}

/// The arrays a batch reads and changes.
#[derive(Debug, Default)]
pub(crate) struct Arrays {
    pub(crate) parents: IndexMap<ParentRef, Parent>,
    /// (collection, field, element key) -> the parent holding it.
    holders: HashMap<(Arc<str>, Arc<str>, String), String>,
}

/// An element's tombstone name.
pub(crate) fn tombstone_name(collection: &str, field: &str, element: &str) -> String {
    format!("{collection}#{field}/{element}")
}

fn element_key(e: &Bson) -> Option<&str> {
    match e {
        Bson::Document(d) => d.get_str(ELEMENT_KEY_FIELD).ok(),
        _ => None,
    }
}

impl Arrays {
    /// Records a parent document as read (`elements`: its array, if any).
    pub(crate) fn add_parent(&mut self, collection: &Arc<str>, field: &Arc<str>, id: Bson, elements: Vec<Bson>) {
        let text = id_text(&id);
        for e in &elements {
            if let Some(k) = element_key(e) {
                self.holders.insert((collection.clone(), field.clone(), k.to_string()), text.clone());
            }
        }
        self.parents.insert((collection.clone(), field.clone(), text), Parent { id, exists: true, elements, changed: None });
    }

    /// Where `element` is: its parent and its index in the array.
    fn find(&self, collection: &Arc<str>, field: &Arc<str>, element: &str) -> Option<(ParentRef, usize)> {
        let parent = self.holders.get(&(collection.clone(), field.clone(), element.to_string()))?;
        let at = (collection.clone(), field.clone(), parent.clone());
        let index = self.parents.get(&at)?.elements.iter().position(|e| element_key(e) == Some(element))?;
        Some((at, index))
    }

    fn element(&self, at: &(ParentRef, usize)) -> Option<&Document> {
        match self.parents.get(&at.0)?.elements.get(at.1)? {
            Bson::Document(d) => Some(d),
            _ => None,
        }
    }

    fn remove(&mut self, at: &(ParentRef, usize), record: usize) -> Option<Bson> {
        let parent = self.parents.get_mut(&at.0)?;
        let removed = parent.elements.remove(at.1);
        parent.changed = Some(record);
        if let Some(k) = element_key(&removed) {
            self.holders.remove(&(at.0 .0.clone(), at.0 .1.clone(), k.to_string()));
        }
        Some(removed)
    }

    /// Puts `element` into the parent `id` (replacing the element of the
    /// same key there, else appended).
    fn put(&mut self, collection: &Arc<str>, field: &Arc<str>, id: &Bson, key: &str, element: Document, record: usize) {
        let text = id_text(id);
        let at = (collection.clone(), field.clone(), text.clone());
        let parent =
            self.parents.entry(at).or_insert_with(|| Parent { id: id.clone(), exists: false, elements: Vec::new(), changed: None });
        match parent.elements.iter().position(|e| element_key(e) == Some(key)) {
            Some(i) => parent.elements[i] = Bson::Document(element),
            None => parent.elements.push(Bson::Document(element)),
        }
        parent.changed = Some(record);
        self.holders.insert((collection.clone(), field.clone(), key.to_string()), text);
    }
}

/// Applies a segment's element operations, in order, to `arrays`. An
/// operation older than the element it targets (its version), or than the
/// element's tombstone, is superseded. A partial change (unchanged TOAST)
/// is completed from the stored element (or the one a key change moves);
/// of an element that is nowhere it is refused, unless a tombstone as new
/// says it was removed since (a replay). An element is not put into a
/// parent document that is not stored and was deleted by a newer change
/// (`tombs` holds documents' tombstones too, by [`DocKey::name`]): the
/// element went with it. Returns the tombstones to write: (name, version,
/// record).
///
/// [`DocKey::name`]: crate::route::DocKey::name
pub(crate) fn resolve(
    segment: ElemSegment,
    arrays: &mut Arrays,
    tombs: &HashMap<String, String>,
    version_field: &str,
    rejected: &mut Vec<Rejected>,
) -> Vec<(String, String, usize)> {
    let mut new_tombs: IndexMap<String, (String, usize)> = IndexMap::new();
    for (record, version, ops) in segment {
        for op in ops {
            let name = tombstone_name(&op.collection, &op.field, &op.element);
            let tomb = new_tombs.get(&name).map(|(v, _)| v.clone()).or_else(|| tombs.get(&name).cloned());
            let at = arrays.find(&op.collection, &op.field, &op.element);
            let current = at.as_ref().and_then(|a| arrays.element(a)).and_then(|d| d.get_str(version_field).ok()).map(str::to_string);
            if current.as_ref().is_some_and(|c| *c > version) {
                continue; // a newer write of the element is stored
            }
            match op.body {
                ElemBody::Remove => {
                    if let Some(at) = &at {
                        arrays.remove(at, record);
                    }
                    if tomb.is_none_or(|t| t < version) {
                        new_tombs.insert(name, (version.clone(), record));
                    }
                }
                body @ (ElemBody::Full(_) | ElemBody::Partial(..)) => {
                    if current.is_none() && tomb.as_ref().is_some_and(|t| *t > version) {
                        continue; // removed by a newer change
                    }
                    let Some(parent) = &op.parent else { continue };
                    let mut element = match body {
                        ElemBody::Full(doc) => doc,
                        ElemBody::Partial(fields, missing) => {
                            let source = match &op.moved_from {
                                Some(old) => arrays.find(&op.collection, &op.field, old),
                                None => at.clone(),
                            };
                            match source.as_ref().and_then(|s| arrays.element(s)).cloned() {
                                Some(mut base) => {
                                    for (path, value) in fields {
                                        let parts: Vec<String> = path.split('.').map(str::to_string).collect();
                                        set_path(&mut base, &parts, value);
                                    }
                                    base
                                }
                                None => {
                                    // A replay: the element holds this
                                    // change already (a key change applied
                                    // before a crash), or it or the element
                                    // it moves from was removed since (a
                                    // crash may have cut its tombstone off
                                    // after its parent's delete).
                                    let moved_tomb = op.moved_from.as_ref().and_then(|old| {
                                        let name = tombstone_name(&op.collection, &op.field, old);
                                        new_tombs.get(&name).map(|(v, _)| v.clone()).or_else(|| tombs.get(&name).cloned())
                                    });
                                    // Or its parent was deleted since, the
                                    // element with it.
                                    let parent_tomb = tombs.get(&format!("{}/{}", op.collection, id_text(parent)));
                                    if current.as_ref().is_some_and(|c| *c >= version)
                                        || tomb.is_some_and(|t| t >= version)
                                        || moved_tomb.is_some_and(|t| t >= version)
                                        || parent_tomb.is_some_and(|t| *t >= version)
                                    {
                                        continue;
                                    }
                                    let error = MongoError::PartialOfMissing {
                                        document: format!("{}.{}[{}]", op.collection, op.field, op.element),
                                        missing: missing.join(", "),
                                    };
                                    rejected.push(Rejected { index: record, error: error.to_string() });
                                    continue;
                                }
                            }
                        }
                        ElemBody::Remove => unreachable!(),
                    };
                    let parent_text = id_text(parent);
                    let parent_ref = (op.collection.clone(), op.field.clone(), parent_text.clone());
                    if !arrays.parents.get(&parent_ref).is_some_and(|p| p.exists)
                        && tombs.get(&format!("{}/{parent_text}", op.collection)).is_some_and(|t| *t > version)
                    {
                        continue; // its parent was deleted by a newer change
                    }
                    element.insert(ELEMENT_KEY_FIELD, op.element.as_str());
                    element.insert(version_field, version.as_str());
                    // Moved to another parent: out of the old array first.
                    if let Some(at) = &at {
                        if at.0 .2 != id_text(parent) {
                            arrays.remove(at, record);
                        }
                    }
                    arrays.put(&op.collection, &op.field, parent, &op.element, element, record);
                }
            }
        }
    }
    new_tombs.into_iter().map(|(name, (v, record))| (name, v, record)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    fn v(n: u64) -> String {
        format!("{n:030}")
    }

    fn op(parent: Option<i32>, element: &str, body: ElemBody) -> ElemOp {
        ElemOp {
            collection: "profiles".into(),
            field: "addresses".into(),
            parent: parent.map(Bson::Int32),
            element: element.into(),
            body,
            moved_from: None,
        }
    }

    fn array(arrays: &Arrays, parent: i32) -> Vec<Bson> {
        arrays.parents[&(Arc::from("profiles"), Arc::from("addresses"), id_text(&Bson::Int32(parent)))].elements.clone()
    }

    #[test]
    fn elements_are_added_moved_between_parents_and_removed() {
        let mut arrays = Arrays::default();
        arrays.add_parent(&"profiles".into(), &"addresses".into(), Bson::Int32(1), Vec::new());
        let segment: ElemSegment = vec![
            (0, v(1), vec![op(Some(1), "10", ElemBody::Full(doc! {"id": 10, "city": "Oslo"}))]),
            (1, v(2), vec![op(Some(1), "11", ElemBody::Full(doc! {"id": 11, "city": "Bergen"}))]),
            (2, v(3), vec![op(Some(2), "10", ElemBody::Full(doc! {"id": 10, "city": "Oslo", "user": 2}))]),
            (3, v(4), vec![op(None, "11", ElemBody::Remove)]),
        ];
        let mut rejected = Vec::new();
        let tombs = resolve(segment, &mut arrays, &HashMap::new(), "_v", &mut rejected);
        assert!(rejected.is_empty());
        assert_eq!(array(&arrays, 1), Vec::<Bson>::new(), "10 moved away, 11 removed");
        assert_eq!(
            array(&arrays, 2),
            vec![Bson::Document(doc! {"id": 10, "city": "Oslo", "user": 2, ELEMENT_KEY_FIELD: "10", "_v": v(3)})]
        );
        assert_eq!(tombs, vec![(tombstone_name("profiles", "addresses", "11"), v(4), 3)]);
    }

    #[test]
    fn older_operations_are_superseded_and_partials_completed() {
        let mut arrays = Arrays::default();
        let stored = doc! {"id": 10, "city": "Oslo", "bio": "long", ELEMENT_KEY_FIELD: "10", "_v": v(5)};
        arrays.add_parent(&"profiles".into(), &"addresses".into(), Bson::Int32(1), vec![Bson::Document(stored)]);
        let tombs = HashMap::from([(tombstone_name("profiles", "addresses", "12"), v(9))]);
        let segment: ElemSegment = vec![
            (0, v(4), vec![op(Some(1), "10", ElemBody::Full(doc! {"id": 10, "city": "old"}))]),
            (1, v(6), vec![op(Some(1), "10", ElemBody::Partial(vec![("city".into(), Bson::String("Tromsø".into()))], vec!["bio".into()]))]),
            (2, v(7), vec![op(Some(1), "12", ElemBody::Full(doc! {"id": 12}))]),
            (3, v(8), vec![op(Some(1), "13", ElemBody::Partial(vec![], vec!["bio".into()]))]),
        ];
        let mut rejected = Vec::new();
        let new_tombs = resolve(segment, &mut arrays, &tombs, "_v", &mut rejected);
        assert!(new_tombs.is_empty());
        assert_eq!(rejected.iter().map(|r| r.index).collect::<Vec<_>>(), vec![3], "a partial change of an element that is nowhere");
        assert_eq!(
            array(&arrays, 1),
            vec![Bson::Document(doc! {"id": 10, "city": "Tromsø", "bio": "long", ELEMENT_KEY_FIELD: "10", "_v": v(6)})],
            "the older full write skipped, 12 removed by a newer change"
        );
    }
}
