//! Replicated services: slots 1..=N, each with exactly one task meant to run.

use super::restart::{self, Verdict};
use super::{new_task, Plan};
use shoal_api::models::TaskState;
use shoal_api::objects::{is_terminal, state_rank, StoredService, StoredTask};
use std::collections::BTreeMap;

/// Brings a replicated service's tasks toward `replicas` running, up-to-date tasks.
pub fn reconcile(
    svc: &StoredService,
    replicas: u64,
    tasks: &[(&StoredTask, u64)],
    now: chrono::DateTime<chrono::Utc>,
    plan: &mut Plan,
) {
    let mut slots: BTreeMap<u64, Vec<(&StoredTask, u64)>> = BTreeMap::new();
    for (t, v) in tasks {
        slots.entry(t.slot()).or_default().push((t, *v));
    }
    let parallelism = svc
        .spec()
        .update_config
        .as_ref()
        .and_then(|u| u.parallelism)
        .unwrap_or(1)
        .max(0) as u64;
    // Slots whose fresh task has not reached running yet count against the update parallelism.
    let mut in_flight = 0u64;
    let mut outdated = Vec::new();

    for slot in 1..=replicas {
        let empty = Vec::new();
        let slot_tasks = slots.get(&slot).unwrap_or(&empty);
        let mut runnable: Vec<&(&StoredTask, u64)> = slot_tasks
            .iter()
            .filter(|(t, _)| t.desired() == TaskState::RUNNING)
            .collect();
        // Keep the most advanced runnable task; stop any duplicates.
        runnable.sort_by_key(|(t, _)| std::cmp::Reverse(live_rank(t)));
        for (dup, v) in runnable.iter().skip(1) {
            plan.set_desired(dup, *v, TaskState::SHUTDOWN);
        }
        match runnable.first() {
            None => plan.created.push(new_task(svc, slot, None, Vec::new())),
            Some((t, v)) if is_terminal(t.state()) => {
                let history: Vec<&StoredTask> = slot_tasks
                    .iter()
                    .filter(|(h, _)| h.id() != t.id() && is_terminal(h.state()))
                    .map(|(h, _)| *h)
                    .collect();
                match restart::decide(svc, t, &history, now) {
                    Verdict::Now => {
                        plan.set_desired(t, *v, TaskState::SHUTDOWN);
                        plan.created.push(new_task(svc, slot, None, Vec::new()));
                    }
                    Verdict::At(at) => plan.wake(at),
                    Verdict::Never => {}
                }
            }
            Some((t, v)) => {
                if t.spec_version < svc.spec_version {
                    outdated.push((*t, *v, slot));
                } else if t.state() != TaskState::RUNNING {
                    in_flight += 1;
                }
            }
        }
    }
    // Rolling update: replace outdated tasks, `parallelism` at a time (0 = all at once).
    let budget = if parallelism == 0 {
        u64::MAX
    } else {
        parallelism.saturating_sub(in_flight)
    };
    for (t, v, slot) in outdated
        .into_iter()
        .take(budget.min(usize::MAX as u64) as usize)
    {
        plan.set_desired(t, v, TaskState::SHUTDOWN);
        plan.created.push(new_task(svc, slot, None, Vec::new()));
    }
    // Scale down: slots above the replica count stop.
    for (slot, slot_tasks) in slots.range(replicas + 1..) {
        let _ = slot;
        for (t, v) in slot_tasks {
            if t.desired() == TaskState::RUNNING {
                plan.set_desired(t, *v, TaskState::SHUTDOWN);
            }
        }
    }
}

/// How far along a task is, for choosing which duplicate to keep (terminal ones rank lowest).
fn live_rank(t: &StoredTask) -> u8 {
    if is_terminal(t.state()) {
        0
    } else {
        state_rank(t.state()) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::models::{ServiceSpec, TaskStatus};

    fn svc(json: &str) -> StoredService {
        let spec: ServiceSpec = serde_json::from_str(json).unwrap();
        let mut s = StoredService::default();
        s.service.id = Some("svc".into());
        s.service.spec = Some(spec);
        s.spec_version = 1;
        s
    }

    fn task(id: &str, slot: u64, state: TaskState, desired: TaskState, ts: &str) -> StoredTask {
        let mut t = new_task(&svc(r#"{"Name":"web"}"#), slot, None, vec![]);
        t.task.id = Some(id.into());
        t.task.desired_state = Some(desired);
        t.task.status = Some(TaskStatus {
            state: Some(state),
            timestamp: Some(ts.into()),
            ..Default::default()
        });
        t
    }

    fn now() -> chrono::DateTime<chrono::Utc> {
        shoal_api::id::parse_time("2025-01-01T00:00:10Z").unwrap()
    }

    #[test]
    fn creates_missing_slots_and_stops_extra_ones() {
        let s = svc(r#"{"Name":"web","Mode":{"Replicated":{"Replicas":3}}}"#);
        let t1 = task(
            "a",
            1,
            TaskState::RUNNING,
            TaskState::RUNNING,
            "2025-01-01T00:00:00Z",
        );
        let t5 = task(
            "e",
            5,
            TaskState::RUNNING,
            TaskState::RUNNING,
            "2025-01-01T00:00:00Z",
        );
        let mut plan = Plan::default();
        reconcile(&s, 3, &[(&t1, 1), (&t5, 1)], now(), &mut plan);
        let mut slots: Vec<u64> = plan.created.iter().map(|t| t.slot()).collect();
        slots.sort();
        assert_eq!(slots, vec![2, 3]);
        assert_eq!(plan.updated["e"].0.desired(), TaskState::SHUTDOWN);
        assert!(!plan.updated.contains_key("a"));
    }

    #[test]
    fn failed_task_is_replaced_after_the_restart_delay() {
        let s = svc(r#"{"Name":"web","Mode":{"Replicated":{"Replicas":1}},
            "TaskTemplate":{"RestartPolicy":{"Delay":20000000000}}}"#);
        let t = task(
            "a",
            1,
            TaskState::FAILED,
            TaskState::RUNNING,
            "2025-01-01T00:00:00Z",
        );
        let mut plan = Plan::default();
        reconcile(&s, 1, &[(&t, 1)], now(), &mut plan);
        assert!(plan.created.is_empty(), "replaced before the delay");
        assert_eq!(
            plan.wake_at,
            shoal_api::id::parse_time("2025-01-01T00:00:20Z")
        );

        let s = svc(r#"{"Name":"web","TaskTemplate":{"RestartPolicy":{"Delay":1000000000}}}"#);
        let mut plan = Plan::default();
        reconcile(&s, 1, &[(&t, 1)], now(), &mut plan);
        assert_eq!(plan.created.len(), 1);
        assert_eq!(plan.created[0].slot(), 1);
        assert_eq!(plan.updated["a"].0.desired(), TaskState::SHUTDOWN);
    }

    #[test]
    fn restart_condition_and_attempts() {
        let none = svc(r#"{"Name":"w","TaskTemplate":{"RestartPolicy":{"Condition":"none"}}}"#);
        let t = task(
            "a",
            1,
            TaskState::FAILED,
            TaskState::RUNNING,
            "2025-01-01T00:00:00Z",
        );
        let mut plan = Plan::default();
        reconcile(&none, 1, &[(&t, 1)], now(), &mut plan);
        assert!(plan.created.is_empty());

        let on_failure = svc(
            r#"{"Name":"w","TaskTemplate":{"RestartPolicy":{"Condition":"on-failure","Delay":0}}}"#,
        );
        let done = task(
            "a",
            1,
            TaskState::COMPLETE,
            TaskState::RUNNING,
            "2025-01-01T00:00:00Z",
        );
        let mut plan = Plan::default();
        reconcile(&on_failure, 1, &[(&done, 1)], now(), &mut plan);
        assert!(plan.created.is_empty(), "on-failure restarted a clean exit");

        let capped =
            svc(r#"{"Name":"w","TaskTemplate":{"RestartPolicy":{"MaxAttempts":2,"Delay":0}}}"#);
        let old1 = task(
            "o1",
            1,
            TaskState::FAILED,
            TaskState::SHUTDOWN,
            "2025-01-01T00:00:01Z",
        );
        let old2 = task(
            "o2",
            1,
            TaskState::FAILED,
            TaskState::SHUTDOWN,
            "2025-01-01T00:00:02Z",
        );
        let mut plan = Plan::default();
        reconcile(
            &capped,
            1,
            &[(&t, 1), (&old1, 1), (&old2, 1)],
            now(),
            &mut plan,
        );
        assert!(plan.created.is_empty(), "restarted past MaxAttempts");
    }

    #[test]
    fn update_replaces_outdated_tasks_by_parallelism() {
        let mut s = svc(
            r#"{"Name":"w","Mode":{"Replicated":{"Replicas":3}},"UpdateConfig":{"Parallelism":2}}"#,
        );
        s.spec_version = 2;
        let ts: Vec<StoredTask> = (1..=3)
            .map(|i| {
                task(
                    &format!("t{i}"),
                    i,
                    TaskState::RUNNING,
                    TaskState::RUNNING,
                    "2025-01-01T00:00:00Z",
                )
            })
            .collect();
        let refs: Vec<(&StoredTask, u64)> = ts.iter().map(|t| (t, 1)).collect();
        let mut plan = Plan::default();
        reconcile(&s, 3, &refs, now(), &mut plan);
        assert_eq!(plan.created.len(), 2);
        assert!(plan.created.iter().all(|t| t.spec_version == 2));
        assert_eq!(plan.updated.len(), 2);
    }
}
