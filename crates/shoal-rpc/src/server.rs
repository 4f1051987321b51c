//! The listening side: TLS handshakes off the accept loop, then tonic with the peer's chain
//! attached to every request.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use rustls::pki_types::CertificateDer;
use shoal_pki::{identity_of_der, NodeIdentity, Role};
use shoal_store::RpcKind;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};

use crate::pb;
use crate::{
    RpcError, MAX_CA_MESSAGE, MAX_LOG_ITEMS, MAX_LOG_REQUEST, MAX_RAFT_MESSAGE, MAX_SESSION_DOWN,
    MAX_SESSION_UP,
};

/// Who is calling: the socket address and the certificate chain it presented (empty if none).
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    /// The peer's certificates, leaf first, already verified against the cluster CA.
    pub certs: Arc<Vec<CertificateDer<'static>>>,
}

impl PeerInfo {
    /// The verified leaf certificate, if the peer presented one.
    pub fn leaf(&self) -> Option<&[u8]> {
        self.certs.first().map(|c| c.as_ref())
    }

    /// The node identity in the peer's certificate; refused (and logged) without one.
    pub fn node(&self, call: &str) -> Result<NodeIdentity, Status> {
        let Some(leaf) = self.leaf() else {
            return Err(self.refuse(call, "no client certificate"));
        };
        identity_of_der(leaf)
            .map_err(|e| self.refuse(call, &format!("unreadable node certificate: {e}")))
    }

    /// The caller's identity, which must be a manager's.
    pub fn manager(&self, call: &str) -> Result<NodeIdentity, Status> {
        let id = self.node(call)?;
        if id.role != Role::Manager {
            return Err(self.refuse(
                call,
                &format!("node {} is a worker; this call is for managers", id.node_id),
            ));
        }
        Ok(id)
    }

    /// Logs a refused call with its reason (rate-limited per peer and call) and builds the
    /// answer.
    pub fn refuse(&self, call: &str, reason: &str) -> Status {
        self.log_refusal(call, reason);
        Status::permission_denied(reason.to_string())
    }

    /// Logs a call refused for want of a client certificate and builds the answer.
    fn refuse_unauthenticated(&self) -> Status {
        let reason = "this call needs a cluster node certificate";
        self.log_refusal("any but the CA", reason);
        Status::unauthenticated(reason)
    }

    /// One line per peer address and call every [`REFUSAL_LOG_EVERY`], with how many were
    /// not logged since: a peer hammering the port cannot flood the log.
    fn log_refusal(&self, call: &str, reason: &str) {
        let key = (self.remote.map(|a| a.ip()), call.to_string());
        let log = REFUSALS.get_or_init(Default::default);
        if let Some(suppressed) = log.lock().due(key, std::time::Instant::now()) {
            tracing::warn!(peer = ?self.remote, call, reason, suppressed, "refused an RPC");
        }
    }
}

/// How often at most a refusal is logged per peer address and call (or reason).
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// A refused RPC: the peer's address and the call.
type RpcRefusal = (Option<std::net::IpAddr>, String);

static REFUSALS: std::sync::OnceLock<parking_lot::Mutex<RefusalLog<RpcRefusal>>> =
    std::sync::OnceLock::new();

/// When each refusal key (a peer address and what was refused) was last logged, and how many
/// came since: every listener that refuses strangers logs through one, so a peer hammering a
/// port cannot flood the log.
pub struct RefusalLog<K> {
    seen: std::collections::HashMap<K, (std::time::Instant, u64)>,
}

impl<K> Default for RefusalLog<K> {
    fn default() -> Self {
        RefusalLog {
            seen: std::collections::HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq> RefusalLog<K> {
    /// Keys remembered at most; past this the record starts over (a few extra lines).
    const MAX: usize = 4096;

    /// `Some(refusals not logged since the last line)` if this one is to be logged.
    pub fn due(&mut self, key: K, now: std::time::Instant) -> Option<u64> {
        if self.seen.len() >= Self::MAX && !self.seen.contains_key(&key) {
            self.seen.clear();
        }
        match self.seen.get_mut(&key) {
            Some((at, n)) if now.saturating_duration_since(*at) < REFUSAL_LOG_EVERY => {
                *n = n.saturating_add(1);
                None
            }
            Some((at, n)) => {
                let suppressed = *n;
                *at = now;
                *n = 0;
                Some(suppressed)
            }
            None => {
                self.seen.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// The server's TLS settings, swappable while it runs (certificate renewal).
pub type ServerTls = Arc<parking_lot::RwLock<Arc<rustls::ServerConfig>>>;

/// The stream of messages a session sends to the node.
pub type SessionStream = BoxStream<'static, Result<pb::ManagerMessage, Status>>;

/// The stream of log items the leader sends a manager that asked for task logs.
pub type LogItemStream = BoxStream<'static, Result<pb::LogItems, Status>>;

/// What the manager does with each call; the transport has already verified the TLS chain.
pub trait Handlers: Send + Sync + 'static {
    /// The CA certificate PEM, for anyone.
    fn root_ca(&self) -> Result<String, Status>;
    /// Signs a node certificate for a token holder or an existing node.
    fn issue(
        &self,
        peer: PeerInfo,
        req: pb::IssueRequest,
    ) -> BoxFuture<'static, Result<pb::IssueResponse, Status>>;
    /// A store message from another manager.
    fn raft(
        &self,
        peer: PeerInfo,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, Status>>;
    /// A node's dispatcher session.
    fn session(
        &self,
        peer: PeerInfo,
        inbound: Streaming<pb::AgentMessage>,
    ) -> BoxFuture<'static, Result<SessionStream, Status>>;
    /// Task logs for another manager's API client, served by the leader's log broker.
    fn logs(
        &self,
        peer: PeerInfo,
        req: pb::LogRequest,
    ) -> BoxFuture<'static, Result<LogItemStream, Status>>;
}

/// A TLS connection that tells tonic who is on the other end.
pub(crate) struct TlsIo {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for TlsIo {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

pub(crate) fn peer(req_ext: &http::Extensions) -> Result<PeerInfo, Status> {
    req_ext
        .get::<PeerInfo>()
        .cloned()
        .ok_or_else(|| Status::internal("connection carries no peer information"))
}

struct Svc(Arc<dyn Handlers>);

#[tonic::async_trait]
impl pb::ca_server::Ca for Svc {
    async fn get_root_ca_certificate(
        &self,
        _req: Request<pb::Empty>,
    ) -> Result<Response<pb::RootCa>, Status> {
        Ok(Response::new(pb::RootCa {
            cert_pem: self.0.root_ca()?,
        }))
    }

    async fn issue_node_certificate(
        &self,
        req: Request<pb::IssueRequest>,
    ) -> Result<Response<pb::IssueResponse>, Status> {
        let p = peer(req.extensions())?;
        Ok(Response::new(self.0.issue(p, req.into_inner()).await?))
    }
}

#[tonic::async_trait]
impl pb::raft_server::Raft for Svc {
    async fn call(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let p = peer(req.extensions())?;
        let m = req.into_inner();
        let kind = RpcKind::parse(&m.kind).ok_or_else(|| {
            Status::invalid_argument(format!("unknown raft message {:?}", m.kind))
        })?;
        let payload = self.0.raft(p, kind, m.payload).await?;
        Ok(Response::new(pb::RaftMessage {
            kind: m.kind,
            payload,
        }))
    }
}

#[tonic::async_trait]
impl pb::dispatcher_server::Dispatcher for Svc {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let p = peer(req.extensions())?;
        Ok(Response::new(self.0.session(p, req.into_inner()).await?))
    }
}

#[tonic::async_trait]
impl pb::logs_server::Logs for Svc {
    type SubscribeStream = LogItemStream;

    async fn subscribe(
        &self,
        req: Request<pb::LogRequest>,
    ) -> Result<Response<LogItemStream>, Status> {
        let p = peer(req.extensions())?;
        Ok(Response::new(self.0.logs(p, req.into_inner()).await?))
    }
}

/// Binds the RPC port, so a taken port is reported before anything else starts.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, RpcError> {
    TcpListener::bind(addr).await.map_err(|e| RpcError::Listen {
        addr: addr.to_string(),
        source: e,
    })
}

/// Serves on `listener` until `stop`; every connection must complete a TLS handshake with `tls`
/// (which decides whether client certificates are required) within 10 s.
pub async fn serve(
    listener: TcpListener,
    tls: ServerTls,
    handlers: Arc<dyn Handlers>,
    stop: CancellationToken,
) -> Result<(), RpcError> {
    let addr = listener.local_addr().map_err(|e| RpcError::Listen {
        addr: "?".into(),
        source: e,
    })?;
    tracing::info!(%addr, "node-to-node RPC listening (mutual TLS)");
    let rx = accept_tls(listener, tls, stop.clone());
    let svc = Arc::new(Svc(handlers));
    // Raft and sessions are for certificate holders only: a peer without one is refused before
    // its message is read, so the larger limits below are reachable only with a cluster
    // certificate. The CA, which joiners reach without one, reads small messages only.
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .layer(tower::util::MapResponseLayer::new(too_large_is_exhaustion))
        .add_service(
            pb::ca_server::CaServer::from_arc(svc.clone())
                .max_decoding_message_size(MAX_CA_MESSAGE)
                .max_encoding_message_size(MAX_CA_MESSAGE),
        )
        .add_service(tonic::service::interceptor::InterceptedService::new(
            pb::raft_server::RaftServer::from_arc(svc.clone())
                .max_decoding_message_size(MAX_RAFT_MESSAGE)
                .max_encoding_message_size(MAX_RAFT_MESSAGE),
            with_manager_certificate,
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            pb::logs_server::LogsServer::from_arc(svc.clone())
                .max_decoding_message_size(MAX_LOG_REQUEST)
                .max_encoding_message_size(MAX_LOG_ITEMS),
            with_manager_certificate_for_logs,
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            pb::dispatcher_server::DispatcherServer::from_arc(svc)
                .max_decoding_message_size(MAX_SESSION_UP)
                .max_encoding_message_size(MAX_SESSION_DOWN),
            with_certificate,
        ))
        .serve_with_incoming_shutdown(rx, stop.cancelled_owned())
        .await?;
    Ok(())
}

/// The connections that completed a TLS handshake with `tls` within 10 s (read per connection,
/// so a renewed certificate applies to the next one), each with its peer's chain; handshakes run
/// off the accept loop, so a slow peer delays nobody. Until `stop`.
pub(crate) fn accept_tls(
    listener: TcpListener,
    tls: ServerTls,
    stop: CancellationToken,
) -> ReceiverStream<Result<TlsIo, std::io::Error>> {
    let (tx, rx) = mpsc::channel::<Result<TlsIo, std::io::Error>>(64);
    let accept_stop = stop;
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                _ = accept_stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            // Read per connection, so a renewed certificate applies to the next handshake.
            let acceptor = TlsAcceptor::from(tls.read().clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::warn!(%remote, reason = %e, "refused a TLS connection");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(%remote, reason = "handshake timed out", "refused a TLS connection");
                        return;
                    }
                };
                let certs = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                    .unwrap_or_default();
                let info = PeerInfo {
                    remote: Some(remote),
                    certs: Arc::new(certs),
                };
                let _ = tx.send(Ok(TlsIo { inner: tls, info })).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Refuses a call whose peer presented no certificate, before its body is read.
pub(crate) fn with_certificate(req: Request<()>) -> Result<Request<()>, Status> {
    let p = peer(req.extensions())?;
    if p.leaf().is_none() {
        return Err(p.refuse_unauthenticated());
    }
    Ok(req)
}

/// Refuses a raft call from anyone but a manager, before its body is read.
fn with_manager_certificate(req: Request<()>) -> Result<Request<()>, Status> {
    let req = with_certificate(req)?;
    peer(req.extensions())?.manager("raft")?;
    Ok(req)
}

/// Refuses a logs call from anyone but a manager, before its body is read.
fn with_manager_certificate_for_logs(req: Request<()>) -> Result<Request<()>, Status> {
    let req = with_certificate(req)?;
    peer(req.extensions())?.manager("logs")?;
    Ok(req)
}

/// gRPC's code for a message over the receiver's limit is RESOURCE_EXHAUSTED (grpc-go answers
/// so); tonic says OUT_OF_RANGE. Its refusal of an oversized request comes before the handler
/// runs, as a trailers-only answer, so the status is in the headers and is rewritten there.
pub(crate) fn too_large_is_exhaustion<B>(mut res: http::Response<B>) -> http::Response<B> {
    let headers = res.headers_mut();
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    let too_large = headers.get("grpc-message").is_some_and(|v| {
        let m = String::from_utf8_lossy(v.as_bytes());
        m.contains("too large") || m.contains("too%20large")
    });
    if out_of_range && too_large {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from_static("8"), // RESOURCE_EXHAUSTED
        );
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_once_per_peer_and_call_per_period_with_a_count() {
        let mut log = RefusalLog::<RpcRefusal>::default();
        let t0 = std::time::Instant::now();
        let peer = |ip: &str, call: &str| (Some(ip.parse().unwrap()), call.to_string());
        assert_eq!(log.due(peer("10.0.0.1", "raft"), t0), Some(0));
        for _ in 0..1000 {
            assert_eq!(log.due(peer("10.0.0.1", "raft"), t0), None);
        }
        // Another call or another peer has its own line.
        assert_eq!(log.due(peer("10.0.0.1", "issue"), t0), Some(0));
        assert_eq!(log.due(peer("10.0.0.2", "raft"), t0), Some(0));
        let later = t0 + REFUSAL_LOG_EVERY;
        assert_eq!(log.due(peer("10.0.0.1", "raft"), later), Some(1000));
        assert_eq!(log.due(peer("10.0.0.1", "raft"), later), None);
    }
}
