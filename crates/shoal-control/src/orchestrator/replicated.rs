//! Replicated services: slots 1..=N, each with exactly one task meant to run.

use super::updater::{self, Judgement, SlotView};
use super::{new_task_wanting, Plan};
use crate::state::Versioned;
use shoal_api::models::TaskState;
use shoal_api::objects::{StoredService, StoredTask};
use std::collections::BTreeMap;

/// Brings a replicated service's tasks toward `replicas` running, up-to-date tasks, replacing
/// out-of-date ones as the update settings allow.
pub fn reconcile(
    svc: &Versioned<StoredService>,
    replicas: u64,
    tasks: &[(&StoredTask, u64)],
    now: chrono::DateTime<chrono::Utc>,
    plan: &mut Plan,
) {
    if updater::judge(svc, tasks, replicas, now, plan) == Judgement::Stopped {
        return;
    }
    let s = &svc.obj;
    let settings = updater::Settings::of(s);
    let mut slots: BTreeMap<u64, Vec<(&StoredTask, u64)>> = BTreeMap::new();
    for (t, v) in tasks {
        slots.entry(t.slot()).or_default().push((t, *v));
    }
    let mut views = Vec::with_capacity(replicas as usize);
    let mut outdated = Vec::new();
    for n in 1..=replicas {
        let empty = Vec::new();
        let make = |desired| new_task_wanting(s, n, None, desired);
        let view = updater::slot(
            s,
            &settings,
            slots.get(&n).unwrap_or(&empty),
            &make,
            now,
            plan,
        );
        if let SlotView::Outdated(t, v) = view {
            outdated.push((n, t, v));
        }
        views.push(view);
    }
    let admitted = updater::admit(svc, &views, now, plan);
    for (n, t, v) in outdated.into_iter().take(admitted) {
        let make = |desired| new_task_wanting(s, n, None, desired);
        updater::replace(&settings, t, v, &make, plan);
    }
    // Scale down: slots above the replica count stop.
    for slot_tasks in slots.range(replicas + 1..).map(|(_, t)| t) {
        for (t, v) in slot_tasks {
            if t.meant_to_run() {
                plan.set_desired(t, *v, TaskState::SHUTDOWN);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::new_task;
    use shoal_api::models::TaskStatus;
    use TaskState::{COMPLETE, FAILED, RUNNING, SHUTDOWN};

    fn svc(json: &str) -> Versioned<StoredService> {
        let mut s = crate::testkit::service("svc", json);
        s.last_spec_version = 0;
        crate::testkit::versioned(s)
    }

    /// A task of `svc` in `slot`, whose status is dated `secs` seconds into 2025.
    fn task(id: &str, slot: u64, state: TaskState, desired: TaskState, secs: u32) -> StoredTask {
        let mut t = new_task(&svc(r#"{"Name":"web"}"#).obj, slot, None, vec![]);
        t.task.id = Some(id.into());
        t.task.desired_state = Some(desired);
        t.task.status = Some(TaskStatus {
            state: Some(state),
            timestamp: Some(format!("2025-01-01T00:00:{secs:02}Z")),
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
        let t1 = task("a", 1, RUNNING, RUNNING, 0);
        let t5 = task("e", 5, RUNNING, RUNNING, 0);
        let mut plan = Plan::new(&crate::testkit::inputs());
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
        let t = task("a", 1, FAILED, RUNNING, 0);
        let mut plan = Plan::new(&crate::testkit::inputs());
        reconcile(&s, 1, &[(&t, 1)], now(), &mut plan);
        assert!(plan.created.is_empty(), "replaced before the delay");
        assert_eq!(
            plan.wake_at,
            shoal_api::id::parse_time("2025-01-01T00:00:20Z")
        );

        let s = svc(r#"{"Name":"web","TaskTemplate":{"RestartPolicy":{"Delay":1000000000}}}"#);
        let mut plan = Plan::new(&crate::testkit::inputs());
        reconcile(&s, 1, &[(&t, 1)], now(), &mut plan);
        assert_eq!(plan.created.len(), 1);
        assert_eq!(plan.created[0].slot(), 1);
        assert_eq!(plan.updated["a"].0.desired(), TaskState::SHUTDOWN);
    }

    #[test]
    fn restart_condition_and_attempts() {
        let none = svc(r#"{"Name":"w","TaskTemplate":{"RestartPolicy":{"Condition":"none"}}}"#);
        let t = task("a", 1, FAILED, RUNNING, 0);
        let mut plan = Plan::new(&crate::testkit::inputs());
        reconcile(&none, 1, &[(&t, 1)], now(), &mut plan);
        assert!(plan.created.is_empty());

        let on_failure = svc(
            r#"{"Name":"w","TaskTemplate":{"RestartPolicy":{"Condition":"on-failure","Delay":0}}}"#,
        );
        let done = task("a", 1, COMPLETE, RUNNING, 0);
        let mut plan = Plan::new(&crate::testkit::inputs());
        reconcile(&on_failure, 1, &[(&done, 1)], now(), &mut plan);
        assert!(plan.created.is_empty(), "on-failure restarted a clean exit");

        let capped =
            svc(r#"{"Name":"w","TaskTemplate":{"RestartPolicy":{"MaxAttempts":2,"Delay":0}}}"#);
        let old1 = task("o1", 1, FAILED, SHUTDOWN, 1);
        let old2 = task("o2", 1, FAILED, SHUTDOWN, 2);
        let mut plan = Plan::new(&crate::testkit::inputs());
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
        s.obj.spec_version = 2;
        let ts: Vec<StoredTask> = (1..=3)
            .map(|i| task(&format!("t{i}"), i, RUNNING, RUNNING, 0))
            .collect();
        let refs: Vec<(&StoredTask, u64)> = ts.iter().map(|t| (t, 1)).collect();
        let mut plan = Plan::new(&crate::testkit::inputs());
        reconcile(&s, 3, &refs, now(), &mut plan);
        assert_eq!(plan.created.len(), 2);
        assert!(plan.created.iter().all(|t| t.spec_version == 2));
        assert_eq!(plan.updated.len(), 2);
    }
}
