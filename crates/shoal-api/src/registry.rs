//! The node registries' cluster-wide part (issue 22): every node serves the OCI distribution
//! API on loopback; what must be the same everywhere (tags, manifests, which node holds which
//! blob) lives in the raft store, and a node asks the leader for it over its session. Pure:
//! the objects, the session's requests and answers, and the two decisions (which nodes must
//! hold a blob, which blobs are still referenced).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How many nodes hold each blob unless told otherwise (`--registry-copies`).
pub const DEFAULT_COPIES: usize = 2;

/// The largest manifest kept (the distribution spec's registries refuse larger; 4 MiB).
pub const MAX_MANIFEST: usize = 4 << 20;

/// A tag (kind `regtag`, keyed `repo:tag`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StoredTag {
    /// The repository (`app`, `team/app`).
    pub repo: String,
    /// The tag.
    pub tag: String,
    /// The manifest it points at.
    pub digest: String,
}

/// A manifest or index (kind `regmanifest`, keyed by digest), with the exact bytes pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StoredManifest {
    /// `sha256:...` of `data`.
    pub digest: String,
    /// As pushed (`application/vnd.oci.image.manifest.v1+json`, ...).
    pub media_type: String,
    /// The bytes, base64.
    pub data: String,
    /// Repositories it was pushed to (a manifest is served under these names only).
    pub repos: Vec<String>,
    /// The digests it references: config and layers, or an index's manifests.
    pub refs: Vec<String>,
}

/// A blob (kind `regblob`, keyed by digest): its size and the nodes holding a copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StoredBlob {
    /// `sha256:...`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
    /// Node IDs, sorted.
    pub holders: Vec<String>,
}

/// A manifest as the registry serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ManifestData {
    /// `sha256:...`.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// The bytes, base64.
    pub data: String,
}

/// A node holding a blob, for a node that lacks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BlobHolder {
    /// Its node ID (its peer certificate must name it).
    pub node_id: String,
    /// Its name, for messages.
    pub hostname: String,
    /// Its address (the peer port is the asker's own).
    pub addr: String,
}

/// What a node's registry asks the leader (`AgentMessage::Registry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryRequest {
    /// The manifest `reference` (a tag or a digest) of `repo`.
    GetManifest {
        /// Repository.
        repo: String,
        /// Tag or digest.
        reference: String,
    },
    /// Store a manifest pushed to this node (its blobs are here), and the tag if given.
    PutManifest {
        /// Repository.
        repo: String,
        /// The tag, when pushed by tag.
        tag: Option<String>,
        /// The manifest.
        manifest: ManifestData,
        /// The digests it references.
        refs: Vec<String>,
        /// Those of them this node holds, with their sizes: recorded with the manifest, so
        /// a push never waits on its blobs' own reports.
        #[serde(default)]
        held: Vec<(String, u64)>,
    },
    /// Delete a manifest by digest (and the repository's tags pointing at it).
    DeleteManifest {
        /// Repository.
        repo: String,
        /// Digest.
        digest: String,
    },
    /// A repository's tags (`None`: no such repository).
    Tags {
        /// Repository.
        repo: String,
    },
    /// Every repository.
    Repositories,
    /// Whether any node holds the blob.
    BlobKnown {
        /// Digest.
        digest: String,
    },
    /// This node now holds a blob.
    BlobStored {
        /// Digest.
        digest: String,
        /// Bytes.
        size: u64,
    },
    /// This node no longer holds these blobs (collected).
    BlobsDropped {
        /// Digests.
        digests: Vec<String>,
    },
    /// The ready nodes holding a blob, this node left out.
    BlobHolders {
        /// Digest.
        digest: String,
    },
    /// The blobs this node should hold and does not (replication), with their holders.
    Duties {
        /// How many nodes should hold each blob (the asker's `--registry-copies`, the same on
        /// every node).
        copies: usize,
    },
    /// Every digest a stored manifest references, and the manifests themselves: what
    /// collection must keep.
    Referenced,
}

/// The leader's answer (`ManagerMessage::Registry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryAnswer {
    /// A manifest, or none.
    Manifest(Option<ManifestData>),
    /// Written.
    Done,
    /// Tags, or no such repository.
    Tags(Option<Vec<String>>),
    /// Repositories.
    Repositories(Vec<String>),
    /// Whether a blob is known.
    Known(bool),
    /// A blob's size and its ready holders (none: no node can give it now).
    Holders {
        /// Bytes.
        size: u64,
        /// The nodes.
        holders: Vec<BlobHolder>,
    },
    /// Blobs to fetch: digest -> holders.
    Duties(Vec<(String, Vec<BlobHolder>)>),
    /// Digests to keep.
    Referenced(Vec<String>),
    /// Refused or failed, in these words.
    Failed(String),
}

/// The nodes that must hold each blob and do not: each blob is kept on `copies` ready nodes
/// (or all of them, when fewer); the ready holders count, and the others are chosen by
/// rendezvous hashing of (digest, node), so every leader picks the same nodes and a new node
/// takes only its share. Pure.
pub fn duties(
    blobs: &[StoredBlob],
    ready: &BTreeSet<String>,
    copies: usize,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for b in blobs {
        let held = b.holders.iter().filter(|h| ready.contains(*h)).count();
        if held == 0 || held >= copies {
            // No ready holder: nobody can fetch it now (it comes back with its holder).
            continue;
        }
        let mut others: Vec<&String> = ready.iter().filter(|n| !b.holders.contains(n)).collect();
        others.sort_by_key(|n| std::cmp::Reverse(rendezvous(&b.digest, n)));
        for n in others.into_iter().take(copies - held) {
            out.entry(n.clone()).or_default().push(b.digest.clone());
        }
    }
    out
}

/// FNV-1a of digest and node, finalized: stable across versions and machines.
fn rendezvous(digest: &str, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in digest.bytes().chain([0u8]).chain(node.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV alone barely mixes its last bytes; a 64-bit finalizer spreads them.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// What collection keeps: every stored manifest and everything they reference.
pub fn referenced(manifests: &[StoredManifest]) -> BTreeSet<String> {
    manifests
        .iter()
        .flat_map(|m| std::iter::once(m.digest.clone()).chain(m.refs.iter().cloned()))
        .collect()
}

/// The digests a manifest or index references (config, layers, child manifests); `None` when
/// it is not JSON of a manifest.
pub fn refs_of(data: &[u8]) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    let mut out = Vec::new();
    let digest =
        |d: &serde_json::Value| d.get("digest").and_then(|x| x.as_str()).map(str::to_string);
    if let Some(c) = v.get("config") {
        out.extend(digest(c));
    }
    for key in ["layers", "manifests", "blobs"] {
        for d in v.get(key).and_then(|l| l.as_array()).into_iter().flatten() {
            out.extend(digest(d));
        }
    }
    if !v.is_object() {
        return None;
    }
    out.sort();
    out.dedup();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(d: &str, holders: &[&str]) -> StoredBlob {
        StoredBlob {
            digest: d.into(),
            size: 1,
            holders: holders.iter().map(|h| h.to_string()).collect(),
        }
    }

    fn set(nodes: &[&str]) -> BTreeSet<String> {
        nodes.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn each_blob_goes_to_as_many_ready_nodes_as_copies_asks() {
        let ready = set(&["a", "b", "c", "d"]);
        let d = duties(&[blob("sha256:1", &["a"])], &ready, 2);
        assert_eq!(d.values().map(Vec::len).sum::<usize>(), 1, "{d:?}");
        assert!(!d.contains_key("a"), "a holder is not asked again");
        // Enough copies: nothing to do; a down holder does not count.
        assert!(duties(&[blob("sha256:1", &["a", "b"])], &ready, 2).is_empty());
        let d = duties(&[blob("sha256:1", &["a", "x"])], &ready, 2);
        assert_eq!(d.values().map(Vec::len).sum::<usize>(), 1);
        // No ready holder: nobody can fetch it.
        assert!(duties(&[blob("sha256:1", &["x"])], &ready, 2).is_empty());
        // Fewer nodes than copies: every node.
        let d = duties(&[blob("sha256:1", &["a"])], &set(&["a", "b"]), 3);
        assert_eq!(d.keys().collect::<Vec<_>>(), vec!["b"]);
        // The same answer every time, and a spread over the nodes for many blobs.
        let many: Vec<StoredBlob> = (0..200)
            .map(|i| blob(&format!("sha256:{i}"), &["a"]))
            .collect();
        let d1 = duties(&many, &ready, 2);
        assert_eq!(d1, duties(&many, &ready, 2));
        for n in ["b", "c", "d"] {
            let got = d1.get(n).map_or(0, Vec::len);
            assert!((40..=100).contains(&got), "{n} got {got} of 200");
        }
    }

    #[test]
    fn references_are_read_from_manifests_and_indexes() {
        let m = br#"{"schemaVersion":2,"config":{"digest":"sha256:c"},"layers":[{"digest":"sha256:l1"},{"digest":"sha256:l2"}]}"#;
        assert_eq!(
            refs_of(m),
            Some(vec![
                "sha256:c".into(),
                "sha256:l1".into(),
                "sha256:l2".into()
            ])
        );
        let i =
            br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:m1"},{"digest":"sha256:m2"}]}"#;
        assert_eq!(
            refs_of(i),
            Some(vec!["sha256:m1".into(), "sha256:m2".into()])
        );
        assert_eq!(refs_of(b"[1]"), None);
        assert_eq!(refs_of(b"not json"), None);
        let stored = StoredManifest {
            digest: "sha256:m1".into(),
            media_type: String::new(),
            data: String::new(),
            repos: vec![],
            refs: vec!["sha256:c".into()],
        };
        assert_eq!(referenced(&[stored]), set(&["sha256:m1", "sha256:c"]));
    }
}
