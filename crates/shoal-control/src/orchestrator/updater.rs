//! Rolling updates and rollbacks: which out-of-date slots are replaced now, how (stop-first or
//! start-first), and what the update's failures mean (pause, continue, roll back).
//!
//! Stateless like the rest of the orchestrator: an update's progress is read from the tasks
//! (their spec versions and `running_at`) and the service's `UpdateStatus`, so a new leader
//! carries on where the old one stopped. Swarm's updater keeps the same facts in memory.
//!
//! A slot is a replica number, or a node for a global service. Per slot, [`slot`] keeps one
//! task meant to run, restarts a stopped one by the restart policy and finishes hand-overs;
//! per service, [`judge`] decides on failures before the slots are looked at and [`admit`]
//! says how many out-of-date slots may start now and when the update is complete.

use super::restart::{self, Verdict};
use super::{Note, Plan};
use crate::state::Versioned;
use shoal_api::id;
use shoal_api::models::{
    ServiceSpecRollbackConfigFailureActionEnum as RollbackAction,
    ServiceSpecRollbackConfigOrderEnum as RollbackOrder,
    ServiceSpecUpdateConfigFailureActionEnum as UpdateAction,
    ServiceSpecUpdateConfigOrderEnum as UpdateOrder, ServiceUpdateStatus,
    ServiceUpdateStatusStateEnum as Status, TaskState,
};
use shoal_api::objects::{is_terminal, state_rank, StoredService, StoredTask};

/// Swarm's default monitor window after each replaced task.
pub const DEFAULT_MONITOR_NS: i64 = 5_000_000_000;

/// How long a prepared replacement waits for the task it replaces to stop before it starts
/// anyway (swarmkit waits as long), so a node that never reports cannot stall an update.
pub const STOP_WAIT_SECS: i64 = 60;

/// What an update does when too many of its tasks fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureAction {
    /// Stop replacing slots until the user updates the service again.
    Pause,
    /// Carry on.
    Continue,
    /// Go back to the previous spec (with the rollback settings).
    Rollback,
}

/// The settings in force: the update config, or the rollback config while rolling back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Slots replaced at once (0: all).
    pub parallelism: u64,
    /// Wait after a replacement is running before its place takes the next slot.
    pub delay: chrono::Duration,
    /// How long after a replacement runs its failure still counts against the update.
    pub monitor: chrono::Duration,
    /// Failed replacements tolerated, as a fraction of the slots.
    pub max_failure_ratio: f64,
    /// What too many failures lead to.
    pub action: FailureAction,
    /// Start the replacement before stopping the old task.
    pub start_first: bool,
}

impl Settings {
    /// The settings for `svc` now; Swarm's defaults where the spec says nothing.
    pub fn of(svc: &StoredService) -> Settings {
        let spec = svc.spec();
        let ns = |v: Option<i64>, default: i64| {
            chrono::Duration::nanoseconds(v.unwrap_or(default).max(0))
        };
        if rolling_back(svc) {
            let c = spec.rollback_config.clone().unwrap_or_default();
            Settings {
                parallelism: c.parallelism.unwrap_or(1).max(0) as u64,
                delay: ns(c.delay, 0),
                monitor: ns(c.monitor.filter(|m| *m > 0), DEFAULT_MONITOR_NS),
                max_failure_ratio: c.max_failure_ratio.unwrap_or(0.0),
                // A rollback is never rolled back.
                action: match c.failure_action {
                    Some(RollbackAction::CONTINUE) => FailureAction::Continue,
                    _ => FailureAction::Pause,
                },
                start_first: c.order == Some(RollbackOrder::START_FIRST),
            }
        } else {
            let c = spec.update_config.clone().unwrap_or_default();
            Settings {
                parallelism: c.parallelism.unwrap_or(1).max(0) as u64,
                delay: ns(c.delay, 0),
                monitor: ns(c.monitor.filter(|m| *m > 0), DEFAULT_MONITOR_NS),
                max_failure_ratio: c.max_failure_ratio.unwrap_or(0.0),
                action: match c.failure_action {
                    Some(UpdateAction::CONTINUE) => FailureAction::Continue,
                    Some(UpdateAction::ROLLBACK) => FailureAction::Rollback,
                    _ => FailureAction::Pause,
                },
                start_first: c.order == Some(UpdateOrder::START_FIRST),
            }
        }
    }
}

fn status(svc: &StoredService) -> Option<Status> {
    svc.service.update_status.as_ref().and_then(|u| u.state)
}

fn rolling_back(svc: &StoredService) -> bool {
    status(svc) == Some(Status::ROLLBACK_STARTED)
}

/// True while an update or a rollback is replacing tasks (or monitoring the last ones).
pub fn in_progress(svc: &StoredService) -> bool {
    matches!(
        status(svc),
        Some(Status::UPDATING | Status::ROLLBACK_STARTED)
    )
}

/// The status a pass writes: `started` is the update's start (kept across its states).
fn update_status(
    state: Status,
    started: Option<String>,
    completed: Option<String>,
    message: impl Into<String>,
) -> Option<ServiceUpdateStatus> {
    Some(ServiceUpdateStatus {
        state: Some(state),
        started_at: started,
        completed_at: completed,
        message: Some(message.into()),
    })
}

/// When the update in progress started.
fn started_at(svc: &StoredService) -> Option<String> {
    svc.service
        .update_status
        .as_ref()
        .and_then(|u| u.started_at.clone())
}

fn paused(svc: &StoredService) -> bool {
    matches!(status(svc), Some(Status::PAUSED | Status::ROLLBACK_PAUSED))
}

/// What one slot means to the update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SlotView<'a> {
    /// Nothing from an older spec runs here; the current task, if running, since this time.
    Settled(Option<chrono::DateTime<chrono::Utc>>),
    /// The slot's replacement is under way (not running yet, or within the update delay);
    /// it holds one of the update's places.
    Busy,
    /// A task from an older spec runs here and waits its turn.
    Outdated(&'a StoredTask, u64),
}

fn time(s: Option<&str>) -> Option<chrono::DateTime<chrono::Utc>> {
    s.and_then(id::parse_time)
}

/// How far along a task is, for choosing which duplicate to keep (terminal ones rank lowest).
fn live_rank(t: &StoredTask) -> u8 {
    if is_terminal(t.state()) {
        0
    } else {
        state_rank(t.state()) + 1
    }
}

/// True if the task may still have a container on a node (so a stop-first replacement waits).
fn holds_node(t: &StoredTask) -> bool {
    t.node_id().is_some() && !is_terminal(t.state()) && t.state() != TaskState::PENDING
}

/// Brings one slot's tasks in order and says what the slot means to the update. `make`
/// builds a new task for the slot with the given desired state.
pub fn slot<'a>(
    svc: &StoredService,
    settings: &Settings,
    tasks: &[(&'a StoredTask, u64)],
    make: &dyn Fn(TaskState) -> StoredTask,
    now: chrono::DateTime<chrono::Utc>,
    plan: &mut Plan,
) -> SlotView<'a> {
    let mut current: Vec<(&StoredTask, u64)> = Vec::new();
    let mut old: Vec<(&StoredTask, u64)> = Vec::new();
    for (t, v) in tasks.iter().filter(|(t, _)| t.meant_to_run()) {
        if t.spec_version == svc.spec_version {
            current.push((t, *v));
        } else {
            old.push((t, *v));
        }
    }
    // Keep the most advanced task of each kind; stop any duplicates.
    for list in [&mut current, &mut old] {
        list.sort_by_key(|(t, _)| std::cmp::Reverse(live_rank(t)));
        for (dup, v) in list.iter().skip(1) {
            plan.set_desired(dup, *v, TaskState::SHUTDOWN);
        }
    }
    let history = |except: &StoredTask| -> Vec<&StoredTask> {
        tasks
            .iter()
            .filter(|(h, _)| h.id() != except.id() && is_terminal(h.state()))
            .map(|(h, _)| *h)
            .collect()
    };
    let restart =
        |t: &StoredTask, v: u64, plan: &mut Plan| match restart::decide(svc, t, &history(t), now) {
            Verdict::Now => {
                plan.set_desired(t, v, TaskState::SHUTDOWN);
                plan.create(make(TaskState::RUNNING));
            }
            Verdict::At(at) => plan.wake(at),
            Verdict::Never => {}
        };
    let stopping = tasks
        .iter()
        .any(|(t, _)| !t.meant_to_run() && holds_node(t));
    match (current.first().copied(), old.first().copied()) {
        (Some((c, v)), _) if is_terminal(c.state()) => {
            // With start-first, an old task still serving stays until a replacement runs.
            restart(c, v, plan);
            SlotView::Settled(None)
        }
        (Some((c, v)), old) if c.desired() == TaskState::READY => {
            // Stop-first: prepared while the old task stopped; started once it has.
            let waited = time(c.task.created_at.as_deref())
                .map(|at| at + chrono::Duration::seconds(STOP_WAIT_SECS));
            let blocked = stopping || old.is_some_and(|(o, _)| holds_node(o));
            if !blocked || waited.is_some_and(|w| w <= now) {
                plan.set_desired(c, v, TaskState::RUNNING);
            } else if let Some(w) = waited {
                plan.wake(w);
            }
            SlotView::Busy
        }
        (Some((c, _)), old) => {
            if c.state() != TaskState::RUNNING {
                return SlotView::Busy;
            }
            // Start-first: the replacement runs, so the old task goes.
            if let Some((o, ov)) = old {
                plan.set_desired(o, ov, TaskState::SHUTDOWN);
            }
            // Tasks from before `running_at` was kept count from their last status change.
            let since = time(c.running_at.as_deref())
                .or_else(|| time(c.task.status.as_ref().and_then(|s| s.timestamp.as_deref())))
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
            let free = since + settings.delay;
            if free > now && in_progress(svc) {
                plan.wake(free);
                SlotView::Busy
            } else {
                SlotView::Settled(Some(since))
            }
        }
        (None, Some((o, v))) if is_terminal(o.state()) && !in_progress(svc) => {
            // An old task that stopped by itself is replaced by the restart policy, from the
            // current spec, as Swarm does. During an update (a rollback of failed tasks, say)
            // it is an out-of-date slot like the others, replaced without the restart delay.
            restart(o, v, plan);
            SlotView::Settled(None)
        }
        (None, Some((o, v))) => SlotView::Outdated(o, v),
        (None, None) => {
            plan.create(make(TaskState::RUNNING));
            SlotView::Settled(None)
        }
    }
}

/// Replaces an out-of-date slot's task the way the settings say.
pub fn replace(
    settings: &Settings,
    old: &StoredTask,
    version: u64,
    make: &dyn Fn(TaskState) -> StoredTask,
    plan: &mut Plan,
) {
    if settings.start_first {
        plan.create(make(TaskState::RUNNING));
    } else {
        plan.set_desired(old, version, TaskState::SHUTDOWN);
        plan.create(make(TaskState::READY));
    }
}

/// The update's verdict before a pass looks at the slots.
#[derive(Debug, PartialEq)]
pub enum Judgement {
    /// Go on (or there is no update).
    Proceed,
    /// Too many failures: the service was rewritten (paused, or rolled back) in the plan; its
    /// tasks wait for the next pass.
    Stopped,
}

/// Counts the replacements that failed during this update (or within the monitor window after
/// they ran) and acts when there are more than the settings tolerate.
pub fn judge(
    svc: &Versioned<StoredService>,
    tasks: &[(&StoredTask, u64)],
    slots: u64,
    now: chrono::DateTime<chrono::Utc>,
    plan: &mut Plan,
) -> Judgement {
    let s = &svc.obj;
    if !in_progress(s) {
        return Judgement::Proceed;
    }
    let settings = Settings::of(s);
    if settings.action == FailureAction::Continue {
        return Judgement::Proceed;
    }
    let started = time(started_at(s).as_deref());
    let mut failed: Vec<(&StoredTask, chrono::DateTime<chrono::Utc>)> = Vec::new();
    for (t, _) in tasks {
        if t.spec_version != s.spec_version
            || !matches!(
                t.state(),
                TaskState::FAILED | TaskState::REJECTED | TaskState::COMPLETE
            )
        {
            continue;
        }
        let Some(at) = time(
            t.task
                .status
                .as_ref()
                .and_then(|st| st.timestamp.as_deref()),
        ) else {
            continue;
        };
        let during = started.is_none_or(|st| at >= st);
        let monitored =
            time(t.running_at.as_deref()).is_none_or(|ran| at <= ran + settings.monitor);
        if during && monitored {
            failed.push((t, at));
        }
    }
    if failed.is_empty() || failed.len() as f64 / slots.max(1) as f64 <= settings.max_failure_ratio
    {
        return Judgement::Proceed;
    }
    failed.sort_by_key(|(_, at)| *at);
    let task = failed.last().map(|(t, _)| t.id()).unwrap_or_default();
    let mut next = s.clone();
    let stamp = id::format_time(now);
    let previous = s.previous_spec.clone();
    match (settings.action, rolling_back(s), previous) {
        (FailureAction::Rollback, false, Some(prev)) => {
            next.replace_spec(prev, &stamp);
            next.service.update_status = update_status(
                Status::ROLLBACK_STARTED,
                Some(stamp.clone()),
                None,
                format!("update rolled back due to failure or early termination of task {task}"),
            );
            plan.notes.push(Note::RollingBack {
                service: s.name().to_string(),
                task: task.to_string(),
            });
        }
        (_, back, _) => {
            let (state, what) = if back {
                (Status::ROLLBACK_PAUSED, "rollback")
            } else {
                (Status::PAUSED, "update")
            };
            next.service.update_status = update_status(
                state,
                started_at(s),
                None,
                format!("{what} paused due to failure or early termination of task {task}"),
            );
            plan.notes.push(Note::Paused {
                service: s.name().to_string(),
                what,
                task: task.to_string(),
            });
        }
    }
    next.service.updated_at = Some(stamp);
    plan.services
        .insert(s.id().to_string(), (next, svc.version));
    Judgement::Stopped
}

/// After the slots: marks an update started, or complete, and returns how many out-of-date
/// slots may be replaced now.
pub fn admit(
    svc: &Versioned<StoredService>,
    views: &[SlotView],
    now: chrono::DateTime<chrono::Utc>,
    plan: &mut Plan,
) -> usize {
    let s = &svc.obj;
    let settings = Settings::of(s);
    let outdated = views
        .iter()
        .filter(|v| matches!(v, SlotView::Outdated(..)))
        .count();
    let busy = views.iter().filter(|v| **v == SlotView::Busy).count();
    if paused(s) {
        return 0;
    }
    let stamp = id::format_time(now);
    if !in_progress(s) {
        if outdated == 0 {
            return 0;
        }
        // Tasks out of date without an update in progress: an update resumed after a pause
        // (any update call clears the pause, as in Swarm), or an old store.
        let mut next = s.clone();
        next.service.update_status =
            update_status(Status::UPDATING, Some(stamp), None, "update in progress");
        plan.services
            .insert(s.id().to_string(), (next, svc.version));
    } else if outdated == 0 && busy == 0 {
        // Complete once every slot runs the current spec and the last one has been watched
        // for the monitor window.
        let since: Option<Vec<chrono::DateTime<chrono::Utc>>> = views
            .iter()
            .map(|v| match v {
                SlotView::Settled(at) => *at,
                _ => None,
            })
            .collect();
        if let Some(last) = since.and_then(|v| v.into_iter().max()) {
            let done = last + settings.monitor;
            if done > now {
                plan.wake(done);
            } else {
                let (state, message) = if rolling_back(s) {
                    (Status::ROLLBACK_COMPLETED, "rollback completed")
                } else {
                    (Status::COMPLETED, "update completed")
                };
                let mut next = s.clone();
                next.service.update_status =
                    update_status(state, started_at(s), Some(stamp), message);
                plan.services
                    .insert(s.id().to_string(), (next, svc.version));
            }
        }
        return 0;
    }
    if settings.parallelism == 0 {
        outdated
    } else {
        (settings.parallelism as usize).saturating_sub(busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::replicated;
    use shoal_api::models::TaskStatus;
    use std::collections::BTreeMap;

    /// A replicated service and its tasks, driven by passes and by agents that do at once
    /// what they are asked (a task of image "bad" fails as soon as it runs).
    struct Sim {
        svc: Versioned<StoredService>,
        tasks: BTreeMap<String, (StoredTask, u64)>,
        now: chrono::DateTime<chrono::Utc>,
        version: u64,
        /// (time, slot) of every replacement that reached running.
        started: Vec<(i64, u64)>,
        /// Tasks told to stop that are still stopping.
        stopping: std::collections::HashSet<String>,
    }

    fn spec(image: &str, update: serde_json::Value) -> shoal_api::models::ServiceSpec {
        serde_json::from_value(serde_json::json!({
            "Name": "web",
            "Mode": {"Replicated": {"Replicas": 4}},
            "TaskTemplate": {"ContainerSpec": {"Image": image}, "RestartPolicy": {"Delay": 0}},
            "UpdateConfig": update,
            "RollbackConfig": {"Parallelism": 0}
        }))
        .unwrap()
    }

    impl Sim {
        fn new(update: serde_json::Value) -> Sim {
            let mut s = StoredService::default();
            s.service.id = Some("svc".into());
            s.service.spec = Some(spec("good:1", update));
            s.spec_version = 1;
            let mut sim = Sim {
                svc: Versioned { obj: s, version: 1 },
                tasks: BTreeMap::new(),
                now: id::parse_time("2030-01-01T00:00:00Z").unwrap(),
                version: 1,
                started: Vec::new(),
                stopping: Default::default(),
            };
            sim.run(30);
            sim.started.clear();
            sim
        }

        /// The user's `docker service update --image`.
        fn update(&mut self, image: &str) {
            let mut next = self.svc.obj.spec().clone();
            next.task_template
                .as_mut()
                .unwrap()
                .container_spec
                .as_mut()
                .unwrap()
                .image = Some(image.into());
            let stamp = id::format_time(self.now);
            assert!(self.svc.obj.replace_spec(next, &stamp));
            self.svc.obj.service.update_status = Some(ServiceUpdateStatus {
                state: Some(Status::UPDATING),
                started_at: Some(stamp),
                ..Default::default()
            });
            self.version += 1;
            self.svc.version = self.version;
        }

        fn image(t: &StoredTask) -> String {
            t.task
                .spec
                .as_ref()
                .and_then(|s| s.container_spec.as_ref())
                .and_then(|c| c.image.clone())
                .unwrap_or_default()
        }

        fn set_state(&mut self, id: &str, state: TaskState) {
            self.version += 1;
            let stamp = id::format_time(self.now);
            let (t, v) = self.tasks.get_mut(id).unwrap();
            if state == TaskState::RUNNING {
                t.running_at = Some(stamp.clone());
            }
            t.task.status = Some(TaskStatus {
                state: Some(state),
                timestamp: Some(stamp),
                ..Default::default()
            });
            *v = self.version;
        }

        /// One second: a pass, then every agent acts on it.
        fn step(&mut self) {
            let list: Vec<(&StoredTask, u64)> = self.tasks.values().map(|(t, v)| (t, *v)).collect();
            // The simulation's clock, and a seed that differs every step, so new tasks get
            // distinct IDs.
            let mut plan = Plan::new(&crate::Inputs::new(self.now, self.version));
            let shoal_api::objects::Mode::Replicated(n) = self.svc.obj.mode() else {
                panic!("the simulation runs replicated services");
            };
            replicated::reconcile(&self.svc, n, &list, self.now, &mut plan);
            for (id, (t, _)) in plan.updated {
                self.version += 1;
                self.tasks.insert(id, (t, self.version));
            }
            for mut t in plan.created {
                t.task.node_id = Some("n1".into());
                self.version += 1;
                self.tasks.insert(t.id().to_string(), (t, self.version));
            }
            if let Some((s, v)) = plan.services.remove("svc") {
                assert_eq!(v, self.svc.version, "service written from a stale read");
                self.version += 1;
                self.svc = Versioned {
                    obj: s,
                    version: self.version,
                };
            }
            let ids: Vec<String> = self.tasks.keys().cloned().collect();
            for id in ids {
                let t = &self.tasks[&id].0;
                let (state, desired, slot) = (t.state(), t.desired(), t.slot());
                let bad = Self::image(t) == "bad:2";
                match desired {
                    _ if is_terminal(state) => {}
                    // A running container takes a step to stop, as a real one takes time.
                    TaskState::SHUTDOWN
                        if state == TaskState::RUNNING && self.stopping.insert(id.clone()) => {}
                    TaskState::SHUTDOWN => self.set_state(&id, TaskState::SHUTDOWN),
                    TaskState::READY => self.set_state(&id, TaskState::READY),
                    TaskState::RUNNING if state == TaskState::RUNNING && bad => {
                        self.set_state(&id, TaskState::FAILED)
                    }
                    TaskState::RUNNING if state != TaskState::RUNNING => {
                        self.set_state(&id, TaskState::RUNNING);
                        let at = (self.now - id::parse_time("2030-01-01T00:00:00Z").unwrap())
                            .num_seconds();
                        self.started.push((at, slot));
                    }
                    _ => {}
                }
            }
            self.now += chrono::Duration::seconds(1);
        }

        fn run(&mut self, secs: usize) {
            for _ in 0..secs {
                self.step();
            }
        }

        fn state(&self) -> Option<Status> {
            status(&self.svc.obj)
        }

        fn message(&self) -> String {
            let status = self.svc.obj.service.update_status.as_ref();
            status.and_then(|u| u.message.clone()).unwrap_or_default()
        }

        /// Per slot: (running tasks, running tasks of the current spec).
        fn running(&self) -> BTreeMap<u64, (usize, usize)> {
            let mut out = BTreeMap::new();
            for (t, _) in self.tasks.values() {
                let e = out.entry(t.slot()).or_insert((0, 0));
                if t.state() == TaskState::RUNNING {
                    e.0 += 1;
                    if t.spec_version == self.svc.obj.spec_version {
                        e.1 += 1;
                    }
                }
            }
            out
        }

        /// Per slot: running tasks still meant to run (not the old ones on their way out).
        fn serving(&self) -> BTreeMap<u64, usize> {
            let mut out = BTreeMap::new();
            for (t, _) in self.tasks.values() {
                if t.state() == TaskState::RUNNING && t.meant_to_run() {
                    *out.entry(t.slot()).or_insert(0) += 1;
                }
            }
            out
        }
    }

    #[test]
    fn stop_first_never_runs_two_tasks_in_a_slot_and_keeps_parallelism() {
        let mut sim = Sim::new(serde_json::json!({"Parallelism": 2, "Monitor": 3_000_000_000i64}));
        sim.update("good:2");
        for _ in 0..30 {
            sim.step();
            let running = sim.running();
            assert!(
                running.values().all(|(r, _)| *r <= 1),
                "two containers in one slot"
            );
            let down = (1..=4)
                .filter(|s| running.get(s).is_none_or(|(r, _)| *r == 0))
                .count();
            assert!(
                down <= 2,
                "more slots down than the parallelism: {running:?}"
            );
        }
        assert!(sim.running().values().all(|(_, cur)| *cur == 1));
        assert_eq!(sim.state(), Some(Status::COMPLETED));
    }

    #[test]
    fn start_first_keeps_every_slot_serving() {
        let mut sim = Sim::new(serde_json::json!({"Parallelism": 1, "Order": "start-first"}));
        sim.update("good:2");
        for _ in 0..30 {
            sim.step();
            let running = sim.running();
            assert!(
                (1..=4).all(|s| running.get(&s).is_some_and(|(r, _)| *r >= 1)),
                "a slot went dark: {running:?}"
            );
            // An old task told to stop is not counted: like Swarm's, start-first moves on once
            // the replacement runs, without waiting for the old container to exit.
            assert!(
                sim.serving().values().filter(|r| **r == 2).count() <= 1,
                "more than one extra task"
            );
        }
        assert!(sim.running().values().all(|(r, cur)| *r == 1 && *cur == 1));
    }

    #[test]
    fn delay_spaces_the_replacements_and_monitor_holds_completion() {
        let mut sim = Sim::new(
            serde_json::json!({"Parallelism": 1, "Delay": 10_000_000_000i64, "Monitor": 5_000_000_000i64}),
        );
        sim.update("good:2");
        sim.run(29);
        assert_eq!(sim.started.len(), 3, "{:?}", sim.started);
        let gaps: Vec<i64> = sim.started.windows(2).map(|w| w[1].0 - w[0].0).collect();
        assert!(
            gaps.iter().all(|g| *g >= 10),
            "replacements closer than the delay: {gaps:?}"
        );
        sim.run(20);
        let last = sim.started.last().unwrap().0;
        assert_eq!(sim.state(), Some(Status::COMPLETED));
        let done = sim
            .svc
            .obj
            .service
            .update_status
            .as_ref()
            .and_then(|u| u.completed_at.clone());
        let done = (id::parse_time(&done.unwrap()).unwrap()
            - id::parse_time("2030-01-01T00:00:00Z").unwrap())
        .num_seconds();
        assert!(
            done >= last + 5,
            "completed at {done}, before the last task's monitor ({last} + 5)"
        );
    }

    #[test]
    fn a_failing_update_rolls_back_only_what_it_replaced() {
        let mut sim = Sim::new(serde_json::json!({"Parallelism": 1, "FailureAction": "rollback"}));
        sim.update("bad:2");
        let mut steps = 0;
        while sim.state() != Some(Status::ROLLBACK_STARTED) {
            sim.step();
            steps += 1;
            assert!(steps < 20, "no rollback");
        }
        // The tasks the update had not reached yet.
        let untouched: Vec<String> = sim
            .tasks
            .iter()
            .filter(|(_, (t, _))| t.spec_version == 1 && t.state() == TaskState::RUNNING)
            .map(|(id, _)| id.clone())
            .collect();
        assert!(
            !untouched.is_empty(),
            "the update replaced every slot before it noticed"
        );
        let msg = sim.message();
        assert!(
            msg.starts_with("update rolled back due to failure or early termination of task "),
            "{msg}"
        );
        sim.run(20);
        assert_eq!(sim.state(), Some(Status::ROLLBACK_COMPLETED));
        let spec_image = sim
            .svc
            .obj
            .spec()
            .task_template
            .as_ref()
            .and_then(|t| t.container_spec.as_ref())
            .and_then(|c| c.image.clone());
        assert_eq!(spec_image.as_deref(), Some("good:1"));
        assert!(
            untouched
                .iter()
                .all(|id| sim.tasks[id].0.state() == TaskState::RUNNING),
            "the rollback replaced tasks the update never touched"
        );
        assert!(sim.running().values().all(|(r, cur)| *r == 1 && *cur == 1));
    }

    #[test]
    fn a_failing_update_pauses_by_default_and_an_update_call_resumes_it() {
        let mut sim = Sim::new(serde_json::json!({"Parallelism": 1}));
        sim.update("bad:2");
        sim.run(15);
        assert_eq!(sim.state(), Some(Status::PAUSED));
        let msg = sim.message();
        assert!(
            msg.starts_with("update paused due to failure or early termination of task "),
            "{msg}"
        );
        let old = |sim: &Sim| {
            sim.tasks
                .values()
                .filter(|(t, _)| t.spec_version == 1 && t.state() == TaskState::RUNNING)
                .count()
        };
        let at_pause = old(&sim);
        assert!(at_pause >= 1);
        sim.run(10);
        assert_eq!(
            old(&sim),
            at_pause,
            "a paused update went on replacing slots"
        );
        // A fixed image: the update goes on from where it stopped.
        sim.update("good:3");
        sim.run(20);
        assert_eq!(sim.state(), Some(Status::COMPLETED));
        assert!(sim.running().values().all(|(r, cur)| *r == 1 && *cur == 1));
    }

    #[test]
    fn failures_within_the_ratio_are_tolerated() {
        // Every replacement fails (image "bad"), one at a time with parallelism 1 (a failed slot
        // is retried, failing again). One failed task of four slots is 25%, two are 50%: a 0.3
        // ratio lets the first failure pass and pauses at the second; 0.2 pauses at the first.
        let failed = |sim: &Sim| {
            sim.tasks
                .values()
                .filter(|(t, _)| {
                    t.state() == TaskState::FAILED && t.spec_version == sim.svc.obj.spec_version
                })
                .count()
        };
        for (ratio, tolerated) in [(0.3, 1), (0.2, 0)] {
            let mut sim = Sim::new(serde_json::json!({"Parallelism": 1, "MaxFailureRatio": ratio}));
            sim.update("bad:2");
            let mut seen = Vec::new();
            for _ in 0..30 {
                sim.step();
                seen.push((failed(&sim), sim.state()));
                if sim.state() == Some(Status::PAUSED) {
                    break;
                }
            }
            // A step's agents fail the task after its pass: the next pass sees the failures go
            // past the ratio and pauses, never an earlier one.
            let paused_at = seen.iter().position(|(_, s)| *s == Some(Status::PAUSED));
            let past_ratio = seen.iter().position(|(f, _)| *f > tolerated);
            assert!(paused_at.is_some(), "ratio {ratio}: never paused: {seen:?}");
            assert_eq!(
                paused_at,
                past_ratio.map(|p| p + 1),
                "ratio {ratio}: {seen:?}"
            );
            if tolerated > 0 {
                assert!(
                    seen.iter()
                        .any(|(f, s)| *f == tolerated && *s == Some(Status::UPDATING)),
                    "ratio {ratio}: a tolerated failure must leave the update going: {seen:?}"
                );
            }
        }
    }
}
