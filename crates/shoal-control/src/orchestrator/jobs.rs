//! Jobs: services whose tasks run to completion instead of being kept running. A job runs in
//! iterations (`JobStatus.JobIteration`): creating the service starts the first, each update
//! (or, for a periodic job, each due tick of its `shoal.cron` schedule) starts the next, and a
//! task belongs to the iteration it was made for. A replicated job completes `total` tasks, at
//! most `max_concurrent` at once, each completion in its own slot (0-based, as the docker
//! CLI's progress reads them); a global job completes one task on every eligible node. Failed
//! tasks are retried by the restart policy, where `any` means `on-failure`: a completed task
//! is never run again in the same iteration.

use super::restart::{self, Verdict};
use super::{new_task_wanting, Note, Plan};
use crate::scheduler::constraints_met;
use crate::state::Versioned;
use crate::state::{node_schedulable, ClusterState};
use shoal_api::models::{ServiceJobStatus, TaskState};
use shoal_api::objects::{is_terminal, version, StoredService, StoredTask};
use std::collections::{BTreeMap, HashMap};

/// Where one slot (a completion of a replicated job, or a node of a global job) stands.
#[derive(Debug, PartialEq, Eq)]
enum Slot {
    /// A task of this iteration completed here.
    Done,
    /// A task runs (or waits to), or a failed one waits out its restart delay.
    Active,
    /// The last task failed and the restart policy allows no more attempts.
    Failed,
    /// Nothing of this iteration here yet.
    Empty,
}

/// How far the current iteration has got, for `docker service ls` and the periodic schedule.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Slots whose task completed.
    pub done: u64,
    /// Slots with a task running or about to be retried.
    pub active: u64,
    /// Slots given up on (restart policy exhausted).
    pub failed: u64,
}

impl Progress {
    /// Counts a decided slot; false for an empty one, which the caller may fill.
    fn count(&mut self, slot: Slot) -> bool {
        match slot {
            Slot::Done => self.done += 1,
            Slot::Active => self.active += 1,
            Slot::Failed => self.failed += 1,
            Slot::Empty => return false,
        }
        true
    }

    /// True once nothing of the iteration runs or will run again.
    pub fn finished(&self) -> bool {
        self.active == 0
    }
}

/// A job's task: run to completion, for the current iteration.
fn job_task(svc: &StoredService, slot: u64, node: Option<&str>) -> StoredTask {
    let mut t = new_task_wanting(svc, slot, node, TaskState::COMPLETE);
    t.task.job_iteration = version(svc.job_iteration());
    t
}

/// True while a periodic job waits for its first due tick (nothing runs at create).
fn idle(svc: &StoredService) -> bool {
    svc.cron().is_some()
        && svc
            .service
            .job_status
            .as_ref()
            .and_then(|j| j.last_execution.as_ref())
            .is_none()
}

/// Decides one slot from its tasks of the current iteration, retrying a failed task when the
/// restart policy allows (`make` builds the replacement).
fn slot(
    svc: &StoredService,
    tasks: &[(&StoredTask, u64)],
    make: impl Fn() -> StoredTask,
    now: chrono::DateTime<chrono::Utc>,
    plan: &mut Plan,
) -> Slot {
    if tasks.iter().any(|(t, _)| t.state() == TaskState::COMPLETE) {
        return Slot::Done;
    }
    if tasks
        .iter()
        .any(|(t, _)| t.meant_to_run() && !is_terminal(t.state()))
    {
        return Slot::Active;
    }
    // The newest task still wanted is the one whose failure the policy judges.
    let Some((stopped, v)) = tasks
        .iter()
        .filter(|(t, _)| t.meant_to_run())
        .max_by(|a, b| a.0.task.created_at.cmp(&b.0.task.created_at))
    else {
        return Slot::Empty;
    };
    let history: Vec<&StoredTask> = tasks
        .iter()
        .filter(|(t, _)| t.id() != stopped.id() && is_terminal(t.state()))
        .map(|(t, _)| *t)
        .collect();
    match restart::decide(svc, stopped, &history, now) {
        Verdict::Now => {
            plan.set_desired(stopped, *v, TaskState::SHUTDOWN);
            plan.create(make());
            Slot::Active
        }
        Verdict::At(at) => {
            plan.wake(at);
            Slot::Active
        }
        Verdict::Never => Slot::Failed,
    }
}

/// Splits a job's tasks into those of the current iteration and stops the rest: a new
/// iteration replaces the old one's running tasks, and its finished ones become history.
/// `None` while the job is idle (a periodic job before its first tick): nothing to run.
fn current<'a>(
    svc: &StoredService,
    tasks: &[(&'a StoredTask, u64)],
    plan: &mut Plan,
) -> Option<Vec<(&'a StoredTask, u64)>> {
    let iteration = svc.job_iteration();
    let mut out = Vec::new();
    for (t, v) in tasks {
        if t.job_iteration() == Some(iteration) {
            out.push((*t, *v));
        } else if t.meant_to_run() {
            plan.set_desired(t, *v, TaskState::SHUTDOWN);
        }
    }
    (!idle(svc)).then_some(out)
}

/// Stops the tasks still meant to run among `tasks`: those of slots or nodes the job no
/// longer has.
fn stop_leftovers<'a>(tasks: impl Iterator<Item = &'a (&'a StoredTask, u64)>, plan: &mut Plan) {
    for (t, v) in tasks {
        if t.meant_to_run() && !is_terminal(t.state()) {
            plan.set_desired(t, *v, TaskState::SHUTDOWN);
        }
    }
}

/// Runs a replicated job toward `total` completions, at most `max_concurrent` tasks at once.
pub fn replicated(
    svc: &Versioned<StoredService>,
    total: u64,
    max_concurrent: u64,
    tasks: &[(&StoredTask, u64)],
    now: chrono::DateTime<chrono::Utc>,
    plan: &mut Plan,
) -> Progress {
    let s = &svc.obj;
    let Some(mine) = current(s, tasks, plan) else {
        return Progress::default();
    };
    let mut progress = Progress::default();
    let mut slots: BTreeMap<u64, Vec<(&StoredTask, u64)>> = BTreeMap::new();
    for (t, v) in mine {
        slots.entry(t.slot()).or_default().push((t, v));
    }
    let mut free = Vec::new();
    for n in 0..total {
        let Some(ts) = slots.get(&n) else {
            free.push(n);
            continue;
        };
        if !progress.count(slot(s, ts, || job_task(s, n, None), now, plan)) {
            free.push(n);
        }
    }
    // Slots beyond the total (a periodic job's total lowered without a new iteration).
    stop_leftovers(slots.range(total..).flat_map(|(_, ts)| ts), plan);
    // A failed slot keeps its seat, as in Swarm: the job stops short of its total rather than
    // retrying past the restart policy in another slot.
    let busy = progress.active + progress.failed;
    let wanted = max_concurrent
        .saturating_sub(busy)
        .min(total.saturating_sub(progress.done + busy));
    for n in free.into_iter().take(wanted as usize) {
        plan.create(job_task(s, n, None));
        progress.active += 1;
    }
    progress
}

/// Runs a global job to one completion on every eligible node (nodes that join later too).
pub fn global(
    svc: &Versioned<StoredService>,
    state: &ClusterState,
    tasks: &[(&StoredTask, u64)],
    now: chrono::DateTime<chrono::Utc>,
    plan: &mut Plan,
) -> Progress {
    let s = &svc.obj;
    let Some(mine) = current(s, tasks, plan) else {
        return Progress::default();
    };
    let mut progress = Progress::default();
    let mut per_node: HashMap<&str, Vec<(&StoredTask, u64)>> = HashMap::new();
    for (t, v) in mine {
        if let Some(n) = t.node_id() {
            per_node.entry(n).or_default().push((t, v));
        }
    }
    let eligible = state
        .nodes
        .iter()
        .filter(|n| node_schedulable(&n.obj) && constraints_met(s, &n.obj))
        .filter_map(|n| n.obj.id.as_deref());
    for node in eligible {
        let ts = per_node.remove(node).unwrap_or_default();
        let make = || job_task(s, 0, Some(node));
        if !progress.count(slot(s, &ts, make, now, plan)) {
            plan.create(make());
            progress.active += 1;
        }
    }
    // Nodes gone, drained, or no longer matching the constraints.
    stop_leftovers(per_node.values().flatten(), plan);
    progress
}

/// The status a new job service starts with: iteration 0, run now (a periodic job waits for
/// its first tick instead).
pub fn initial_status(periodic: bool, now: &str) -> ServiceJobStatus {
    ServiceJobStatus {
        job_iteration: version(0),
        last_execution: (!periodic).then(|| now.to_string()),
    }
}

/// Starts the job's next iteration: its tasks are made by the next pass, the current ones stop.
pub fn next_iteration(svc: &mut StoredService, now: &str) {
    let next = svc.job_iteration() + 1;
    svc.service.job_status = Some(ServiceJobStatus {
        job_iteration: version(next),
        last_execution: Some(now.to_string()),
    });
}

/// A periodic job's schedule: when its next run is due, start it if the last one finished,
/// or skip it (never two at once) and wait for the tick after.
pub fn periodic(
    svc: &Versioned<StoredService>,
    progress: &Progress,
    now: chrono::DateTime<chrono::Utc>,
    plan: &mut Plan,
) {
    let s = &svc.obj;
    let Some(expr) = s.cron() else { return };
    // Validated at the API; a schedule that stops parsing (an older version's) just never runs.
    let Ok(schedule) = shoal_api::cron::Schedule::parse(expr) else {
        return;
    };
    let due = s.cron_next.as_deref().and_then(shoal_api::id::parse_time);
    let Some(due) = due else {
        // Not planned yet (new, or its schedule changed): plan from now.
        let mut next = s.clone();
        next.cron_next = schedule.next_after(now).map(shoal_api::id::format_time);
        if next.cron_next.is_some() {
            plan.services
                .insert(s.id().to_string(), (next, svc.version));
        }
        return;
    };
    if due > now {
        plan.wake(due);
        return;
    }
    let mut next = s.clone();
    let stamp = shoal_api::id::format_time(now);
    if progress.finished() {
        plan.notes.push(Note::PeriodicJobDue {
            service: s.name().to_string(),
            iteration: s.job_iteration() + 1,
        });
        next_iteration(&mut next, &stamp);
    } else {
        next.cron_skipped += 1;
        plan.notes.push(Note::PeriodicJobSkipped {
            service: s.name().to_string(),
            skipped: next.cron_skipped,
        });
    }
    next.cron_next = schedule.next_after(now).map(shoal_api::id::format_time);
    plan.services
        .insert(s.id().to_string(), (next, svc.version));
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::models::TaskStatus;

    fn svc(json: &str) -> Versioned<StoredService> {
        let mut s = crate::testkit::service("job", json);
        s.last_spec_version = 0;
        s.service.job_status = Some(initial_status(s.cron().is_some(), crate::testkit::T0));
        crate::testkit::versioned(s)
    }

    fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
        shoal_api::id::parse_time(s).unwrap()
    }

    /// When the planned service's next cron run is due.
    fn next_tick(s: &StoredService) -> Option<chrono::DateTime<chrono::Utc>> {
        s.cron_next.as_deref().and_then(shoal_api::id::parse_time)
    }

    fn now() -> chrono::DateTime<chrono::Utc> {
        at("2026-01-01T00:00:10Z")
    }

    /// A task of `svc`'s current iteration in `slot`, in `state`, ended (or updated) at 00:00:00.
    fn task(svc: &StoredService, id: &str, slot: u64, state: TaskState) -> StoredTask {
        let mut t = job_task(svc, slot, Some("n1"));
        t.task.id = Some(id.into());
        t.task.status = Some(TaskStatus {
            state: Some(state),
            timestamp: Some("2026-01-01T00:00:00Z".into()),
            ..Default::default()
        });
        t
    }

    const JOB: &str = r#"{"Name":"j","Mode":{"ReplicatedJob":{"TotalCompletions":5,"MaxConcurrent":2}},
        "TaskTemplate":{"RestartPolicy":{"Delay":0}}}"#;

    #[test]
    fn replicated_job_runs_at_most_max_concurrent_until_total_complete() {
        let s = svc(JOB);
        let mut plan = Plan::new(&crate::testkit::inputs());
        let p = replicated(&s, 5, 2, &[], now(), &mut plan);
        let slots: Vec<u64> = plan.created.iter().map(|t| t.slot()).collect();
        assert_eq!(slots, vec![0, 1]);
        assert!(plan
            .created
            .iter()
            .all(|t| t.desired() == TaskState::COMPLETE && t.job_iteration() == Some(0)));
        assert_eq!(p.active, 2);

        // Three done, one running: one more may start (slot 4), then none.
        let ts = [
            task(&s.obj, "a", 0, TaskState::COMPLETE),
            task(&s.obj, "b", 1, TaskState::COMPLETE),
            task(&s.obj, "c", 2, TaskState::COMPLETE),
            task(&s.obj, "d", 3, TaskState::RUNNING),
        ];
        let refs: Vec<_> = ts.iter().map(|t| (t, 1)).collect();
        let mut plan = Plan::new(&crate::testkit::inputs());
        let p = replicated(&s, 5, 2, &refs, now(), &mut plan);
        assert_eq!(
            plan.created.iter().map(|t| t.slot()).collect::<Vec<_>>(),
            vec![4]
        );
        assert_eq!((p.done, p.active), (3, 2));
        assert!(!p.finished());

        let ts: Vec<StoredTask> = (0..5)
            .map(|i| task(&s.obj, &format!("t{i}"), i, TaskState::COMPLETE))
            .collect();
        let refs: Vec<_> = ts.iter().map(|t| (t, 1)).collect();
        let mut plan = Plan::new(&crate::testkit::inputs());
        let p = replicated(&s, 5, 2, &refs, now(), &mut plan);
        assert!(plan.created.is_empty() && plan.updated.is_empty());
        assert!(p.finished());
        assert_eq!(p.done, 5);
    }

    #[test]
    fn failed_tasks_retry_in_their_slot_by_the_policy_and_any_never_reruns_a_completion() {
        let s = svc(JOB);
        let failed = task(&s.obj, "f", 0, TaskState::FAILED);
        let mut plan = Plan::new(&crate::testkit::inputs());
        replicated(&s, 5, 1, &[(&failed, 1)], now(), &mut plan);
        assert_eq!(plan.created.len(), 1);
        assert_eq!(plan.created[0].slot(), 0, "retried in another slot");
        assert_eq!(plan.updated["f"].0.desired(), TaskState::SHUTDOWN);

        // MaxAttempts 1 used up: the slot keeps its seat and nothing else starts.
        let capped = svc(
            r#"{"Name":"j","Mode":{"ReplicatedJob":{"TotalCompletions":3,"MaxConcurrent":1}},
            "TaskTemplate":{"RestartPolicy":{"Delay":0,"MaxAttempts":1}}}"#,
        );
        let mut old = task(&capped.obj, "o", 0, TaskState::FAILED);
        old.task.desired_state = Some(TaskState::SHUTDOWN);
        let last = task(&capped.obj, "l", 0, TaskState::FAILED);
        let mut plan = Plan::new(&crate::testkit::inputs());
        let p = replicated(&capped, 3, 1, &[(&old, 1), (&last, 1)], now(), &mut plan);
        assert!(plan.created.is_empty());
        assert_eq!((p.failed, p.active), (1, 0));
        assert!(p.finished());

        // Condition any (the default) does not run a completed slot again.
        let any = svc(
            r#"{"Name":"j","Mode":{"ReplicatedJob":{"TotalCompletions":1}},
            "TaskTemplate":{"RestartPolicy":{"Condition":"any","Delay":0}}}"#,
        );
        let done = task(&any.obj, "d", 0, TaskState::COMPLETE);
        let mut plan = Plan::new(&crate::testkit::inputs());
        replicated(&any, 1, 1, &[(&done, 1)], now(), &mut plan);
        assert!(plan.created.is_empty());
    }

    #[test]
    fn a_new_iteration_stops_the_old_ones_tasks_and_starts_over() {
        let mut s = svc(JOB);
        let old_done = task(&s.obj, "a", 0, TaskState::COMPLETE);
        let old_running = task(&s.obj, "b", 1, TaskState::RUNNING);
        next_iteration(&mut s.obj, "2026-01-01T00:00:05Z");
        let mut plan = Plan::new(&crate::testkit::inputs());
        replicated(
            &s,
            5,
            2,
            &[(&old_done, 1), (&old_running, 1)],
            now(),
            &mut plan,
        );
        assert_eq!(plan.updated["a"].0.desired(), TaskState::SHUTDOWN);
        assert_eq!(plan.updated["b"].0.desired(), TaskState::SHUTDOWN);
        assert_eq!(
            plan.created.iter().map(|t| t.slot()).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert!(plan.created.iter().all(|t| t.job_iteration() == Some(1)));
    }

    #[test]
    fn periodic_job_waits_for_its_tick_and_never_overlaps() {
        let s = svc(r#"{"Name":"j","Labels":{"shoal.cron":"*/5 * * * *"},
            "Mode":{"ReplicatedJob":{"TotalCompletions":1}}}"#);
        // Created: nothing runs, the first tick is planned.
        let mut plan = Plan::new(&crate::testkit::inputs());
        let p = replicated(&s, 1, 1, &[], now(), &mut plan);
        assert!(plan.created.is_empty(), "a periodic job ran at create");
        periodic(&s, &p, now(), &mut plan);
        let planned = &plan.services["job"].0;
        assert_eq!(next_tick(planned), Some(at("2026-01-01T00:05:00Z")));

        // Before the tick: a wake-up at the tick, no write.
        let s = Versioned {
            obj: planned.clone(),
            version: 2,
        };
        let mut plan = Plan::new(&crate::testkit::inputs());
        periodic(&s, &Progress::default(), now(), &mut plan);
        assert!(plan.services.is_empty());
        assert_eq!(plan.wake_at, Some(at("2026-01-01T00:05:00Z")));

        // Due and the last run finished: iteration 1 starts, next tick planned.
        let tick = at("2026-01-01T00:05:00.2Z");
        let mut plan = Plan::new(&crate::testkit::inputs());
        periodic(&s, &Progress::default(), tick, &mut plan);
        let started = &plan.services["job"].0;
        assert_eq!(started.job_iteration(), 1);
        assert_eq!(started.cron_skipped, 0);
        assert_eq!(next_tick(started), Some(at("2026-01-01T00:10:00Z")));
        let s = Versioned {
            obj: started.clone(),
            version: 3,
        };
        let mut plan = Plan::new(&crate::testkit::inputs());
        replicated(&s, 1, 1, &[], tick, &mut plan);
        assert_eq!(plan.created.len(), 1);
        let running = {
            let mut t = plan.created.remove(0);
            t.task.status.get_or_insert_with(Default::default).state = Some(TaskState::RUNNING);
            t
        };

        // The next tick while that run still goes: skipped, counted, iteration unchanged.
        let tick = at("2026-01-01T00:10:00Z");
        let mut plan = Plan::new(&crate::testkit::inputs());
        let p = replicated(&s, 1, 1, &[(&running, 1)], tick, &mut plan);
        assert!(!p.finished());
        periodic(&s, &p, tick, &mut plan);
        let skipped = &plan.services["job"].0;
        assert_eq!(skipped.job_iteration(), 1);
        assert_eq!(skipped.cron_skipped, 1);
        assert!(plan.created.is_empty() && plan.updated.is_empty());
    }

    #[test]
    fn global_job_runs_once_per_eligible_node() {
        let s = svc(r#"{"Name":"g","Mode":{"GlobalJob":{}}}"#);
        let node = |id: &str, availability: &str| -> Versioned<shoal_api::models::Node> {
            let n = serde_json::from_value(serde_json::json!({
                "ID": id,
                "Spec": {"Availability": availability},
                "Status": {"State": "ready"},
            }))
            .unwrap();
            Versioned { obj: n, version: 1 }
        };
        let state = ClusterState {
            services: Default::default(),
            tasks: Vec::new(),
            nodes: vec![
                node("n1", "active"),
                node("n2", "active"),
                node("n3", "drain"),
            ],
            networks: Vec::new(),
            cluster: None,
            node_images: Default::default(),
        };
        let done = task(&s.obj, "d", 0, TaskState::COMPLETE);
        let mut on_drained = task(&s.obj, "r", 0, TaskState::RUNNING);
        on_drained.task.node_id = Some("n3".into());
        let mut plan = Plan::new(&crate::testkit::inputs());
        let p = global(
            &s,
            &state,
            &[(&done, 1), (&on_drained, 1)],
            now(),
            &mut plan,
        );
        let nodes: Vec<&str> = plan.created.iter().filter_map(|t| t.node_id()).collect();
        assert_eq!(nodes, vec!["n2"], "n1 is done and n3 drained");
        assert_eq!((p.done, p.active), (1, 1));
        assert_eq!(plan.updated["r"].0.desired(), TaskState::SHUTDOWN);
    }
}
