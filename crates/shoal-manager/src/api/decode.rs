//! Request bodies read as dockerd reads them with Go's `encoding/json`: a field name matches its
//! struct field case-insensitively when no field has exactly that name (so `{"name": "x"}` is a
//! `Name`), unknown fields are ignored, and a value of the wrong type is refused with the path of
//! the field it was meant for (`Mode.Replicated.Replicas: invalid type: ...`), which serde's own
//! messages lack.
//!
//! The body is parsed into a `serde_json::Value` first, then handed to the target type through
//! [`Folding`], a deserializer that renames object keys to the field names each struct asks for
//! and records where it is. Map keys (labels, options) are left as sent, as Go leaves them.

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use serde_json::{Map, Value};
use shoal_api::ApiError;
use std::fmt;

/// Decodes a request body: malformed JSON and values of the wrong type are Docker's 400, worded
/// "invalid JSON: ..." as dockerd words them.
pub fn from_slice<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid JSON: {e}")))?;
    from_value(value)
}

/// Decodes an already parsed body (for handlers that adjust the JSON first).
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    T::deserialize(Folding {
        value,
        path: String::new(),
    })
    .map_err(|e| ApiError::invalid(format!("invalid JSON: {e}")))
}

/// Renames the keys of the object at `v` (if it is one) to the Go field names in `fields`,
/// by the rule [`from_slice`] follows, for handlers that read a body as a JSON tree because
/// they pass it on (`POST /containers/create` goes on to the engine).
pub fn fold_object(v: &mut Value, fields: &[&str]) {
    if let Value::Object(obj) = v {
        *obj = fold_keys(std::mem::take(obj), fields);
    }
}

/// A decoding error and the field it is about.
#[derive(Debug)]
struct DecodeError {
    /// Dotted path of the field (`TaskTemplate.ContainerSpec.Image`), once known.
    path: Option<String>,
    message: String,
}

impl DecodeError {
    /// Names the field unless a deeper one was named already.
    fn at(mut self, path: &str) -> DecodeError {
        if self.path.is_none() && !path.is_empty() {
            self.path = Some(path.to_string());
        }
        self
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{p}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for DecodeError {}

impl de::Error for DecodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DecodeError {
            path: None,
            message: msg.to_string(),
        }
    }
}

fn leaf(e: serde_json::Error) -> DecodeError {
    de::Error::custom(e)
}

/// What a value is, for "invalid type: X, expected Y".
fn unexpected(v: &Value) -> de::Unexpected<'_> {
    match v {
        Value::Null => de::Unexpected::Unit,
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => de::Unexpected::Unsigned(u),
            (_, Some(i), _) => de::Unexpected::Signed(i),
            (_, _, Some(f)) => de::Unexpected::Float(f),
            _ => de::Unexpected::Other("number"),
        },
        Value::String(s) => de::Unexpected::Str(s),
        Value::Array(_) => de::Unexpected::Seq,
        Value::Object(_) => de::Unexpected::Map,
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Renames keys to the struct's field names: an exact name stays; another key takes the field
/// it matches without regard to ASCII case, unless the exact name was sent too.
fn fold_keys(obj: Map<String, Value>, fields: &[&str]) -> Map<String, Value> {
    let mut out = Map::new();
    let mut folded = Vec::new();
    for (k, v) in obj {
        match fields
            .iter()
            .find(|f| **f != k && f.eq_ignore_ascii_case(&k))
        {
            Some(f) if !fields.contains(&k.as_str()) => folded.push((f.to_string(), v)),
            _ => {
                out.insert(k, v);
            }
        }
    }
    for (k, v) in folded {
        out.entry(k).or_insert(v);
    }
    out
}

/// A JSON value on its way into a Rust type, with its place in the body.
struct Folding {
    value: Value,
    path: String,
}

/// Hands a scalar (or anything not a struct, map or sequence) to `serde_json`'s own
/// deserializer; the caller names the field if it fails.
macro_rules! leaf_methods {
    ($($method:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
            self.value.$method(visitor).map_err(leaf)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Folding {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.value {
            Value::Object(obj) => visitor.visit_map(Entries::new(obj, self.path)),
            Value::Array(items) => visitor.visit_seq(Items::new(items, self.path)),
            other => other.deserialize_any(visitor).map_err(leaf),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        match self.value {
            Value::Object(obj) => {
                visitor.visit_map(Entries::new(fold_keys(obj, fields), self.path))
            }
            // serde_json would take an array as a struct's fields in order; Go refuses it.
            other => Err(de::Error::invalid_type(unexpected(&other), &visitor)),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.value {
            Value::Object(obj) => visitor.visit_map(Entries::new(obj, self.path)),
            other => other.deserialize_map(visitor).map_err(leaf),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.value {
            Value::Array(items) => visitor.visit_seq(Items::new(items, self.path)),
            other => other.deserialize_seq(visitor).map_err(leaf),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.value
            .deserialize_enum(name, variants, visitor)
            .map_err(leaf)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.value
            .deserialize_unit_struct(name, visitor)
            .map_err(leaf)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }

    leaf_methods!(
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_unit,
        deserialize_identifier
    );
}

/// An object's entries, each value decoded at `path.key`.
struct Entries {
    iter: serde_json::map::IntoIter,
    next: Option<(String, Value)>,
    path: String,
}

impl Entries {
    fn new(obj: Map<String, Value>, path: String) -> Entries {
        Entries {
            iter: obj.into_iter(),
            next: None,
            path,
        }
    }
}

impl<'de> de::MapAccess<'de> for Entries {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        let Some((key, value)) = self.iter.next() else {
            return Ok(None);
        };
        let path = join(&self.path, &key);
        let k = seed
            .deserialize(IntoDeserializer::<DecodeError>::into_deserializer(
                key.clone(),
            ))
            .map_err(|e| e.at(&path))?;
        self.next = Some((key, value));
        Ok(Some(k))
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, DecodeError> {
        let (key, value) = self.next.take().ok_or_else(|| {
            <DecodeError as de::Error>::custom("a value was asked for before its key")
        })?;
        let path = join(&self.path, &key);
        seed.deserialize(Folding {
            value,
            path: path.clone(),
        })
        .map_err(|e| e.at(&path))
    }
}

/// An array's items, each decoded at `path[i]`.
struct Items {
    iter: std::iter::Enumerate<std::vec::IntoIter<Value>>,
    path: String,
}

impl Items {
    fn new(items: Vec<Value>, path: String) -> Items {
        Items {
            iter: items.into_iter().enumerate(),
            path,
        }
    }
}

impl<'de> de::SeqAccess<'de> for Items {
    type Error = DecodeError;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, DecodeError> {
        let Some((i, value)) = self.iter.next() else {
            return Ok(None);
        };
        let path = format!("{}[{i}]", self.path);
        seed.deserialize(Folding {
            value,
            path: path.clone(),
        })
        .map(Some)
        .map_err(|e| e.at(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::models::{NodeSpec, NodeSpecRoleEnum, SecretSpec, ServiceSpec};

    #[test]
    fn names_match_without_regard_to_case_as_in_go() {
        let s: SecretSpec =
            from_slice(br#"{"name": "pw", "data": "eA==", "labels": {"Team": "a"}}"#).unwrap();
        assert_eq!(s.name.as_deref(), Some("pw"));
        assert_eq!(s.data.as_deref(), Some("eA=="));
        // Map keys are data: they stay as sent.
        assert_eq!(s.labels.unwrap()["Team"], "a");
        let spec: ServiceSpec = from_slice(
            br#"{"name": "web", "taskTemplate": {"containerSpec": {"image": "nginx",
                "Healthcheck": {"Test": ["CMD", "true"]}}},
                "MODE": {"replicated": {"replicas": 3}}}"#,
        )
        .unwrap();
        let cs = spec.task_template.unwrap().container_spec.unwrap();
        assert_eq!(cs.image.as_deref(), Some("nginx"));
        assert!(
            cs.health_check.is_some(),
            "the CLI's Healthcheck is HealthCheck"
        );
        assert_eq!(spec.mode.unwrap().replicated.unwrap().replicas, Some(3));
    }

    #[test]
    fn an_exact_name_wins_over_a_folded_one() {
        let s: SecretSpec = from_slice(br#"{"name": "folded", "Name": "exact"}"#).unwrap();
        assert_eq!(s.name.as_deref(), Some("exact"));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let cases: [(&[u8], &str); 5] = [
            (
                br#"{"Mode": {"Replicated": {"Replicas": "three"}}}"#,
                "invalid JSON: Mode.Replicated.Replicas: invalid type: string \"three\"",
            ),
            (
                br#"{"TaskTemplate": {"ContainerSpec": {"Env": ["A=1", 2]}}}"#,
                "invalid JSON: TaskTemplate.ContainerSpec.Env[1]: invalid type: integer `2`",
            ),
            (
                br#"{"Labels": {"a": 1}}"#,
                "invalid JSON: Labels.a: invalid type: integer `1`",
            ),
            (
                br#"{"name": 5}"#,
                "invalid JSON: Name: invalid type: integer `5`",
            ),
            (br#"["web"]"#, "invalid JSON: invalid type: sequence"),
        ];
        for (body, want) in cases {
            let e = from_slice::<ServiceSpec>(body).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(
                e.message.starts_with(want),
                "{:?} lacks {want:?}",
                e.message
            );
        }
        let e = from_slice::<NodeSpec>(br#"{"Role": "boss"}"#).unwrap_err();
        assert!(
            e.message
                .starts_with("invalid JSON: Role: unknown variant `boss`"),
            "{}",
            e.message
        );
        let ok: NodeSpec = from_slice(br#"{"role": "worker"}"#).unwrap();
        assert_eq!(ok.role, Some(NodeSpecRoleEnum::WORKER));
    }

    #[test]
    fn malformed_json_is_refused_as_dockerd_words_it() {
        let e = from_slice::<SecretSpec>(b"{\"Name\":").unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.message.starts_with("invalid JSON: EOF while parsing"),
            "{}",
            e.message
        );
    }
}
