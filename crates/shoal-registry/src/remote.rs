//! Blobs this node lacks: the `Remote` trait the cluster implements (fetch from a node that
//! holds it) and `NoRemote` for a registry on its own.

use crate::reference::Digest;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

/// Why asking another node failed; the API answers 502 (the blob is known but could not be
/// had now).
#[derive(Debug, thiserror::Error)]
#[error("fetching a blob from another node: {0}")]
pub struct RemoteError(pub String);

/// A blob's bytes as another node streams them.
pub type BlobStream = BoxStream<'static, Result<Bytes, RemoteError>>;

/// A blob found on another node: its size (sent as `Content-Length`) and its bytes.
pub struct RemoteBlob {
    /// The blob's size in bytes; a stream of another length fails the response.
    pub size: u64,
    /// The bytes; the registry checks their digest before it keeps them.
    pub body: BlobStream,
}

/// Where blobs this node does not hold come from.
pub trait Remote: Send + Sync + 'static {
    /// The size of a blob some other node holds, or `None` (answers `HEAD`).
    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<u64>, RemoteError>>;

    /// The blob's bytes from a node that holds it, or `None` when none does. The registry
    /// serves them as they come and stores them here; a digest mismatch fails the response
    /// before its last chunk and nothing is kept.
    fn fetch<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<RemoteBlob>, RemoteError>>;
}

/// No other nodes: a blob not held here is unknown.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRemote;

impl Remote for NoRemote {
    fn stat<'a>(&'a self, _: &'a Digest) -> BoxFuture<'a, Result<Option<u64>, RemoteError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn fetch<'a>(
        &'a self,
        _: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<RemoteBlob>, RemoteError>> {
        Box::pin(std::future::ready(Ok(None)))
    }
}
