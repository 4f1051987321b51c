//! The calling side: channels over our own rustls connector, so the caller decides exactly how
//! the server is verified (cluster CA, or a CA pinned by a join token's digest).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use shoal_store::{RaftTransport, RpcKind, TransportError};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::pb;
use crate::{RpcError, MANAGER_NAME, MAX_LOG_ITEMS, MAX_LOG_REQUEST, MAX_RAFT_MESSAGE};

/// A lazily connecting channel to the manager at `addr` (`host:port`), verified by `tls` under
/// the name [`MANAGER_NAME`]. Reconnects by itself after failures.
pub fn connect(addr: &str, tls: Arc<rustls::ClientConfig>) -> Result<Channel, RpcError> {
    let bad = |reason: &str| RpcError::Address {
        addr: addr.to_string(),
        reason: reason.to_string(),
    };
    let target: std::net::SocketAddr = addr
        .parse()
        .map_err(|e: std::net::AddrParseError| bad(&e.to_string()))?;
    let endpoint = Endpoint::from_shared(format!("http://{target}"))
        .map_err(|e| bad(&e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let connector = TlsConnector::from(tls);
    let service = tower::service_fn(move |_uri: http::Uri| {
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(target).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(MANAGER_NAME).map_err(std::io::Error::other)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(service))
}

/// Channels to other managers by address, shared by raft and forwarded writes.
pub struct Pool {
    tls: parking_lot::RwLock<Arc<rustls::ClientConfig>>,
    channels: Mutex<HashMap<String, Channel>>,
    answered: Arc<Mutex<HashMap<String, std::time::Instant>>>,
}

impl Pool {
    /// A pool whose connections present and verify with `tls`.
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Arc<Pool> {
        Arc::new(Pool {
            tls: parking_lot::RwLock::new(tls),
            channels: Mutex::new(HashMap::new()),
            answered: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The channel to `addr`, made on first use.
    pub fn channel(&self, addr: &str) -> Result<Channel, RpcError> {
        if let Some(c) = self.channels.lock().get(addr) {
            return Ok(c.clone());
        }
        let c = connect(addr, self.tls.read().clone())?;
        self.channels.lock().insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// When the manager at `addr` last answered a call (the leader calls every follower ten
    /// times a second, so this is how the leader knows who is reachable).
    pub fn last_answer(&self, addr: &str) -> Option<std::time::Instant> {
        self.answered.lock().get(addr).copied()
    }

    /// Uses `tls` for new connections from now on (a renewed certificate).
    pub fn set_tls(&self, tls: Arc<rustls::ClientConfig>) {
        *self.tls.write() = tls;
        self.channels.lock().clear();
    }

    /// A client of the raft service at `addr`.
    pub fn raft(&self, addr: &str) -> Result<pb::raft_client::RaftClient<Channel>, RpcError> {
        Ok(pb::raft_client::RaftClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE))
    }
}

impl Pool {
    /// A client of the logs service at `addr` (the leader, for another manager's API).
    pub fn logs(&self, addr: &str) -> Result<pb::logs_client::LogsClient<Channel>, RpcError> {
        Ok(pb::logs_client::LogsClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_LOG_ITEMS)
            .max_encoding_message_size(MAX_LOG_REQUEST))
    }
}

impl RaftTransport for Pool {
    fn call(
        &self,
        addr: &str,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>> {
        let client = self.raft(addr);
        let answered = self.answered.clone();
        let addr = addr.to_string();
        Box::pin(async move {
            let err = |message: String| TransportError {
                addr: addr.clone(),
                message,
            };
            let mut client = client.map_err(|e| err(e.to_string()))?;
            let mut req = tonic::Request::new(pb::RaftMessage {
                kind: kind.as_str().to_string(),
                payload,
            });
            // Snapshot chunks may be large; everything else is small and must fail fast.
            req.set_timeout(match kind {
                RpcKind::Snapshot | RpcKind::SnapshotChunk => Duration::from_secs(120),
                RpcKind::Propose => Duration::from_secs(10),
                _ => Duration::from_secs(2),
            });
            let answer = client
                .call(req)
                .await
                .map_err(|s| err(format!("{}: {}", s.code(), s.message())))?;
            answered.lock().insert(addr, std::time::Instant::now());
            Ok(answer.into_inner().payload)
        })
    }
}
