//! The task step: what to do next with one task's container, decided from what was observed.
//! A pure function (no I/O, no clock, no randomness), so every transition is table-tested; the
//! runner (`runner.rs`) gathers the observation, calls [`step`], and performs the action through
//! the executor. Anchor: swarmkit's `exec.Do`, which moves a task one state per call.

use crate::executor::Health;
use shoal_api::models::TaskState;
use shoal_api::objects::{is_terminal, runs, state_rank};
use std::time::Duration;

/// How often a container's health is asked while the task waits for its first healthy verdict
/// (it is `starting` until then, so a quick answer shortens the wait).
pub const HEALTH_POLL_STARTING: Duration = Duration::from_millis(250);
/// How often a running task's health is asked (an unhealthy verdict fails it).
pub const HEALTH_POLL_RUNNING: Duration = Duration::from_secs(1);

/// The task's container as the runner last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// There is none.
    Absent,
    /// Created (prepared) and never started.
    Created,
    /// Running; `health` is the last verdict of its check (`None`: it has no check).
    Running {
        /// The health check's verdict.
        health: Option<Health>,
    },
    /// Stopped, with its exit code (`None` when the engine could not tell it).
    Exited {
        /// The container's exit code.
        code: Option<i64>,
    },
}

/// The executor step that failed, since what is reported depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Image, container, networks or files could not be made ready.
    Prepare,
    /// The engine would not start the container.
    Start,
    /// Waiting for the container to exit failed.
    Wait,
}

/// The last executor step failed: the error text is what `docker service ps` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The step.
    pub during: Phase,
    /// Why, as the executor said it.
    pub error: String,
}

/// Everything the decision depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The manager's desired state; `None` once the task left this node's assignments.
    pub desired: Option<TaskState>,
    /// The task's state as last reported by this node (at first, as the manager stored it).
    pub reported: TaskState,
    /// The container.
    pub container: Observed,
    /// The previous action's failure, if it failed.
    pub failure: Option<Failure>,
}

/// A task status for the runner to report; it adds the container's ID, PID and exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    /// The new state.
    pub state: TaskState,
    /// Swarm's message for it.
    pub message: &'static str,
    /// The error, for a task that failed or was rejected.
    pub err: Option<String>,
}

/// What the runner does with the container after reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAction {
    /// `Executor::prepare`: image, container, networks, files.
    Prepare,
    /// `Executor::start`.
    Start,
    /// Wait for the container to exit or the desired state to change, asking its health this
    /// often (`None`: it has no check).
    Wait {
        /// Health poll interval.
        health_every: Option<Duration>,
    },
    /// Nothing to do until the desired state changes (prepared, not to be started yet).
    Hold,
    /// `Executor::shutdown`, then wait for its exit code.
    Shutdown,
    /// `Executor::remove`: the task is no longer this node's.
    Remove,
    /// Nothing more to do for this task: the runner ends.
    Done,
}

/// A decision: report this (if anything), then do that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Next {
    /// Status to report first.
    pub report: Option<StatusUpdate>,
    /// Action to take after.
    pub action: TaskAction,
}

fn next(report: Option<StatusUpdate>, action: TaskAction) -> Next {
    Next { report, action }
}

fn update(state: TaskState, message: &'static str, err: Option<String>) -> Option<StatusUpdate> {
    Some(StatusUpdate {
        state,
        message,
        err,
    })
}

fn before(a: TaskState, b: TaskState) -> bool {
    state_rank(a) < state_rank(b)
}

/// The next step for one task. Desired `running` and `complete` (a job's task: run to exit)
/// both run the container; `ready` prepares it and holds (a stop-first update starts it once
/// the old task stopped); `shutdown`, `remove` and anything else stop it. The container itself
/// is removed only once the task left the node's assignments, as in swarmkit.
pub fn step(o: &Observation) -> Next {
    use Observed::*;
    use TaskAction::*;
    if let Some(f) = &o.failure {
        return match f.during {
            Phase::Prepare => next(
                update(TaskState::REJECTED, "preparing", Some(f.error.clone())),
                Done,
            ),
            Phase::Start => next(
                update(
                    TaskState::FAILED,
                    "starting",
                    Some(format!("starting container failed: {}", f.error)),
                ),
                Done,
            ),
            Phase::Wait => next(
                update(TaskState::FAILED, "failed", Some(f.error.clone())),
                Done,
            ),
        };
    }
    let Some(desired) = o.desired else {
        return next(None, if o.container == Absent { Done } else { Remove });
    };
    if is_terminal(o.reported) {
        return next(None, Done);
    }
    let run = runs(desired);
    let hold = desired == TaskState::READY;
    match &o.container {
        // Started before (the state says so) and gone while the agent was away.
        Absent if !before(o.reported, TaskState::STARTING) => next(
            update(
                TaskState::FAILED,
                "container lost",
                Some("task container was removed while the agent was not running".into()),
            ),
            Done,
        ),
        Absent | Created if !run && !hold => {
            next(update(TaskState::SHUTDOWN, "shutdown", None), Done)
        }
        Absent => {
            let report = before(o.reported, TaskState::PREPARING)
                .then(|| update(TaskState::PREPARING, "preparing", None))
                .flatten();
            next(report, Prepare)
        }
        Created if hold => {
            let report = before(o.reported, TaskState::READY)
                .then(|| update(TaskState::READY, "ready", None))
                .flatten();
            next(report, Hold)
        }
        Created => {
            let report = before(o.reported, TaskState::STARTING)
                .then(|| update(TaskState::STARTING, "starting", None))
                .flatten();
            next(report, Start)
        }
        // Beyond `ready` already: watched like a running task (swarmkit pauses there too).
        Running { .. } if !run && !hold => next(None, Shutdown),
        // Reported before the stop, so routing drops the task at the verdict, not after the
        // stop grace period.
        Running {
            health: Some(Health::Unhealthy),
        } => next(
            update(
                TaskState::FAILED,
                "unhealthy",
                Some("task: unhealthy container".into()),
            ),
            Shutdown,
        ),
        // A container with a check stays `starting` until healthy, as in Swarm: it is neither
        // counted as up nor load-balanced before.
        Running {
            health: Some(Health::Starting),
        } if before(o.reported, TaskState::RUNNING) => next(
            None,
            Wait {
                health_every: Some(HEALTH_POLL_STARTING),
            },
        ),
        Running { health } => {
            let report = before(o.reported, TaskState::RUNNING)
                .then(|| update(TaskState::RUNNING, "started", None))
                .flatten();
            let health_every = health.map(|_| HEALTH_POLL_RUNNING);
            next(report, Wait { health_every })
        }
        Exited { .. } if !run && !hold => next(update(TaskState::SHUTDOWN, "shutdown", None), Done),
        Exited { code: Some(0) } => next(update(TaskState::COMPLETE, "finished", None), Done),
        Exited { code } => {
            let why = match code {
                Some(c) => format!("task: non-zero exit ({c})"),
                None => "task: exit code unknown".to_string(),
            };
            next(update(TaskState::FAILED, "failed", Some(why)), Done)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskAction::*;
    use TaskState as S;

    const UNHEALTHY: Option<Health> = Some(Health::Unhealthy);
    const STARTING_HEALTH: Option<Health> = Some(Health::Starting);
    const HEALTHY: Option<Health> = Some(Health::Healthy);

    fn running(health: Option<Health>) -> Observed {
        Observed::Running { health }
    }

    fn exited(code: i64) -> Observed {
        Observed::Exited { code: Some(code) }
    }

    fn at(desired: S, reported: S, container: Observed) -> Observation {
        Observation {
            desired: Some(desired),
            reported,
            container,
            failure: None,
        }
    }

    fn failed(during: Phase, reported: S, container: Observed) -> Observation {
        Observation {
            failure: Some(Failure {
                during,
                error: "boom".into(),
            }),
            ..at(S::RUNNING, reported, container)
        }
    }

    fn gone(container: Observed) -> Observation {
        Observation {
            desired: None,
            ..at(S::RUNNING, S::RUNNING, container)
        }
    }

    /// (state, message, err) reported, or None.
    type Said = Option<(S, &'static str, Option<&'static str>)>;

    fn wait(every: Option<Duration>) -> TaskAction {
        Wait {
            health_every: every,
        }
    }

    #[test]
    fn every_desired_and_observed_state_has_its_step() {
        let poll_start = Some(HEALTH_POLL_STARTING);
        let poll_run = Some(HEALTH_POLL_RUNNING);
        let lost = Some("task container was removed while the agent was not running");
        #[rustfmt::skip]
        let table: Vec<(&str, Observation, Said, TaskAction)> = vec![
            // A new task: prepare, then start (running, or complete for a job).
            ("new task is prepared", at(S::RUNNING, S::ASSIGNED, Observed::Absent),
                Some((S::PREPARING, "preparing", None)), Prepare),
            ("job task is prepared", at(S::COMPLETE, S::ASSIGNED, Observed::Absent),
                Some((S::PREPARING, "preparing", None)), Prepare),
            ("preparing again is not reported again", at(S::RUNNING, S::PREPARING, Observed::Absent),
                None, Prepare),
            ("prepared container starts", at(S::RUNNING, S::PREPARING, Observed::Created),
                Some((S::STARTING, "starting", None)), Start),
            ("prepared job container starts", at(S::COMPLETE, S::PREPARING, Observed::Created),
                Some((S::STARTING, "starting", None)), Start),
            // `ready`: prepare, report ready, hold; start once desired says running.
            ("ready task is prepared", at(S::READY, S::ASSIGNED, Observed::Absent),
                Some((S::PREPARING, "preparing", None)), Prepare),
            ("ready task is held, not started", at(S::READY, S::PREPARING, Observed::Created),
                Some((S::READY, "ready", None)), Hold),
            ("held task stays held", at(S::READY, S::READY, Observed::Created), None, Hold),
            ("held task starts when desired running", at(S::RUNNING, S::READY, Observed::Created),
                Some((S::STARTING, "starting", None)), Start),
            ("held task shut down without starting", at(S::SHUTDOWN, S::READY, Observed::Created),
                Some((S::SHUTDOWN, "shutdown", None)), Done),
            // Started: running once up; a check holds it in `starting` until healthy.
            ("started without check is running", at(S::RUNNING, S::STARTING, running(None)),
                Some((S::RUNNING, "started", None)), wait(None)),
            ("started healthy is running", at(S::RUNNING, S::STARTING, running(HEALTHY)),
                Some((S::RUNNING, "started", None)), wait(poll_run)),
            ("health starting stays starting", at(S::RUNNING, S::STARTING, running(STARTING_HEALTH)),
                None, wait(poll_start)),
            ("running task is watched", at(S::RUNNING, S::RUNNING, running(None)), None, wait(None)),
            ("running job task is watched", at(S::COMPLETE, S::RUNNING, running(None)), None, wait(None)),
            ("running healthy task is polled", at(S::RUNNING, S::RUNNING, running(HEALTHY)),
                None, wait(poll_run)),
            ("running task whose check restarts keeps running", at(S::RUNNING, S::RUNNING, running(STARTING_HEALTH)),
                None, wait(poll_run)),
            ("unhealthy fails before the stop", at(S::RUNNING, S::RUNNING, running(UNHEALTHY)),
                Some((S::FAILED, "unhealthy", Some("task: unhealthy container"))), Shutdown),
            ("unhealthy while starting fails", at(S::RUNNING, S::STARTING, running(UNHEALTHY)),
                Some((S::FAILED, "unhealthy", Some("task: unhealthy container"))), Shutdown),
            // Exits: 0 completes, anything else fails.
            ("exit 0 completes", at(S::RUNNING, S::RUNNING, exited(0)),
                Some((S::COMPLETE, "finished", None)), Done),
            ("job exit 0 completes", at(S::COMPLETE, S::RUNNING, exited(0)),
                Some((S::COMPLETE, "finished", None)), Done),
            ("exit non-zero fails", at(S::RUNNING, S::RUNNING, exited(3)),
                Some((S::FAILED, "failed", Some("task: non-zero exit (3)"))), Done),
            ("job exit non-zero fails", at(S::COMPLETE, S::RUNNING, exited(137)),
                Some((S::FAILED, "failed", Some("task: non-zero exit (137)"))), Done),
            ("unknown exit code fails", at(S::RUNNING, S::RUNNING, Observed::Exited { code: None }),
                Some((S::FAILED, "failed", Some("task: exit code unknown"))), Done),
            // Shutdown and remove: stop a running container, report once it stopped.
            ("shutdown stops a running container", at(S::SHUTDOWN, S::RUNNING, running(None)), None, Shutdown),
            ("remove stops a running container", at(S::REMOVE, S::RUNNING, running(HEALTHY)), None, Shutdown),
            ("stopped by shutdown is reported", at(S::SHUTDOWN, S::RUNNING, exited(143)),
                Some((S::SHUTDOWN, "shutdown", None)), Done),
            ("stopped by remove is reported", at(S::REMOVE, S::RUNNING, Observed::Exited { code: None }),
                Some((S::SHUTDOWN, "shutdown", None)), Done),
            ("shutdown before any container", at(S::SHUTDOWN, S::ASSIGNED, Observed::Absent),
                Some((S::SHUTDOWN, "shutdown", None)), Done),
            ("remove before any container", at(S::REMOVE, S::ASSIGNED, Observed::Absent),
                Some((S::SHUTDOWN, "shutdown", None)), Done),
            ("shutdown of a prepared container", at(S::SHUTDOWN, S::PREPARING, Observed::Created),
                Some((S::SHUTDOWN, "shutdown", None)), Done),
            ("terminal task needs nothing", at(S::SHUTDOWN, S::SHUTDOWN, exited(0)), None, Done),
            ("failed task needs nothing more", at(S::RUNNING, S::FAILED, running(UNHEALTHY)), None, Done),
            // Ready is below running: a running container is not stopped for it.
            ("running container under ready is watched", at(S::READY, S::RUNNING, running(None)),
                None, wait(None)),
            // Adoption after an agent restart: the observed container meets the stored state.
            ("adopted running container is not re-reported", at(S::RUNNING, S::RUNNING, running(None)),
                None, wait(None)),
            ("adopted container started while away is running", at(S::RUNNING, S::STARTING, running(None)),
                Some((S::RUNNING, "started", None)), wait(None)),
            ("adopted container exited while away completes", at(S::RUNNING, S::RUNNING, exited(0)),
                Some((S::COMPLETE, "finished", None)), Done),
            ("adopted container exited non-zero fails", at(S::RUNNING, S::STARTING, exited(1)),
                Some((S::FAILED, "failed", Some("task: non-zero exit (1)"))), Done),
            ("adopted created container starts", at(S::RUNNING, S::STARTING, Observed::Created),
                None, Start),
            ("adopted created ready container holds", at(S::READY, S::READY, Observed::Created), None, Hold),
            ("adopted running container to shut down stops", at(S::SHUTDOWN, S::RUNNING, running(None)),
                None, Shutdown),
            ("container lost while away fails", at(S::RUNNING, S::RUNNING, Observed::Absent),
                Some((S::FAILED, "container lost", lost)), Done),
            ("container lost while starting fails", at(S::RUNNING, S::STARTING, Observed::Absent),
                Some((S::FAILED, "container lost", lost)), Done),
            ("prepared task without container prepares again", at(S::RUNNING, S::READY, Observed::Absent),
                None, Prepare),
            // The executor failed: rejected before the start, failed after.
            ("prepare failure rejects", failed(Phase::Prepare, S::PREPARING, Observed::Absent),
                Some((S::REJECTED, "preparing", Some("boom"))), Done),
            ("start failure fails", failed(Phase::Start, S::STARTING, Observed::Created),
                Some((S::FAILED, "starting", Some("starting container failed: boom"))), Done),
            ("wait failure fails", failed(Phase::Wait, S::RUNNING, running(None)),
                Some((S::FAILED, "failed", Some("boom"))), Done),
            // The task left the node's assignments: its container goes.
            ("unassigned running container is removed", gone(running(None)), None, Remove),
            ("unassigned exited container is removed", gone(exited(0)), None, Remove),
            ("unassigned created container is removed", gone(Observed::Created), None, Remove),
            ("unassigned without container is done", gone(Observed::Absent), None, Done),
        ];
        for (name, obs, said, action) in table {
            let got = step(&obs);
            let got_said = got
                .report
                .as_ref()
                .map(|r| (r.state, r.message, r.err.as_deref()));
            assert_eq!(got_said, said, "{name}: report");
            assert_eq!(got.action, action, "{name}: action");
        }
    }

    #[test]
    fn a_task_is_never_reported_backwards() {
        let desired = [S::RUNNING, S::COMPLETE, S::READY, S::SHUTDOWN, S::REMOVE];
        let reported = [
            S::ASSIGNED,
            S::ACCEPTED,
            S::PREPARING,
            S::READY,
            S::STARTING,
            S::RUNNING,
        ];
        let containers = [
            Observed::Absent,
            Observed::Created,
            running(None),
            running(STARTING_HEALTH),
            running(HEALTHY),
            running(UNHEALTHY),
            exited(0),
            exited(2),
        ];
        for d in desired {
            for r in reported {
                for c in &containers {
                    let o = at(d, r, c.clone());
                    if let Some(u) = step(&o).report {
                        assert!(
                            state_rank(u.state) > state_rank(r),
                            "{o:?} reports {:?}",
                            u.state
                        );
                    }
                }
            }
        }
    }
}
