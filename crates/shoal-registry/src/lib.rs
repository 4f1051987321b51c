//! The node-local part of shoal's registry (issue 22): the OCI distribution API over HTTP and
//! the node's content-addressed blob store, with the cluster behind traits.
//!
//! Every node serves this API (the lead wires it at 127.0.0.1:5000), so `docker push
//! 127.0.0.1:5000/app:1` on any node and a service of that image work without an outside
//! registry. What lives where:
//! - blobs: this node's [`BlobStore`] (files under a directory, atomically committed);
//! - manifests and tags: a [`Meta`] (the cluster's raft store; [`LocalMeta`] here);
//! - blobs this node lacks: a [`Remote`] (another node; [`NoRemote`] here), served while
//!   they are stored here;
//! - what happened: an [`EventHook`] called when a blob is committed here, a blob deleted, a
//!   manifest put or deleted, so the cluster can record holders and replicate.
//!
//! ```no_run
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! use shoal_registry::{BlobStore, LocalMeta, Registry};
//! use std::sync::Arc;
//! let store = BlobStore::open("/var/lib/shoal/registry")?;
//! let app = Registry::new(store, Arc::new(LocalMeta::new())).router();
//! axum::serve(tokio::net::TcpListener::bind("127.0.0.1:5000").await?, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # The API
//! `GET /v2/`; blobs `GET`/`HEAD` (single `Range`s)/`DELETE`; uploads `POST` (session,
//! single-request with `?digest=`, cross-repository `?mount=&from=`), `PATCH` (chunks, in order
//! by `Content-Range` or streamed), `PUT ?digest=` (with an optional last chunk), `GET`,
//! `DELETE`; manifests `PUT` (by tag, or by digest with `?tag=` repeated, answered with
//! `OCI-Tag`), `GET`/`HEAD`/`DELETE` by tag or digest; `GET /v2/<name>/tags/list` and
//! `GET /v2/_catalog` with `n`, `last` and a `Link` to the next page. Errors are the spec's
//! JSON with its codes; 5xx answers carry `UNKNOWN` (the spec constrains only 4xx bodies).
//!
//! Statuses chosen where the spec leaves a choice:
//! - a full disk: 507 `BLOB_UPLOAD_INVALID` ("the upload cannot proceed"), the partial blob or
//!   the whole upload session removed, the message saying the disk is full: 507 tells the
//!   client the server lacks storage rather than failed, and docker shows the message;
//! - a manifest over 4 MiB: 413 `MANIFEST_INVALID`; a malformed tag on a read: 404
//!   `MANIFEST_UNKNOWN`; on a push: 400 `MANIFEST_INVALID`;
//! - the metadata store unavailable (no quorum): 503 `UNKNOWN`; another node failing to send
//!   a blob: 502 `UNKNOWN`;
//! - an invalid `n`: 400 `UNSUPPORTED`.
//!
//! # Checked against real clients
//! `tests/clients.rs` serves the router on 127.0.0.1:<random port> and drives:
//! - skopeo 1.9.3: `copy docker-archive:... docker://.../app:1` (Docker schema 2) and
//!   `--format oci` (OCI manifest), `inspect` and `inspect --raw` (the manifest byte for byte),
//!   `copy docker://... dir:...` (every blob hashed against its name), `list-tags`, a copy to a
//!   second tag (blobs found already here), and `copy --all` of an OCI layout whose index names
//!   two platforms (children pushed by digest, then the index; `inspect --override-arch`
//!   resolves each);
//! - curl: `HEAD` of a blob keeps its `Content-Length` over a real connection, `Range` answers
//!   206;
//! - the docker CLI 28.2 with Engine 20.10.24: `docker push` of `shoal-test/busybox` as
//!   `127.0.0.1:<port>/t/busybox:1` (HEAD, POST, streamed PATCH, PUT ?digest=, manifest PUT),
//!   `docker rmi`, `docker pull` back (same image ID), and a `docker import`ed image whose only
//!   layer the engine no longer has after `rmi`, so the pull GETs it from here.
//!
//! `tests/api.rs` covers every endpoint in process (chunks out of order, digest mismatches,
//! unknown blobs and manifests, pagination, a blob relayed from a fake other node and one that
//! fails its digest); `tests/disk_full.rs` fills a 1 MiB tmpfs (root).
//!
//! # Not done
//! - only sha256 digests (`digest-algorithm` other than sha256 is refused with 400);
//! - blobs are not scoped to repositories: any repository serves any blob this registry holds
//!   (a node-local registry without authentication has nothing to hide between them), and
//!   `DELETE` of a blob removes this node's copy only;
//! - no authentication (it listens on loopback), no referrers API (`/v2/<name>/referrers/`:
//!   clients fall back to the referrers tag schema, which works as any tag), no `OCI-Subject`;
//! - no schema 1 manifests; `Accept` is not negotiated: a manifest is served as pushed;
//! - `Range` is served for blobs held here; a blob relayed from another node comes whole;
//! - an upload session's chunks are not limited in size or count (`OCI-Chunk-Min-Length` is
//!   not sent).

#![warn(missing_docs)]

pub mod blobs;
pub mod error;
mod http;
pub mod manifest;
pub mod meta;
pub mod reference;
pub mod remote;

pub use blobs::{BlobError, BlobStore, BlobWriter, GcReport};
pub use error::{ApiError, ErrorCode};
pub use http::API_VERSION;
pub use meta::{LocalMeta, Manifest, Meta, MetaError, MetaFuture};
pub use reference::{Digest, ParseError, Reference};
pub use remote::{BlobStream, NoRemote, Remote, RemoteBlob, RemoteError};

use std::sync::Arc;

/// How a blob came to be committed here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobSource {
    /// A client pushed it to this node.
    Push,
    /// It was fetched from another node to serve a pull (already held elsewhere).
    Remote,
}

/// Something the cluster may want to record or act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A blob is now held by this node (record the holder, replicate a pushed one).
    BlobCommitted {
        /// Its digest.
        digest: Digest,
        /// Its size in bytes.
        size: u64,
        /// Pushed here, or copied from another node.
        source: BlobSource,
    },
    /// A client deleted this node's copy of a blob.
    BlobDeleted {
        /// Its digest.
        digest: Digest,
    },
    /// A manifest was stored through `Meta::put_manifest`.
    ManifestPut {
        /// The repository.
        name: String,
        /// The tags now pointing to it (empty for a push by digest).
        tags: Vec<String>,
        /// The manifest's digest.
        digest: Digest,
        /// Its type.
        media_type: String,
    },
    /// A manifest (by digest) or a tag was deleted through `Meta::delete_manifest`.
    ManifestDeleted {
        /// The repository.
        name: String,
        /// What was deleted.
        reference: Reference,
    },
}

/// Called for each `Event`, on the request's task: it must not block (send to a channel).
pub type EventHook = Arc<dyn Fn(Event) + Send + Sync>;

/// Limits and switches of the API.
#[derive(Debug, Clone)]
pub struct Config {
    /// The largest manifest accepted (413 above); the spec asks for at least 4 MiB.
    pub max_manifest_bytes: usize,
    /// Whether `DELETE` of manifests, tags and blobs is served (405 `UNSUPPORTED` otherwise).
    pub delete_enabled: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_manifest_bytes: 4 << 20,
            delete_enabled: true,
        }
    }
}

/// A registry: the blob store, the metadata, where missing blobs come from, and who hears of
/// changes. `router` makes it an axum router.
pub struct Registry {
    store: BlobStore,
    meta: Arc<dyn Meta>,
    remote: Arc<dyn Remote>,
    events: Option<EventHook>,
    config: Config,
}

impl Registry {
    /// A registry over a blob store and a metadata store, with no other nodes.
    pub fn new(store: BlobStore, meta: Arc<dyn Meta>) -> Self {
        Self {
            store,
            meta,
            remote: Arc::new(NoRemote),
            events: None,
            config: Config::default(),
        }
    }

    /// Where blobs this node lacks come from.
    pub fn with_remote(mut self, remote: Arc<dyn Remote>) -> Self {
        self.remote = remote;
        self
    }

    /// Who hears of committed blobs and pushed manifests.
    pub fn with_events(mut self, hook: EventHook) -> Self {
        self.events = Some(hook);
        self
    }

    /// Limits and switches other than the defaults.
    pub fn with_config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The blob store (for `gc`, listing what this node holds).
    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    /// The API as an axum router (every path; mount it at the root).
    pub fn router(self) -> axum::Router {
        http::router(Arc::new(self))
    }

    fn emit(&self, event: Event) {
        if let Some(hook) = &self.events {
            hook(event);
        }
    }

    fn blob_committed(&self, digest: &Digest, size: u64) {
        tracing::debug!(%digest, size, "registry: blob committed");
        self.emit(Event::BlobCommitted {
            digest: digest.clone(),
            size,
            source: BlobSource::Push,
        });
    }
}
