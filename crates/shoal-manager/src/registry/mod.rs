//! The node registries' records on the leader (issue 22): each node's registry asks over its
//! session (`AgentMessage::Registry`), and this answers from the store: tags and manifests
//! (the same on every node), which nodes hold each blob, which blobs a node should fetch so
//! every blob has its copies, and what collection must keep. Workers hold no store, so every
//! node asks here, managers included.

use crate::db::{self, Versioned};
use shoal_api::models::{Node, NodeState};
use shoal_api::registry::{
    duties, referenced, BlobHolder, ManifestData, RegistryAnswer, RegistryRequest, StoredBlob,
    StoredManifest, StoredTag,
};
use shoal_store::{Expect, Store};
use std::collections::BTreeSet;

/// Tries of a read-modify-write that another writer got in before.
const TRIES: usize = 8;

/// The answer to `node`'s request.
pub async fn answer(store: &Store, node: &str, request: RegistryRequest) -> RegistryAnswer {
    match request {
        RegistryRequest::GetManifest { repo, reference } => {
            RegistryAnswer::Manifest(manifest(store, &repo, &reference))
        }
        RegistryRequest::PutManifest {
            repo,
            tag,
            manifest,
            refs,
            held,
        } => {
            for (digest, size) in held.iter().filter(|(d, _)| refs.contains(d)) {
                if let Err(e) = holder(store, digest, node, Some(*size)).await {
                    return RegistryAnswer::Failed(e);
                }
            }
            result(put_manifest(store, &repo, tag.as_deref(), manifest, refs).await)
        }
        RegistryRequest::DeleteManifest { repo, digest } => {
            result(delete_manifest(store, &repo, &digest).await)
        }
        RegistryRequest::Tags { repo } => RegistryAnswer::Tags(tags(store, &repo)),
        RegistryRequest::Repositories => RegistryAnswer::Repositories(repositories(store)),
        RegistryRequest::BlobKnown { digest } => RegistryAnswer::Known(
            db::get::<StoredBlob>(store, &digest).is_some_and(|b| !b.obj.holders.is_empty()),
        ),
        RegistryRequest::BlobStored { digest, size } => {
            result(holder(store, &digest, node, Some(size)).await)
        }
        RegistryRequest::BlobsDropped { digests } => {
            for d in digests {
                if let Err(e) = holder(store, &d, node, None).await {
                    return RegistryAnswer::Failed(e);
                }
            }
            RegistryAnswer::Done
        }
        RegistryRequest::BlobHolders { digest } => RegistryAnswer::Holders {
            size: db::get::<StoredBlob>(store, &digest).map_or(0, |b| b.obj.size),
            holders: holders(store, &digest, node),
        },
        RegistryRequest::Duties { copies } => {
            let nodes = ready_nodes(store);
            let ready: BTreeSet<String> = nodes.iter().map(|h| h.node_id.clone()).collect();
            let blobs: Vec<StoredBlob> = db::list::<StoredBlob>(store)
                .into_iter()
                .map(|v| v.obj)
                .collect();
            let mine = duties(&blobs, &ready, copies)
                .remove(node)
                .unwrap_or_default();
            RegistryAnswer::Duties(
                mine.into_iter()
                    .map(|d| {
                        let h = holders(store, &d, node);
                        (d, h)
                    })
                    .collect(),
            )
        }
        RegistryRequest::Referenced => {
            let all: Vec<StoredManifest> = db::list::<StoredManifest>(store)
                .into_iter()
                .map(|v| v.obj)
                .collect();
            RegistryAnswer::Referenced(referenced(&all).into_iter().collect())
        }
    }
}

fn result(r: Result<(), String>) -> RegistryAnswer {
    match r {
        Ok(()) => RegistryAnswer::Done,
        Err(e) => RegistryAnswer::Failed(e),
    }
}

fn is_digest(reference: &str) -> bool {
    reference.starts_with("sha256:")
}

/// `repo`'s manifest by tag or digest.
fn manifest(store: &Store, repo: &str, reference: &str) -> Option<ManifestData> {
    let digest = if is_digest(reference) {
        reference.to_string()
    } else {
        db::get::<StoredTag>(store, &format!("{repo}:{reference}"))?
            .obj
            .digest
    };
    let m = db::get::<StoredManifest>(store, &digest)?.obj;
    m.repos.iter().any(|r| r == repo).then_some(ManifestData {
        digest: m.digest,
        media_type: m.media_type,
        data: m.data,
    })
}

/// Whether `digest` is a blob some node holds or a manifest the store has.
fn known(store: &Store, digest: &str) -> bool {
    db::get::<StoredBlob>(store, digest).is_some_and(|b| !b.obj.holders.is_empty())
        || db::get::<StoredManifest>(store, digest).is_some()
}

async fn put_manifest(
    store: &Store,
    repo: &str,
    tag: Option<&str>,
    manifest: ManifestData,
    refs: Vec<String>,
) -> Result<(), String> {
    if let Some(missing) = refs.iter().find(|d| !known(store, d)) {
        return Err(format!("MANIFEST_BLOB_UNKNOWN: {missing}"));
    }
    for _ in 0..TRIES {
        let cur = db::get::<StoredManifest>(store, &manifest.digest);
        let mut repos = cur
            .as_ref()
            .map(|c| c.obj.repos.clone())
            .unwrap_or_default();
        if !repos.iter().any(|r| r == repo) {
            repos.push(repo.to_string());
            repos.sort();
        }
        let obj = StoredManifest {
            digest: manifest.digest.clone(),
            media_type: manifest.media_type.clone(),
            data: manifest.data.clone(),
            repos,
            refs: refs.clone(),
        };
        let mut ops = Vec::new();
        if cur.as_ref().map(|c| &c.obj) != Some(&obj) {
            let expect = cur
                .as_ref()
                .map_or(Expect::Absent, |c| Expect::Version(c.version));
            ops.push(db::put(&obj, expect).map_err(|e| e.message)?);
        }
        if let Some(tag) = tag {
            let t = StoredTag {
                repo: repo.to_string(),
                tag: tag.to_string(),
                digest: manifest.digest.clone(),
            };
            let held = db::get::<StoredTag>(store, &format!("{repo}:{tag}"));
            if held.as_ref().map(|h| &h.obj) != Some(&t) {
                let expect = held.map_or(Expect::Absent, |h| Expect::Version(h.version));
                ops.push(db::put(&t, expect).map_err(|e| e.message)?);
            }
        }
        match write(store, ops).await {
            Ok(()) => return Ok(()),
            Err(Retry::Again) => continue,
            Err(Retry::Failed(e)) => return Err(e),
        }
    }
    Err("too many concurrent changes; try again".into())
}

async fn delete_manifest(store: &Store, repo: &str, digest: &str) -> Result<(), String> {
    for _ in 0..TRIES {
        let Some(cur) = db::get::<StoredManifest>(store, digest) else {
            return Err(format!("MANIFEST_UNKNOWN: {digest}"));
        };
        if !cur.obj.repos.iter().any(|r| r == repo) {
            return Err(format!("MANIFEST_UNKNOWN: {digest}"));
        }
        let mut ops: Vec<shoal_store::Op> = db::list::<StoredTag>(store)
            .into_iter()
            .filter(|t| t.obj.repo == repo && t.obj.digest == digest)
            .map(|t| {
                db::delete::<StoredTag>(
                    &format!("{repo}:{}", t.obj.tag),
                    Expect::Version(t.version),
                )
            })
            .collect();
        let mut left = cur.obj.clone();
        left.repos.retain(|r| r != repo);
        ops.push(if left.repos.is_empty() {
            db::delete::<StoredManifest>(digest, Expect::Version(cur.version))
        } else {
            db::put(&left, Expect::Version(cur.version)).map_err(|e| e.message)?
        });
        match write(store, ops).await {
            Ok(()) => return Ok(()),
            Err(Retry::Again) => continue,
            Err(Retry::Failed(e)) => return Err(e),
        }
    }
    Err("too many concurrent changes; try again".into())
}

/// Adds `node` as a holder of `digest` (`size` given) or removes it (`None`).
async fn holder(store: &Store, digest: &str, node: &str, size: Option<u64>) -> Result<(), String> {
    for _ in 0..TRIES {
        let cur: Option<Versioned<StoredBlob>> = db::get(store, digest);
        let mut b = cur.as_ref().map(|c| c.obj.clone()).unwrap_or(StoredBlob {
            digest: digest.to_string(),
            size: size.unwrap_or(0),
            holders: Vec::new(),
        });
        let before = b.clone();
        match size {
            Some(s) => {
                b.size = s;
                if !b.holders.iter().any(|h| h == node) {
                    b.holders.push(node.to_string());
                    b.holders.sort();
                }
            }
            None => b.holders.retain(|h| h != node),
        }
        if cur.is_some() && b == before {
            return Ok(());
        }
        let op = match (&cur, b.holders.is_empty()) {
            (None, true) => return Ok(()),
            (Some(c), true) => db::delete::<StoredBlob>(digest, Expect::Version(c.version)),
            (c, false) => db::put(
                &b,
                c.as_ref()
                    .map_or(Expect::Absent, |c| Expect::Version(c.version)),
            )
            .map_err(|e| e.message)?,
        };
        match write(store, vec![op]).await {
            Ok(()) => return Ok(()),
            Err(Retry::Again) => continue,
            Err(Retry::Failed(e)) => return Err(e),
        }
    }
    Err("too many concurrent changes; try again".into())
}

enum Retry {
    Again,
    Failed(String),
}

async fn write(store: &Store, ops: Vec<shoal_store::Op>) -> Result<(), Retry> {
    if ops.is_empty() {
        return Ok(());
    }
    match store.write(ops).await {
        Ok(_) => Ok(()),
        Err(shoal_store::StoreError::Conflict { .. })
        | Err(shoal_store::StoreError::AlreadyExists { .. })
        | Err(shoal_store::StoreError::NotFound { .. }) => Err(Retry::Again),
        Err(e) => Err(Retry::Failed(db::store_error(e).message)),
    }
}

fn tags(store: &Store, repo: &str) -> Option<Vec<String>> {
    let mut tags: Vec<String> = db::list::<StoredTag>(store)
        .into_iter()
        .filter(|t| t.obj.repo == repo)
        .map(|t| t.obj.tag)
        .collect();
    if tags.is_empty() && !repositories(store).iter().any(|r| r == repo) {
        return None;
    }
    tags.sort();
    Some(tags)
}

fn repositories(store: &Store) -> Vec<String> {
    let set: BTreeSet<String> = db::list::<StoredManifest>(store)
        .into_iter()
        .flat_map(|m| m.obj.repos)
        .collect();
    set.into_iter().collect()
}

/// Ready nodes with an address, as holders.
fn ready_nodes(store: &Store) -> Vec<BlobHolder> {
    db::list::<Node>(store)
        .into_iter()
        .filter_map(|v| {
            let n = v.obj;
            let status = n.status.as_ref()?;
            if status.state != Some(NodeState::READY) {
                return None;
            }
            Some(BlobHolder {
                node_id: n.id.clone()?,
                hostname: n
                    .description
                    .as_ref()
                    .and_then(|d| d.hostname.clone())
                    .unwrap_or_default(),
                addr: status.addr.clone().filter(|a| !a.is_empty())?,
            })
        })
        .collect()
}

/// The ready nodes holding `digest`, `asker` left out.
fn holders(store: &Store, digest: &str, asker: &str) -> Vec<BlobHolder> {
    let Some(b) = db::get::<StoredBlob>(store, digest) else {
        return Vec::new();
    };
    ready_nodes(store)
        .into_iter()
        .filter(|h| h.node_id != asker && b.obj.holders.contains(&h.node_id))
        .collect()
}

/// One tag as `shoal registry ls` shows it: where its image's blobs are.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TagView {
    /// `app`, as pushed to `127.0.0.1:5000/app`.
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// The manifest's digest.
    pub digest: String,
    /// The bytes of the blobs it references (for an index: of its manifests' blobs too).
    pub size: u64,
    /// The fewest nodes holding any one of its blobs: how many nodes may be lost with the image
    /// still whole in the swarm, plus one. Blobs are placed one by one, so the copies of an
    /// image's blobs may be on different nodes.
    pub copies: usize,
    /// Nodes holding some of it, by name.
    pub nodes: Vec<String>,
    /// Nodes holding every blob of it, by name.
    pub complete_on: Vec<String>,
    /// Blobs no node holds (a holder is gone): the image cannot be pulled whole.
    pub missing: usize,
}

/// Every tag of the node registries, with where its content is.
pub fn list(store: &Store) -> Vec<TagView> {
    let names: std::collections::HashMap<String, String> = db::list::<Node>(store)
        .into_iter()
        .filter_map(|v| {
            let id = v.obj.id.clone()?;
            let name = v
                .obj
                .description
                .and_then(|d| d.hostname)
                .unwrap_or_else(|| id.clone());
            Some((id, name))
        })
        .collect();
    let manifests: std::collections::HashMap<String, StoredManifest> =
        db::list::<StoredManifest>(store)
            .into_iter()
            .map(|v| (v.obj.digest.clone(), v.obj))
            .collect();
    let blobs: std::collections::HashMap<String, StoredBlob> = db::list::<StoredBlob>(store)
        .into_iter()
        .map(|v| (v.obj.digest.clone(), v.obj))
        .collect();
    let mut out: Vec<TagView> = db::list::<StoredTag>(store)
        .into_iter()
        .map(|t| {
            let t = t.obj;
            // The blobs of the manifest, and of an index's manifests.
            let mut digests: BTreeSet<String> = BTreeSet::new();
            let mut queue = vec![t.digest.clone()];
            while let Some(d) = queue.pop() {
                match manifests.get(&d) {
                    Some(m) => {
                        queue.extend(m.refs.iter().filter(|r| !digests.contains(*r)).cloned())
                    }
                    None => {
                        digests.insert(d);
                    }
                }
            }
            let mut size = 0u64;
            let mut missing = 0usize;
            let mut copies: Option<usize> = None;
            let mut any: BTreeSet<String> = BTreeSet::new();
            let mut complete: Option<BTreeSet<String>> = None;
            for d in &digests {
                match blobs.get(d).filter(|b| !b.holders.is_empty()) {
                    Some(b) => {
                        size = size.saturating_add(b.size);
                        copies = Some(copies.map_or(b.holders.len(), |c| c.min(b.holders.len())));
                        any.extend(b.holders.iter().cloned());
                        let held: BTreeSet<String> = b.holders.iter().cloned().collect();
                        complete = Some(match complete {
                            None => held,
                            Some(c) => c.intersection(&held).cloned().collect(),
                        });
                    }
                    None => missing += 1,
                }
            }
            let named = |ids: BTreeSet<String>| -> Vec<String> {
                let mut v: Vec<String> = ids
                    .into_iter()
                    .map(|id| names.get(&id).cloned().unwrap_or(id))
                    .collect();
                v.sort();
                v
            };
            let complete_on = named(complete.unwrap_or_default());
            let nodes = named(any);
            let copies = if missing > 0 { 0 } else { copies.unwrap_or(0) };
            TagView {
                repository: t.repo,
                tag: t.tag,
                digest: t.digest,
                size,
                copies,
                nodes,
                complete_on,
                missing,
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.repository, &a.tag).cmp(&(&b.repository, &b.tag)));
    out
}
