//! Answers encoded with moby's Go field names where its swagger file (and so bollard's models)
//! names a field otherwise: a service's health check is `Healthcheck` in Go
//! (`swarm.ContainerSpec`) and in every answer Docker sends, `HealthCheck` in the swagger. The
//! counterpart of [`super::decode`], which takes either spelling.
//!
//! [`GoNames`] wraps any `Serialize` value and renames struct fields on their way to the
//! serializer, so answers are still encoded directly (no JSON tree) and map keys (labels,
//! options: a user's data) are never touched.

use serde::ser::{self, Serialize, Serializer};

/// Swagger field names and the names moby's Go types give them in JSON.
const RENAMES: &[(&str, &str)] = &[("HealthCheck", "Healthcheck")];

fn go_name(field: &'static str) -> &'static str {
    RENAMES
        .iter()
        .find(|(swagger, _)| *swagger == field)
        .map_or(field, |(_, go)| go)
}

/// A value encoded with moby's Go field names.
pub struct GoNames<'a, T: ?Sized>(pub &'a T);

impl<T: Serialize + ?Sized> Serialize for GoNames<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(Renaming(s))
    }
}

/// A serializer (or one of its compound parts) that renames the struct fields passing through.
struct Renaming<S>(S);

impl<S: Serializer> Serializer for Renaming<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Renaming<S::SerializeSeq>;
    type SerializeTuple = Renaming<S::SerializeTuple>;
    type SerializeTupleStruct = Renaming<S::SerializeTupleStruct>;
    type SerializeTupleVariant = Renaming<S::SerializeTupleVariant>;
    type SerializeMap = Renaming<S::SerializeMap>;
    type SerializeStruct = Renaming<S::SerializeStruct>;
    type SerializeStructVariant = Renaming<S::SerializeStructVariant>;

    fn serialize_bool(self, v: bool) -> Result<S::Ok, S::Error> {
        self.0.serialize_bool(v)
    }
    fn serialize_i8(self, v: i8) -> Result<S::Ok, S::Error> {
        self.0.serialize_i8(v)
    }
    fn serialize_i16(self, v: i16) -> Result<S::Ok, S::Error> {
        self.0.serialize_i16(v)
    }
    fn serialize_i32(self, v: i32) -> Result<S::Ok, S::Error> {
        self.0.serialize_i32(v)
    }
    fn serialize_i64(self, v: i64) -> Result<S::Ok, S::Error> {
        self.0.serialize_i64(v)
    }
    fn serialize_i128(self, v: i128) -> Result<S::Ok, S::Error> {
        self.0.serialize_i128(v)
    }
    fn serialize_u8(self, v: u8) -> Result<S::Ok, S::Error> {
        self.0.serialize_u8(v)
    }
    fn serialize_u16(self, v: u16) -> Result<S::Ok, S::Error> {
        self.0.serialize_u16(v)
    }
    fn serialize_u32(self, v: u32) -> Result<S::Ok, S::Error> {
        self.0.serialize_u32(v)
    }
    fn serialize_u64(self, v: u64) -> Result<S::Ok, S::Error> {
        self.0.serialize_u64(v)
    }
    fn serialize_u128(self, v: u128) -> Result<S::Ok, S::Error> {
        self.0.serialize_u128(v)
    }
    fn serialize_f32(self, v: f32) -> Result<S::Ok, S::Error> {
        self.0.serialize_f32(v)
    }
    fn serialize_f64(self, v: f64) -> Result<S::Ok, S::Error> {
        self.0.serialize_f64(v)
    }
    fn serialize_char(self, v: char) -> Result<S::Ok, S::Error> {
        self.0.serialize_char(v)
    }
    fn serialize_str(self, v: &str) -> Result<S::Ok, S::Error> {
        self.0.serialize_str(v)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<S::Ok, S::Error> {
        self.0.serialize_bytes(v)
    }
    fn serialize_none(self) -> Result<S::Ok, S::Error> {
        self.0.serialize_none()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<S::Ok, S::Error> {
        self.0.serialize_some(&GoNames(v))
    }
    fn serialize_unit(self) -> Result<S::Ok, S::Error> {
        self.0.serialize_unit()
    }
    fn serialize_unit_struct(self, name: &'static str) -> Result<S::Ok, S::Error> {
        self.0.serialize_unit_struct(name)
    }
    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<S::Ok, S::Error> {
        self.0.serialize_unit_variant(name, index, variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        v: &T,
    ) -> Result<S::Ok, S::Error> {
        self.0.serialize_newtype_struct(name, &GoNames(v))
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<S::Ok, S::Error> {
        self.0
            .serialize_newtype_variant(name, index, variant, &GoNames(v))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        self.0.serialize_seq(len).map(Renaming)
    }
    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        self.0.serialize_tuple(len).map(Renaming)
    }
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        self.0.serialize_tuple_struct(name, len).map(Renaming)
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        self.0
            .serialize_tuple_variant(name, index, variant, len)
            .map(Renaming)
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        self.0.serialize_map(len).map(Renaming)
    }
    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        self.0.serialize_struct(name, len).map(Renaming)
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        self.0
            .serialize_struct_variant(name, index, variant, len)
            .map(Renaming)
    }
    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

/// Sequences and tuples: each element renamed in turn.
macro_rules! elements {
    ($($trait:ident :: $method:ident),*) => {$(
        impl<S: ser::$trait> ser::$trait for Renaming<S> {
            type Ok = S::Ok;
            type Error = S::Error;
            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), S::Error> {
                self.0.$method(&GoNames(v))
            }
            fn end(self) -> Result<S::Ok, S::Error> {
                self.0.end()
            }
        }
    )*};
}

elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

/// Struct fields: the one place a name changes.
macro_rules! fields {
    ($($trait:ident),*) => {$(
        impl<S: ser::$trait> ser::$trait for Renaming<S> {
            type Ok = S::Ok;
            type Error = S::Error;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                v: &T,
            ) -> Result<(), S::Error> {
                self.0.serialize_field(go_name(key), &GoNames(v))
            }
            fn skip_field(&mut self, key: &'static str) -> Result<(), S::Error> {
                self.0.skip_field(go_name(key))
            }
            fn end(self) -> Result<S::Ok, S::Error> {
                self.0.end()
            }
        }
    )*};
}

fields!(SerializeStruct, SerializeStructVariant);

/// Maps: keys are data and stay as they are; values are renamed inside.
impl<S: ser::SerializeMap> ser::SerializeMap for Renaming<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), S::Error> {
        self.0.serialize_key(k)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), S::Error> {
        self.0.serialize_value(&GoNames(v))
    }
    fn serialize_entry<K: Serialize + ?Sized, V: Serialize + ?Sized>(
        &mut self,
        k: &K,
        v: &V,
    ) -> Result<(), S::Error> {
        self.0.serialize_entry(k, &GoNames(v))
    }
    fn end(self) -> Result<S::Ok, S::Error> {
        self.0.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shoal_api::models::{ServiceSpec, TaskSpecContainerSpec};

    #[test]
    fn a_services_health_check_is_healthcheck_and_labels_stay_as_they_are() {
        let spec: ServiceSpec = serde_json::from_value(json!({
            "Name": "web",
            "Labels": {"HealthCheck": "a user's label"},
            "TaskTemplate": {"ContainerSpec": {"Image": "x",
                "HealthCheck": {"Test": ["CMD", "true"], "Interval": 1000000000}}}
        }))
        .unwrap();
        let out = serde_json::to_value(GoNames(&spec)).unwrap();
        assert_eq!(
            out,
            json!({
                "Name": "web",
                "Labels": {"HealthCheck": "a user's label"},
                "TaskTemplate": {"ContainerSpec": {"Image": "x",
                    "Healthcheck": {"Test": ["CMD", "true"], "Interval": 1000000000}}}
            })
        );
        // Inside lists and flattened structs too (a stored task's spec is flattened).
        let list = vec![shoal_api::objects::StoredTask {
            task: shoal_api::models::Task {
                spec: spec.task_template.clone(),
                ..Default::default()
            },
            ..Default::default()
        }];
        let out = serde_json::to_value(GoNames(&list)).unwrap();
        assert!(
            out[0]["Spec"]["ContainerSpec"]["Healthcheck"].is_object(),
            "{out}"
        );
        assert!(out[0]["Spec"]["ContainerSpec"].get("HealthCheck").is_none());
        // The spelling decoded is the one encoded back, whichever the client used.
        let cs: TaskSpecContainerSpec =
            super::super::decode::from_value(json!({"Image": "x", "Healthcheck": {"Retries": 3}}))
                .unwrap();
        assert_eq!(
            serde_json::to_value(GoNames(&cs)).unwrap()["Healthcheck"]["Retries"],
            3
        );
    }
}
