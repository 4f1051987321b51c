//! This node's peer port (issue 22): every node, workers included, serves its engine's images
//! to the other nodes of the swarm, and fetches from them. The transfer logic is the agent's
//! (`shoal_agent::images`); this is the wire: the leader's answer to "who holds this image"
//! over the session, and the image streams over the peer port with node certificates on both
//! sides (`shoal_pki::peer_server_config`, `peer_client_config`).

use super::session::AgentHost;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use shoal_api::dispatch::AgentMessage;
use shoal_api::images::ImageSource;
use shoal_api::registry::{BlobHolder, RegistryAnswer, RegistryRequest};
use shoal_pki::NodeCert;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// The port Swarm's nodes already open to each other (7946, its gossip port): shoal's nodes do
/// not gossip, and serve images there instead. Every node of a swarm must use the same one.
pub const DEFAULT_PEER_PORT: u16 = 7946;

/// How long the leader has to say who holds an image.
const ASK_LIMIT: Duration = Duration::from_secs(10);

/// An image a node exports: its size, then its `docker save` tarball in chunks.
pub struct ImageExport {
    /// The image's size as its engine reports it.
    pub size: u64,
    /// The tarball.
    pub chunks: BoxStream<'static, Result<Vec<u8>, String>>,
}

/// Why a peer request failed; `Display` ends up in the task's error.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The session with the leader ended before it answered.
    #[error("this node's session with the swarm has ended")]
    SessionEnded,
    /// The leader did not answer in time.
    #[error("the swarm did not say in {0} s which nodes hold the image")]
    Timeout(u64),
    /// This node's certificate does not make TLS settings.
    #[error("TLS settings: {0}")]
    Tls(#[from] shoal_pki::PkiError),
    /// The holder could not be reached or refused.
    #[error("{0}")]
    Rpc(#[from] shoal_rpc::RpcError),
    /// The holder answered with an error.
    #[error("{}", .0.message())]
    Status(#[from] Status),
}

/// The agent's end of transfers: asks the leader over the session who holds an image, and
/// opens image streams from holders over the peer port.
#[derive(Clone)]
pub struct PeerLink {
    requests: mpsc::Sender<AgentMessage>,
    answers: broadcast::Sender<(String, Vec<ImageSource>)>,
    registry: broadcast::Sender<(u64, RegistryAnswer)>,
    seq: Arc<std::sync::atomic::AtomicU64>,
    cert: Arc<parking_lot::RwLock<NodeCert>>,
    port: u16,
}

impl PeerLink {
    pub(crate) fn new(
        requests: mpsc::Sender<AgentMessage>,
        answers: broadcast::Sender<(String, Vec<ImageSource>)>,
        registry: broadcast::Sender<(u64, RegistryAnswer)>,
        cert: Arc<parking_lot::RwLock<NodeCert>>,
        port: u16,
    ) -> PeerLink {
        PeerLink {
            requests,
            answers,
            registry,
            seq: Arc::default(),
            cert,
            port,
        }
    }

    /// The other ready nodes whose engines hold `image`, as the leader's index says.
    pub async fn sources(&self, image: &str) -> Result<Vec<ImageSource>, PeerError> {
        let mut answers = self.answers.subscribe();
        let ask = AgentMessage::ImageSources {
            image: image.to_string(),
        };
        self.requests
            .send(ask)
            .await
            .map_err(|_| PeerError::SessionEnded)?;
        let wait = async {
            loop {
                match answers.recv().await {
                    Ok((i, sources)) if i == image => return Ok(sources),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return Err(PeerError::SessionEnded),
                }
            }
        };
        tokio::time::timeout(ASK_LIMIT, wait)
            .await
            .unwrap_or(Err(PeerError::Timeout(ASK_LIMIT.as_secs())))
    }

    /// The leader's answer to a request of this node's registry.
    pub async fn registry(&self, request: RegistryRequest) -> Result<RegistryAnswer, PeerError> {
        let mut answers = self.registry.subscribe();
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.requests
            .send(AgentMessage::Registry { seq, request })
            .await
            .map_err(|_| PeerError::SessionEnded)?;
        let wait = async {
            loop {
                match answers.recv().await {
                    Ok((s, answer)) if s == seq => return Ok(answer),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return Err(PeerError::SessionEnded),
                }
            }
        };
        tokio::time::timeout(ASK_LIMIT, wait)
            .await
            .unwrap_or(Err(PeerError::Timeout(ASK_LIMIT.as_secs())))
    }

    /// A blob of `holder`'s registry, from its peer port.
    pub async fn blob(&self, holder: &BlobHolder, digest: &str) -> Result<ImageExport, PeerError> {
        let tls = shoal_pki::peer_client_config(&self.cert.read(), &holder.node_id)?;
        let mut client = shoal_rpc::images_client(&peer_addr(&holder.addr, self.port), tls)?;
        let stream = client
            .blob(shoal_rpc::pb::BlobRequest {
                digest: digest.to_string(),
            })
            .await?
            .into_inner();
        chunks(stream).await
    }

    /// The holder's export of `image_id`, from its peer port (the holder must be the node its
    /// certificate names).
    pub async fn export(
        &self,
        source: &ImageSource,
        image_id: &str,
    ) -> Result<ImageExport, PeerError> {
        let tls = shoal_pki::peer_client_config(&self.cert.read(), &source.node_id)?;
        let addr = peer_addr(&source.addr, self.port);
        let mut client = shoal_rpc::images_client(&addr, tls)?;
        let stream = client
            .export(shoal_rpc::pb::ExportRequest {
                image_id: image_id.to_string(),
            })
            .await?
            .into_inner();
        chunks(stream).await
    }
}

/// An export's chunks: the first carries the size; an empty export still sends one.
async fn chunks(
    mut stream: tonic::Streaming<shoal_rpc::pb::ImageChunk>,
) -> Result<ImageExport, PeerError> {
    let first = stream
        .message()
        .await?
        .ok_or_else(|| Status::data_loss("the holder sent nothing"))?;
    let size = first.size;
    let head = futures::stream::iter([Ok(first.data)]);
    let rest = stream.map(|r| r.map(|c| c.data).map_err(|s| s.message().to_string()));
    Ok(ImageExport {
        size,
        chunks: head.chain(rest).boxed(),
    })
}

/// `ip:port` of a node's peer port, from the address its record shows (an IP, or `ip:port`).
fn peer_addr(addr: &str, port: u16) -> String {
    let ip = addr
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| addr.parse::<std::net::IpAddr>());
    match ip {
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        Ok(ip) => format!("{ip}:{port}"),
        Err(_) => format!("{addr}:{port}"),
    }
}

/// Serves the agent's image exports to the other nodes.
struct Exporter(Arc<dyn AgentHost>);

impl shoal_rpc::ImageExporter for Exporter {
    fn export(
        &self,
        peer: shoal_rpc::PeerInfo,
        image_id: String,
    ) -> BoxFuture<'static, Result<shoal_rpc::ImageChunkStream, Status>> {
        let agent = self.0.clone();
        Box::pin(async move {
            let who = peer.node("images")?;
            tracing::info!(node = %who.node_id, image = %image_id, "exporting an image to a node");
            let export = agent
                .export_image(image_id)
                .await
                .map_err(|e| Status::not_found(e.to_string()))?;
            Ok(sized(export))
        })
    }

    fn blob(
        &self,
        peer: shoal_rpc::PeerInfo,
        digest: String,
    ) -> BoxFuture<'static, Result<shoal_rpc::ImageChunkStream, Status>> {
        let agent = self.0.clone();
        Box::pin(async move {
            let who = peer.node("registry blobs")?;
            tracing::debug!(node = %who.node_id, %digest, "sending a registry blob to a node");
            let export = agent
                .export_blob(digest)
                .await
                .map_err(|e| Status::not_found(e.to_string()))?;
            Ok(sized(export))
        })
    }
}

/// An export as chunks, the first carrying the size.
fn sized(export: ImageExport) -> shoal_rpc::ImageChunkStream {
    let size = export.size;
    let mut first = true;
    // An empty blob still sends one chunk, so the size arrives.
    let chunks = futures::stream::iter([Ok(Vec::new())])
        .filter(move |_| futures::future::ready(size == 0))
        .chain(export.chunks);
    chunks
        .map(move |r| {
            let size = if std::mem::take(&mut first) { size } else { 0 };
            r.map(|data| shoal_rpc::pb::ImageChunk { data, size })
                .map_err(Status::unavailable)
        })
        .boxed()
}

/// The peer server's TLS, swappable when the node's certificate is renewed.
pub(crate) fn server_tls(cert: &NodeCert) -> Result<shoal_rpc::ServerTls, shoal_pki::PkiError> {
    Ok(Arc::new(parking_lot::RwLock::new(
        shoal_pki::peer_server_config(cert)?,
    )))
}

/// Serves the peer port on `port` until `stop`. A port that is taken (several daemons on one
/// host, as in tests) is logged and left: the node then gives no images to others, and still
/// fetches them.
pub(crate) fn spawn_server(
    port: u16,
    tls: shoal_rpc::ServerTls,
    agent: Arc<dyn AgentHost>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let addr = std::net::SocketAddr::from(([0, 0, 0, 0], port));
        let listener = match shoal_rpc::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "peer port unavailable: this node serves no images to others");
                return;
            }
        };
        if let Err(e) = shoal_rpc::serve_peer(listener, tls, Arc::new(Exporter(agent)), stop).await
        {
            tracing::error!(error = %e, "peer port stopped");
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_holders_peer_address_takes_the_swarms_peer_port() {
        assert_eq!(super::peer_addr("10.0.0.2", 7946), "10.0.0.2:7946");
        assert_eq!(super::peer_addr("10.0.0.2:2377", 7000), "10.0.0.2:7000");
        assert_eq!(super::peer_addr("fd00::2", 7946), "[fd00::2]:7946");
    }
}
