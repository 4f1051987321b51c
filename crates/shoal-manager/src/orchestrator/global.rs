//! Global services: one task on every node that may run it.

use super::restart::{self, Verdict};
use super::{new_task, Plan};
use crate::scheduler::constraints_met;
use crate::state::{node_schedulable, ClusterState};
use shoal_api::models::TaskState;
use shoal_api::objects::{is_terminal, StoredService, StoredTask};
use std::collections::HashMap;

/// Ensures one runnable, up-to-date task per eligible node, and none elsewhere.
pub fn reconcile(
    svc: &StoredService,
    state: &ClusterState,
    tasks: &[(&StoredTask, u64)],
    now: chrono::DateTime<chrono::Utc>,
    plan: &mut Plan,
) {
    let mut per_node: HashMap<&str, Vec<(&StoredTask, u64)>> = HashMap::new();
    for (t, v) in tasks {
        if let Some(n) = t.node_id() {
            per_node.entry(n).or_default().push((t, *v));
        }
    }
    for node in &state.nodes {
        let node_id = node.obj.id.as_deref().unwrap_or_default();
        let eligible = node_schedulable(&node.obj) && constraints_met(svc, &node.obj);
        let node_tasks = per_node.remove(node_id).unwrap_or_default();
        let runnable: Vec<&(&StoredTask, u64)> = node_tasks
            .iter()
            .filter(|(t, _)| t.desired() == TaskState::RUNNING)
            .collect();
        if !eligible {
            for (t, v) in &runnable {
                plan.set_desired(t, *v, TaskState::SHUTDOWN);
            }
            continue;
        }
        for (dup, v) in runnable.iter().skip(1) {
            plan.set_desired(dup, *v, TaskState::SHUTDOWN);
        }
        match runnable.first() {
            None => plan
                .created
                .push(new_task(svc, 0, Some(node_id), Vec::new())),
            Some((t, v)) if is_terminal(t.state()) => {
                let history: Vec<&StoredTask> = node_tasks
                    .iter()
                    .filter(|(h, _)| h.id() != t.id() && is_terminal(h.state()))
                    .map(|(h, _)| *h)
                    .collect();
                match restart::decide(svc, t, &history, now) {
                    Verdict::Now => {
                        plan.set_desired(t, *v, TaskState::SHUTDOWN);
                        plan.created
                            .push(new_task(svc, 0, Some(node_id), Vec::new()));
                    }
                    Verdict::At(at) => plan.wake(at),
                    Verdict::Never => {}
                }
            }
            Some((t, v)) if t.spec_version < svc.spec_version => {
                plan.set_desired(t, *v, TaskState::SHUTDOWN);
                plan.created
                    .push(new_task(svc, 0, Some(node_id), Vec::new()));
            }
            Some(_) => {}
        }
    }
    // Tasks on nodes that no longer exist.
    for tasks in per_node.values() {
        for (t, v) in tasks {
            if t.desired() == TaskState::RUNNING {
                plan.set_desired(t, *v, TaskState::SHUTDOWN);
            }
        }
    }
}
