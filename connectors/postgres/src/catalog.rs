//! Type OID resolution: which [`TypeDecoder`] a column needs.
//!
//! pgoutput only tells us each column's type OID. Builtin types (and arrays
//! of them) have fixed OIDs, so they resolve from a table compiled in here,
//! without any query. Anything else (domains, enums, composites, user ranges,
//! extension types, arrays of those) is looked up once in `pg_type` /
//! `pg_attribute` and cached: a domain uses its base type's decoder (as
//! `to_jsonb` does), a composite its attributes' decoders, an array its
//! element's; enums, ranges, multiranges and unknown types are text.
//!
//! The catalog is read when the Relation message is handled, not as of the
//! WAL position being decoded: a composite type altered since is described as
//! it is now. Call [`TypeRegistry::invalidate`] on a pgoutput Type message so
//! a changed type is read again.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::SourceError;
use crate::types::TypeDecoder;

/// Composite/array/domain nesting deeper than this is refused (it would be a
/// catalog cycle, which PostgreSQL does not allow).
const MAX_DEPTH: usize = 32;

/// Builtin array types: (array OID, element OID, delimiter). From PostgreSQL
/// 15's `pg_type` (`typcategory = 'A'`); `int2vector` and `oidvector`, whose
/// text is not an array literal, are left out (they decode as text).
const BUILTIN_ARRAYS: &[(u32, u32, u8)] = &[
    (143, 142, b','),   // xml
    (199, 114, b','),   // json
    (271, 5069, b','),  // xid8
    (629, 628, b','),   // line
    (651, 650, b','),   // cidr
    (719, 718, b','),   // circle
    (775, 774, b','),   // macaddr8
    (791, 790, b','),   // money
    (1000, 16, b','),   // bool
    (1001, 17, b','),   // bytea
    (1002, 18, b','),   // "char"
    (1003, 19, b','),   // name
    (1005, 21, b','),   // int2
    (1006, 22, b','),   // int2vector
    (1007, 23, b','),   // int4
    (1008, 24, b','),   // regproc
    (1009, 25, b','),   // text
    (1010, 27, b','),   // tid
    (1011, 28, b','),   // xid
    (1012, 29, b','),   // cid
    (1013, 30, b','),   // oidvector
    (1014, 1042, b','), // bpchar
    (1015, 1043, b','), // varchar
    (1016, 20, b','),   // int8
    (1017, 600, b','),  // point
    (1018, 601, b','),  // lseg
    (1019, 602, b','),  // path
    (1020, 603, b';'),  // box
    (1021, 700, b','),  // float4
    (1022, 701, b','),  // float8
    (1027, 604, b','),  // polygon
    (1028, 26, b','),   // oid
    (1034, 1033, b','), // aclitem
    (1040, 829, b','),  // macaddr
    (1041, 869, b','),  // inet
    (1115, 1114, b','), // timestamp
    (1182, 1082, b','), // date
    (1183, 1083, b','), // time
    (1185, 1184, b','), // timestamptz
    (1187, 1186, b','), // interval
    (1231, 1700, b','), // numeric
    (1270, 1266, b','), // timetz
    (1561, 1560, b','), // bit
    (1563, 1562, b','), // varbit
    (2201, 1790, b','), // refcursor
    (2207, 2202, b','), // regprocedure
    (2208, 2203, b','), // regoper
    (2209, 2204, b','), // regoperator
    (2210, 2205, b','), // regclass
    (2211, 2206, b','), // regtype
    (2949, 2970, b','), // txid_snapshot
    (2951, 2950, b','), // uuid
    (3221, 3220, b','), // pg_lsn
    (3643, 3614, b','), // tsvector
    (3644, 3642, b','), // gtsvector
    (3645, 3615, b','), // tsquery
    (3735, 3734, b','), // regconfig
    (3770, 3769, b','), // regdictionary
    (3807, 3802, b','), // jsonb
    (3905, 3904, b','), // int4range
    (3907, 3906, b','), // numrange
    (3909, 3908, b','), // tsrange
    (3911, 3910, b','), // tstzrange
    (3913, 3912, b','), // daterange
    (3927, 3926, b','), // int8range
    (4073, 4072, b','), // jsonpath
    (4090, 4089, b','), // regnamespace
    (4097, 4096, b','), // regrole
    (4192, 4191, b','), // regcollation
    (5039, 5038, b','), // pg_snapshot
    (6150, 4451, b','), // int4multirange
    (6151, 4532, b','), // nummultirange
    (6152, 4533, b','), // tsmultirange
    (6153, 4534, b','), // tstzmultirange
    (6155, 4535, b','), // datemultirange
    (6157, 4536, b','), // int8multirange
];

/// The decoder of a builtin scalar type whose `to_jsonb` is not its text.
fn builtin_special(oid: u32) -> Option<TypeDecoder> {
    Some(match oid {
        16 => TypeDecoder::Bool,
        20 | 21 | 23 | 700 | 701 | 1700 => TypeDecoder::Number,
        114 => TypeDecoder::JsonText,
        3802 => TypeDecoder::Json,
        1082 => TypeDecoder::Date,
        1114 => TypeDecoder::Timestamp,
        1184 => TypeDecoder::Timestamptz,
        _ => return None,
    })
}

/// Type OID -> decoder, with builtins precomputed and a cache for the rest.
#[derive(Debug, Clone)]
pub struct TypeRegistry {
    cache: HashMap<u32, Arc<TypeDecoder>>,
}

impl Default for TypeRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl TypeRegistry {
    /// A registry that knows every builtin type and its array type.
    pub fn new() -> Self {
        let mut cache = HashMap::with_capacity(BUILTIN_ARRAYS.len() * 2);
        let text = Arc::new(TypeDecoder::Text);
        for &(array_oid, elem_oid, delim) in BUILTIN_ARRAYS {
            let elem = match builtin_special(elem_oid) {
                Some(d) => Arc::new(d),
                None => text.clone(),
            };
            cache.insert(elem_oid, elem.clone());
            cache.insert(array_oid, Arc::new(TypeDecoder::Array { elem, delim }));
        }
        // int2vector / oidvector print as "1 2 3", not as array literals.
        cache.insert(22, text.clone());
        cache.insert(30, text);
        TypeRegistry { cache }
    }

    /// The decoder for `oid` if it is builtin or already resolved.
    pub fn resolve_cached(&self, oid: u32) -> Option<Arc<TypeDecoder>> {
        self.cache.get(&oid).cloned()
    }

    /// Forgets a non-builtin type so the next [`resolve`](Self::resolve)
    /// reads the catalog again (call it on a pgoutput Type message). Also
    /// forgets every cached type, since arrays and composites may embed it.
    pub fn invalidate(&mut self, oid: u32) {
        if oid >= 16384 && self.cache.contains_key(&oid) {
            *self = TypeRegistry::new();
        }
    }

    /// The decoder for `oid`: builtins without I/O, anything else from the
    /// catalog (one query per OID not seen before, nested types included),
    /// then cached. A type the catalog does not know decodes as text.
    pub async fn resolve(&mut self, client: &tokio_postgres::Client, oid: u32) -> Result<Arc<TypeDecoder>, SourceError> {
        if let Some(d) = self.cache.get(&oid) {
            return Ok(d.clone());
        }
        self.resolve_boxed(client, oid, 0).await
    }

    fn resolve_boxed<'a>(
        &'a mut self,
        client: &'a tokio_postgres::Client,
        oid: u32,
        depth: usize,
    ) -> Pin<Box<dyn Future<Output = Result<Arc<TypeDecoder>, SourceError>> + Send + 'a>> {
        Box::pin(async move {
            if let Some(d) = self.cache.get(&oid) {
                return Ok(d.clone());
            }
            if depth > MAX_DEPTH {
                return Err(SourceError::permanent(format!("type {oid} nests more than {MAX_DEPTH} levels deep")));
            }
            let decoder = self.query(client, oid, depth).await?;
            self.cache.insert(oid, decoder.clone());
            Ok(decoder)
        })
    }

    async fn query(&mut self, client: &tokio_postgres::Client, oid: u32, depth: usize) -> Result<Arc<TypeDecoder>, SourceError> {
        const SQL: &str = "SELECT t.typtype::text, t.typbasetype, t.typelem, t.typdelim::text, t.typcategory::text, t.typlen, \
             ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
                   WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum), \
             ARRAY(SELECT a.atttypid FROM pg_catalog.pg_attribute a \
                   WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) \
             FROM pg_catalog.pg_type t WHERE t.oid = $1";
        let Some(row) = client.query_opt(SQL, &[&oid]).await? else {
            tracing::warn!(type_oid = oid, "type not found in pg_type; decoding its values as text");
            return Ok(Arc::new(TypeDecoder::Text));
        };
        let typtype: String = row.try_get(0)?;
        let basetype: u32 = row.try_get(1)?;
        let elem: u32 = row.try_get(2)?;
        let delim: String = row.try_get(3)?;
        let category: String = row.try_get(4)?;
        let typlen: i16 = row.try_get(5)?;
        let names: Vec<String> = row.try_get(6)?;
        let attr_types: Vec<u32> = row.try_get(7)?;
        Ok(Arc::new(match typtype.as_str() {
            "d" => return self.resolve_boxed(client, basetype, depth + 1).await,
            "c" => {
                let mut fields = Vec::with_capacity(names.len());
                for (name, ty) in names.into_iter().zip(attr_types) {
                    let d = self.resolve_boxed(client, ty, depth + 1).await?;
                    fields.push((Arc::from(name), d));
                }
                TypeDecoder::Composite { fields }
            }
            "b" if category == "A" && elem != 0 && typlen == -1 => {
                let elem = self.resolve_boxed(client, elem, depth + 1).await?;
                TypeDecoder::Array { elem, delim: delim.bytes().next().unwrap_or(b',') }
            }
            // enums, ranges, multiranges, pseudo-types and other base types.
            _ => TypeDecoder::Text,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_resolve_without_io() {
        let r = TypeRegistry::new();
        assert_eq!(*r.resolve_cached(23).unwrap(), TypeDecoder::Number);
        assert_eq!(*r.resolve_cached(25).unwrap(), TypeDecoder::Text);
        assert_eq!(*r.resolve_cached(1007).unwrap(), TypeDecoder::Array { elem: Arc::new(TypeDecoder::Number), delim: b',' });
        assert_eq!(*r.resolve_cached(1020).unwrap(), TypeDecoder::Array { elem: Arc::new(TypeDecoder::Text), delim: b';' });
        assert_eq!(*r.resolve_cached(1185).unwrap(), TypeDecoder::Array { elem: Arc::new(TypeDecoder::Timestamptz), delim: b',' });
        assert_eq!(*r.resolve_cached(22).unwrap(), TypeDecoder::Text);
        assert!(r.resolve_cached(16385).is_none());
    }
}
