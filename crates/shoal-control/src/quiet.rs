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
/// A node's image list is read only when a task is placed (a tie-break between nodes that fit
/// equally well), so a change of it matters only while some task waits for a node.
/// Timer-driven passes (restart delays) always run.
pub struct Quiet {
    /// Services with an update or rollback in progress, or with a runnable task of an older spec.
    updating: HashSet<String>,
    /// Some task is waiting for a node (what `decide` hands the scheduler).
    waiting: bool,
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
        let waiting = state.tasks.iter().any(|t| {
            t.obj.meant_to_run()
                && matches!(
                    t.obj.state(),
                    TaskState::NEW | TaskState::ALLOCATED | TaskState::PENDING
                )
        });
        Quiet { updating, waiting }
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
            || (delta.node_images && self.waiting)
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

    /// A node's image list: the image every test service runs (`busybox`), or another.
    fn images(
        node: &str,
        busybox: bool,
        version: u64,
    ) -> Versioned<shoal_api::images::StoredNodeImages> {
        let tag = if busybox { "busybox:latest" } else { "other:1" };
        Versioned {
            obj: shoal_api::images::StoredNodeImages {
                node: node.into(),
                images: vec![shoal_api::images::NodeImage {
                    id: format!("sha256:{}", "a".repeat(64)),
                    repo_tags: vec![tag.into()],
                    ..Default::default()
                }],
            },
            version,
        }
    }

    #[test]
    fn an_image_report_runs_a_pass_only_while_a_task_waits_for_a_node() {
        let inputs = testkit::inputs();
        let mut version = 1;
        let mut state = ClusterState::default();
        for i in 0..2 {
            state.nodes.push(versioned(testkit::node(&format!(
                r#"{{"ID":"n{i}","Spec":{{"Role":"worker","Availability":"active"}},"Status":{{"State":"ready"}}}}"#
            ))));
        }
        let svc = testkit::service(
            "web",
            r#"{"Name":"web","Mode":{"Replicated":{"Replicas":2}},"TaskTemplate":{"ContainerSpec":{"Image":"busybox"}}}"#,
        );
        state.services.insert("web".into(), versioned(svc));
        settle(&mut state, &inputs, &mut version);
        let image_report = Delta {
            node_images: true,
            change_sets: 1,
            ..Default::default()
        };
        let no_task = |_: &str| -> Option<&StoredTask> { None };
        // Every task placed: a node's new images cannot move anything.
        let quiet = Quiet::new(&state);
        version += 1;
        state
            .node_images
            .insert("n1".into(), images("n1", true, version));
        assert!(quiet.unaffected(&image_report, no_task));
        assert!(decide(&state, &inputs).is_empty());

        // A service no node can take leaves a task waiting: an image report is looked at.
        let stuck = testkit::service(
            "stuck",
            r#"{"Name":"stuck","Mode":{"Replicated":{"Replicas":1}},"TaskTemplate":{"ContainerSpec":{"Image":"busybox"},"Placement":{"Constraints":["node.labels.gpu==yes"]}}}"#,
        );
        state.services.insert("stuck".into(), versioned(stuck));
        settle(&mut state, &inputs, &mut version);
        assert!(state
            .tasks
            .iter()
            .any(|t| t.obj.state() == TaskState::PENDING));
        let quiet = Quiet::new(&state);
        assert!(!quiet.unaffected(&image_report, no_task));
        assert!(
            quiet.unaffected(&Delta::default(), no_task),
            "nothing changed, nothing to do"
        );
    }

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
            if rng.random_bool(0.3) {
                // A node reports another image list.
                let node = format!("n{}", rng.random_range(0..3));
                version += 1;
                state
                    .node_images
                    .insert(node.clone(), images(&node, rng.random_bool(0.5), version));
                delta.node_images = true;
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
