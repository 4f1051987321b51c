//! A consistent snapshot of the store for one pass of the control loops.

use crate::db::{self, Versioned};
use shoal_api::models::{Network, Node, NodeSpecAvailabilityEnum, NodeState, Swarm};
use shoal_api::objects::{StoredService, StoredTask};
use shoal_store::Store;
use std::collections::HashMap;

/// Everything the control loops decide from, read once per pass.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// Services by ID.
    pub services: HashMap<String, Versioned<StoredService>>,
    /// All tasks.
    pub tasks: Vec<Versioned<StoredTask>>,
    /// All nodes.
    pub nodes: Vec<Versioned<Node>>,
    /// Swarm networks.
    pub networks: Vec<Versioned<Network>>,
    /// The cluster object.
    pub cluster: Option<Versioned<Swarm>>,
}

impl ClusterState {
    /// Reads the snapshot.
    pub fn load(store: &Store) -> Self {
        Self {
            services: db::list::<StoredService>(store)
                .into_iter()
                .map(|s| (s.obj.id().to_string(), s))
                .collect(),
            tasks: db::list(store),
            nodes: db::list(store),
            networks: db::list(store),
            cluster: db::list::<Swarm>(store).into_iter().next(),
        }
    }

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

/// True if a node may receive new tasks.
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
