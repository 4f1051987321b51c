//! What changed in the cluster since the last look: the manager's live view reports it, and
//! [`crate::quiet::Quiet`] decides from it whether a pass can be skipped.

use shoal_api::objects::StoredTask;
use std::sync::Arc;

/// One task changed by a refresh: what it was before (if it existed) and whether it exists now.
#[derive(Debug, Clone)]
pub struct TaskChange {
    /// The task's ID.
    pub id: String,
    /// The task as it was before the change, if the view held it (shared: every reader of a
    /// shared view gets the same copy).
    pub before: Option<Arc<StoredTask>>,
    /// False if the task is gone (deleted, or its new document does not decode).
    pub exists: bool,
}

/// What a refresh of the live view changed, so a consumer can limit its work to that.
#[derive(Debug, Default, Clone)]
pub struct Delta {
    /// The view was loaded from scratch (the first time, or the change stream lagged): treat
    /// everything as changed.
    pub reloaded: bool,
    /// Change sets applied.
    pub change_sets: usize,
    /// Tasks changed, in the order first seen; a task changed twice appears twice.
    pub tasks: Vec<TaskChange>,
    /// A service was created, updated or removed.
    pub services: bool,
    /// A node changed.
    pub nodes: bool,
    /// A network changed.
    pub networks: bool,
    /// The cluster object changed.
    pub cluster: bool,
    /// A node's image list changed (kept apart from `other`: it can matter only to a task
    /// waiting for a node).
    pub node_images: bool,
    /// Something of another kind changed (secrets, configs).
    pub other: bool,
}

impl Delta {
    /// True if nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.reloaded
            && self.tasks.is_empty()
            && !(self.services
                || self.nodes
                || self.networks
                || self.cluster
                || self.node_images
                || self.other)
    }

    /// Adds what `other` changed after this.
    pub fn merge(&mut self, other: Delta) {
        self.reloaded |= other.reloaded;
        self.change_sets += other.change_sets;
        self.tasks.extend(other.tasks);
        self.services |= other.services;
        self.nodes |= other.nodes;
        self.networks |= other.networks;
        self.cluster |= other.cluster;
        self.node_images |= other.node_images;
        self.other |= other.other;
    }
}
