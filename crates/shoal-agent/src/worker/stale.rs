//! Containers no runner owns, and what becomes of them: a pure function of the containers the
//! engine lists and the node's assignments, so every case is table-tested.
//!
//! A runner owns the container of each assigned task that has not ended. What is left after a
//! downtime (the daemon killed, a node cut off) is stale: the container of a task that left the
//! node is removed, and a running container of a task that has already ended (reported failed
//! while it was being stopped, then the daemon died; or started again by hand while the daemon
//! was down) is stopped, so no task ever has a second live container. A stopped one stays as
//! the task's history until the task leaves the node, as in Swarm.

use crate::executor::Found;
use shoal_api::objects::{is_terminal, StoredTask};
use std::collections::{HashMap, HashSet};

/// What to do with a container no runner owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// Stop it (the task's stop signal and grace period); it stays as history.
    Stop,
    /// Remove it (stopping it first if it runs): its task is no longer this node's.
    Remove,
}

/// The containers to stop or remove, in the engine's listing order. `owned` holds the tasks
/// whose runner is still at work: their containers are theirs to handle.
pub fn stale(
    found: &[Found],
    assigned: &[StoredTask],
    owned: &HashSet<String>,
) -> Vec<(String, Cleanup)> {
    let tasks: HashMap<&str, &StoredTask> = assigned.iter().map(|t| (t.id(), t)).collect();
    found
        .iter()
        .filter(|f| !owned.contains(&f.task_id))
        .filter_map(|f| {
            let cleanup = match tasks.get(f.task_id.as_str()) {
                None => Cleanup::Remove,
                Some(t) if f.running && is_terminal(t.state()) => Cleanup::Stop,
                Some(_) => return None,
            };
            Some((f.id.clone(), cleanup))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::tests::task;
    use shoal_api::models::TaskState;
    use Cleanup::*;

    fn found(task: &str, running: bool, started: bool) -> Found {
        Found {
            id: format!("c-{task}"),
            task_id: task.into(),
            running,
            started,
            pid: None,
        }
    }

    /// (case, container, its task if assigned, whether a runner is at work, the verdict).
    type Case = (
        &'static str,
        Found,
        Option<StoredTask>,
        bool,
        Option<Cleanup>,
    );

    #[test]
    fn which_containers_are_stale() {
        use TaskState as S;
        let run = |task: &str| found(task, true, true);
        let exited = |task: &str| found(task, false, true);
        let created = |task: &str| found(task, false, false);
        #[rustfmt::skip]
        let table: Vec<Case> = vec![
            // The task left the node (service removed and the task deleted meanwhile).
            ("running, task gone", run("t"), None, false, Some(Remove)),
            ("exited, task gone", exited("t"), None, false, Some(Remove)),
            ("created, task gone", created("t"), None, false, Some(Remove)),
            // The task ended while its container still runs: reported failed (unhealthy) and
            // the daemon died during the stop, or someone started the container again.
            ("running, task failed", run("t"), Some(task("t", S::SHUTDOWN, S::FAILED)), false, Some(Stop)),
            ("running, task shut down", run("t"), Some(task("t", S::SHUTDOWN, S::SHUTDOWN)), false, Some(Stop)),
            ("running, task complete", run("t"), Some(task("t", S::COMPLETE, S::COMPLETE)), false, Some(Stop)),
            ("running, task rejected", run("t"), Some(task("t", S::RUNNING, S::REJECTED)), false, Some(Stop)),
            ("running, task ended, desired still running", run("t"), Some(task("t", S::RUNNING, S::FAILED)), false, Some(Stop)),
            // History: a stopped container of an ended task stays until the task leaves.
            ("exited, task shut down", exited("t"), Some(task("t", S::SHUTDOWN, S::SHUTDOWN)), false, None),
            ("created, task rejected", created("t"), Some(task("t", S::RUNNING, S::REJECTED)), false, None),
            // A task that has not ended belongs to its runner, whatever it wants.
            ("running, task running", run("t"), Some(task("t", S::RUNNING, S::RUNNING)), false, None),
            ("running, task to shut down", run("t"), Some(task("t", S::SHUTDOWN, S::RUNNING)), false, None),
            ("running, task to remove", run("t"), Some(task("t", S::REMOVE, S::RUNNING)), false, None),
            // A runner at work (reported failed, stopping now) is not raced.
            ("running, task failed, runner at work", run("t"), Some(task("t", S::SHUTDOWN, S::FAILED)), true, None),
            ("running, task gone, runner at work", run("t"), None, true, None),
        ];
        for (name, f, t, runner, want) in table {
            let assigned: Vec<StoredTask> = t.into_iter().collect();
            let owned: HashSet<String> = if runner {
                HashSet::from(["t".to_string()])
            } else {
                HashSet::new()
            };
            let got = stale(std::slice::from_ref(&f), &assigned, &owned);
            let want: Vec<(String, Cleanup)> =
                want.into_iter().map(|c| ("c-t".to_string(), c)).collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn several_containers_keep_the_listing_order() {
        use TaskState as S;
        let found = vec![
            found("a", true, true),
            found("b", true, true),
            found("c", true, true),
            found("d", false, true),
        ];
        let assigned = vec![
            task("b", S::SHUTDOWN, S::FAILED),
            task("c", S::RUNNING, S::RUNNING),
            task("d", S::SHUTDOWN, S::SHUTDOWN),
        ];
        assert_eq!(
            stale(&found, &assigned, &HashSet::new()),
            vec![("c-a".to_string(), Remove), ("c-b".to_string(), Stop)]
        );
    }
}
