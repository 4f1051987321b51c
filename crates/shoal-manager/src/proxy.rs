//! Forwards the Docker Engine API calls shoal does not answer itself (`/containers`, `/images`,
//! `/exec`, ...) to the node's own Docker Engine, so `docker ps/logs -f/exec -it/attach/run`
//! work unchanged against a shoal socket.
//!
//! Three things make this more than a byte pipe:
//! - **Version prefix.** Shoal advertises the API version the docker 28 client wants (1.50) while
//!   the engine may be older (Docker 20.10 speaks 1.41 and refuses newer prefixes). The path's
//!   `/v<X.Y>` prefix is lowered to `min(requested, engine)`; no prefix stays no prefix.
//! - **Streaming.** Request and response bodies are passed frame by frame, never buffered
//!   (`logs -f`, `events`, `stats`, `load`, `cp`).
//! - **Hijacking.** `attach`, `exec start` and BuildKit's `/session` ask for `Connection: Upgrade`.
//!   The upgrade is forwarded to the engine; once both sides answered `101`, bytes are copied both
//!   ways, and a half-close on one side is passed on as a write shutdown to the other, so
//!   `echo hi | docker exec -i c cat` terminates.
//!
//! Known gaps of the 1.50 -> 1.41 rewrite (Docker 20.10 engine): the engine's JSON decoder and
//! query parsing silently ignore what 1.41 does not know, so a few newer options are lost, not
//! refused. Checked with the docker 28 CLI: `run --mac-address` (1.44 moved it into the endpoint
//! settings), `stop -s`/`restart -s` (signal, 1.42), `--health-start-interval` (1.44),
//! `--annotation` (1.43), and the initial console size of `run -it`/`exec -it` (`ConsoleSize`,
//! 1.42: the CLI's resize right after start fixes it, so only the first moments see 0x0).
//! `run --network a --network b` (several networks at create, 1.44) is refused by the engine.
//! Everything else tried (run/exec/attach/logs/cp/save/load/build (legacy builder)/stats/events/
//! network/volume/commit/...) behaves as against the engine directly.
//!
//! Every request gets its own engine connection: a hijacked stream owns its connection anyway,
//! unix-socket connects are cheap, and no pool state can go stale when the engine restarts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tracing::{debug, warn};

/// Host header sent when the client gave none; the engine ignores it but HTTP/1.1 requires one.
const DEFAULT_HOST: &str = "docker";

/// Why the proxy could not reach or understand the node's Docker Engine.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The engine's unix socket refused or does not exist (engine stopped, wrong path).
    #[error("cannot connect to the Docker Engine at {socket}: {source}")]
    Connect {
        /// The engine socket that was dialled.
        socket: PathBuf,
        /// The OS error from `connect(2)`.
        #[source]
        source: std::io::Error,
    },
    /// The socket accepted but the HTTP/1 handshake failed.
    #[error("HTTP handshake with the Docker Engine at {socket} failed: {source}")]
    Handshake {
        /// The engine socket that was dialled.
        socket: PathBuf,
        /// hyper's reason.
        #[source]
        source: hyper::Error,
    },
    /// The request could not be sent or the engine's answer could not be read.
    #[error("{method} {path} to the Docker Engine failed: {source}")]
    Request {
        /// Method of the forwarded request.
        method: Method,
        /// Path (after version rewriting) of the forwarded request.
        path: String,
        /// hyper's reason.
        #[source]
        source: hyper::Error,
    },
    /// The request to the engine could not be built (invalid URI after rewriting).
    #[error("cannot build the proxied request or response for {path}: {source}")]
    BuildRequest {
        /// The path that did not form a valid URI.
        path: String,
        /// http's reason.
        #[source]
        source: http::Error,
    },
    /// `GET /_ping` did not answer 200.
    #[error("the Docker Engine at {socket} answered GET /_ping with {status}")]
    PingStatus {
        /// The engine socket that was dialled.
        socket: PathBuf,
        /// The status the engine returned.
        status: StatusCode,
    },
    /// `GET /_ping` carried no usable `Api-Version` header, so prefixes cannot be rewritten.
    #[error(
        "the Docker Engine at {socket} sent no usable Api-Version header in /_ping (got {got:?})"
    )]
    VersionNumber {
        /// The engine socket that was dialled.
        socket: PathBuf,
        /// The header value, if any.
        got: Option<String>,
    },
}

impl ProxyError {
    /// Status that tells the Docker client whether to retry (503) or that the engine misbehaved (502).
    fn status(&self) -> StatusCode {
        match self {
            ProxyError::Connect { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BuildRequest { .. } => StatusCode::BAD_REQUEST,
            ProxyError::Handshake { .. }
            | ProxyError::Request { .. }
            | ProxyError::PingStatus { .. }
            | ProxyError::VersionNumber { .. } => StatusCode::BAD_GATEWAY,
        }
    }
}

/// An API version `major.minor`, ordered numerically (1.9 < 1.41 < 1.50).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct VersionNumber {
    major: u32,
    minor: u32,
}

impl VersionNumber {
    /// Parses `1.41`; anything else (`1`, `1.x`, `1.41.2`) is not a Docker API version.
    fn parse(s: &str) -> Option<VersionNumber> {
        let (major, minor) = s.split_once('.')?;
        if major.is_empty()
            || minor.is_empty()
            || !major.bytes().all(|b| b.is_ascii_digit())
            || !minor.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(VersionNumber {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }
}

/// Forwards Docker Engine API calls that shoal does not answer itself to the node's engine.
#[derive(Clone, Debug)]
pub struct EngineProxy {
    inner: Arc<ProxyConfig>,
}

#[derive(Debug)]
struct ProxyConfig {
    socket: PathBuf,
    api_version: String,
    api: VersionNumber,
    /// Hijacked streams open now (each holds a client and an engine connection).
    hijacks: std::sync::atomic::AtomicUsize,
}

/// How often a hijacked stream whose client has stopped sending checks that the client is
/// still there. A half-closed client (`echo hi | docker exec -i c cat`) still reads; one that
/// has gone away entirely is only noticed by writing to it, and a silent container never
/// writes, so without the check its engine connection would stay open for the container's life.
const HIJACK_PROBE: std::time::Duration = std::time::Duration::from_secs(2);

/// Counts one open hijacked stream for as long as it lives.
struct HijackOpen(Arc<ProxyConfig>);

impl HijackOpen {
    fn new(cfg: Arc<ProxyConfig>) -> HijackOpen {
        cfg.hijacks
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        HijackOpen(cfg)
    }
}

impl Drop for HijackOpen {
    fn drop(&mut self) {
        self.0
            .hijacks
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl EngineProxy {
    /// Pings the engine once so a wrong socket fails at startup and the version cap is known.
    pub async fn connect(engine_socket: PathBuf) -> Result<EngineProxy, ProxyError> {
        let req = http::Request::builder()
            .method(Method::GET)
            .uri("/_ping")
            .header(header::HOST, DEFAULT_HOST)
            .body(Empty::<Bytes>::new())
            .map_err(|source| ProxyError::BuildRequest {
                path: "/_ping".to_owned(),
                source,
            })?;
        let resp = send(&engine_socket, req).await?;
        if !resp.status().is_success() {
            return Err(ProxyError::PingStatus {
                socket: engine_socket,
                status: resp.status(),
            });
        }
        let got = resp
            .headers()
            .get("api-version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Drain the tiny "OK" body so the connection closes cleanly; its content does not matter.
        let _ = resp.into_body().collect().await;
        let Some(api) = got.as_deref().and_then(VersionNumber::parse) else {
            return Err(ProxyError::VersionNumber {
                socket: engine_socket,
                got,
            });
        };
        let api_version = got.unwrap_or_default();
        debug!(socket = %engine_socket.display(), %api_version, "connected to the Docker Engine");
        Ok(EngineProxy {
            inner: Arc::new(ProxyConfig {
                socket: engine_socket,
                api_version,
                api,
                hijacks: Default::default(),
            }),
        })
    }

    /// Hijacked streams (`attach`, `exec`) open now; each ends when its client or the engine
    /// goes away.
    pub fn open_hijacks(&self) -> usize {
        self.inner.hijacks.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The engine's own API version, the cap for every forwarded path prefix.
    pub fn engine_api_version(&self) -> &str {
        &self.inner.api_version
    }

    /// Forwards one request (axum fallback handler body). Never panics; engine unreachable -> 502/503 in Docker's {"message": "..."} format.
    pub async fn forward(&self, mut req: Request) -> Response {
        let client_upgrade = wants_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
        let method = req.method().clone();
        let original_path = req.uri().path().to_owned();
        match self.forward_inner(req, client_upgrade).await {
            Ok(resp) => {
                debug!(%method, path = %original_path, status = %resp.status(), "proxied to the engine");
                resp
            }
            Err(err) => {
                warn!(%method, path = %original_path, error = %err, "proxying to the Docker Engine failed");
                docker_error(err.status(), &err.to_string())
            }
        }
    }

    async fn forward_inner(
        &self,
        req: Request,
        client_upgrade: Option<OnUpgrade>,
    ) -> Result<Response, ProxyError> {
        let (parts, body) = req.into_parts();
        let path_and_query = rewrite_path_and_query(&parts.uri, self.inner.api);
        let uri: Uri = path_and_query.parse().map_err(|e: http::uri::InvalidUri| {
            ProxyError::BuildRequest {
                path: path_and_query.clone(),
                source: e.into(),
            }
        })?;

        let mut out = http::Request::new(body);
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() = uri;
        *out.version_mut() = Version::HTTP_11;
        *out.headers_mut() = end_to_end_headers(&parts.headers, client_upgrade.is_some());
        if !out.headers().contains_key(header::HOST) {
            out.headers_mut()
                .insert(header::HOST, HeaderValue::from_static(DEFAULT_HOST));
        }

        let mut resp = send(&self.inner.socket, out)
            .await
            .map_err(|err| match err {
                ProxyError::Request { source, .. } => ProxyError::Request {
                    method: parts.method.clone(),
                    path: path_and_query.clone(),
                    source,
                },
                other => other,
            })?;

        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let upgrade_pair = match client_upgrade {
            Some(client) if switching => Some((client, hyper::upgrade::on(&mut resp))),
            _ => None,
        };

        let (rparts, rbody) = resp.into_parts();
        let mut builder = Response::builder().status(rparts.status);
        if let Some(headers) = builder.headers_mut() {
            *headers = end_to_end_headers(&rparts.headers, upgrade_pair.is_some());
        }
        if let Some(reason) = rparts.extensions.get::<hyper::ext::ReasonPhrase>() {
            // Docker answers "101 UPGRADED"; keep the engine's wording.
            builder = builder.extension(reason.clone());
        }

        let body = match upgrade_pair {
            Some((client, engine)) => {
                let path = path_and_query.clone();
                let open = HijackOpen::new(self.inner.clone());
                tokio::spawn(async move {
                    tunnel(client, engine, &path).await;
                    drop(open);
                });
                Body::empty()
            }
            None => Body::new(rbody),
        };
        builder
            .body(body)
            .map_err(|source| ProxyError::BuildRequest {
                path: path_and_query,
                source,
            })
    }
}

/// Opens a fresh engine connection, sends `req` on it and returns the response head.
async fn send<B>(
    socket: &Path,
    req: http::Request<B>,
) -> Result<http::Response<Incoming>, ProxyError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ProxyError::Connect {
            socket: socket.to_owned(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ProxyError::Handshake {
            socket: socket.to_owned(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            debug!(error = %err, "engine connection ended with an error");
        }
    });
    let method = req.method().clone();
    let path = req.uri().to_string();
    sender
        .send_request(req)
        .await
        .map_err(|source| ProxyError::Request {
            method,
            path,
            source,
        })
}

/// Copies bytes both ways between the client's and the engine's upgraded connections; EOF on one
/// side shuts down writing on the other, and the tunnel ends when both directions have ended,
/// or when a client that stopped sending turns out to be gone (see [`HIJACK_PROBE`]).
async fn tunnel(client: OnUpgrade, engine: OnUpgrade, path: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (client, engine) = match tokio::try_join!(client, engine) {
        Ok(pair) => pair,
        Err(err) => {
            warn!(%path, error = %err, "hijacked connection could not be upgraded");
            return;
        }
    };
    let (mut client_r, mut client_w) = tokio::io::split(TokioIo::new(client));
    let (mut engine_r, mut engine_w) = tokio::io::split(TokioIo::new(engine));
    let client_done = std::sync::atomic::AtomicBool::new(false);
    let up = async {
        let sent = tokio::io::copy(&mut client_r, &mut engine_w).await;
        let _ = engine_w.shutdown().await;
        client_done.store(true, std::sync::atomic::Ordering::SeqCst);
        sent
    };
    let down = async {
        let mut buf = vec![0u8; 32 << 10];
        let mut sent: u64 = 0;
        let mut probe = tokio::time::interval(HIJACK_PROBE);
        loop {
            tokio::select! {
                n = engine_r.read(&mut buf) => match n {
                    Ok(0) | Err(_) => {
                        let _ = client_w.shutdown().await;
                        return Ok(sent);
                    }
                    Ok(n) => {
                        client_w.write_all(&buf[..n]).await?;
                        sent = sent.saturating_add(n as u64);
                    }
                },
                _ = probe.tick() => {
                    // An empty write fails (EPIPE) once the client has closed its end entirely,
                    // and succeeds while it only half-closed.
                    if client_done.load(std::sync::atomic::Ordering::SeqCst) {
                        let _empty: usize = client_w.write(&[]).await?;
                    }
                }
            }
        }
    };
    let (up, down): (std::io::Result<u64>, std::io::Result<u64>) = tokio::join!(up, down);
    match (up, down) {
        (Ok(to_engine), Ok(to_client)) => {
            debug!(%path, to_engine, to_client, "hijacked connection closed");
        }
        (Err(err), _) | (_, Err(err)) => {
            debug!(%path, error = %err, "hijacked connection ended with an error")
        }
    }
}

/// Whether the client asks to hijack the connection (`Connection: Upgrade` + `Upgrade: ...`).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_tokens(headers).any(|t| t == "upgrade")
}

/// The comma-separated, lower-cased tokens of every `Connection` header.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// Headers that describe one hop's connection and must not be passed on (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Copies `headers` without the hop-by-hop ones; for an upgrade, `Connection: Upgrade` and the
/// `Upgrade` header are kept because the next hop must upgrade too.
fn end_to_end_headers(headers: &HeaderMap, upgrade: bool) -> HeaderMap {
    let named: Vec<String> = connection_tokens(headers).collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let hop = HOP_BY_HOP.contains(name)
            || name == header::UPGRADE
            || named.iter().any(|t| t == name.as_str());
        if !hop {
            out.append(name.clone(), value.clone());
        }
    }
    if upgrade {
        if let Some(proto) = headers.get(header::UPGRADE) {
            out.insert(header::UPGRADE, proto.clone());
            out.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        }
    }
    out
}

/// Lowers a `/v<X.Y>` path prefix to at most the engine's version and keeps the query as is.
fn rewrite_path_and_query(uri: &Uri, engine: VersionNumber) -> String {
    let path = rewrite_path(uri.path(), engine);
    match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    }
}

/// `/v1.50/containers/json` -> `/v1.41/containers/json` for a 1.41 engine; other paths unchanged.
fn rewrite_path(path: &str, engine: VersionNumber) -> String {
    let Some(rest) = path.strip_prefix("/v") else {
        return path.to_owned();
    };
    let (version, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match VersionNumber::parse(version) {
        Some(requested) if requested > engine => {
            format!("/v{}.{}{}", engine.major, engine.minor, tail)
        }
        _ => path.to_owned(),
    }
}

/// An error in Docker's wire format, which the CLI prints as "Error response from daemon: ...".
fn docker_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "message": message })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const V141: VersionNumber = VersionNumber {
        major: 1,
        minor: 41,
    };

    #[test]
    fn parses_versions_numerically() {
        assert!(VersionNumber::parse("1.9") < VersionNumber::parse("1.41"));
        assert!(VersionNumber::parse("1.50") > VersionNumber::parse("1.41"));
        for bad in ["", "1", "1.", ".1", "1.x", "1.41.2", "v1.41", "1.-4"] {
            assert_eq!(VersionNumber::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rewrites_only_newer_version_prefixes() {
        let cases = [
            ("/v1.50/containers/json", "/v1.41/containers/json"),
            ("/v1.41/containers/json", "/v1.41/containers/json"),
            ("/v1.24/containers/json", "/v1.24/containers/json"),
            ("/v2.0/info", "/v1.41/info"),
            ("/v1.50", "/v1.41"),
            ("/containers/json", "/containers/json"),
            ("/_ping", "/_ping"),
            ("/version", "/version"),
            ("/vfoo/containers/json", "/vfoo/containers/json"),
            ("/v1.50x/info", "/v1.50x/info"),
        ];
        for (input, want) in cases {
            assert_eq!(rewrite_path(input, V141), want, "{input}");
        }
    }

    #[test]
    fn keeps_the_query() {
        let uri: Uri = "/v1.50/containers/json?all=1&filters=%7B%7D"
            .parse()
            .unwrap();
        assert_eq!(
            rewrite_path_and_query(&uri, V141),
            "/v1.41/containers/json?all=1&filters=%7B%7D"
        );
    }

    #[test]
    fn drops_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Hop"),
        );
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        let out = end_to_end_headers(&h, false);
        assert_eq!(out.len(), 2);
        assert!(out.contains_key(header::CONTENT_TYPE));
        assert!(out.contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn keeps_upgrade_headers_for_hijack() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
        assert!(wants_upgrade(&h));
        let out = end_to_end_headers(&h, true);
        assert_eq!(out.get(header::UPGRADE).unwrap(), "tcp");
        assert_eq!(out.get(header::CONNECTION).unwrap(), "Upgrade");
        assert!(end_to_end_headers(&h, false).is_empty());

        let mut only_upgrade = HeaderMap::new();
        only_upgrade.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
        assert!(!wants_upgrade(&only_upgrade));
    }
}
