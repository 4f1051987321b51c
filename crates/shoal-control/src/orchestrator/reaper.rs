//! Forgets tasks: those of removed services once stopped, and old ones past the history limit.

use super::Plan;
use crate::state::ClusterState;
use shoal_api::models::TaskState;
use shoal_api::objects::{is_terminal, state_rank, StoredTask};
use std::collections::{BTreeMap, HashSet};

/// Tasks whose service is gone: ask them to be removed, delete them once stopped.
pub fn orphans(tasks: &[(&StoredTask, u64)], plan: &mut Plan) {
    for (t, v) in tasks {
        let stopped = is_terminal(t.state())
            || t.node_id().is_none()
            || state_rank(t.state()) < state_rank(TaskState::ASSIGNED);
        if stopped {
            plan.deleted.push((t.id().to_string(), *v));
        } else if t.desired() != TaskState::REMOVE {
            plan.set_desired(t, *v, TaskState::REMOVE);
        }
    }
}

/// A slot of a service: (service, slot, node for global services).
type HistorySlot<'a> = (&'a str, u64, &'a str);

fn key(t: &StoredTask) -> HistorySlot<'_> {
    let node = if t.slot() == 0 {
        t.node_id().unwrap_or("")
    } else {
        ""
    };
    (t.service_id(), t.slot(), node)
}

/// Keeps at most the history limit of tasks per slot (or per node for global services).
pub fn history(state: &ClusterState, plan: &mut Plan) {
    let limit = state.history_limit();
    let old = |t: &StoredTask| !t.meant_to_run() && is_terminal(t.state());
    // Only a slot with an old task can have one to forget: find those first, so that the usual
    // pass (every slot holding just its live task) costs one scan and no grouping.
    let with_old: HashSet<HistorySlot> = state
        .tasks
        .iter()
        .map(|t| &t.obj)
        .filter(|t| old(t) && state.services.contains_key(t.service_id()))
        .map(key)
        .collect();
    if with_old.is_empty() {
        return;
    }
    let mut groups: BTreeMap<HistorySlot, Vec<(&StoredTask, u64)>> = BTreeMap::new();
    for t in &state.tasks {
        let k = key(&t.obj);
        if with_old.contains(&k) {
            groups.entry(k).or_default().push((&t.obj, t.version));
        }
    }
    for tasks in groups.values_mut() {
        if tasks.len() <= limit {
            continue;
        }
        // Old = no longer wanted and stopped; newest first by creation time.
        let mut stale: Vec<&(&StoredTask, u64)> = tasks.iter().filter(|(t, _)| old(t)).collect();
        stale.sort_by(|a, b| b.0.task.created_at.cmp(&a.0.task.created_at));
        let keep_old = limit.saturating_sub(tasks.len() - stale.len());
        for (t, v) in stale.into_iter().skip(keep_old) {
            plan.deleted.push((t.id().to_string(), *v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Versioned;
    use shoal_api::models::{ServiceSpec, SwarmSpec, SwarmSpecOrchestration, TaskStatus};
    use shoal_api::objects::StoredService;
    use TaskState::{COMPLETE, FAILED, REMOVE, RUNNING, SHUTDOWN};

    fn task(
        id: &str,
        slot: u64,
        desired: TaskState,
        state: TaskState,
        created_secs: u32,
    ) -> Versioned<StoredTask> {
        let mut t = StoredTask::default();
        t.task.id = Some(id.into());
        t.task.service_id = Some("s".into());
        t.task.slot = Some(slot as i64);
        t.task.desired_state = Some(desired);
        t.task.created_at = Some(format!("2025-01-01T00:00:{created_secs:02}Z"));
        t.task.status = Some(TaskStatus {
            state: Some(state),
            ..Default::default()
        });
        Versioned { obj: t, version: 7 }
    }

    fn state(limit: Option<i64>, tasks: Vec<Versioned<StoredTask>>) -> ClusterState {
        let mut svc = StoredService::default();
        svc.service.id = Some("s".into());
        svc.service.spec = Some(ServiceSpec::default());
        let mut st = ClusterState {
            tasks,
            ..Default::default()
        };
        st.services.insert(
            "s".into(),
            Versioned {
                obj: svc,
                version: 1,
            },
        );
        if let Some(l) = limit {
            let cluster = shoal_api::models::Swarm {
                spec: Some(SwarmSpec {
                    orchestration: Some(SwarmSpecOrchestration {
                        task_history_retention_limit: Some(l),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            st.cluster = Some(Versioned {
                obj: cluster,
                version: 1,
            });
        }
        st
    }

    #[test]
    fn keeps_the_newest_history_per_slot_within_the_limit() {
        let mut tasks = vec![task("live", 1, RUNNING, RUNNING, 9)];
        for i in 0..6 {
            tasks.push(task(&format!("old{i}"), 1, SHUTDOWN, FAILED, i));
        }
        tasks.push(task("other-slot", 2, SHUTDOWN, FAILED, 0));
        let mut plan = Plan::new(&crate::testkit::inputs());
        history(&state(Some(3), tasks), &mut plan);
        let mut gone: Vec<&str> = plan.deleted.iter().map(|(id, _)| id.as_str()).collect();
        gone.sort();
        // Limit 3 per slot: the live task plus the two newest old ones stay.
        assert_eq!(gone, vec!["old0", "old1", "old2", "old3"]);
        assert!(
            plan.deleted.iter().all(|(_, v)| *v == 7),
            "deletes quote the version read"
        );
    }

    #[test]
    fn default_limit_is_five_and_stopping_tasks_are_kept() {
        let mut tasks = vec![task("stopping", 1, SHUTDOWN, RUNNING, 9)];
        for i in 0..6 {
            tasks.push(task(&format!("old{i}"), 1, SHUTDOWN, COMPLETE, i));
        }
        let mut plan = Plan::new(&crate::testkit::inputs());
        history(&state(None, tasks), &mut plan);
        let mut gone: Vec<&str> = plan.deleted.iter().map(|(id, _)| id.as_str()).collect();
        gone.sort();
        assert_eq!(
            gone,
            vec!["old0", "old1"],
            "a task still stopping is never reaped"
        );
    }

    #[test]
    fn tasks_of_removed_services_are_stopped_then_deleted() {
        let running = task("r", 1, RUNNING, RUNNING, 0);
        let mut assigned = task("a", 2, RUNNING, RUNNING, 0);
        assigned.obj.task.node_id = Some("n".into());
        let mut done = task("d", 3, REMOVE, SHUTDOWN, 0);
        done.obj.task.node_id = Some("n".into());
        let mut plan = Plan::new(&crate::testkit::inputs());
        let refs = vec![(&running.obj, 1), (&assigned.obj, 1), (&done.obj, 1)];
        orphans(&refs, &mut plan);
        assert_eq!(plan.updated["a"].0.desired(), TaskState::REMOVE);
        let gone: Vec<&str> = plan.deleted.iter().map(|(id, _)| id.as_str()).collect();
        assert!(
            gone.contains(&"d"),
            "a stopped task of a removed service is deleted"
        );
        assert!(
            gone.contains(&"r"),
            "a task never placed on a node is deleted at once"
        );
    }
}
