//! Which events a client asked for, as dockerd reads `GET /events`: its `filters`
//! (`daemon/events/filter.go`: `type`, `event`, `scope`, a name or ID prefix per object type,
//! `image`, `label`) and its `since` and `until` (`daemon/internal/timestamp`: Unix seconds with
//! optional nanoseconds; the CLI turns durations and RFC 3339 times into that before sending).
//! Pure.

use shoal_api::models::EventMessage;
use shoal_api::ApiError;
use std::collections::HashMap;

/// The filters of one request, matched as moby's `events.Filter.Include` matches them.
#[derive(Clone, Debug, Default)]
pub struct EventFilter(HashMap<String, Vec<String>>);

/// Object types whose events are matched by a name or ID prefix (`fuzzyMatchName`).
const BY_NAME: [&str; 9] = [
    "daemon",
    "container",
    "plugin",
    "volume",
    "network",
    "service",
    "node",
    "secret",
    "config",
];

impl EventFilter {
    /// The filter of a request's `filters`, every key taken (dockerd refuses none for events).
    pub fn new(filters: HashMap<String, Vec<String>>) -> EventFilter {
        EventFilter(filters)
    }

    fn values(&self, key: &str) -> &[String] {
        self.0.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// moby's `Args.ExactMatch`: no values for the key, or one equals `source`.
    fn exact(&self, key: &str, source: &str) -> bool {
        let v = self.values(key);
        v.is_empty() || v.iter().any(|x| x == source)
    }

    /// moby's `Args.FuzzyMatch`: an exact match, or a value is a prefix of `source`.
    fn fuzzy(&self, key: &str, source: &str) -> bool {
        self.exact(key, source)
            || self
                .values(key)
                .iter()
                .any(|p| source.starts_with(p.as_str()))
    }

    /// Whether the event is one the client asked for.
    pub fn matches(&self, e: &EventMessage) -> bool {
        let typ = e.typ.map(|t| t.to_string()).unwrap_or_default();
        let action = e.action.as_deref().unwrap_or_default();
        let id = e
            .actor
            .as_ref()
            .and_then(|a| a.id.as_deref())
            .unwrap_or_default();
        let empty = HashMap::new();
        let attrs = e
            .actor
            .as_ref()
            .and_then(|a| a.attributes.as_ref())
            .unwrap_or(&empty);
        let name = attrs.get("name").map(String::as_str).unwrap_or_default();
        let scope = e.scope.map(|s| s.to_string()).unwrap_or_default();

        // `health_status`, `exec_create` and `exec_start` carry a suffix: a prefix matches.
        let event = if self
            .values("event")
            .iter()
            .any(|v| matches!(v.as_str(), "health_status" | "exec_create" | "exec_start"))
        {
            self.fuzzy("event", action)
        } else {
            self.exact("event", action)
        };
        event
            && self.exact("type", &typ)
            && self.exact("scope", &scope)
            && BY_NAME
                .iter()
                .all(|t| self.fuzzy(t, id) || self.fuzzy(t, name))
            && self.image(&typ, id, attrs)
            && self.labels(attrs)
    }

    /// moby's `matchImage`: the actor's ID, or its image (an image event's name), with or
    /// without the tag.
    fn image(&self, typ: &str, id: &str, attrs: &HashMap<String, String>) -> bool {
        let attr = if typ == "image" { "name" } else { "image" };
        let image = attrs.get(attr).map(String::as_str).unwrap_or_default();
        self.exact("image", id)
            || self.exact("image", image)
            || self.exact("image", &familiar(id))
            || self.exact("image", &familiar(image))
    }

    /// moby's `MatchKVList("label", ...)`: every `key` or `key=value` asked for is an attribute.
    fn labels(&self, attrs: &HashMap<String, String>) -> bool {
        let want = self.values("label");
        if want.is_empty() {
            return true;
        }
        !attrs.is_empty()
            && want.iter().all(|w| match w.split_once('=') {
                Some((k, v)) => attrs.get(k).is_some_and(|have| have == v),
                None => attrs.contains_key(w.as_str()),
            })
    }
}

/// An image reference without its tag or digest and without Docker Hub's default prefixes
/// (`docker.io/library/busybox:1` -> `busybox`), as `reference.FamiliarName` shows it.
fn familiar(image: &str) -> String {
    let no_digest = image.split_once('@').map_or(image, |(n, _)| n);
    let slash = no_digest.rfind('/').map_or(0, |i| i + 1);
    let no_tag = match no_digest[slash..].find(':') {
        Some(i) => &no_digest[..slash + i],
        None => no_digest,
    };
    for prefix in ["docker.io/library/", "index.docker.io/library/"] {
        if let Some(rest) = no_tag.strip_prefix(prefix) {
            if !rest.contains('/') {
                return rest.to_string();
            }
        }
    }
    for prefix in ["docker.io/", "index.docker.io/"] {
        if let Some(rest) = no_tag.strip_prefix(prefix) {
            return rest.to_string();
        }
    }
    no_tag.to_string()
}

/// Nanoseconds since the Unix epoch of a `since` or `until` value: None when empty (no bound),
/// else `seconds[.nanoseconds]` as dockerd parses it (`ParseUnixTimestamp`), saturated at the
/// ends of i64 nanoseconds. The error is dockerd's, for a 400.
pub fn parse_time(param: &str, value: &str) -> Result<Option<i64>, ApiError> {
    if value.is_empty() {
        return Ok(None);
    }
    let bad = |why: String| {
        ApiError::invalid(format!(
            "invalid value for '{param}': invalid timestamp {value:?}: {why}"
        ))
    };
    let (s, n) = value.split_once('.').unwrap_or((value, ""));
    let secs = parse_go_int(s).map_err(|why| bad(format!("invalid seconds {s:?}: {why}")))?;
    let nanos = if n.is_empty() || n == "0" || n == "000000000" {
        0
    } else {
        if n.len() > 20 {
            return Err(bad(format!(
                "invalid nanoseconds: length {} exceeds maximum 20",
                n.len()
            )));
        }
        if let Some((i, c)) = n.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            return Err(bad(format!(
                "invalid nanoseconds: invalid character {c:?} at position {i}"
            )));
        }
        let nine: String = n.chars().chain(std::iter::repeat('0')).take(9).collect();
        nine.parse::<i64>().unwrap_or(0)
    };
    Ok(Some(
        i128::from(secs)
            .saturating_mul(1_000_000_000)
            .saturating_add(i128::from(nanos))
            .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
    ))
}

/// Go's `strconv.ParseInt(s, 10, 64)`, with its two reasons for refusing.
fn parse_go_int(s: &str) -> Result<i64, &'static str> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("invalid syntax");
    }
    s.strip_prefix('+')
        .unwrap_or(s)
        .parse::<i64>()
        .map_err(|_| "value out of range")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(v: serde_json::Value) -> EventMessage {
        serde_json::from_value(v).unwrap()
    }

    fn filter(v: serde_json::Value) -> EventFilter {
        EventFilter::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn filters_match_as_dockerd_matches_them() {
        let svc = event(
            json!({"Type": "service", "Action": "update", "scope": "swarm",
            "Actor": {"ID": "abc123", "Attributes": {"name": "web", "replicas.new": "3"}}}),
        );
        let ctr = event(
            json!({"Type": "container", "Action": "health_status: healthy",
            "scope": "local",
            "Actor": {"ID": "f00d", "Attributes": {"name": "web.1.xyz", "image": "docker.io/library/busybox:1.36", "team": "a"}}}),
        );
        let node = event(json!({"Type": "node", "Action": "update", "scope": "swarm",
            "Actor": {"ID": "n1", "Attributes": {"name": "host-1"}}}));
        let cases = [
            (json!({}), [true, true, true]),
            (json!({"type": ["service"]}), [true, false, false]),
            (json!({"type": ["service", "node"]}), [true, false, true]),
            (json!({"scope": ["swarm"]}), [true, false, true]),
            (json!({"scope": ["local"]}), [false, true, false]),
            (json!({"event": ["update"]}), [true, false, true]),
            (json!({"event": ["health_status"]}), [false, true, false]),
            (json!({"event": ["health"]}), [false, false, false]),
            (json!({"service": ["web"]}), [true, true, false]),
            (json!({"service": ["abc"]}), [true, false, false]),
            (json!({"service": ["db"]}), [false, false, false]),
            (json!({"node": ["host-1"]}), [false, false, true]),
            (
                json!({"node": ["n1"], "type": ["node"]}),
                [false, false, true],
            ),
            (json!({"container": ["web.1"]}), [false, true, false]),
            (json!({"image": ["busybox"]}), [false, true, false]),
            (json!({"image": ["busybox:1.36"]}), [false, false, false]),
            (json!({"label": ["team=a"]}), [false, true, false]),
            (json!({"label": ["team"]}), [false, true, false]),
            (json!({"label": ["team=b"]}), [false, false, false]),
            (json!({"secret": ["s"]}), [false, false, false]),
            (json!({"whatever": ["x"]}), [true, true, true]),
        ];
        for (f, want) in cases {
            let f2 = filter(f.clone());
            let got = [&svc, &ctr, &node].map(|e| f2.matches(e));
            assert_eq!(got, want, "{f}");
        }
    }

    #[test]
    fn familiar_names() {
        for (image, want) in [
            ("docker.io/library/busybox:1.36", "busybox"),
            ("busybox", "busybox"),
            ("busybox@sha256:abc", "busybox"),
            ("localhost:5000/app:v1", "localhost:5000/app"),
            ("docker.io/acme/app:v1", "acme/app"),
            ("", ""),
        ] {
            assert_eq!(familiar(image), want, "{image}");
        }
    }

    #[test]
    fn times_parse_as_dockerd_parses_them() {
        let ok = [
            ("", None),
            ("0", Some(0)),
            ("1700000000", Some(1_700_000_000_000_000_000)),
            ("1700000000.5", Some(1_700_000_000_500_000_000)),
            ("1700000000.000000001", Some(1_700_000_000_000_000_001)),
            ("1700000000.1234567891234", Some(1_700_000_000_123_456_789)),
            ("-1", Some(-1_000_000_000)),
            ("+2", Some(2_000_000_000)),
            ("9223372036854775807", Some(i64::MAX)),
        ];
        for (v, want) in ok {
            assert_eq!(parse_time("since", v).unwrap(), want, "{v:?}");
        }
        let bad = [
            ("abc", "invalid value for 'since': invalid timestamp \"abc\": invalid seconds \"abc\": invalid syntax"),
            ("99999999999999999999", "invalid seconds \"99999999999999999999\": value out of range"),
            ("1.x", "invalid nanoseconds: invalid character 'x' at position 0"),
            ("1.123456789012345678901", "length 21 exceeds maximum 20"),
            ("2024-01-01T00:00:00Z", "invalid syntax"),
            ("10m", "invalid syntax"),
        ];
        for (v, want) in bad {
            let e = parse_time("since", v).unwrap_err();
            assert_eq!(e.status, 400, "{v}");
            assert!(e.message.contains(want), "{v}: {}", e.message);
        }
    }
}
