//! `GET /services/{id}/logs` and `/tasks/{id}/logs` (`docker service logs`): the logs of the
//! tasks on every node, gathered by the leader's log broker ([`crate::logbroker`]) from each
//! node's agent, printed as dockerd prints service logs: the engine's multiplexed stream
//! (stream 1 stdout, 2 stderr, 3 the error that cut the stream short), or raw for a service
//! with a TTY; with `timestamps` each line starts with its time, with `details` with the
//! `com.docker.swarm.*` attributes the docker CLI turns into its `name.slot@node` prefix.

use super::{ApiVersion, AppState, Result};
use crate::db;
use crate::logbroker::{LogItem, LogLine, Subscription};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use shoal_api::logs::{LogOptions, LogSelector, LogStream, LogTime};
use shoal_api::objects::{StoredService, StoredTask};
use shoal_api::ApiError;
use std::collections::HashMap;

/// `GET /services/{id}/logs`.
pub async fn service_logs(
    State(d): State<AppState>,
    Path(key): Path<String>,
    version: Option<Extension<ApiVersion>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let req = LogRequest::parse(&q)?;
    let m = d.manager().await?;
    let svc = db::find::<StoredService>(&m.store, &key)?.obj;
    let tty = svc
        .spec()
        .task_template
        .as_ref()
        .and_then(|t| t.container_spec.as_ref())
        .and_then(|c| c.tty)
        .unwrap_or(false);
    let selector = LogSelector {
        service_ids: vec![svc.id().to_string()],
        task_ids: Vec::new(),
    };
    let sub = m.logs.subscribe(selector, req.options.clone()).await?;
    Ok(answer(sub, req, tty, version))
}

/// `GET /tasks/{id}/logs`.
pub async fn task_logs(
    State(d): State<AppState>,
    Path(key): Path<String>,
    version: Option<Extension<ApiVersion>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let req = LogRequest::parse(&q)?;
    let m = d.manager().await?;
    let task = db::find::<StoredTask>(&m.store, &key)?.obj;
    let tty = task
        .task
        .spec
        .as_ref()
        .and_then(|s| s.container_spec.as_ref())
        .and_then(|c| c.tty)
        .unwrap_or(false);
    let selector = LogSelector {
        service_ids: Vec::new(),
        task_ids: vec![task.id().to_string()],
    };
    let sub = m.logs.subscribe(selector, req.options.clone()).await?;
    Ok(answer(sub, req, tty, version))
}

/// What the client asked for: which lines (for the nodes) and how to print them (here).
#[derive(Debug, Clone, PartialEq, Eq)]
struct LogRequest {
    options: LogOptions,
    timestamps: bool,
    details: bool,
}

impl LogRequest {
    /// The query as dockerd reads it for service logs, refusing what it refuses before its
    /// stream starts (once it starts, the status is 200 and an error can no longer be told):
    /// no stream chosen, a `tail` that is not a count or `all`, a `since` or `until` that is not
    /// a time. In the words of moby's swarm router and `Cluster.ServiceLogs`; dockerd answers
    /// 500 for the last ones, shoal 400.
    fn parse(q: &HashMap<String, String>) -> std::result::Result<LogRequest, ApiError> {
        let flag = |k: &str| super::bool_param(q, k);
        let (stdout, stderr) = (flag("stdout"), flag("stderr"));
        if !stdout && !stderr {
            return Err(ApiError::invalid(
                "Bad parameters: you must choose at least one stream",
            ));
        }
        let tail = match q.get("tail").map(String::as_str) {
            None | Some("") | Some("all") => None,
            Some(t) => match t.parse::<i64>() {
                Ok(n) if n < 0 => {
                    return Err(ApiError::invalid("negative tail values not supported"))
                }
                Ok(n) => Some(n.unsigned_abs()),
                Err(_) => {
                    return Err(ApiError::invalid(
                        "tail value must be a positive integer or \"all\"",
                    ))
                }
            },
        };
        let time = |k: &str| -> std::result::Result<Option<LogTime>, ApiError> {
            match q.get(k).filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(v) => LogTime::parse_query(v).map(Some).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "could not parse {k} timestamp: {v:?} is not seconds[.nanoseconds] since the Unix epoch nor an RFC 3339 time"
                    ))
                }),
            }
        };
        Ok(LogRequest {
            options: LogOptions {
                follow: flag("follow"),
                stdout,
                stderr,
                tail,
                since: time("since")?,
                until: time("until")?,
            },
            timestamps: flag("timestamps"),
            details: flag("details"),
        })
    }
}

/// The fuzzer's way in (`super::read_query`): whether the query reads as a log request.
pub(super) fn read_for_fuzz(q: &HashMap<String, String>) -> bool {
    LogRequest::parse(q).is_ok()
}

/// The stream dockerd answers: multiplexed unless the tasks have a TTY; the header says so
/// from API 1.42 (before, the same bytes went as a raw stream).
fn answer(
    sub: Subscription,
    req: LogRequest,
    tty: bool,
    version: Option<Extension<ApiVersion>>,
) -> Response {
    let version = version.and_then(|Extension(ApiVersion(v))| v);
    let since_142 = version.as_deref().is_none_or(|v| {
        let (major, minor) = v.split_once('.').unwrap_or((v, "0"));
        (
            major.parse::<u32>().unwrap_or(0),
            minor.parse::<u32>().unwrap_or(0),
        ) >= (1, 42)
    });
    let content_type = if !tty && since_142 {
        "application/vnd.docker.multiplexed-stream"
    } else {
        "application/vnd.docker.raw-stream"
    };
    let printer = Printer {
        timestamps: req.timestamps,
        details: req.details,
        mux: !tty,
    };
    let body = futures::stream::unfold((sub, printer), |(mut sub, p)| async move {
        loop {
            let out = match sub.next().await? {
                LogItem::Lines(lines) => p.lines(&lines),
                LogItem::Error(e) => p.error(&e),
            };
            if !out.is_empty() {
                return Some((Ok::<Bytes, std::io::Error>(Bytes::from(out)), (sub, p)));
            }
        }
    });
    (
        StatusCode::OK,
        [("content-type", content_type)],
        Body::from_stream(body),
    )
        .into_response()
}

/// Prints lines as dockerd's `WriteLogStream` does.
#[derive(Debug, Clone, Copy)]
struct Printer {
    timestamps: bool,
    details: bool,
    /// One frame per line (stream 1 or 2), or the bare lines (a TTY's).
    mux: bool,
}

/// What Go's `url.QueryEscape` leaves alone: letters, digits and `-_.~` (a space becomes `+`).
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn query_escape(s: &str) -> String {
    utf8_percent_encode(s, QUERY)
        .to_string()
        .replace("%20", "+")
}

/// The attributes dockerd puts before a service's log line with `details`: the swarm context,
/// sorted by key, each part query-escaped.
fn details(l: &LogLine) -> String {
    [
        ("com.docker.swarm.node.id", &l.node_id),
        ("com.docker.swarm.service.id", &l.service_id),
        ("com.docker.swarm.task.id", &l.task_id),
    ]
    .iter()
    .map(|(k, v)| format!("{}={}", query_escape(k), query_escape(v)))
    .collect::<Vec<_>>()
    .join(",")
}

impl Printer {
    fn lines(&self, lines: &[LogLine]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            let mut text = Vec::with_capacity(l.data.len() + 128);
            if self.timestamps {
                text.extend_from_slice(l.time.rfc3339_fixed().as_bytes());
                text.push(b' ');
            }
            if self.details {
                text.extend_from_slice(details(l).as_bytes());
                text.push(b' ');
            }
            text.extend_from_slice(&l.data);
            let stream = match l.stream {
                LogStream::Stdout => 1,
                LogStream::Stderr => 2,
            };
            self.write(&mut out, stream, &text);
        }
        out
    }

    /// The error that ends the stream, on the engine's system-error stream (3).
    fn error(&self, e: &str) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(
            &mut out,
            3,
            format!("Error grabbing logs: {e}\n").as_bytes(),
        );
        out
    }

    fn write(&self, out: &mut Vec<u8>, stream: u8, payload: &[u8]) {
        if self.mux {
            // Lines are at most 16 KiB plus the prefixes; an error message is short.
            let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&[stream, 0, 0, 0]);
            out.extend_from_slice(&len.to_be_bytes());
        }
        out.extend_from_slice(payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(stream: LogStream, data: &str) -> LogLine {
        LogLine {
            node_id: "node1".into(),
            service_id: "svc1".into(),
            task_id: "task1".into(),
            stream,
            time: LogTime {
                secs: 1_704_201_817,
                nanos: 5,
            },
            data: data.as_bytes().to_vec(),
        }
    }

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn details_false_prints_the_bare_line_and_true_the_swarm_attributes() {
        let l = [line(LogStream::Stdout, "hello\n")];
        let bare = Printer {
            timestamps: false,
            details: false,
            mux: true,
        };
        assert_eq!(bare.lines(&l), b"\x01\0\0\0\0\0\0\x06hello\n");
        let detailed = Printer {
            details: true,
            ..bare
        };
        let want = "com.docker.swarm.node.id=node1,com.docker.swarm.service.id=svc1,com.docker.swarm.task.id=task1 hello\n";
        let out = detailed.lines(&l);
        assert_eq!(&out[..4], b"\x01\0\0\0");
        assert_eq!(
            u32::from_be_bytes(out[4..8].try_into().unwrap()) as usize,
            want.len()
        );
        assert_eq!(&out[8..], want.as_bytes());
    }

    #[test]
    fn timestamps_come_first_and_stderr_and_errors_have_their_streams() {
        let p = Printer {
            timestamps: true,
            details: true,
            mux: true,
        };
        let out = p.lines(&[line(LogStream::Stderr, "oops\n")]);
        assert_eq!(out[0], 2);
        assert!(
            out[8..].starts_with(b"2024-01-02T13:23:37.000000005Z com.docker.swarm.node.id=node1,")
        );
        let e = p.error("node x disconnected");
        assert_eq!(e[0], 3);
        assert_eq!(&e[8..], b"Error grabbing logs: node x disconnected\n");
        // A TTY's stream: the bare text.
        let raw = Printer { mux: false, ..p };
        let out = raw.lines(&[line(LogStream::Stdout, "hi\r\n")]);
        assert!(out.ends_with(b" hi\r\n") && out.starts_with(b"2024-"));
    }

    #[test]
    fn attribute_values_are_query_escaped_as_go_does() {
        assert_eq!(query_escape("a b/c=d,e~f.g-h_i"), "a+b%2Fc%3Dd%2Ce~f.g-h_i");
    }

    #[test]
    fn the_query_is_read_as_dockerd_reads_it() {
        let r = LogRequest::parse(&query(&[
            ("stdout", "True"),
            ("stderr", "0"),
            ("tail", "10"),
            ("since", "1704201817.5"),
            ("until", "2024-01-02T13:24:00Z"),
            ("follow", "1"),
            ("timestamps", "yes"),
            ("details", "false"),
        ]))
        .unwrap();
        assert_eq!(
            r.options,
            LogOptions {
                follow: true,
                stdout: true,
                stderr: false,
                tail: Some(10),
                since: Some(LogTime {
                    secs: 1_704_201_817,
                    nanos: 500_000_000
                }),
                until: Some(LogTime {
                    secs: 1_704_201_840,
                    nanos: 0
                }),
            }
        );
        assert!(r.timestamps && !r.details);
        let all = LogRequest::parse(&query(&[("stderr", "1"), ("tail", "all")])).unwrap();
        assert_eq!(all.options.tail, None);
        for (q, msg) in [
            (
                vec![("stdout", "no")],
                "you must choose at least one stream",
            ),
            (vec![("stdout", "1"), ("tail", "x")], "positive integer"),
            (vec![("stdout", "1"), ("tail", "-1")], "negative tail"),
            (
                vec![("stdout", "1"), ("since", "10m")],
                "could not parse since",
            ),
            (
                vec![("stdout", "1"), ("until", "soon")],
                "could not parse until",
            ),
        ] {
            let e = LogRequest::parse(&query(&q)).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(msg), "{q:?}: {}", e.message);
        }
    }
}
