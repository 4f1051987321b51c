//! Docker's `filters` query parameter, read as moby's `filters.FromJSON` reads it:
//! `{"key":{"v1":true}}` or the older `{"key":["v1","v2"]}`, and nothing else. Refusals start
//! with dockerd's words ("invalid filter"), then say which key and why.

use shoal_api::ApiError;
use std::collections::HashMap;

/// Parsed filters: each key with the values asked for.
#[derive(Debug, Default)]
pub struct Filters(pub HashMap<String, Vec<String>>);

impl Filters {
    /// Parses the query's `filters` value; unknown keys are refused, as Docker does.
    pub fn parse(q: &HashMap<String, String>, allowed: &[&str]) -> Result<Filters, ApiError> {
        let Some(raw) = q.get("filters").filter(|s| !s.is_empty()) else {
            return Ok(Filters::default());
        };
        let v: serde_json::Value = serde_json::from_str(raw)
            .map_err(|e| ApiError::invalid(format!("invalid filter: {raw:?} is not JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| {
            ApiError::invalid(format!("invalid filter: {raw:?} is not a JSON object"))
        })?;
        let mut out = HashMap::new();
        for (k, vals) in obj {
            if !allowed.contains(&k.as_str()) {
                return Err(ApiError::invalid(format!("invalid filter '{k}'")));
            }
            // A value of another shape matched everything (it read as no filter at all); Go's
            // decoder refuses it, and so does dockerd.
            let bad = || {
                ApiError::invalid(format!(
                    "invalid filter '{k}': {vals} is neither a list of strings nor {{\"value\": true}}"
                ))
            };
            let list: Vec<String> = match vals {
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|x| x.as_str().map(str::to_string).ok_or_else(bad))
                    .collect::<Result<_, _>>()?,
                serde_json::Value::Object(m) if m.values().all(|v| v.is_boolean()) => {
                    m.keys().cloned().collect()
                }
                _ => return Err(bad()),
            };
            out.insert(k.clone(), list);
        }
        Ok(Filters(out))
    }

    /// Parses the query's `filters` value taking every key, as dockerd's `/events` does (its
    /// filter ignores keys it does not know).
    pub fn parse_any(q: &HashMap<String, String>) -> Result<Filters, ApiError> {
        let keys: Vec<String> = q
            .get("filters")
            .and_then(|raw| serde_json::from_str::<serde_json::Value>(raw).ok())
            .and_then(|v| v.as_object().map(|o| o.keys().cloned().collect()))
            .unwrap_or_default();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        Filters::parse(q, &keys)
    }

    /// Refuses a value of `key` that names none of `known` (compared without regard to case, as
    /// swarmkit looks enum names up upper-cased; empty values are skipped), in dockerd's words:
    /// "Invalid desired-state filter: 'x'" (which it answers 500; shoal 400, issue 17).
    pub fn known(&self, key: &str, known: &[&str]) -> Result<(), ApiError> {
        match self
            .get(key)
            .iter()
            .find(|v| !v.is_empty() && !known.iter().any(|k| k.eq_ignore_ascii_case(v)))
        {
            Some(v) => Err(ApiError::invalid(format!("Invalid {key} filter: '{v}'"))),
            None => Ok(()),
        }
    }

    /// Values for a key (empty if absent).
    pub fn get(&self, key: &str) -> &[String] {
        self.0.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// True if the key is absent or any of its values satisfies `f`.
    pub fn any(&self, key: &str, f: impl Fn(&str) -> bool) -> bool {
        let v = self.get(key);
        v.is_empty() || v.iter().any(|x| f(x))
    }

    /// Label filters (`key` or `key=value`) against a label map: all must match.
    pub fn labels(&self, key: &str, labels: Option<&HashMap<String, String>>) -> bool {
        self.get(key).iter().all(|want| {
            let (k, v) = match want.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (want.as_str(), None),
            };
            match (labels.and_then(|l| l.get(k)), v) {
                (Some(have), Some(v)) => have == v,
                (Some(_), None) => true,
                (None, _) => false,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_shapes_and_matches_labels() {
        let mut q = HashMap::new();
        q.insert(
            "filters".to_string(),
            r#"{"label":["com.docker.stack.namespace=demo"],"name":{"web":true}}"#.to_string(),
        );
        let f = Filters::parse(&q, &["label", "name"]).unwrap();
        assert_eq!(f.get("name"), ["web"]);
        let mut labels = HashMap::new();
        labels.insert("com.docker.stack.namespace".to_string(), "demo".to_string());
        assert!(f.labels("label", Some(&labels)));
        labels.insert(
            "com.docker.stack.namespace".to_string(),
            "other".to_string(),
        );
        assert!(!f.labels("label", Some(&labels)));
        assert!(Filters::parse(&q, &["label"]).is_err());
    }

    #[test]
    fn values_of_another_shape_are_refused_not_ignored() {
        for raw in [
            r#"{"name":[1]}"#,
            r#"{"name":5}"#,
            r#"{"name":null}"#,
            r#"{"name":{"web":"yes"}}"#,
            // Go decodes neither shape from a bare string.
            r#"{"name":"web"}"#,
        ] {
            let q = HashMap::from([("filters".to_string(), raw.to_string())]);
            let e = Filters::parse(&q, &["name"]).expect_err(raw);
            assert_eq!(e.status, 400);
            assert!(
                e.message.starts_with("invalid filter 'name'"),
                "{}",
                e.message
            );
        }
    }
}
