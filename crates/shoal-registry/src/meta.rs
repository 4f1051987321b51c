//! Manifests and tags: the `Meta` trait the cluster implements over its raft store, and
//! `LocalMeta`, one process's implementation (memory, optionally a JSON file).

use crate::reference::{Digest, Reference};
use bytes::Bytes;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// A manifest as pushed: its exact bytes, their digest and the type it is served as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// sha256 of `bytes`.
    pub digest: Digest,
    /// The `Content-Type` it is served with (one of `manifest::MEDIA_TYPES`).
    pub media_type: String,
    /// The bytes exactly as the client pushed them.
    pub bytes: Bytes,
}

/// Why the metadata store failed; the API answers 503 for `Unavailable` (no quorum, no
/// leader: the client may retry) and 500 otherwise.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The store cannot answer now.
    #[error("registry metadata unavailable: {0}")]
    Unavailable(String),
    /// Anything else.
    #[error("registry metadata: {0}")]
    Other(String),
    /// The store refused a manifest because a blob it references is known nowhere (another
    /// node's view, after this node's own check passed): the client's error, not the server's.
    #[error("blob unknown to the registry: {0}")]
    BlobUnknown(String),
}

/// A future of the metadata store.
pub type MetaFuture<'a, T> = BoxFuture<'a, Result<T, MetaError>>;

/// Manifests, tags and which blobs the cluster knows: what the registry keeps beside its blobs.
/// Repositories exist while they hold a manifest.
pub trait Meta: Send + Sync + 'static {
    /// The manifest a tag points to, or of that digest, in `name`.
    fn get_manifest<'a>(
        &'a self,
        name: &'a str,
        reference: &'a Reference,
    ) -> MetaFuture<'a, Option<Manifest>>;

    /// Stores a manifest in `name` and points `tags` at it (none for a push by digest); a tag
    /// that pointed elsewhere moves.
    fn put_manifest<'a>(
        &'a self,
        name: &'a str,
        tags: &'a [String],
        manifest: Manifest,
    ) -> MetaFuture<'a, ()>;

    /// By digest: removes the manifest and every tag of `name` pointing to it. By tag: removes
    /// the tag only. False when there was nothing to remove.
    fn delete_manifest<'a>(
        &'a self,
        name: &'a str,
        reference: &'a Reference,
    ) -> MetaFuture<'a, bool>;

    /// The tags of `name`, or `None` when the repository does not exist.
    fn tags<'a>(&'a self, name: &'a str) -> MetaFuture<'a, Option<Vec<String>>>;

    /// Every repository.
    fn repositories(&self) -> MetaFuture<'_, Vec<String>>;

    /// Whether some node of the cluster holds the blob (this node's own store is asked first
    /// and separately).
    fn blob_known<'a>(&'a self, digest: &'a Digest) -> MetaFuture<'a, bool>;
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct StoredManifest {
    media_type: String,
    /// Manifests are JSON, so UTF-8: stored as text to keep the file readable.
    bytes: String,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Repo {
    manifests: BTreeMap<Digest, StoredManifest>,
    tags: BTreeMap<String, Digest>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct State {
    repos: BTreeMap<String, Repo>,
    #[serde(default)]
    known_blobs: BTreeSet<Digest>,
}

/// `Meta` for one process: in memory, and written whole to a JSON file after each change when
/// opened with `open` (tests, a single node, the registry without a cluster).
#[derive(Debug, Default)]
pub struct LocalMeta {
    state: parking_lot::Mutex<State>,
    file: Option<PathBuf>,
}

impl LocalMeta {
    /// An empty store in memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store kept in `file` (read now if it exists, rewritten by rename on each change).
    pub fn open(file: impl Into<PathBuf>) -> Result<Self, MetaError> {
        let file = file.into();
        let state = match std::fs::read(&file) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| MetaError::Other(format!("{}: {e}", file.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(MetaError::Other(format!("{}: {e}", file.display()))),
        };
        Ok(Self {
            state: parking_lot::Mutex::new(state),
            file: Some(file),
        })
    }

    /// Records that another node holds a blob (what the cluster's store would know).
    pub fn mark_blob_known(&self, digest: Digest) -> Result<(), MetaError> {
        self.change(|s| {
            s.known_blobs.insert(digest);
        })
    }

    /// Every digest referenced by a manifest of any repository (manifests included): the
    /// `referenced` set for `BlobStore::gc`.
    pub fn referenced(&self) -> std::collections::HashSet<String> {
        let s = self.state.lock();
        let mut out = std::collections::HashSet::new();
        for repo in s.repos.values() {
            for (d, m) in &repo.manifests {
                out.insert(d.to_string());
                if let Ok(p) = crate::manifest::parse(Some(&m.media_type), m.bytes.as_bytes()) {
                    out.extend(p.blobs.iter().map(|b| b.to_string()));
                }
            }
        }
        out
    }

    /// Applies a change and saves the state if backed by a file.
    fn change<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, MetaError> {
        let mut s = self.state.lock();
        let out = f(&mut s);
        if let Some(file) = &self.file {
            let json =
                serde_json::to_vec_pretty(&*s).map_err(|e| MetaError::Other(e.to_string()))?;
            let tmp = file.with_extension("tmp");
            let write = || -> std::io::Result<()> {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(&json)?;
                f.sync_all()?;
                std::fs::rename(&tmp, file)
            };
            write().map_err(|e| MetaError::Other(format!("{}: {e}", file.display())))?;
        }
        Ok(out)
    }
}

impl Meta for LocalMeta {
    fn get_manifest<'a>(
        &'a self,
        name: &'a str,
        reference: &'a Reference,
    ) -> MetaFuture<'a, Option<Manifest>> {
        let s = self.state.lock();
        let found = s.repos.get(name).and_then(|repo| {
            let digest = match reference {
                Reference::Tag(t) => repo.tags.get(t)?,
                Reference::Digest(d) => d,
            };
            repo.manifests.get(digest).map(|m| Manifest {
                digest: digest.clone(),
                media_type: m.media_type.clone(),
                bytes: Bytes::copy_from_slice(m.bytes.as_bytes()),
            })
        });
        Box::pin(std::future::ready(Ok(found)))
    }

    fn put_manifest<'a>(
        &'a self,
        name: &'a str,
        tags: &'a [String],
        manifest: Manifest,
    ) -> MetaFuture<'a, ()> {
        let r = String::from_utf8(manifest.bytes.to_vec())
            .map_err(|_| MetaError::Other("a manifest that is not UTF-8".into()))
            .and_then(|text| {
                self.change(|s| {
                    let repo = s.repos.entry(name.to_string()).or_default();
                    repo.manifests.insert(
                        manifest.digest.clone(),
                        StoredManifest {
                            media_type: manifest.media_type,
                            bytes: text,
                        },
                    );
                    for t in tags {
                        repo.tags.insert(t.clone(), manifest.digest.clone());
                    }
                })
            });
        Box::pin(std::future::ready(r))
    }

    fn delete_manifest<'a>(
        &'a self,
        name: &'a str,
        reference: &'a Reference,
    ) -> MetaFuture<'a, bool> {
        let r = self.change(|s| {
            let Some(repo) = s.repos.get_mut(name) else {
                return false;
            };
            let removed = match reference {
                Reference::Tag(t) => repo.tags.remove(t).is_some(),
                Reference::Digest(d) => {
                    repo.tags.retain(|_, v| v != d);
                    repo.manifests.remove(d).is_some()
                }
            };
            if repo.manifests.is_empty() {
                s.repos.remove(name);
            }
            removed
        });
        Box::pin(std::future::ready(r))
    }

    fn tags<'a>(&'a self, name: &'a str) -> MetaFuture<'a, Option<Vec<String>>> {
        let tags = self
            .state
            .lock()
            .repos
            .get(name)
            .map(|r| r.tags.keys().cloned().collect());
        Box::pin(std::future::ready(Ok(tags)))
    }

    fn repositories(&self) -> MetaFuture<'_, Vec<String>> {
        let names = self.state.lock().repos.keys().cloned().collect();
        Box::pin(std::future::ready(Ok(names)))
    }

    fn blob_known<'a>(&'a self, digest: &'a Digest) -> MetaFuture<'a, bool> {
        let known = self.state.lock().known_blobs.contains(digest);
        Box::pin(std::future::ready(Ok(known)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(body: &str) -> Manifest {
        Manifest {
            digest: Digest::of(body.as_bytes()),
            media_type: crate::manifest::OCI_MANIFEST.into(),
            bytes: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    #[tokio::test]
    async fn tags_move_and_deleting_a_digest_removes_its_tags_and_empty_repos() {
        let m = LocalMeta::new();
        let (a, b) = (manifest("{\"a\":1}"), manifest("{\"b\":2}"));
        m.put_manifest("r", &["1".into(), "latest".into()], a.clone())
            .await
            .unwrap();
        m.put_manifest("r", &["latest".into()], b.clone())
            .await
            .unwrap();
        let got = m
            .get_manifest("r", &Reference::Tag("latest".into()))
            .await
            .unwrap();
        assert_eq!(got, Some(b.clone()));
        assert_eq!(
            m.tags("r").await.unwrap(),
            Some(vec!["1".into(), "latest".into()])
        );
        assert!(m
            .delete_manifest("r", &Reference::Digest(a.digest.clone()))
            .await
            .unwrap());
        assert_eq!(m.tags("r").await.unwrap(), Some(vec!["latest".into()]));
        assert!(!m
            .delete_manifest("r", &Reference::Digest(a.digest))
            .await
            .unwrap());
        assert!(m
            .delete_manifest("r", &Reference::Tag("latest".into()))
            .await
            .unwrap());
        assert_eq!(
            m.repositories().await.unwrap(),
            vec!["r".to_string()],
            "b is still there untagged"
        );
        assert!(m
            .delete_manifest("r", &Reference::Digest(b.digest))
            .await
            .unwrap());
        assert_eq!(m.repositories().await.unwrap(), Vec::<String>::new());
        assert_eq!(m.tags("r").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_file_backed_store_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.json");
        let a = manifest("{\"a\":1}");
        {
            let m = LocalMeta::open(&path).unwrap();
            m.put_manifest("x/y", &["v1".into()], a.clone())
                .await
                .unwrap();
            m.mark_blob_known(Digest::of(b"blob")).unwrap();
        }
        let m = LocalMeta::open(&path).unwrap();
        let got = m
            .get_manifest("x/y", &Reference::Tag("v1".into()))
            .await
            .unwrap();
        assert_eq!(got, Some(a), "exact bytes back");
        assert!(m.blob_known(&Digest::of(b"blob")).await.unwrap());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
