//! This node's registry (issue 22): `shoal-registry`'s OCI distribution API on
//! `--registry-addr` (127.0.0.1:5000) over the node's blob store, with the swarm behind it:
//! tags and manifests through the leader (over the node's session, since workers hold no
//! store), blobs this node lacks streamed from a node holding them (the peer port), the blobs
//! it commits reported as held, the copies the leader asks for fetched, and unreferenced blobs
//! collected after a grace period.

use base64::Engine as _;
use futures::future::BoxFuture;
use futures::StreamExt;
use shoal_api::registry::{BlobHolder, ManifestData, RegistryAnswer, RegistryRequest};
use shoal_manager::node::{PeerError, PeerLink};
use shoal_registry::{
    BlobStore, Digest, Manifest, Meta, MetaError, MetaFuture, Reference, Remote, RemoteBlob,
    RemoteError,
};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a node asks which blobs it should hold (copies after a push or a node's loss).
const DUTIES_EVERY: Duration = Duration::from_secs(3);

/// How often unreferenced blobs are collected.
const GC_EVERY: Duration = Duration::from_secs(600);

/// How long an unreferenced blob is kept (a push sends its blobs before its manifest).
pub const GC_GRACE: Duration = Duration::from_secs(3600);

/// What the daemon's flags say of the registry.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Where the API listens; `None`: no registry on this node.
    pub addr: Option<SocketAddr>,
    /// How many nodes hold each blob.
    pub copies: usize,
}

/// Starts this node's registry over `<data>/registry` until `stop`; returns its blob store
/// (the peer port serves other nodes from it).
pub fn start(
    settings: &RegistrySettings,
    data_dir: &Path,
    link: PeerLink,
    stop: CancellationToken,
) -> anyhow::Result<Option<BlobStore>> {
    let Some(addr) = settings.addr else {
        return Ok(None);
    };
    let store = BlobStore::open(data_dir.join("registry"))?;
    let link = Arc::new(link);
    let hook_link = link.clone();
    let registry = shoal_registry::Registry::new(
        store.clone(),
        Arc::new(SwarmMeta(link.clone(), store.clone())),
    )
    .with_remote(Arc::new(SwarmRemote(link.clone())))
    .with_events(Arc::new(move |e| event(&hook_link, e)));
    let router = registry.router();
    let serving = stop.clone();
    tokio::spawn(async move {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "the node registry cannot listen: this node serves none");
                return;
            }
        };
        tracing::info!(%addr, "node registry listening");
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(serving.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "node registry stopped");
        }
    });
    tokio::spawn(duties(
        store.clone(),
        link.clone(),
        settings.copies,
        stop.clone(),
    ));
    tokio::spawn(collect(store.clone(), link, stop));
    Ok(Some(store))
}

/// Tells the leader what this node's registry committed or dropped (off the request's task).
fn event(link: &Arc<PeerLink>, e: shoal_registry::Event) {
    let request = match e {
        shoal_registry::Event::BlobCommitted { digest, size, .. } => RegistryRequest::BlobStored {
            digest: digest.to_string(),
            size,
        },
        shoal_registry::Event::BlobDeleted { digest } => RegistryRequest::BlobsDropped {
            digests: vec![digest.to_string()],
        },
        _ => return,
    };
    let link = link.clone();
    tokio::spawn(async move {
        if let Err(e) = ask(&link, request).await {
            tracing::warn!(error = %e, "telling the swarm about a registry blob");
        }
    });
}

/// The leader's answer; its refusal as an error.
async fn ask(link: &PeerLink, request: RegistryRequest) -> Result<RegistryAnswer, String> {
    match link.registry(request).await {
        Ok(RegistryAnswer::Failed(e)) => Err(e),
        Ok(a) => Ok(a),
        Err(e) => Err(e.to_string()),
    }
}

fn unexpected(a: &RegistryAnswer) -> MetaError {
    MetaError::Other(format!("unexpected answer from the swarm: {a:?}"))
}

fn meta_err(e: String) -> MetaError {
    if let Some(d) = e.strip_prefix("MANIFEST_BLOB_UNKNOWN: ") {
        return MetaError::BlobUnknown(d.to_string());
    }
    if e.contains("session") || e.contains("did not say") {
        MetaError::Unavailable(e)
    } else {
        MetaError::Other(e)
    }
}

/// Tags and manifests: the leader's store, over the session.
struct SwarmMeta(Arc<PeerLink>, BlobStore);

impl Meta for SwarmMeta {
    fn get_manifest<'a>(
        &'a self,
        name: &'a str,
        reference: &'a Reference,
    ) -> MetaFuture<'a, Option<Manifest>> {
        Box::pin(async move {
            let request = RegistryRequest::GetManifest {
                repo: name.to_string(),
                reference: reference.to_string(),
            };
            match ask(&self.0, request).await.map_err(meta_err)? {
                RegistryAnswer::Manifest(None) => Ok(None),
                RegistryAnswer::Manifest(Some(m)) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(&m.data)
                        .map_err(|e| MetaError::Other(format!("manifest {}: {e}", m.digest)))?;
                    let digest = Digest::parse(&m.digest)
                        .map_err(|e| MetaError::Other(format!("manifest {}: {e}", m.digest)))?;
                    Ok(Some(Manifest {
                        digest,
                        media_type: m.media_type,
                        bytes: bytes.into(),
                    }))
                }
                other => Err(unexpected(&other)),
            }
        })
    }

    fn put_manifest<'a>(
        &'a self,
        name: &'a str,
        tags: &'a [String],
        manifest: Manifest,
    ) -> MetaFuture<'a, ()> {
        Box::pin(async move {
            let refs = shoal_api::registry::refs_of(&manifest.bytes)
                .ok_or_else(|| MetaError::Other("the manifest is not a JSON object".into()))?;
            let data = ManifestData {
                digest: manifest.digest.to_string(),
                media_type: manifest.media_type.clone(),
                data: base64::engine::general_purpose::STANDARD.encode(&manifest.bytes),
            };
            let mut held = Vec::new();
            for r in &refs {
                if let Ok(d) = Digest::parse(r) {
                    if let Ok(Some(size)) = self.1.stat(&d).await {
                        held.push((r.clone(), size));
                    }
                }
            }
            let tags: Vec<Option<String>> = if tags.is_empty() {
                vec![None]
            } else {
                tags.iter().cloned().map(Some).collect()
            };
            for tag in tags {
                let request = RegistryRequest::PutManifest {
                    repo: name.to_string(),
                    tag,
                    manifest: data.clone(),
                    refs: refs.clone(),
                    held: held.clone(),
                };
                ask(&self.0, request).await.map_err(meta_err)?;
            }
            Ok(())
        })
    }

    fn delete_manifest<'a>(
        &'a self,
        name: &'a str,
        reference: &'a Reference,
    ) -> MetaFuture<'a, bool> {
        Box::pin(async move {
            let Reference::Digest(d) = reference else {
                return Err(MetaError::Other(
                    "a tag is deleted with its manifest: delete by digest".into(),
                ));
            };
            let request = RegistryRequest::DeleteManifest {
                repo: name.to_string(),
                digest: d.to_string(),
            };
            match ask(&self.0, request).await {
                Ok(_) => Ok(true),
                Err(e) if e.starts_with("MANIFEST_UNKNOWN") => Ok(false),
                Err(e) => Err(meta_err(e)),
            }
        })
    }

    fn tags<'a>(&'a self, name: &'a str) -> MetaFuture<'a, Option<Vec<String>>> {
        Box::pin(async move {
            let request = RegistryRequest::Tags {
                repo: name.to_string(),
            };
            match ask(&self.0, request).await.map_err(meta_err)? {
                RegistryAnswer::Tags(t) => Ok(t),
                other => Err(unexpected(&other)),
            }
        })
    }

    fn repositories(&self) -> MetaFuture<'_, Vec<String>> {
        Box::pin(async move {
            match ask(&self.0, RegistryRequest::Repositories)
                .await
                .map_err(meta_err)?
            {
                RegistryAnswer::Repositories(r) => Ok(r),
                other => Err(unexpected(&other)),
            }
        })
    }

    fn blob_known<'a>(&'a self, digest: &'a Digest) -> MetaFuture<'a, bool> {
        Box::pin(async move {
            let request = RegistryRequest::BlobKnown {
                digest: digest.to_string(),
            };
            match ask(&self.0, request).await.map_err(meta_err)? {
                RegistryAnswer::Known(k) => Ok(k),
                other => Err(unexpected(&other)),
            }
        })
    }
}

/// Blobs this node lacks: from a ready node holding them, over the peer port.
struct SwarmRemote(Arc<PeerLink>);

async fn holders(link: &PeerLink, digest: &Digest) -> Result<(u64, Vec<BlobHolder>), RemoteError> {
    let request = RegistryRequest::BlobHolders {
        digest: digest.to_string(),
    };
    match ask(link, request).await.map_err(RemoteError)? {
        RegistryAnswer::Holders { size, holders } => Ok((size, holders)),
        other => Err(RemoteError(format!(
            "unexpected answer from the swarm: {other:?}"
        ))),
    }
}

/// The blob from the first holder that answers.
async fn from_holders(
    link: &PeerLink,
    digest: &Digest,
    holders: &[BlobHolder],
) -> Result<Option<RemoteBlob>, RemoteError> {
    let mut last: Option<PeerError> = None;
    for h in holders {
        match link.blob(h, digest.as_str()).await {
            Ok(export) => {
                let body = export
                    .chunks
                    .map(|r| r.map(bytes::Bytes::from).map_err(RemoteError))
                    .boxed();
                return Ok(Some(RemoteBlob {
                    size: export.size,
                    body,
                }));
            }
            Err(e) => {
                tracing::warn!(%digest, from = %h.hostname, error = %e, "fetching a registry blob failed");
                last = Some(e);
            }
        }
    }
    match last {
        Some(e) => Err(RemoteError(e.to_string())),
        None => Ok(None),
    }
}

impl Remote for SwarmRemote {
    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<u64>, RemoteError>> {
        Box::pin(async move {
            let (size, holders) = holders(&self.0, digest).await?;
            Ok((!holders.is_empty()).then_some(size))
        })
    }

    fn fetch<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<RemoteBlob>, RemoteError>> {
        Box::pin(async move {
            let (_, holders) = holders(&self.0, digest).await?;
            from_holders(&self.0, digest, &holders).await
        })
    }
}

/// Fetches the blobs the leader says this node should hold (a second copy after a push, a
/// new copy after a holder's loss), every few seconds.
async fn duties(store: BlobStore, link: Arc<PeerLink>, copies: usize, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(DUTIES_EVERY) => {}
        }
        let due = match ask(&link, RegistryRequest::Duties { copies }).await {
            Ok(RegistryAnswer::Duties(d)) => d,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "asking for registry duties");
                continue;
            }
        };
        for (digest, holders) in due {
            let Ok(d) = Digest::parse(&digest) else {
                continue;
            };
            if matches!(store.stat(&d).await, Ok(Some(_))) {
                // Held already; the leader has not heard yet.
                let size = store.stat(&d).await.ok().flatten().unwrap_or(0);
                let _ = ask(&link, RegistryRequest::BlobStored { digest, size }).await;
                continue;
            }
            let fetched = match from_holders(&link, &d, &holders).await {
                Ok(Some(blob)) => store
                    .put_stream(&d, blob.body)
                    .await
                    .map_err(|e| e.to_string()),
                Ok(None) => Err("no holder".to_string()),
                Err(e) => Err(e.0),
            };
            match fetched {
                Ok(size) => {
                    tracing::info!(%digest, size, "registry blob copied to this node");
                    if let Err(e) = ask(&link, RegistryRequest::BlobStored { digest, size }).await {
                        tracing::warn!(error = %e, "telling the swarm about a copied blob");
                    }
                }
                Err(e) => tracing::warn!(%digest, error = %e, "copying a registry blob"),
            }
        }
    }
}

/// Removes blobs no manifest references once they are older than [`GC_GRACE`].
async fn collect(store: BlobStore, link: Arc<PeerLink>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(GC_EVERY) => {}
        }
        let keep: HashSet<String> = match ask(&link, RegistryRequest::Referenced).await {
            Ok(RegistryAnswer::Referenced(r)) => r.into_iter().collect(),
            _ => continue,
        };
        match store.gc(&keep, GC_GRACE).await {
            Ok(report) if !report.blobs.is_empty() => {
                tracing::info!(
                    blobs = report.blobs.len(),
                    bytes = report.bytes,
                    "collected unreferenced registry blobs"
                );
                let digests = report.blobs.iter().map(|d| d.to_string()).collect();
                if let Err(e) = ask(&link, RegistryRequest::BlobsDropped { digests }).await {
                    tracing::warn!(error = %e, "telling the swarm about collected blobs");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "collecting registry blobs"),
        }
    }
}

/// A blob of this node's store, for a peer.
pub async fn export_blob(
    store: &BlobStore,
    digest: &str,
) -> Result<shoal_manager::node::ImageExport, String> {
    let d = Digest::parse(digest).map_err(|e| e.to_string())?;
    let Some((file, size)) = store.open_blob(&d).await.map_err(|e| e.to_string())? else {
        return Err(format!("no such blob here: {digest}"));
    };
    let chunks = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
        .map(|r| r.map(|b| b.to_vec()).map_err(|e| e.to_string()))
        .boxed();
    Ok(shoal_manager::node::ImageExport { size, chunks })
}
