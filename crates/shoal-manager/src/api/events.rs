//! `GET /events`: on a manager, the swarm's events and the engine's merged
//! ([`crate::events::stream`]); elsewhere (a worker, a node outside any swarm) the engine's
//! alone, as before.

use super::filters::Filters;
use super::{AppState, Error};
use crate::events::filter::{parse_time, EventFilter};
use crate::events::stream::{self, Framing, Sources};
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use shoal_api::ApiError;
use std::collections::HashMap;

/// `GET /events`.
pub async fn events(State(d): State<AppState>, req: Request) -> Response {
    let Ok(m) = d.manager().await else {
        return super::proxy(State(d), req).await;
    };
    let q = Query::<HashMap<String, String>>::try_from_uri(req.uri())
        .map(|Query(q)| q)
        .unwrap_or_default();
    let parsed = match parse(&q, req.headers()) {
        Ok(p) => p,
        Err(e) => return Error(e).into_response(),
    };
    let (request, content_type) = parsed;
    let sources = Sources {
        store: m.store.clone(),
        stop: m.stopping(),
        engine: d.engine.clone(),
    };
    let body = stream::events(sources, request, now_nanos());
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response()
}

/// The request as dockerd reads it, in its order: `since`, `until`, their order, `filters`;
/// and the content type to answer with.
fn parse(
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<(stream::Request, &'static str), ApiError> {
    let raw = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
    let since = parse_time("since", raw("since"))?;
    let until = parse_time("until", raw("until"))?;
    if let (Some(u), Some(s)) = (until, since) {
        if u < s {
            return Err(ApiError::invalid(format!(
                "`since` time ({}) cannot be after `until` time ({})",
                raw("since"),
                raw("until")
            )));
        }
    }
    let filters = Filters::parse_any(q)?;
    let (framing, content_type) = negotiate(headers);
    Ok((
        stream::Request {
            since,
            until,
            filter: EventFilter::new(filters.0),
            raw_filters: q.get("filters").filter(|f| !f.is_empty()).cloned(),
            framing,
        },
        content_type,
    ))
}

/// The fuzzer's way in (`super::read_query`): the query read as an events request, its filter
/// run over one event of each scope.
pub(super) fn read_for_fuzz(q: &HashMap<String, String>) -> bool {
    let Ok((req, _)) = parse(q, &HeaderMap::new()) else {
        return false;
    };
    let mut hits = 0;
    for (typ, scope) in [
        ("service", "swarm"),
        ("container", "local"),
        ("node", "swarm"),
    ] {
        let e = serde_json::from_value(serde_json::json!({
            "Type": typ, "Action": "update", "scope": scope, "time": 1_700_000_000,
            "Actor": {"ID": "abc123", "Attributes": {"name": "web", "com.docker.stack.namespace": "s"}}
        }));
        if let Ok(e) = e {
            hits += usize::from(req.filter.matches(&e));
        }
    }
    hits < 4
}

/// dockerd's choice of content type (`contenttype.MatchAcceptStrict` over its JSON stream
/// types, else `application/json` below API 1.52): the offer the client accepts with the
/// highest weight, the first offer on a tie.
fn negotiate(headers: &HeaderMap) -> (Framing, &'static str) {
    const OFFERS: [(&str, Framing); 3] = [
        ("application/jsonl", Framing::Lines),
        ("application/x-ndjson", Framing::Lines),
        ("application/json-seq", Framing::Seq),
    ];
    let specs: Vec<(String, f32)> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|spec| {
            let mut parts = spec.split(';');
            let value = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (value, q)
        })
        .collect();
    let mut best: Option<(&'static str, Framing, f32)> = None;
    for (offer, framing) in OFFERS {
        for (value, q) in &specs {
            if *q <= 0.0 || value != offer {
                continue;
            }
            if best.is_none_or(|(_, _, b)| *q > b) {
                best = Some((offer, framing, *q));
            }
        }
    }
    match best {
        Some((offer, framing, _)) => (framing, offer),
        None => (Framing::Lines, "application/json"),
    }
}

/// Now, in Unix nanoseconds.
fn now_nanos() -> i64 {
    let now = chrono::Utc::now();
    now.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for x in v {
            h.append(header::ACCEPT, x.parse().unwrap());
        }
        h
    }

    #[test]
    fn content_type_as_dockerd_negotiates_it() {
        let cases: [(&[&str], &str); 6] = [
            (&[], "application/json"),
            (&["*/*"], "application/json"),
            (
                &[
                    "application/jsonl",
                    "application/x-ndjson;q=0.9",
                    "application/json-seq;q=0.5",
                ],
                "application/jsonl",
            ),
            (&["application/json-seq"], "application/json-seq"),
            (
                &["application/x-ndjson;q=0.2, application/json-seq;q=0.8"],
                "application/json-seq",
            ),
            (&["application/jsonl;q=0"], "application/json"),
        ];
        for (h, want) in cases {
            assert_eq!(negotiate(&accept(h)).1, want, "{h:?}");
        }
        assert_eq!(
            negotiate(&accept(&["application/json-seq"])).0,
            Framing::Seq
        );
    }

    #[test]
    fn since_after_until_is_refused_in_dockerd_words() {
        let q = HashMap::from([
            ("since".to_string(), "20".to_string()),
            ("until".to_string(), "10".to_string()),
        ]);
        let e = parse(&q, &HeaderMap::new()).unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(
            e.message,
            "`since` time (20) cannot be after `until` time (10)"
        );
        let q = HashMap::from([("filters".to_string(), "{nope".to_string())]);
        assert_eq!(parse(&q, &HeaderMap::new()).unwrap_err().status, 400);
        let q = HashMap::from([(
            "filters".to_string(),
            r#"{"type":["service"],"anything":["x"]}"#.to_string(),
        )]);
        assert!(
            parse(&q, &HeaderMap::new()).is_ok(),
            "dockerd takes any key"
        );
    }
}
