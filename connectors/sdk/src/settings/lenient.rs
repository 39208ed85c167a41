//! Sink settings read from JSON that may hold numbers and booleans as
//! strings.
//!
//! Settings can come from an environment override
//! (`PGFANOUT__SINKS__EVENTS__IN_FLIGHT_BATCHES=3`), and an environment
//! variable is always a string. The daemon's own sections read through the
//! `config` crate, which converts such strings where a number or a boolean
//! is expected; a sink's settings reach its connector as JSON, where `"3"`
//! is not a `usize`. [`Lenient`] reads a JSON value the way serde_json does,
//! except that where the type asks for a number or a boolean, a string that
//! parses as one is taken. Every other mismatch fails as it would in
//! serde_json, with its message.

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::{Error, Value};

/// A JSON value as a lenient [`de::Deserializer`] (see the module docs).
pub struct Lenient<'a>(pub &'a Value);

macro_rules! from_string {
    ($($method:ident => $ty:ty, $visit:ident;)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                if let Value::String(s) = self.0 {
                    if let Ok(v) = s.trim().parse::<$ty>() {
                        return visitor.$visit(v);
                    }
                }
                de::Deserializer::$method(self.0, visitor)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Lenient<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(map) => visitor.visit_map(Entries { iter: map.iter(), value: None }),
            Value::Array(items) => visitor.visit_seq(Items(items.iter())),
            // Integers as integers: with serde_json's arbitrary_precision a
            // number is otherwise visited as an opaque map, and a mismatch
            // would read "invalid type: number" without the value.
            Value::Number(n) if n.as_u64().is_some() => visitor.visit_u64(n.as_u64().unwrap_or_default()),
            Value::Number(n) if n.as_i64().is_some() => visitor.visit_i64(n.as_i64().unwrap_or_default()),
            other => de::Deserializer::deserialize_any(other, visitor),
        }
    }

    from_string! {
        deserialize_bool => bool, visit_bool;
        deserialize_i8 => i8, visit_i8;
        deserialize_i16 => i16, visit_i16;
        deserialize_i32 => i32, visit_i32;
        deserialize_i64 => i64, visit_i64;
        deserialize_i128 => i128, visit_i128;
        deserialize_u8 => u8, visit_u8;
        deserialize_u16 => u16, visit_u16;
        deserialize_u32 => u32, visit_u32;
        deserialize_u64 => u64, visit_u64;
        deserialize_u128 => u128, visit_u128;
        deserialize_f32 => f32, visit_f32;
        deserialize_f64 => f64, visit_f64;
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_enum(self.0, name, variants, visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Number(_) => self.deserialize_any(visitor),
            other => de::Deserializer::deserialize_str(other, visitor),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Number(_) => self.deserialize_any(visitor),
            other => de::Deserializer::deserialize_string(other, visitor),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        char bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

/// An object's entries, each value lenient.
struct Entries<'a> {
    iter: serde_json::map::Iter<'a>,
    value: Option<&'a Value>,
}

impl<'de> MapAccess<'de> for Entries<'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                let key = de::value::BorrowedStrDeserializer::<Error>::new(k.as_str());
                seed.deserialize(key).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let v = self.value.take().ok_or_else(|| de::Error::custom("a value without its key"))?;
        seed.deserialize(Lenient(v))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// An array's items, each lenient.
struct Items<'a>(std::slice::Iter<'a, Value>);

impl<'de> SeqAccess<'de> for Items<'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        self.0.next().map(|v| seed.deserialize(Lenient(v))).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        in_flight: usize,
        ratio: f64,
        enabled: bool,
        name: String,
        limit: Option<u32>,
        nested: Nested,
        list: Vec<u16>,
        #[serde(default)]
        mode: Mode,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Nested {
        size: u64,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        #[default]
        Fast,
        Safe,
    }

    fn read(v: serde_json::Value) -> Result<Settings, String> {
        serde_path_to_error::deserialize::<_, Settings>(Lenient(&v)).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner())
        })
    }

    #[test]
    fn strings_are_taken_where_numbers_and_booleans_are_expected() {
        let from_env = json!({
            "in_flight": "3", "ratio": "0.5", "enabled": "true", "name": "3", "limit": "7",
            "nested": {"size": " 42 "}, "list": ["1", 2], "mode": "safe"
        });
        let expect = Settings {
            in_flight: 3,
            ratio: 0.5,
            enabled: true,
            name: "3".into(),
            limit: Some(7),
            nested: Nested { size: 42 },
            list: vec![1, 2],
            mode: Mode::Safe,
        };
        assert_eq!(read(from_env).unwrap(), expect);
        let typed = json!({
            "in_flight": 3, "ratio": 0.5, "enabled": true, "name": "3", "limit": 7,
            "nested": {"size": 42}, "list": [1, 2], "mode": "safe"
        });
        assert_eq!(read(typed).unwrap(), expect);
    }

    #[test]
    fn other_mismatches_fail_as_in_serde_json_with_the_path() {
        let base = json!({"in_flight": 1, "ratio": 1, "enabled": false, "name": "n", "limit": null, "nested": {"size": 1}, "list": []});
        assert!(read(base.clone()).is_ok());
        for (key, bad, says) in [
            ("in_flight", json!("three"), "in_flight: invalid type: string \"three\", expected usize"),
            ("in_flight", json!("-1"), "in_flight: invalid type: string \"-1\", expected usize"),
            ("enabled", json!("yes"), "enabled: invalid type: string \"yes\", expected a boolean"),
            ("name", json!(3), "name: invalid type: integer `3`, expected a string"),
            ("nested", json!({"size": "big"}), "nested.size: invalid type: string \"big\", expected u64"),
            ("mode", json!("slow"), "mode: unknown variant `slow`, expected `fast` or `safe`"),
            ("extra", json!(1), "unknown field `extra`"),
        ] {
            let mut v = base.clone();
            v[key] = bad;
            let err = read(v).unwrap_err();
            assert!(err.contains(says), "{key}: {err}");
        }
    }
}
