//! Global services: one task on every node that may run it.

use super::updater::{self, Judgement, SlotView};
use super::{new_task_wanting, Plan};
use crate::scheduler::constraints_met;
use crate::state::Versioned;
use crate::state::{node_schedulable, ClusterState};
use shoal_api::models::TaskState;
use shoal_api::objects::{StoredService, StoredTask};
use std::collections::HashMap;

/// Ensures one runnable, up-to-date task per eligible node, and none elsewhere; out-of-date
/// ones are replaced as the update settings allow, a node being the slot.
pub fn reconcile(
    svc: &Versioned<StoredService>,
    state: &ClusterState,
    tasks: &[(&StoredTask, u64)],
    now: chrono::DateTime<chrono::Utc>,
    plan: &mut Plan,
) {
    let s = &svc.obj;
    let mut per_node: HashMap<&str, Vec<(&StoredTask, u64)>> = HashMap::new();
    for (t, v) in tasks {
        if let Some(n) = t.node_id() {
            per_node.entry(n).or_default().push((t, *v));
        }
    }
    let eligible: Vec<&str> = state
        .nodes
        .iter()
        .filter(|n| node_schedulable(&n.obj) && constraints_met(s, &n.obj))
        .filter_map(|n| n.obj.id.as_deref())
        .collect();
    if updater::judge(svc, tasks, eligible.len() as u64, now, plan) == Judgement::Stopped {
        return;
    }
    let settings = updater::Settings::of(s);
    let mut views = Vec::with_capacity(eligible.len());
    let mut outdated = Vec::new();
    for node_id in &eligible {
        let node_tasks = per_node.remove(node_id).unwrap_or_default();
        let make = |desired| new_task_wanting(s, 0, Some(node_id), desired);
        let view = updater::slot(s, &settings, &node_tasks, &make, now, plan);
        if let SlotView::Outdated(t, v) = view {
            outdated.push((*node_id, t, v));
        }
        views.push(view);
    }
    let admitted = updater::admit(svc, &views, now, plan);
    for (node_id, t, v) in outdated.into_iter().take(admitted) {
        let make = |desired| new_task_wanting(s, 0, Some(node_id), desired);
        updater::replace(&settings, t, v, &make, plan);
    }
    // Tasks on nodes that are gone, or may no longer run the service.
    for tasks in per_node.values() {
        for (t, v) in tasks {
            if t.meant_to_run() {
                plan.set_desired(t, *v, TaskState::SHUTDOWN);
            }
        }
    }
}
