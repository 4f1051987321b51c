//! The node's identity on disk (`node.json` beside the store), so a restart rejoins the swarm
//! as the same node, and where its certificate lives.

use shoal_api::Role;
use std::path::{Path, PathBuf};

/// The local node's identity, kept beside the store so a restart rejoins as the same node.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// Node ID.
    pub node_id: String,
    /// Address other nodes reach this one at (`host:2377`).
    pub addr: String,
    /// Whether this node runs a store and the manager loops.
    #[serde(default = "manager_role")]
    pub role: Role,
    /// Raft node id; 1 for the manager that created the swarm.
    #[serde(default = "first_raft_id")]
    pub raft_id: u64,
    /// Managers' addresses last heard of, for the dispatcher session to fail over between.
    #[serde(default)]
    pub managers: Vec<String>,
}

fn manager_role() -> Role {
    Role::Manager
}

fn first_raft_id() -> u64 {
    1
}

impl Identity {
    fn path(dir: &Path) -> PathBuf {
        dir.join("node.json")
    }
    /// Reads the identity saved by `swarm init`, if this data dir has one.
    pub fn load(dir: &Path) -> Option<Identity> {
        let data = std::fs::read(Self::path(dir)).ok()?;
        serde_json::from_slice(&data).ok()
    }
    /// Saves it durably.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let data = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        super::datadir::write_durably(&Self::path(dir), &data)
    }
}

/// Where the node's certificate lives inside the data directory.
pub fn certs_dir(dir: &Path) -> PathBuf {
    dir.join("certs")
}
