//! One pass's decision: the orchestrators' plan, then addresses and nodes for the new tasks and
//! for those still waiting, as one typed set of writes.

use crate::allocator::{allocate, Ipam};
use crate::inputs::Inputs;
use crate::orchestrator::{self, Note};
use crate::scheduler;
use crate::state::ClusterState;
use shoal_api::models::TaskState;
use shoal_api::objects::{StoredService, StoredTask};

/// What one pass decided, to be written as one batch (each write quoting the version it read,
/// so a pass over a stale view fails instead of overwriting newer state).
#[derive(Debug, Default)]
pub struct Decision {
    /// New tasks, allocated and (where a node fits) assigned; must not exist yet.
    pub created: Vec<StoredTask>,
    /// Existing tasks rewritten (desired state, addresses, node, pending reason), with the
    /// version they were read at.
    pub updated: Vec<(StoredTask, u64)>,
    /// Tasks to forget (ID, version read).
    pub deleted: Vec<(String, u64)>,
    /// Services rewritten (an update's status, a rollback, a job's next run), with the version
    /// read.
    pub services: Vec<(StoredService, u64)>,
    /// The latest time the next pass must run even if nothing changes (a restart delay, an
    /// update delay, a periodic job's next tick).
    pub wake_at: Option<chrono::DateTime<chrono::Utc>>,
    /// What an operator should hear about.
    pub notes: Vec<Note>,
}

impl Decision {
    /// True if the pass has nothing to write.
    pub fn is_empty(&self) -> bool {
        self.created.is_empty()
            && self.updated.is_empty()
            && self.deleted.is_empty()
            && self.services.is_empty()
    }

    /// How many writes the pass makes.
    pub fn len(&self) -> usize {
        self.created.len() + self.updated.len() + self.deleted.len() + self.services.len()
    }
}

/// Orchestration, allocation and scheduling over `state` at `inputs`.
pub fn decide(state: &ClusterState, inputs: &Inputs) -> Decision {
    let mut plan = orchestrator::plan(state, inputs);
    let stamp = plan.stamp().to_string();

    // Allocate and schedule new tasks, and existing ones still waiting for a node.
    let mut created = std::mem::take(&mut plan.created);
    let mut waiting: Vec<StoredTask> = Vec::new();
    let mut before: Vec<(&StoredTask, u64)> = Vec::new();
    for t in &state.tasks {
        if t.obj.meant_to_run()
            && matches!(
                t.obj.state(),
                TaskState::NEW | TaskState::ALLOCATED | TaskState::PENDING
            )
            && !plan.updated.contains_key(t.obj.id())
        {
            waiting.push(t.obj.clone());
            before.push((&t.obj, t.version));
        }
    }
    if !created.is_empty() || !waiting.is_empty() {
        let mut ipam = Ipam::from_state(state);
        // Only tasks with their addresses go to the scheduler; the others wait, with the reason.
        let mut ready: Vec<&mut StoredTask> = Vec::new();
        for t in created.iter_mut().chain(waiting.iter_mut()) {
            if allocate(t, state, &mut ipam, &stamp) {
                ready.push(t);
            }
        }
        scheduler::schedule(state, &mut ready, &stamp);
    }
    let mut updated: Vec<(StoredTask, u64)> = waiting
        .into_iter()
        .zip(before)
        .filter(|(t, (old, _))| t != *old)
        .map(|(t, (_, version))| (t, version))
        .collect();
    updated.extend(plan.updated.into_values());
    Decision {
        created,
        updated,
        deleted: plan.deleted,
        services: plan.services.into_values().collect(),
        wake_at: plan.wake_at,
        notes: plan.notes,
    }
}
