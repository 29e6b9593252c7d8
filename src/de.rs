//! Lenient shapes for the generator's JSON documents: they accept any JSON
//! value and record what it was, so the code that reads them can say which
//! field has the wrong type, in its own words.
//!
//! Why not plain derived types: serde's derive reports a type error without
//! the field's path, and it accepts a JSON *array* where a struct is expected
//! (the fields by position), so `"serviceAccountRef": ["default"]` would read
//! as a name. Go's `encoding/json`, and so ESO, accepts only objects.
//! `serde_json::Value` would do, but its map type costs the component tens of
//! kilobytes of its size budget; these cost a few hundred bytes.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A JSON value where a `T` (a derived struct) is expected: the struct when
/// the value is an object, else [`Object::Not`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object<T> {
    /// An object, read as `T`.
    Is(T),
    /// Any other JSON value (skipped).
    Not,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ObjectVisitor(PhantomData))
    }
}

struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = Object<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Object<T>, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map)).map(Object::Is)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Object<T>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Object::Not)
    }

    fn visit_str<E>(self, _: &str) -> Result<Object<T>, E> {
        Ok(Object::Not)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Object<T>, E> {
        Ok(Object::Not)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Object<T>, E> {
        Ok(Object::Not)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Object<T>, E> {
        Ok(Object::Not)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Object<T>, E> {
        Ok(Object::Not)
    }

    fn visit_unit<E>(self) -> Result<Object<T>, E> {
        Ok(Object::Not)
    }
}

/// Any JSON value that is not read as a struct, kept as far as the generator
/// looks at it.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// A string.
    Str(String),
    /// A number, as the `float64` Go's `encoding/json` would decode it to.
    Num(f64),
    /// An array.
    List(Vec<Field>),
    /// `true`, `false`, `null` or an object (skipped).
    Other,
}

impl Field {
    /// The JSON type's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Field::Str(_) => "a string",
            Field::Num(_) => "a number",
            Field::List(_) => "a list",
            Field::Other => "another JSON value",
        }
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E>(self, v: &str) -> Result<Field, E> {
        Ok(Field::Str(v.into()))
    }

    fn visit_string<E>(self, v: String) -> Result<Field, E> {
        Ok(Field::Str(v))
    }

    // `as` rounds to the nearest float64, ties to even: what Go's parser does
    // with an integer literal.
    fn visit_u64<E>(self, v: u64) -> Result<Field, E> {
        Ok(Field::Num(v as f64))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Field, E> {
        Ok(Field::Num(v as f64))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Field, E> {
        Ok(Field::Num(v))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Field, E> {
        Ok(Field::Other)
    }

    fn visit_unit<E>(self) -> Result<Field, E> {
        Ok(Field::Other)
    }

    // Nesting is bounded by serde_json's recursion limit.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Field::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Pair {
        a: Option<Field>,
        b: Option<Field>,
    }

    #[test]
    fn object_reads_objects_and_records_anything_else() {
        let got: Object<Pair> = serde_json::from_str(r#"{"a":"x","b":1,"c":[{"d":2}]}"#).unwrap();
        assert_eq!(
            got,
            Object::Is(Pair {
                a: Some(Field::Str("x".into())),
                b: Some(Field::Num(1.0))
            })
        );
        // A plain derive would read this array as a = "x", b = 1.
        for json in [r#"["x",1]"#, r#""x""#, "1", "-1", "1.5", "true", "null"] {
            assert_eq!(
                serde_json::from_str::<Object<Pair>>(json).unwrap(),
                Object::Not,
                "{json}"
            );
        }
    }

    #[test]
    fn field_keeps_strings_numbers_and_lists() {
        let cases = [
            (r#""s""#, Field::Str("s".into())),
            (r#""a\"b""#, Field::Str("a\"b".into())),
            ("12", Field::Num(12.0)),
            ("-3", Field::Num(-3.0)),
            ("1.5e3", Field::Num(1500.0)),
            ("true", Field::Other),
            ("null", Field::Other),
            (r#"{"a":{"b":null}}"#, Field::Other),
            (
                r#"["a",[1],{"b":2}]"#,
                Field::List(vec![
                    Field::Str("a".into()),
                    Field::List(vec![Field::Num(1.0)]),
                    Field::Other,
                ]),
            ),
        ];
        for (json, want) in cases {
            assert_eq!(serde_json::from_str::<Field>(json).unwrap(), want, "{json}");
        }
    }

    #[test]
    fn syntax_errors_still_fail() {
        for json in ["", "{", r#"{"a":}"#, "[1,]", r#"{"a":1}x"#] {
            assert!(serde_json::from_str::<Object<Pair>>(json).is_err(), "{json}");
        }
    }
}
