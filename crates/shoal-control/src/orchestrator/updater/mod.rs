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
        // The two configs have the same knobs and defaults; only their failure actions differ.
        let ((parallelism, delay, monitor, ratio), action, start_first) = if rolling_back(svc) {
            let c = spec.rollback_config.clone().unwrap_or_default();
            // A rollback is never rolled back.
            let action = match c.failure_action {
                Some(RollbackAction::CONTINUE) => FailureAction::Continue,
                _ => FailureAction::Pause,
            };
            let start_first = c.order == Some(RollbackOrder::START_FIRST);
            let knobs = (c.parallelism, c.delay, c.monitor, c.max_failure_ratio);
            (knobs, action, start_first)
        } else {
            let c = spec.update_config.clone().unwrap_or_default();
            let action = match c.failure_action {
                Some(UpdateAction::CONTINUE) => FailureAction::Continue,
                Some(UpdateAction::ROLLBACK) => FailureAction::Rollback,
                _ => FailureAction::Pause,
            };
            let start_first = c.order == Some(UpdateOrder::START_FIRST);
            let knobs = (c.parallelism, c.delay, c.monitor, c.max_failure_ratio);
            (knobs, action, start_first)
        };
        Settings {
            parallelism: parallelism.unwrap_or(1).max(0) as u64,
            delay: ns(delay, 0),
            monitor: ns(monitor.filter(|m| *m > 0), DEFAULT_MONITOR_NS),
            max_failure_ratio: ratio.unwrap_or(0.0),
            action,
            start_first,
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
            let free = shoal_api::id::later(since, settings.delay);
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
        let monitored = time(t.running_at.as_deref())
            .is_none_or(|ran| at <= shoal_api::id::later(ran, settings.monitor));
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
            let done = shoal_api::id::later(last, settings.monitor);
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
mod tests;
