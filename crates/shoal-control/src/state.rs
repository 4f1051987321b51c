//! What decisions read: one consistent view of the cluster's objects, each with the store version
//! a write must quote. The manager fills it from the store; tests build it by hand.

use shoal_api::images::StoredNodeImages;
use shoal_api::models::{Network, Node, NodeSpecAvailabilityEnum, NodeState, Swarm};
use shoal_api::objects::{StoredService, StoredTask};
use std::collections::BTreeMap;

/// An object together with the store version a write of it must quote, so a decision made on
/// a stale view fails its write instead of overwriting a newer one.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    /// The object.
    pub obj: T,
    /// Store version (Docker's `Version.Index`).
    pub version: u64,
}

/// Everything the decisions read, as one snapshot, so that one pass decides from one instant.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// Services by ID (ordered, so passes over the same state decide in the same order).
    pub services: BTreeMap<String, Versioned<StoredService>>,
    /// All tasks.
    pub tasks: Vec<Versioned<StoredTask>>,
    /// All nodes, sorted by ID.
    pub nodes: Vec<Versioned<Node>>,
    /// Swarm networks, sorted by ID.
    pub networks: Vec<Versioned<Network>>,
    /// The cluster object.
    pub cluster: Option<Versioned<Swarm>>,
    /// The images each node's engine holds, by node ID (issue 22), so the scheduler can prefer
    /// a node that need not pull; a node without an entry holds none that we know of.
    pub node_images: BTreeMap<String, Versioned<StoredNodeImages>>,
}

impl ClusterState {
    /// How many old tasks per slot to keep (Swarm's TaskHistoryRetentionLimit, default 5).
    pub fn history_limit(&self) -> usize {
        self.cluster
            .as_ref()
            .and_then(|c| c.obj.spec.as_ref())
            .and_then(|s| s.orchestration.as_ref())
            .and_then(|o| o.task_history_retention_limit)
            .map(|l| l.max(1) as usize)
            .unwrap_or(5)
    }
}

/// True if a node may receive new tasks: ready and not paused or drained.
pub fn node_schedulable(n: &Node) -> bool {
    let ready = n.status.as_ref().and_then(|s| s.state) == Some(NodeState::READY);
    let active = n
        .spec
        .as_ref()
        .and_then(|s| s.availability)
        .map(|a| a == NodeSpecAvailabilityEnum::ACTIVE)
        .unwrap_or(true);
    ready && active
}
