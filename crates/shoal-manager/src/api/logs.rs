//! `docker service logs` / task logs: the engine's container logs of each task, with the swarm
//! details (node, service, task) the CLI needs to label lines.

use super::{AppState, Result};
use crate::db;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use shoal_api::objects::{StoredService, StoredTask};
use shoal_api::ApiError;
use std::collections::HashMap;
use tokio::sync::mpsc;

/// `GET /services/{id}/logs`.
pub async fn service_logs(
    State(d): State<AppState>,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    logs_of(d, q, |store| {
        let svc = db::find::<StoredService>(store, &key)?;
        Ok(db::list::<StoredTask>(store)
            .into_iter()
            .map(|t| t.obj)
            .filter(|t| t.service_id() == svc.obj.id())
            .collect())
    })
    .await
}

/// `GET /tasks/{id}/logs`.
pub async fn task_logs(
    State(d): State<AppState>,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    logs_of(d, q, |store| {
        Ok(vec![db::find::<StoredTask>(store, &key)?.obj])
    })
    .await
}

/// What both log endpoints do around choosing their tasks: refuse bad options before anything
/// else, then stream the logs of the tasks `tasks` picks.
async fn logs_of(
    d: AppState,
    q: HashMap<String, String>,
    tasks: impl FnOnce(&shoal_store::Store) -> std::result::Result<Vec<StoredTask>, ApiError>,
) -> Result<Response> {
    check_options(&q)?;
    let m = d.manager().await?;
    let tasks = tasks(&m.store)?;
    stream(d, tasks, q).await
}

/// Refuses what dockerd refuses before its log stream starts (once it starts, the status is
/// 200 and an error can no longer be told): no stream chosen, a `tail` that is not a count or
/// `all`, a `since` that is not a Unix time (`seconds[.nanoseconds]`). In the words of moby's
/// swarm router and `Cluster.ServiceLogs`; dockerd answers 500 for the last two, shoal 400.
fn check_options(q: &HashMap<String, String>) -> std::result::Result<(), ApiError> {
    let flag = |k: &str| super::bool_param(q, k);
    if !flag("stdout") && !flag("stderr") {
        return Err(ApiError::invalid(
            "Bad parameters: you must choose at least one stream",
        ));
    }
    match q.get("tail").map(String::as_str) {
        None | Some("") | Some("all") => {}
        Some(t) => match t.parse::<i64>() {
            Ok(n) if n < 0 => return Err(ApiError::invalid("negative tail values not supported")),
            Ok(_) => {}
            Err(_) => {
                return Err(ApiError::invalid(
                    "tail value must be a positive integer or \"all\"",
                ))
            }
        },
    }
    if let Some(since) = q.get("since").filter(|s| !s.is_empty()) {
        let (secs, nanos) = since.split_once('.').unwrap_or((since, "0"));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let secs = secs.strip_prefix('-').unwrap_or(secs);
        if !digits(secs) || !digits(nanos) {
            return Err(ApiError::invalid(format!(
                "could not parse since timestamp: {since:?} is not seconds[.nanoseconds] since the Unix epoch"
            )));
        }
    }
    Ok(())
}

fn details(t: &StoredTask) -> String {
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    format!(
        "com.docker.swarm.node.id={},com.docker.swarm.service.id={},com.docker.swarm.task.id={}",
        enc(t.node_id().unwrap_or_default()),
        enc(t.service_id()),
        enc(t.id())
    )
}

/// The longest log line kept whole (16 KiB, where Docker's log drivers split lines).
const MAX_LINE: usize = 16 << 10;

fn frame(stream: u8, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&[stream, 0, 0, 0]);
    // Payloads are single lines, at most MAX_LINE plus the details; saturate all the same.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

async fn stream(
    d: AppState,
    tasks: Vec<StoredTask>,
    q: HashMap<String, String>,
) -> Result<Response> {
    let flag = |k: &str| super::bool_param(&q, k);
    let timestamps = flag("timestamps");
    let mut params = vec![
        ("stdout", flag("stdout")),
        ("stderr", flag("stderr")),
        ("follow", flag("follow")),
        ("timestamps", timestamps),
    ]
    .into_iter()
    .map(|(k, v)| format!("{k}={}", if v { 1 } else { 0 }))
    .collect::<Vec<_>>();
    for k in ["tail", "since"] {
        if let Some(v) = q.get(k) {
            params.push(format!(
                "{k}={}",
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            ));
        }
    }
    let query = params.join("&");
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    for t in tasks {
        let Some(cid) = t
            .task
            .status
            .as_ref()
            .and_then(|s| s.container_status.as_ref())
            .and_then(|c| c.container_id.clone())
        else {
            continue;
        };
        let d = d.clone();
        let tx = tx.clone();
        let query = query.clone();
        tokio::spawn(async move {
            let uri = format!(
                "/v{}/containers/{cid}/logs?{query}",
                d.engine.engine_api_version()
            );
            let Ok(req) = axum::http::Request::builder().uri(uri).body(Body::empty()) else {
                return;
            };
            let resp = d.engine.forward(req).await;
            if !resp.status().is_success() {
                return;
            }
            let det = details(&t);
            let mut body = resp.into_body().into_data_stream();
            let mut buf: Vec<u8> = Vec::new();
            let mut partial: [Vec<u8>; 3] = Default::default();
            loop {
                // A client that goes away ends the stream here, with the engine's connection,
                // even when the container writes nothing more (follow mode waits forever).
                let chunk = tokio::select! {
                    _ = tx.closed() => return,
                    c = body.next() => c,
                };
                let Some(Ok(chunk)) = chunk else { break };
                buf.extend_from_slice(&chunk);
                // Demultiplex the engine's frames, then re-frame line by line with the details.
                while buf.len() >= 8 {
                    let size = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
                    if buf.len() < 8 + size {
                        break;
                    }
                    let stream_id = buf[0].min(2);
                    let payload: Vec<u8> = buf[8..8 + size].to_vec();
                    buf.drain(..8 + size);
                    let pend = &mut partial[stream_id as usize];
                    pend.extend_from_slice(&payload);
                    // A line is cut at MAX_LINE, as Docker's log drivers cut it, so output
                    // without newlines cannot grow the buffer without bound.
                    while let Some(pos) = pend
                        .iter()
                        .position(|b| *b == b'\n')
                        .or((pend.len() >= MAX_LINE).then_some(MAX_LINE - 1))
                    {
                        let line: Vec<u8> = pend.drain(..=pos).collect();
                        let out = decorate(&line, &det, timestamps);
                        if tx.send(frame(stream_id.max(1), &out)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            for (i, pend) in partial.iter().enumerate() {
                if !pend.is_empty() {
                    let mut line = pend.clone();
                    line.push(b'\n');
                    let _ = tx
                        .send(frame((i as u8).max(1), &decorate(&line, &det, timestamps)))
                        .await;
                }
            }
        });
    }
    drop(tx);
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<Bytes, std::io::Error>(b), rx))
    });
    Ok((
        StatusCode::OK,
        [("content-type", "application/vnd.docker.multiplexed-stream")],
        Body::from_stream(body),
    )
        .into_response())
}

/// `ts msg` becomes `ts details msg`; `msg` becomes `details msg`.
fn decorate(line: &[u8], details: &str, timestamps: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len() + details.len() + 2);
    if timestamps {
        if let Some(sp) = line.iter().position(|b| *b == b' ') {
            out.extend_from_slice(&line[..=sp]);
            out.extend_from_slice(details.as_bytes());
            out.push(b' ');
            out.extend_from_slice(&line[sp + 1..]);
            return out;
        }
    }
    out.extend_from_slice(details.as_bytes());
    out.push(b' ');
    out.extend_from_slice(line);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_go_after_the_timestamp() {
        assert_eq!(
            decorate(b"2024-01-01T00:00:00Z hello\n", "a=b", true),
            b"2024-01-01T00:00:00Z a=b hello\n"
        );
        assert_eq!(decorate(b"hello\n", "a=b", false), b"a=b hello\n");
    }
}
