//! A small client for a shoal node's API socket, for the `shoal` commands that go beyond the
//! docker CLI (`shoal service history`).

use anyhow::{anyhow, bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use std::path::{Path, PathBuf};

/// The socket to talk to: `--host`, else `DOCKER_HOST` (unix://...), else shoal's default.
pub fn socket(host: Option<&str>) -> PathBuf {
    let from_env = std::env::var("DOCKER_HOST").ok();
    let h = host.map(str::to_string).or(from_env);
    match h {
        Some(h) => PathBuf::from(h.strip_prefix("unix://").unwrap_or(&h)),
        None => PathBuf::from("/run/shoal/docker.sock"),
    }
}

/// One request; returns the decoded JSON body, or the API's error message.
pub async fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("cannot reach a shoal node at {}", socket.display()))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let data = body.map(|b| b.to_string()).unwrap_or_default();
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "shoal")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(data)))?;
    let resp = send.send_request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let v: serde_json::Value = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            anyhow!(
                "{path}: not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })?
    };
    if !status.is_success() {
        let msg = v["message"].as_str().unwrap_or("no message");
        bail!("Error response from daemon: {msg}");
    }
    Ok(v)
}

/// An API time (RFC 3339) as the `shoal` tables show it, "-" when absent or unreadable.
pub fn short_time(t: Option<&str>) -> String {
    t.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.to_utc().format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "-".into())
}

/// Prints `rows` under `header` in left-aligned columns, as the docker CLI's tables look.
pub fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let header = header.map(str::to_string);
    let mut widths = [0usize; N];
    for row in std::iter::once(&header).chain(rows.iter()) {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    for row in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}
