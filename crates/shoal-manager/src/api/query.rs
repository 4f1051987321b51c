//! Query parameters read as dockerd reads them. Its routers use two rules for booleans, and a
//! client sees the difference: `httputils.BoolValue` (anything but "", "0", "no", "false" and
//! "none", in any case, is true: `force`, the log options) and Go's `strconv.ParseBool` ("1",
//! "t", "true", "0", "f", "false" in three cases each, anything else refused with 400:
//! `status`, `insertDefaults`, `verbose`, `rotate*Token`). Versions are `strconv.ParseUint`.

use shoal_api::ApiError;
use std::collections::HashMap;

/// The query string as a map (the last value of a repeated key wins, as axum's `Query` reads it).
pub type Query = HashMap<String, String>;

/// `httputils.BoolValue`: true unless absent, empty, `0`, `no`, `false` or `none` (any case), so
/// the Python SDK's `force=True` forces.
pub fn bool_param(q: &Query, key: &str) -> bool {
    q.get(key).is_some_and(|v| {
        let v = v.trim().to_ascii_lowercase();
        !matches!(v.as_str(), "" | "0" | "no" | "false" | "none")
    })
}

/// Go's `strconv.ParseBool`, with its error text.
pub fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("strconv.ParseBool: parsing {v:?}: invalid syntax")),
    }
}

/// A boolean dockerd reads with `strconv.ParseBool` when present and not empty (false
/// otherwise); anything else is its 400, "invalid value for KEY: V: strconv.ParseBool: ...".
pub fn strict_bool(q: &Query, key: &str) -> Result<bool, ApiError> {
    match q.get(key).map(String::as_str) {
        None | Some("") => Ok(false),
        Some(v) => parse_bool(v)
            .map_err(|e| ApiError::invalid(format!("invalid value for {key}: {v}: {e}"))),
    }
}

/// Go's `strconv.ParseUint(s, 10, 64)`, with its error text: digits only (no sign, no spaces).
pub fn parse_uint(v: &str) -> Result<u64, String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("strconv.ParseUint: parsing {v:?}: invalid syntax"));
    }
    v.parse()
        .map_err(|_| format!("strconv.ParseUint: parsing {v:?}: value out of range"))
}

/// The object kinds whose updates quote a `version`; dockerd words each refusal its own way.
#[derive(Clone, Copy, Debug)]
pub enum Versioned {
    /// `POST /swarm/update`.
    Swarm,
    /// `POST /services/{id}/update`.
    Service,
    /// `POST /nodes/{id}/update`.
    Node,
    /// `POST /secrets/{id}/update`.
    Secret,
    /// `POST /configs/{id}/update`.
    Config,
}

/// The `version` every update must quote (Docker's optimistic concurrency), refused as dockerd
/// refuses it: `invalid service version 'abc': strconv.ParseUint: ...` (swarm, services,
/// nodes), `invalid secret version` (secrets, configs).
pub fn version(q: &Query, kind: Versioned) -> Result<u64, ApiError> {
    let raw = q.get("version").map(String::as_str).unwrap_or("");
    parse_uint(raw).map_err(|e| {
        ApiError::invalid(match kind {
            Versioned::Swarm => format!("invalid swarm version '{raw}': {e}"),
            Versioned::Service => format!("invalid service version '{raw}': {e}"),
            Versioned::Node => format!("invalid node version '{raw}': {e}"),
            Versioned::Secret => "invalid secret version".to_string(),
            Versioned::Config => "invalid config version".to_string(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(k: &str, v: &str) -> Query {
        HashMap::from([(k.to_string(), v.to_string())])
    }

    #[test]
    fn booleans_read_as_dockerd_reads_them() {
        for v in ["1", "true", "TRUE", "True", "yes", "on"] {
            assert!(bool_param(&q("force", v), "force"), "{v}");
        }
        for v in ["", "0", "no", "False", "none", " false "] {
            assert!(!bool_param(&q("force", v), "force"), "{v:?}");
        }
        assert!(!bool_param(&Default::default(), "force"));
    }

    #[test]
    fn strict_booleans_take_what_go_parses_and_refuse_the_rest() {
        for (v, want) in [
            ("True", true),
            ("t", true),
            ("1", true),
            ("F", false),
            ("", false),
        ] {
            assert_eq!(strict_bool(&q("status", v), "status"), Ok(want), "{v}");
        }
        let e = strict_bool(&q("status", "yes"), "status").unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(
            e.message,
            "invalid value for status: yes: strconv.ParseBool: parsing \"yes\": invalid syntax"
        );
    }

    #[test]
    fn versions_are_refused_in_dockerds_words() {
        assert_eq!(version(&q("version", "42"), Versioned::Service), Ok(42));
        let cases = [
            ("abc", Versioned::Service, "invalid service version 'abc': strconv.ParseUint: parsing \"abc\": invalid syntax"),
            ("+1", Versioned::Node, "invalid node version '+1': strconv.ParseUint: parsing \"+1\": invalid syntax"),
            ("99999999999999999999", Versioned::Swarm, "invalid swarm version '99999999999999999999': strconv.ParseUint: parsing \"99999999999999999999\": value out of range"),
            ("", Versioned::Secret, "invalid secret version"),
        ];
        for (v, kind, want) in cases {
            let e = version(&q("version", v), kind).unwrap_err();
            assert_eq!((e.status, e.message.as_str()), (400, want));
        }
        let e = version(&Default::default(), Versioned::Config).unwrap_err();
        assert_eq!(e.message, "invalid config version");
    }
}
