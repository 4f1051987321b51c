//! The peer port every node serves, workers included (issue 22): one node's engine images
//! streamed to another. Only callers with a node certificate of the cluster complete the
//! handshake (`shoal_pki::peer_server_config`), and a caller checks the server is the node it
//! meant (`shoal_pki::peer_client_config`), so the port is closed to everyone else.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::pb;
use crate::server::{accept_tls, peer, too_large_is_exhaustion, with_certificate, PeerInfo};
use crate::{RpcError, ServerTls};

/// Largest request on the peer port: an image ID.
pub const MAX_PEER_REQUEST: usize = 4 << 10;

/// Largest chunk of an image stream (the sender cuts the engine's stream into pieces this
/// size at most; 1 MiB is what it sends).
pub const MAX_IMAGE_CHUNK: usize = 4 << 20;

/// The stream of chunks an export answers with.
pub type ImageChunkStream = BoxStream<'static, Result<pb::ImageChunk, Status>>;

/// What a node does with an export request: the agent's engine, wired in by the binary.
pub trait ImageExporter: Send + Sync + 'static {
    /// Streams the image `image_id` as its engine saves it; the first chunk carries the size.
    fn export(
        &self,
        peer: PeerInfo,
        image_id: String,
    ) -> BoxFuture<'static, Result<ImageChunkStream, Status>>;
    /// Streams the blob `digest` of this node's registry; the first chunk carries the size.
    fn blob(
        &self,
        peer: PeerInfo,
        digest: String,
    ) -> BoxFuture<'static, Result<ImageChunkStream, Status>>;
}

struct PeerSvc(Arc<dyn ImageExporter>);

#[tonic::async_trait]
impl pb::images_server::Images for PeerSvc {
    type ExportStream = ImageChunkStream;

    async fn export(
        &self,
        req: Request<pb::ExportRequest>,
    ) -> Result<Response<ImageChunkStream>, Status> {
        let p = peer(req.extensions())?;
        Ok(Response::new(
            self.0.export(p, req.into_inner().image_id).await?,
        ))
    }

    type BlobStream = ImageChunkStream;

    async fn blob(
        &self,
        req: Request<pb::BlobRequest>,
    ) -> Result<Response<ImageChunkStream>, Status> {
        let p = peer(req.extensions())?;
        Ok(Response::new(
            self.0.blob(p, req.into_inner().digest).await?,
        ))
    }
}

/// Serves the peer port on `listener` until `stop`, with `tls` (a peer server config, read
/// per connection so a renewed certificate applies to the next handshake).
pub async fn serve_peer(
    listener: TcpListener,
    tls: ServerTls,
    exporter: Arc<dyn ImageExporter>,
    stop: CancellationToken,
) -> Result<(), RpcError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "peer port listening (node certificates only)");
    }
    let incoming = accept_tls(listener, tls, stop.clone());
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .layer(tower::util::MapResponseLayer::new(too_large_is_exhaustion))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            pb::images_server::ImagesServer::from_arc(Arc::new(PeerSvc(exporter)))
                .max_decoding_message_size(MAX_PEER_REQUEST)
                .max_encoding_message_size(MAX_IMAGE_CHUNK),
            with_certificate,
        ))
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await?;
    Ok(())
}

/// A client of the peer port at `addr` (`ip:port`), over `tls` (a peer client config naming
/// the node expected there; it checks that node ID, not the name the channel presents).
/// Connects on first use.
pub fn images_client(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<pb::images_client::ImagesClient<Channel>, RpcError> {
    Ok(
        pb::images_client::ImagesClient::new(crate::connect(addr, tls)?)
            .max_decoding_message_size(MAX_IMAGE_CHUNK)
            .max_encoding_message_size(MAX_PEER_REQUEST),
    )
}
