//! Decides which tasks should exist: one per replica slot (replicated), one per node (global),
//! runs of jobs, replacements for failed ones (restart policy), updated ones for a changed spec,
//! and which old ones to forget (history retention). Pure functions of a [`ClusterState`] and
//! the [`Inputs`]; what they decide is a [`Plan`].

pub mod attachments;
pub mod global;
pub mod jobs;
pub mod reaper;
pub mod replicated;
pub mod restart;
pub mod updater;

use crate::inputs::{Ids, Inputs};
use crate::state::ClusterState;
use shoal_api::models::{Task, TaskState, TaskStatus};
use shoal_api::objects::{NetworkAttachment, StoredService, StoredTask};
use std::collections::BTreeMap;

/// What the orchestrators want written: changed tasks (by ID), new tasks, tasks to delete, and
/// wake-up time. New tasks get their IDs and timestamps from the plan's inputs.
#[derive(Debug)]
pub struct Plan {
    /// Existing tasks to rewrite, keyed by ID, with the version they were read at.
    pub updated: BTreeMap<String, (StoredTask, u64)>,
    /// Tasks to create.
    pub created: Vec<StoredTask>,
    /// Tasks to delete (ID, version read).
    pub deleted: Vec<(String, u64)>,
    /// Services to rewrite (an update's status, or a rollback), keyed by ID, with the version
    /// they were read at.
    pub services: BTreeMap<String, (StoredService, u64)>,
    /// Earliest instant a pass must run again even if nothing changes (a restart delay ending).
    pub wake_at: Option<chrono::DateTime<chrono::Utc>>,
    /// What an operator should hear about (the caller logs them).
    pub notes: Vec<Note>,
    /// When the plan is made, in Docker's timestamp form.
    stamp: String,
    ids: Ids,
}

/// Something a decision did that an operator should hear about: the control loop logs it, so the
/// decisions themselves stay free of effects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A periodic job's tick came and its next run starts.
    PeriodicJobDue {
        /// The service's name.
        service: String,
        /// The run (job iteration) that starts.
        iteration: u64,
    },
    /// A periodic job's tick came while its last run was still going; this run is skipped.
    PeriodicJobSkipped {
        /// The service's name.
        service: String,
        /// Runs skipped so far.
        skipped: u64,
    },
    /// An update's failures passed the ratio and the service rolls back.
    RollingBack {
        /// The service's name.
        service: String,
        /// The failed task that tipped it.
        task: String,
    },
    /// An update (or rollback) paused after a failure.
    Paused {
        /// The service's name.
        service: String,
        /// "update" or "rollback".
        what: &'static str,
        /// The failed task that tipped it.
        task: String,
    },
}

impl Plan {
    /// An empty plan made at `inputs.now`, naming new tasks from `inputs.seed`.
    pub fn new(inputs: &Inputs) -> Self {
        Plan {
            updated: BTreeMap::new(),
            created: Vec::new(),
            deleted: Vec::new(),
            services: BTreeMap::new(),
            wake_at: None,
            notes: Vec::new(),
            stamp: inputs.stamp(),
            ids: Ids::seeded(inputs.seed),
        }
    }

    /// When the plan is made, in Docker's timestamp form.
    pub fn stamp(&self) -> &str {
        &self.stamp
    }

    /// Records that a task's desired state must change.
    pub fn set_desired(&mut self, t: &StoredTask, version: u64, desired: TaskState) {
        let stamp = self.stamp.clone();
        let entry = self
            .updated
            .entry(t.id().to_string())
            .or_insert_with(|| (t.clone(), version));
        entry.0.task.desired_state = Some(desired);
        entry.0.task.updated_at = Some(stamp);
    }

    /// Adds a new task (from [`new_task`]), giving it an ID and the plan's timestamps.
    pub fn create(&mut self, mut t: StoredTask) {
        let id = self.ids.next_id();
        stamp_new(&mut t, id, &self.stamp);
        self.created.push(t);
    }

    /// Asks for another pass no later than `at`.
    pub fn wake(&mut self, at: chrono::DateTime<chrono::Utc>) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

/// A new task for a service, before allocation and scheduling, meant to run now (or, with
/// `desired` ready, once the task it replaces has stopped). [`Plan::create`] names it.
pub fn new_task_wanting(
    svc: &StoredService,
    slot: u64,
    node: Option<&str>,
    desired: TaskState,
) -> StoredTask {
    let mut t = new_task(svc, slot, node, Vec::new());
    t.task.desired_state = Some(desired);
    t
}

/// A new task for a service, before allocation and scheduling; no ID nor timestamps yet
/// ([`Plan::create`] or [`stamp_new`] give them).
pub fn new_task(
    svc: &StoredService,
    slot: u64,
    node: Option<&str>,
    attachments: Vec<NetworkAttachment>,
) -> StoredTask {
    StoredTask {
        task: Task {
            spec: svc.spec().task_template.clone(),
            service_id: Some(svc.id().to_string()),
            slot: if slot > 0 { Some(slot as i64) } else { None },
            node_id: node.map(str::to_string),
            status: Some(TaskStatus {
                state: Some(TaskState::NEW),
                message: Some("created".into()),
                ..Default::default()
            }),
            desired_state: Some(TaskState::RUNNING),
            ..Default::default()
        },
        networks_attachments: attachments,
        spec_version: svc.spec_version,
        service_name: svc.name().to_string(),
        running_at: None,
    }
}

/// Gives a new task its ID and creation time.
pub fn stamp_new(t: &mut StoredTask, id: String, stamp: &str) {
    t.task.id = Some(id);
    t.task.created_at = Some(stamp.to_string());
    t.task.updated_at = Some(stamp.to_string());
    t.task.status.get_or_insert_with(Default::default).timestamp = Some(stamp.to_string());
}

/// Nodes whose tasks must move: down (the leader stopped hearing from them) or drained.
/// (Tasks of removed nodes move too.)
fn lost_nodes(state: &ClusterState) -> std::collections::HashSet<&str> {
    use shoal_api::models::{NodeSpecAvailabilityEnum, NodeState};
    state
        .nodes
        .iter()
        .filter(|n| {
            let down = n.obj.status.as_ref().and_then(|s| s.state) == Some(NodeState::DOWN);
            let drained = n.obj.spec.as_ref().and_then(|s| s.availability)
                == Some(NodeSpecAvailabilityEnum::DRAIN);
            down || drained
        })
        .filter_map(|n| n.obj.id.as_deref())
        .collect()
}

/// Runs every orchestration concern over the snapshot.
pub fn plan(state: &ClusterState, inputs: &Inputs) -> Plan {
    let now = inputs.now;
    let mut plan = Plan::new(inputs);
    let lost = lost_nodes(state);
    let known: std::collections::HashSet<&str> = state
        .nodes
        .iter()
        .filter_map(|n| n.obj.id.as_deref())
        .collect();
    let mut by_service: BTreeMap<&str, Vec<(&StoredTask, u64)>> = BTreeMap::new();
    for t in &state.tasks {
        if t.obj.is_attachment() {
            if attachments::finished(&t.obj, |n| known.contains(n)) {
                plan.deleted.push((t.obj.id().to_string(), t.version));
            }
            continue;
        }
        // A replicated (or replicated job's) task on a down or drained node is shut down and left
        // out of its slot, so the slot gets a replacement elsewhere in this same pass. When a
        // down node comes back, its agent sees the task's desired state and stops the container.
        if t.obj
            .node_id()
            .is_some_and(|n| lost.contains(n) || !known.contains(n))
            && t.obj.meant_to_run()
            && !shoal_api::objects::is_terminal(t.obj.state())
            && state.services.get(t.obj.service_id()).is_some_and(|s| {
                matches!(
                    s.obj.mode(),
                    shoal_api::objects::Mode::Replicated(_)
                        | shoal_api::objects::Mode::ReplicatedJob { .. }
                )
            })
        {
            plan.set_desired(&t.obj, t.version, TaskState::SHUTDOWN);
            continue;
        }
        by_service
            .entry(t.obj.service_id())
            .or_default()
            .push((&t.obj, t.version));
    }
    for svc in state.services.values() {
        let tasks = by_service.remove(svc.obj.id()).unwrap_or_default();
        match svc.obj.mode() {
            shoal_api::objects::Mode::Replicated(n) => {
                replicated::reconcile(svc, n, &tasks, now, &mut plan)
            }
            shoal_api::objects::Mode::Global => {
                global::reconcile(svc, state, &tasks, now, &mut plan)
            }
            shoal_api::objects::Mode::ReplicatedJob {
                total,
                max_concurrent,
            } => {
                let p = jobs::replicated(svc, total, max_concurrent, &tasks, now, &mut plan);
                jobs::periodic(svc, &p, now, &mut plan);
            }
            shoal_api::objects::Mode::GlobalJob => {
                let p = jobs::global(svc, state, &tasks, now, &mut plan);
                jobs::periodic(svc, &p, now, &mut plan);
            }
        }
    }
    // Tasks whose service is gone.
    for tasks in by_service.values() {
        reaper::orphans(tasks, &mut plan);
    }
    reaper::history(state, &mut plan);
    plan
}
