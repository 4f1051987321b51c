//! Which images each node's engine holds (issue 22's index, and the dashboard's images view):
//! what a node reports and what the store keeps per node.

use serde::{Deserialize, Serialize};

/// Kept per node at most: a node with more reports only its newest (by the engine's order).
pub const MAX_IMAGES_PER_NODE: usize = 2000;

/// One image as a node's engine lists and inspects it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct NodeImage {
    /// The image ID (`sha256:...`): the same content has the same ID on every engine.
    pub id: String,
    /// `repo:tag` names.
    #[serde(default)]
    pub repo_tags: Vec<String>,
    /// `repo@sha256:...` names, from a registry.
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// Bytes on disk.
    #[serde(default)]
    pub size: i64,
    /// `linux`, ...
    #[serde(default)]
    pub os: String,
    /// `amd64`, `arm64`, ...
    #[serde(default)]
    pub architecture: String,
    /// `v7`, ... (ARM).
    #[serde(default)]
    pub variant: String,
}

/// A node's images as the store keeps them (kind `nodeimages`, keyed by node ID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StoredNodeImages {
    /// The node's ID.
    pub node: String,
    /// Its images, sorted by ID.
    pub images: Vec<NodeImage>,
}
