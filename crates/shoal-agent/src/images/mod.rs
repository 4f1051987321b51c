//! Images that reach a node without a registry (issue 22): when a task's image is neither on
//! this node's engine nor pullable, the node asks the leader which nodes hold it, streams the
//! holder's `docker save` over the peer port into its own engine's `docker load`, checks the
//! loaded image's ID and tags it as the task names it. One transfer per image at a time per
//! node; a broken one goes on from the next holder, then again after a pause. The other side,
//! [`export`], is what this node serves its peers.

pub mod plan;

use bollard::Docker;
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use shoal_api::images::{ImageRef, ImageSource};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use plan::{FetchPlan, NoSource, Platform};

/// An image as a holder streams it: its size, then its `docker save` tarball in chunks.
pub struct Export {
    /// The image's size as its engine reports it (the tarball is about this long).
    pub size: u64,
    /// The tarball.
    pub chunks: BoxStream<'static, Result<Bytes, String>>,
}

/// The network side of a transfer, implemented over the session and the peer port by the
/// binary; a trait so the transfer logic is tested against engines without a cluster.
pub trait Peers: Send + Sync + 'static {
    /// The leader's answer: which other ready nodes hold `image`.
    fn sources(&self, image: &str) -> BoxFuture<'static, Result<Vec<ImageSource>, String>>;
    /// The holder's export of `image_id`, from its peer port.
    fn export(
        &self,
        source: &ImageSource,
        image_id: &str,
    ) -> BoxFuture<'static, Result<Export, String>>;
}

/// The largest chunk [`export`] sends: large enough that a 200 MB image is 200 messages.
pub const CHUNK: usize = 1 << 20;

/// Rounds over all holders before a transfer is given up (the worker then rejects the task
/// and the orchestrator makes another, which tries again).
const ROUNDS: u32 = 3;

/// How long a holder may send nothing before the transfer counts as broken (a holder cut off
/// the network sends no error).
const STALL: Duration = Duration::from_secs(15);

/// `chunks`, failing once nothing has come for `stall`.
fn watched(
    chunks: BoxStream<'static, Result<Bytes, String>>,
    stall: Duration,
) -> BoxStream<'static, Result<Bytes, String>> {
    futures::stream::unfold((chunks, false), move |(mut chunks, done)| async move {
        if done {
            return None;
        }
        match tokio::time::timeout(stall, chunks.next()).await {
            Ok(Some(Ok(b))) => Some((Ok(b), (chunks, false))),
            Ok(Some(Err(e))) => Some((Err(e), (chunks, true))),
            Ok(None) => None,
            Err(_) => Some((
                Err(format!("the holder sent nothing for {stall:?}")),
                (chunks, true),
            )),
        }
    })
    .boxed()
}

/// This node's end of transfers: who is fetching what, and how far each has got.
pub struct Transfers {
    docker: Docker,
    peers: Arc<dyn Peers>,
    own: Platform,
    spread: u64,
    /// One lock per image reference: concurrent tasks wait for the first one's transfer.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// What `docker service ps` shows while fetching: image reference -> message.
    progress: Arc<Mutex<HashMap<String, String>>>,
}

impl Transfers {
    /// Transfers into `docker` for node `node_id` (which spreads the first holder asked).
    pub fn new(docker: Docker, peers: Arc<dyn Peers>, node_id: &str) -> Transfers {
        let spread = node_id
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        Transfers {
            docker,
            peers,
            own: Platform::here(),
            spread,
            locks: Mutex::default(),
            progress: Arc::default(),
        }
    }

    /// The transfer's progress for `image` ("fetching image from node-1: 45%"), while one runs.
    pub fn progress(&self, image: &str) -> Option<String> {
        self.progress.lock().ok()?.get(image).cloned()
    }

    fn set_progress(&self, image: &str, message: Option<String>) {
        if let Ok(mut m) = self.progress.lock() {
            match message {
                Some(msg) => m.insert(image.to_string(), msg),
                None => m.remove(image),
            };
        }
    }

    /// Fetches `image` from a node that holds it, unless it is here already (another task's
    /// transfer may have brought it while this one waited). The error says why no holder
    /// could give it.
    pub async fn fetch(&self, image: &str) -> Result<(), String> {
        let lock = {
            let mut locks = self.locks.lock().map_err(|_| "transfer table poisoned")?;
            locks.entry(image.to_string()).or_default().clone()
        };
        let _turn = lock.lock().await;
        let here = self.docker.inspect_image(image).await.is_ok();
        let result = if here {
            Ok(())
        } else {
            self.fetch_now(image).await
        };
        self.set_progress(image, None);
        if let Ok(mut locks) = self.locks.lock() {
            // The last one out forgets the lock (this holder and the map's own reference).
            if Arc::strong_count(&lock) <= 2 {
                locks.remove(image);
            }
        }
        result
    }

    async fn fetch_now(&self, image: &str) -> Result<(), String> {
        let mut last = String::new();
        for round in 0..ROUNDS {
            if round > 0 {
                tokio::time::sleep(Duration::from_secs(1 << round)).await;
            }
            let sources = self.peers.sources(image).await?;
            let plan = match plan::plan(image, &self.own, sources, self.spread) {
                Ok(p) => p,
                // The index may lag a node that just got it: ask again, then give up.
                Err(NoSource::Nowhere) if round + 1 < ROUNDS => {
                    last = NoSource::Nowhere.to_string();
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            };
            // The same content under another name is here already: a name is all it lacks.
            if self.docker.inspect_image(&plan.image_id).await.is_ok() {
                return self.tag(&plan).await;
            }
            for source in &plan.sources {
                let started = std::time::Instant::now();
                match self.fetch_from(image, &plan, source).await {
                    Ok(bytes) => {
                        crate::metrics::transferred(true, bytes);
                        let ms = started.elapsed().as_millis() as u64;
                        tracing::info!(%image, from = %source.hostname, bytes, ms, "image fetched from a node");
                        return Ok(());
                    }
                    Err((e, bytes)) => {
                        crate::metrics::transferred(false, bytes);
                        tracing::warn!(%image, from = %source.hostname, error = %e, "fetching an image from a node failed");
                        last = format!("from {}: {e}", source.hostname);
                    }
                }
            }
        }
        Err(last)
    }

    /// One attempt from one holder; the bytes received either way.
    async fn fetch_from(
        &self,
        image: &str,
        plan: &FetchPlan,
        source: &ImageSource,
    ) -> Result<u64, (String, u64)> {
        let from = source.hostname.clone();
        self.set_progress(image, Some(format!("fetching image from {from}")));
        let export = self
            .peers
            .export(source, &plan.image_id)
            .await
            .map_err(|e| (e, 0))?;
        let total = export.size.max(1);
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let chunks = watched(export.chunks, STALL).map(move |r| {
            r.inspect(|b| {
                counter.fetch_add(b.len() as u64, Ordering::Relaxed);
            })
        });
        // A broken stream ends the engine's load; should the engine not notice, the attempt
        // ends anyway (the engine drops a load whose body failed).
        let failed = Arc::new(tokio::sync::Notify::new());
        let notify = failed.clone();
        let chunks = chunks.inspect(move |r| {
            if r.is_err() {
                notify.notify_one();
            }
        });
        // The progress line follows the bytes every half second while the engine loads.
        let (progress, key, seen) = (self.progress.clone(), image.to_string(), received.clone());
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let pct = (seen.load(Ordering::Relaxed).saturating_mul(100) / total).min(99);
                if let Ok(mut m) = progress.lock() {
                    m.insert(key.clone(), format!("fetching image from {from}: {pct}%"));
                }
            }
        });
        let loaded = tokio::select! {
            r = self.load(chunks) => r,
            _ = async {
                failed.notified().await;
                tokio::time::sleep(STALL).await;
            } => Err("the transfer broke and the engine did not end the load".to_string()),
        };
        ticker.abort();
        let bytes = received.load(Ordering::Relaxed);
        loaded.map_err(|e| (e, bytes))?;
        // The engine loaded what the tarball held: it must be the image asked for.
        let got = self
            .docker
            .inspect_image(&plan.image_id)
            .await
            .map_err(|e| {
                (
                    format!("the loaded image is not {}: {e}", plan.image_id),
                    bytes,
                )
            })?;
        if got.id.as_deref() != Some(plan.image_id.as_str()) {
            return Err((
                format!("loaded {:?}, expected {}", got.id, plan.image_id),
                bytes,
            ));
        }
        self.tag(plan).await.map_err(|e| (e, bytes))?;
        Ok(bytes)
    }

    /// Gives the loaded image the name the task uses (an export by ID carries none).
    async fn tag(&self, plan: &FetchPlan) -> Result<(), String> {
        let Some((repo, tag)) = &plan.tag else {
            return Ok(());
        };
        self.docker
            .tag_image(
                &plan.image_id,
                Some(bollard::query_parameters::TagImageOptions {
                    repo: Some(repo.clone()),
                    tag: Some(tag.clone()),
                }),
            )
            .await
            .map_err(|e| format!("tagging {repo}:{tag}: {e}"))
    }

    /// `docker load` of the stream; the engine's own error when it refuses the tarball.
    async fn load(
        &self,
        chunks: impl futures::Stream<Item = Result<Bytes, String>> + Send + 'static,
    ) -> Result<(), String> {
        let body = chunks.map(|r| r.map_err(std::io::Error::other));
        let mut out = self.docker.import_image_stream(
            bollard::query_parameters::ImportImageOptions {
                quiet: true,
                platform: None,
            },
            body,
            None,
        );
        while let Some(r) = out.next().await {
            let info = r.map_err(|e| format!("loading: {e}"))?;
            if let Some(d) = info.error_detail {
                return Err(format!(
                    "loading: {}",
                    d.message
                        .unwrap_or_else(|| "the engine refused the image".into())
                ));
            }
        }
        Ok(())
    }
}

/// Why this node will not export an image to a peer; `Display` is the peer's error.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Only image IDs are exported (content-addressed; names mean different things on nodes).
    #[error("not an image ID: {0:?}")]
    NotAnId(String),
    /// The engine does not have it (any more).
    #[error("no such image here: {0}")]
    Missing(String),
}

/// This node's engine's `docker save` of `image_id`, in chunks of at most [`CHUNK`].
pub async fn export(docker: &Docker, image_id: &str) -> Result<Export, ExportError> {
    if !matches!(ImageRef::parse(image_id), Some(ImageRef::Id(ref id)) if id == image_id) {
        return Err(ExportError::NotAnId(image_id.chars().take(80).collect()));
    }
    let inspect = docker
        .inspect_image(image_id)
        .await
        .map_err(|_| ExportError::Missing(image_id.to_string()))?;
    let size = inspect.size.unwrap_or(0).max(0) as u64;
    let raw = docker
        .export_image(image_id)
        .map(|r| r.map_err(|e| format!("the holder's engine: {e}")));
    Ok(Export {
        size,
        chunks: rechunk(raw.boxed()),
    })
}

/// The engine's stream in pieces of about [`CHUNK`] (it hands out small ones), so a transfer
/// is few messages.
fn rechunk(
    raw: BoxStream<'static, Result<Bytes, String>>,
) -> BoxStream<'static, Result<Bytes, String>> {
    futures::stream::unfold((raw, false), |(mut raw, done)| async move {
        if done {
            return None;
        }
        let mut buf = BytesMut::new();
        loop {
            match raw.next().await {
                Some(Ok(b)) => {
                    buf.extend_from_slice(&b);
                    if buf.len() >= CHUNK {
                        return Some((Ok(buf.freeze()), (raw, false)));
                    }
                }
                Some(Err(e)) => return Some((Err(e), (raw, true))),
                None if buf.is_empty() => return None,
                None => return Some((Ok(buf.freeze()), (raw, true))),
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_holder_that_goes_silent_breaks_the_stream_and_rechunking_keeps_every_byte() {
        let first = futures::stream::iter([Ok(Bytes::from_static(b"abc"))]);
        let silent = first.chain(futures::stream::pending()).boxed();
        let got: Vec<_> = watched(silent, Duration::from_millis(50)).collect().await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].as_deref().ok(), Some(&b"abc"[..]));
        assert_eq!(
            got[1].as_ref().err().map(String::as_str),
            Some("the holder sent nothing for 50ms")
        );
        // Small pieces become chunks of CHUNK bytes, the rest in a last one; an error ends it.
        let pieces = (0..(2 * CHUNK / 1000 + 1)).map(|_| Ok(Bytes::from(vec![7u8; 1000])));
        let out: Vec<_> = rechunk(futures::stream::iter(pieces).boxed())
            .collect()
            .await;
        let sizes: Vec<usize> = out
            .iter()
            .map(|r| r.as_ref().map_or(0, Bytes::len))
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), (2 * CHUNK / 1000 + 1) * 1000);
        assert!(sizes[..sizes.len() - 1].iter().all(|s| *s >= CHUNK));
        let broken = futures::stream::iter([Ok(Bytes::from_static(b"x")), Err("cut".to_string())]);
        let out: Vec<_> = rechunk(broken.boxed()).collect().await;
        assert_eq!(
            out.last()
                .and_then(|r| r.as_ref().err())
                .map(String::as_str),
            Some("cut")
        );
    }
}
