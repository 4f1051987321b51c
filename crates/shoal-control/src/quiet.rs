//! When a pass can be skipped: after a pass that wrote nothing, most changes (tasks moving
//! through their start-up states) cannot make the next pass decide anything.

use crate::changes::Delta;
use crate::orchestrator::updater;
use crate::state::ClusterState;
use shoal_api::models::TaskState;
use shoal_api::objects::{is_terminal, state_rank, StoredTask};
use std::collections::HashSet;

/// What is known after a pass that had nothing to write: which changes could make the next
/// pass decide something. A change can only matter through what the decisions read. Status
/// progress of a placed task (assigned, preparing, starting: same task otherwise, neither end
/// waiting nor stopped) changes none of it: not slots, nodes, desired states, spec versions,
/// addresses, node loads nor the restart policy, which looks only at stopped tasks. A slot has
/// at most one runnable task here (else the pass would have stopped the others), so a task's
/// rank decides nothing either. Reaching `running` matters only to a service being updated (the
/// update's parallelism and its completion), so it counts as progress only elsewhere.
/// Timer-driven passes (restart delays) always run.
pub struct Quiet {
    /// Services with an update or rollback in progress, or with a runnable task of an older spec.
    updating: HashSet<String>,
}

impl Quiet {
    /// What a pass over `state` that wrote nothing leaves known.
    pub fn new(state: &ClusterState) -> Self {
        let mut updating: HashSet<String> = state
            .services
            .values()
            .filter(|s| updater::in_progress(&s.obj))
            .map(|s| s.obj.id().to_string())
            .collect();
        for t in &state.tasks {
            let t = &t.obj;
            if t.meant_to_run()
                && state
                    .services
                    .get(t.service_id())
                    .is_some_and(|s| t.spec_version != s.obj.spec_version)
            {
                updating.insert(t.service_id().to_string());
            }
        }
        Quiet { updating }
    }

    /// True if a pass over the view after `delta` would still have nothing to write; `task`
    /// finds a task in that view.
    pub fn unaffected<'a>(
        &self,
        delta: &Delta,
        task: impl Fn(&str) -> Option<&'a StoredTask>,
    ) -> bool {
        if delta.reloaded
            || delta.services
            || delta.nodes
            || delta.networks
            || delta.cluster
            || delta.other
        {
            return false;
        }
        delta.tasks.iter().all(|c| {
            let (Some(before), true) = (c.before.as_ref(), c.exists) else {
                return false;
            };
            let Some(now) = task(&c.id) else {
                return false;
            };
            let placed = |t: &StoredTask| {
                !is_terminal(t.state()) && state_rank(t.state()) >= state_rank(TaskState::ASSIGNED)
            };
            let same_task = before.service_id() == now.service_id()
                && before.slot() == now.slot()
                && before.node_id() == now.node_id()
                && before.desired() == now.desired()
                && before.spec_version == now.spec_version
                && before.networks_attachments == now.networks_attachments
                && before.task.created_at == now.task.created_at;
            let started_running =
                now.state() == TaskState::RUNNING && before.state() != TaskState::RUNNING;
            same_task
                && placed(before)
                && placed(now)
                && (!started_running || !self.updating.contains(now.service_id()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::decide;
    use crate::testkit::{self, versioned};
    use crate::Versioned;
    use shoal_api::models::{Node, ServiceUpdateStatus, ServiceUpdateStatusStateEnum};
    use shoal_api::objects::StoredService;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn settle(state: &mut ClusterState, inputs: &crate::Inputs, version: &mut u64) {
        assert!(
            testkit::settle(state, inputs, version, 20).is_some(),
            "the passes never settle"
        );
    }

    #[test]
    fn a_skipped_pass_would_have_had_nothing_to_write() {
        use rand::Rng;
        let (mut rng, seed) = testkit::rng(0x5eed, 0);
        let inputs = testkit::inputs();
        let mut version = 1;
        let mut state = ClusterState::default();
        for i in 0..3 {
            let node: Node = serde_json::from_str(&format!(
                r#"{{"ID":"n{i}","Spec":{{"Role":"worker","Availability":"active"}},"Status":{{"State":"ready"}}}}"#
            ))
            .unwrap();
            state.nodes.push(versioned(node));
        }
        for (id, json, spec_version, updating) in [
            (
                "plain",
                r#"{"Name":"plain","Mode":{"Replicated":{"Replicas":4}},"TaskTemplate":{"RestartPolicy":{"Delay":0}}}"#,
                1,
                false,
            ),
            (
                "rolling",
                r#"{"Name":"rolling","Mode":{"Replicated":{"Replicas":6}},"UpdateConfig":{"Parallelism":1},"TaskTemplate":{"RestartPolicy":{"Delay":0}}}"#,
                2,
                true,
            ),
            (
                "delayed",
                r#"{"Name":"delayed","Mode":{"Replicated":{"Replicas":2}}}"#,
                1,
                false,
            ),
            (
                "everywhere",
                r#"{"Name":"everywhere","Mode":{"Global":{}}}"#,
                1,
                false,
            ),
        ] {
            let mut svc = StoredService::default();
            svc.service.id = Some(id.into());
            svc.service.spec = Some(serde_json::from_str(json).unwrap());
            svc.spec_version = spec_version;
            if updating {
                svc.service.update_status = Some(ServiceUpdateStatus {
                    state: Some(ServiceUpdateStatusStateEnum::UPDATING),
                    ..Default::default()
                });
            }
            state.services.insert(id.into(), versioned(svc));
        }
        // Tasks of the rolling service from its older spec, running.
        for slot in 1..=3 {
            let svc = &state.services["rolling"].obj;
            let mut t = crate::orchestrator::new_task(svc, slot, Some("n0"), vec![]);
            crate::orchestrator::stamp_new(&mut t, format!("old{slot}"), testkit::T0);
            t.spec_version = 1;
            t.task.status.get_or_insert_with(Default::default).state = Some(TaskState::RUNNING);
            state.tasks.push(versioned(t));
        }
        settle(&mut state, &inputs, &mut version);

        let progress = [
            TaskState::ACCEPTED,
            TaskState::PREPARING,
            TaskState::STARTING,
            TaskState::RUNNING,
            TaskState::RUNNING,
            TaskState::FAILED,
            TaskState::COMPLETE,
        ];
        let (mut skipped, mut ran) = (0, 0);
        for step in 0..600 {
            if step % 20 == 0 {
                // Start another rolling update, so that updates are often in progress.
                let svc = &mut state.services.get_mut("rolling").unwrap().obj;
                svc.spec_version += 1;
                svc.service.update_status = Some(ServiceUpdateStatus {
                    state: Some(ServiceUpdateStatusStateEnum::UPDATING),
                    ..Default::default()
                });
                settle(&mut state, &inputs, &mut version);
            }
            let quiet = Quiet::new(&state);
            let mut delta = Delta::default();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..state.tasks.len());
                let before = state.tasks[i].obj.clone();
                let mut after = before.clone();
                let s = after.task.status.get_or_insert_with(Default::default);
                s.state = Some(progress[rng.random_range(0..progress.len())]);
                s.timestamp = Some(testkit::T0.to_string());
                version += 1;
                state.tasks[i] = Versioned {
                    obj: after,
                    version,
                };
                delta.tasks.push(crate::changes::TaskChange {
                    id: before.id().to_string(),
                    before: Some(Arc::new(before)),
                    exists: true,
                });
            }
            let tasks: HashMap<&str, &StoredTask> =
                state.tasks.iter().map(|t| (t.obj.id(), &t.obj)).collect();
            let skip = quiet.unaffected(&delta, |id| tasks.get(id).copied());
            let d = decide(&state, &inputs);
            if skip {
                skipped += 1;
                assert!(
                    d.is_empty(),
                    "seed {seed}, step {step}: skipped a pass that writes {d:?}"
                );
            } else {
                ran += 1;
            }
            testkit::apply(&mut state, d, &mut version);
            settle(&mut state, &inputs, &mut version);
        }
        assert!(
            skipped > 20 && ran > 20,
            "seed {seed}: skipped {skipped}, ran {ran}"
        );
    }
}
