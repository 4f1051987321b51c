//! Placement: which node runs a task. Pure: filters ([`filter`]: availability, constraints,
//! platform, per-node cap, resources) then spread ([`spread`]: fewest tasks of the same service,
//! then fewest tasks overall, then a node whose engine already holds the task's image). A task
//! no node fits stays pending with an [`Explain`].

pub mod filter;
pub mod spread;

pub use filter::{constraint_met, constraints_met, Explain};

use crate::state::ClusterState;
use filter::{place_demanding, reserved, Demands};
use shoal_api::images::ImageRef;
use shoal_api::models::TaskState;
use shoal_api::objects::{is_terminal, StoredTask};
use spread::Candidates;
use std::collections::HashMap;

/// Assigns nodes to the tasks that need one; returns how many were placed.
///
/// Spread: the eligible node with the fewest running-or-starting tasks of the same service,
/// then the fewest overall, then one whose engine holds the task's image (it starts without a
/// pull), then the first in node order. The image only breaks ties: it never makes a node
/// eligible nor outweighs a count. Counts are taken once per call and kept up to date as tasks
/// are placed, so a call costs O(tasks + placements x log nodes) rather than
/// O(placements x nodes).
pub fn schedule(state: &ClusterState, tasks: &mut [&mut StoredTask], now: &str) -> usize {
    let pos_of: HashMap<&str, usize> = state
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.obj.id.as_deref().unwrap_or_default(), i))
        .collect();
    // The services that have something to place: only their per-node counts are needed.
    let mut mine: HashMap<&str, Vec<usize>> = HashMap::new();
    for t in tasks.iter() {
        if t.node_id().is_none() {
            if let Some(svc) = state.services.get(t.service_id()) {
                mine.entry(svc.obj.id())
                    .or_insert_with(|| vec![0; state.nodes.len()]);
            }
        }
    }
    let demands: HashMap<&str, Demands> = mine
        .keys()
        .filter_map(|sid| {
            let svc = &state.services.get(*sid)?.obj;
            Demands::of(svc).map(|d| (*sid, d))
        })
        .collect();
    let mut load = vec![0usize; state.nodes.len()];
    // Reservations per node, needed only when a service to place reserves something.
    let count_used = demands.values().any(|d| d.cpu > 0 || d.memory > 0);
    let mut used = vec![(0i64, 0i64); if count_used { state.nodes.len() } else { 0 }];
    for t in &state.tasks {
        let Some(&pos) = t.obj.node_id().and_then(|n| pos_of.get(n)) else {
            continue;
        };
        if t.obj.meant_to_run() && !is_terminal(t.obj.state()) {
            load[pos] += 1;
            if let Some(m) = mine.get_mut(t.obj.service_id()) {
                m[pos] += 1;
            }
            if count_used {
                let (c, m) = reserved(&t.obj);
                used[pos].0 = used[pos].0.saturating_add(c);
                used[pos].1 = used[pos].1.saturating_add(m);
            }
        }
    }
    // Which nodes hold each image asked for, looked up once per image.
    let mut holders: HashMap<String, Vec<bool>> = HashMap::new();
    // The indexed spread per (service, image): tasks of one service may differ in image (an
    // update under way); they share the service's counts in `mine`.
    let mut candidates: HashMap<(&str, String), Candidates> = HashMap::new();
    let mut placed = 0;
    for t in tasks.iter_mut() {
        let Some(svc) = state.services.get(t.service_id()) else {
            continue;
        };
        if let Some(node) = t.node_id().map(str::to_string) {
            assign(t, &node, now);
            placed += 1;
            continue;
        }
        let sid = svc.obj.id();
        let image = task_image(t).to_string();
        let holds = holders
            .entry(image.clone())
            .or_insert_with(|| nodes_holding(state, &image));
        let counts = mine
            .entry(sid)
            .or_insert_with(|| vec![0; state.nodes.len()]);
        if let Some(d) = demands.get(sid) {
            match place_demanding(&svc.obj, d, state, counts, &load, &used, holds) {
                Ok(pos) => {
                    load[pos] += 1;
                    counts[pos] += 1;
                    if count_used {
                        used[pos].0 = used[pos].0.saturating_add(d.cpu);
                        used[pos].1 = used[pos].1.saturating_add(d.memory);
                    }
                    let node = state.nodes[pos].obj.id.as_deref().unwrap_or_default();
                    assign(t, node, now);
                    placed += 1;
                }
                Err(why) => pending(t, why.message(), now),
            }
            continue;
        }
        let c = candidates
            .entry((sid, image))
            .or_insert_with(|| Candidates::new(&svc.obj, state, counts, &load, holds));
        match c.best(counts, &load) {
            Some(pos) => {
                c.take(pos, counts, &mut load);
                let node = state.nodes[pos].obj.id.as_deref().unwrap_or_default();
                assign(t, node, now);
                placed += 1;
            }
            None => {
                let why = Explain {
                    unavailable: c.unavailable,
                    constrained: c.constrained,
                    pinned: filter::pin_note(&svc.obj),
                    ..Default::default()
                };
                pending(t, why.message(), now);
            }
        }
    }
    placed
}

/// The image a task runs (empty if it names none).
fn task_image(t: &StoredTask) -> &str {
    t.task
        .spec
        .as_ref()
        .and_then(|s| s.container_spec.as_ref())
        .and_then(|c| c.image.as_deref())
        .unwrap_or_default()
}

/// Per node position: true if the node's engine reported holding `image` (by tag, digest or
/// ID, as the engine resolves the reference). None do for a reference no engine would accept.
pub fn nodes_holding(state: &ClusterState, image: &str) -> Vec<bool> {
    let wanted = match ImageRef::parse(image) {
        Some(r) if !state.node_images.is_empty() => r,
        _ => return vec![false; state.nodes.len()],
    };
    state
        .nodes
        .iter()
        .map(|n| {
            n.obj
                .id
                .as_deref()
                .and_then(|id| state.node_images.get(id))
                .is_some_and(|i| i.obj.find(&wanted).is_some())
        })
        .collect()
}

/// Leaves a task pending with the reason (rewritten only when the reason changes).
fn pending(t: &mut StoredTask, err: String, now: &str) {
    let status = t.task.status.get_or_insert_with(Default::default);
    if status.state != Some(TaskState::PENDING) || status.err.as_deref() != Some(&err) {
        status.state = Some(TaskState::PENDING);
        status.message = Some("pending task scheduling".into());
        status.err = Some(err);
        status.timestamp = Some(now.to_string());
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn assign(t: &mut StoredTask, node: &str, now: &str) {
    t.task.node_id = Some(node.to_string());
    let status = t.task.status.get_or_insert_with(Default::default);
    status.state = Some(TaskState::ASSIGNED);
    status.message = Some("scheduler assigned task to node".into());
    status.err = None;
    status.timestamp = Some(now.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::node_schedulable;
    use shoal_api::models::Node;
    use shoal_api::objects::StoredService;

    fn node(json: &str) -> Node {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn constraints() {
        let n = node(
            r#"{"ID":"n1","Spec":{"Role":"manager","Labels":{"zone":"rack1"}},
            "Description":{"Hostname":"pi1","Platform":{"OS":"linux","Architecture":"x86_64"}}}"#,
        );
        for (c, want) in [
            ("node.role==manager", true),
            ("node.role!=manager", false),
            ("node.role == worker", false),
            ("node.labels.zone==rack1", true),
            ("node.labels.zone!=rack2", true),
            ("node.labels.missing==x", false),
            ("node.labels.missing!=x", true),
            ("node.hostname==pi1", true),
            ("node.id==n1", true),
            ("node.platform.os==linux", true),
            ("garbage", false),
        ] {
            assert_eq!(constraint_met(c, &n), want, "{c}");
        }
    }

    /// The scheduler before issue 4: a scan of every node for every task (with issue 22's
    /// image tie-break). Kept to check that the indexed version decides exactly the same.
    fn reference(state: &ClusterState, tasks: &mut [&mut StoredTask]) -> usize {
        let mut load: HashMap<String, usize> = HashMap::new();
        let mut svc_load: HashMap<(String, String), usize> = HashMap::new();
        for t in &state.tasks {
            if let Some(n) = t.obj.node_id() {
                if t.obj.meant_to_run() && !is_terminal(t.obj.state()) {
                    *load.entry(n.to_string()).or_default() += 1;
                    *svc_load
                        .entry((n.to_string(), t.obj.service_id().to_string()))
                        .or_default() += 1;
                }
            }
        }
        let mut placed = 0;
        for t in tasks.iter_mut() {
            let Some(svc) = state.services.get(t.service_id()) else {
                continue;
            };
            if let Some(node) = t.node_id().map(str::to_string) {
                assign(t, &node, crate::testkit::T0);
                placed += 1;
                continue;
            }
            let wanted = ImageRef::parse(task_image(t));
            let mut best: Option<(&str, (usize, usize, bool))> = None;
            for n in &state.nodes {
                let node_id = n.obj.id.as_deref().unwrap_or_default();
                if !node_schedulable(&n.obj) || !constraints_met(&svc.obj, &n.obj) {
                    continue;
                }
                let holds = wanted.as_ref().is_some_and(|w| {
                    state
                        .node_images
                        .get(node_id)
                        .is_some_and(|i| i.obj.images.iter().any(|i| i.matches(w)))
                });
                let score = (
                    svc_load
                        .get(&(node_id.to_string(), svc.obj.id().to_string()))
                        .copied()
                        .unwrap_or(0),
                    load.get(node_id).copied().unwrap_or(0),
                    !holds,
                );
                if best.is_none_or(|(_, s)| score < s) {
                    best = Some((node_id, score));
                }
            }
            if let Some((node, _)) = best {
                let node = node.to_string();
                *load.entry(node.clone()).or_default() += 1;
                *svc_load
                    .entry((node.clone(), svc.obj.id().to_string()))
                    .or_default() += 1;
                assign(t, &node, crate::testkit::T0);
                placed += 1;
            }
        }
        placed
    }

    #[test]
    fn indexed_spread_decides_as_a_scan_of_every_node() {
        use crate::state::Versioned;
        use rand::Rng;
        for round in 0..200 {
            let (mut rng, seed) = crate::testkit::rng(0x5c4ed, round);
            let mut state = ClusterState::default();
            let nodes = rng.random_range(1..12);
            for i in 0..nodes {
                let ready = if rng.random_bool(0.85) {
                    "ready"
                } else {
                    "down"
                };
                let avail = if rng.random_bool(0.9) {
                    "active"
                } else {
                    "drain"
                };
                let zone = rng.random_range(0..3);
                state.nodes.push(Versioned {
                    obj: node(&format!(
                        r#"{{"ID":"n{i}","Spec":{{"Availability":"{avail}","Labels":{{"zone":"z{zone}"}}}},"Status":{{"State":"{ready}"}}}}"#
                    )),
                    version: 1,
                });
            }
            for s in 0..rng.random_range(1..5) {
                let constraint = match rng.random_range(0..3) {
                    0 => String::new(),
                    1 => format!(r#""node.labels.zone==z{}""#, rng.random_range(0..4)),
                    _ => format!(r#""node.labels.zone!=z{}""#, rng.random_range(0..3)),
                };
                let mut svc = StoredService::default();
                svc.service.id = Some(format!("s{s}"));
                svc.service.spec = Some(
                    serde_json::from_str(&format!(
                        r#"{{"Name":"s{s}","TaskTemplate":{{"Placement":{{"Constraints":[{constraint}]}}}}}}"#
                    ))
                    .unwrap(),
                );
                state.services.insert(
                    format!("s{s}"),
                    Versioned {
                        obj: svc,
                        version: 1,
                    },
                );
            }
            // Images: node i reports a random few (by the short name an engine lists); tasks
            // ask for one by any of its spellings, or for one no node has, or for none. A
            // service's tasks may differ in image (an update under way).
            let listed = ["app:1", "app:2", "reg.local:5000/x/y:3", "other:latest"];
            let asked = [
                "app:1",
                "docker.io/library/app:1",
                "app:2",
                "reg.local:5000/x/y:3",
                "other",
                "absent:9",
                "",
                "Not A Reference",
            ];
            for i in 0..nodes {
                if rng.random_bool(0.3) {
                    continue;
                }
                let images = listed
                    .iter()
                    .enumerate()
                    .filter(|_| rng.random_bool(0.4))
                    .map(|(k, tag)| shoal_api::images::NodeImage {
                        id: format!("sha256:{}", k.to_string().repeat(64)),
                        repo_tags: vec![tag.to_string()],
                        ..Default::default()
                    })
                    .collect();
                state.node_images.insert(
                    format!("n{i}"),
                    Versioned {
                        obj: shoal_api::images::StoredNodeImages {
                            node: format!("n{i}"),
                            images,
                        },
                        version: 1,
                    },
                );
            }
            let services = state.services.len();
            let mk = |rng: &mut rand::rngs::StdRng, id: String, node: Option<String>| {
                let mut t = StoredTask::default();
                t.task.id = Some(id);
                t.task.spec = Some(shoal_api::models::TaskSpec {
                    container_spec: Some(shoal_api::models::TaskSpecContainerSpec {
                        image: Some(asked[rng.random_range(0..asked.len())].to_string()),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                t.task.service_id = Some(format!("s{}", rng.random_range(0..services + 1)));
                t.task.node_id = node;
                t.task.desired_state = Some(if rng.random_bool(0.9) {
                    TaskState::RUNNING
                } else {
                    TaskState::SHUTDOWN
                });
                t.task.status = Some(shoal_api::models::TaskStatus {
                    state: Some(if rng.random_bool(0.8) {
                        TaskState::RUNNING
                    } else {
                        TaskState::FAILED
                    }),
                    ..Default::default()
                });
                t
            };
            for i in 0..rng.random_range(0..40) {
                let n = format!("n{}", rng.random_range(0..nodes + 1));
                let t = mk(&mut rng, format!("old{i}"), Some(n));
                state.tasks.push(Versioned { obj: t, version: 1 });
            }
            let new: Vec<StoredTask> = (0..rng.random_range(0..60))
                .map(|i| {
                    let preset = rng.random_bool(0.05).then(|| "n0".to_string());
                    mk(&mut rng, format!("new{i}"), preset)
                })
                .collect();
            let (mut a, mut b) = (new.clone(), new);
            let mut ra: Vec<&mut StoredTask> = a.iter_mut().collect();
            let mut rb: Vec<&mut StoredTask> = b.iter_mut().collect();
            let placed = schedule(&state, &mut ra, crate::testkit::T0);
            assert_eq!(placed, reference(&state, &mut rb), "seed {seed}");
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x.node_id(), y.node_id(), "seed {seed}, task {}", x.id());
                if x.node_id().is_none() && state.services.contains_key(x.service_id()) {
                    assert_eq!(x.state(), TaskState::PENDING, "seed {seed}");
                }
            }
        }
    }

    #[test]
    fn pending_reason_counts_unavailable_and_constrained_nodes() {
        use crate::state::Versioned;
        let mut state = ClusterState::default();
        for (id, st) in [("a", "down"), ("b", "ready"), ("c", "ready")] {
            state.nodes.push(Versioned {
                obj: node(&format!(
                    r#"{{"ID":"{id}","Spec":{{"Role":"worker"}},"Status":{{"State":"{st}"}}}}"#
                )),
                version: 1,
            });
        }
        let mut svc = StoredService::default();
        svc.service.id = Some("s".into());
        svc.service.spec = Some(
            serde_json::from_str(
                r#"{"Name":"s","TaskTemplate":{"Placement":{"Constraints":["node.role==manager"]}}}"#,
            )
            .unwrap(),
        );
        state.services.insert(
            "s".into(),
            Versioned {
                obj: svc,
                version: 1,
            },
        );
        let mut t = StoredTask::default();
        t.task.service_id = Some("s".into());
        assert_eq!(schedule(&state, &mut [&mut t], crate::testkit::T0), 0);
        assert_eq!(t.state(), TaskState::PENDING);
        assert_eq!(
            t.task.status.as_ref().and_then(|s| s.err.as_deref()),
            Some("no suitable node (1 node not available for new tasks; scheduling constraints not satisfied on 2 nodes)")
        );
    }

    #[test]
    fn a_node_local_volume_pins_the_tasks_to_its_node_and_says_so_when_it_is_down() {
        use crate::state::Versioned;
        use shoal_api::objects::VolumePin;
        let mut state = ClusterState::default();
        for (id, host) in [("a", "node-1"), ("b", "node-2"), ("c", "node-3")] {
            state.nodes.push(Versioned {
                obj: node(&format!(
                    r#"{{"ID":"{id}","Spec":{{"Role":"worker"}},"Status":{{"State":"ready"}},"Description":{{"Hostname":"{host}"}}}}"#
                )),
                version: 1,
            });
        }
        let mut svc = StoredService::default();
        svc.service.id = Some("s".into());
        svc.service.spec = Some(serde_json::from_str(r#"{"Name":"s"}"#).unwrap());
        // Pinned by hostname, as a user names the node in `--opt node=`.
        svc.volume_pins = vec![VolumePin {
            volume: "data".into(),
            node: "node-2".into(),
        }];
        state.services.insert(
            "s".into(),
            Versioned {
                obj: svc,
                version: 1,
            },
        );
        let mut tasks: Vec<StoredTask> = (0..3)
            .map(|_| {
                let mut t = StoredTask::default();
                t.task.service_id = Some("s".into());
                t
            })
            .collect();
        let mut refs: Vec<&mut StoredTask> = tasks.iter_mut().collect();
        assert_eq!(schedule(&state, &mut refs, crate::testkit::T0), 3);
        assert!(tasks.iter().all(|t| t.node_id() == Some("b")));

        // The volume's node goes down: the task waits, and the reason names the volume.
        state.nodes[1].obj = node(
            r#"{"ID":"b","Spec":{"Role":"worker"},"Status":{"State":"down"},"Description":{"Hostname":"node-2"}}"#,
        );
        let mut t = StoredTask::default();
        t.task.service_id = Some("s".into());
        assert_eq!(schedule(&state, &mut [&mut t], crate::testkit::T0), 0);
        assert_eq!(
            t.task.status.as_ref().and_then(|s| s.err.as_deref()),
            Some("no suitable node (volume data lives on node node-2; 1 node not available for new tasks; scheduling constraints not satisfied on 2 nodes)")
        );
    }

    /// Nodes (id, zone label, cpus, GiB, arch) and one service from its spec JSON.
    fn cluster(nodes: &[(&str, &str, i64, i64, &str)], spec: &str) -> ClusterState {
        use crate::state::Versioned;
        let mut state = ClusterState::default();
        for (id, zone, cpus, gib, arch) in nodes {
            state.nodes.push(Versioned {
                obj: node(&format!(
                    r#"{{"ID":"{id}","Spec":{{"Role":"worker","Labels":{{"zone":"{zone}"}}}},"Status":{{"State":"ready"}},
                    "Description":{{"Platform":{{"OS":"linux","Architecture":"{arch}"}},
                    "Resources":{{"NanoCPUs":{},"MemoryBytes":{}}}}}}}"#,
                    cpus * 1_000_000_000,
                    gib << 30
                )),
                version: 1,
            });
        }
        let mut svc = StoredService::default();
        svc.service.id = Some("s".into());
        svc.service.spec = Some(serde_json::from_str(spec).unwrap());
        state.services.insert(
            "s".into(),
            Versioned {
                obj: svc,
                version: 1,
            },
        );
        state
    }

    /// Places `n` tasks of service "s" one pass at a time, as the control loop would; returns
    /// the node of each placed one and the pending reason of the first left over.
    fn place(state: &mut ClusterState, n: usize) -> (Vec<String>, Option<String>) {
        let svc = state.services["s"].obj.clone();
        let mut tasks: Vec<StoredTask> = (0..n)
            .map(|i| crate::orchestrator::new_task(&svc, i as u64 + 1, None, vec![]))
            .collect();
        let mut refs: Vec<&mut StoredTask> = tasks.iter_mut().collect();
        schedule(state, &mut refs, crate::testkit::T0);
        let nodes = tasks
            .iter()
            .filter_map(|t| t.node_id().map(str::to_string))
            .collect();
        let why = tasks
            .iter()
            .find(|t| t.node_id().is_none())
            .and_then(|t| t.task.status.as_ref()?.err.clone());
        for t in tasks {
            state
                .tasks
                .push(crate::state::Versioned { obj: t, version: 1 });
        }
        (nodes, why)
    }

    #[test]
    fn spread_preference_balances_label_values_not_nodes() {
        // Zone a has three nodes, zone b one: six tasks go three and three.
        let mut state = cluster(
            &[
                ("a1", "a", 4, 4, "x86_64"),
                ("a2", "a", 4, 4, "x86_64"),
                ("a3", "a", 4, 4, "x86_64"),
                ("b1", "b", 4, 4, "x86_64"),
            ],
            r#"{"Name":"s","TaskTemplate":{"Placement":{"Preferences":[{"Spread":{"SpreadDescriptor":"node.labels.zone"}}]}}}"#,
        );
        let (nodes, why) = place(&mut state, 6);
        assert_eq!(why, None);
        assert_eq!(nodes.iter().filter(|n| *n == "b1").count(), 3, "{nodes:?}");
        for a in ["a1", "a2", "a3"] {
            assert_eq!(nodes.iter().filter(|n| *n == a).count(), 1, "{nodes:?}");
        }
    }

    #[test]
    fn replicas_max_per_node_leaves_the_rest_pending() {
        let mut state = cluster(
            &[("n1", "a", 4, 4, "x86_64"), ("n2", "a", 4, 4, "x86_64")],
            r#"{"Name":"s","TaskTemplate":{"Placement":{"MaxReplicas":2}}}"#,
        );
        let (nodes, why) = place(&mut state, 5);
        assert_eq!(nodes.len(), 4);
        assert_eq!(
            why.as_deref(),
            Some("no suitable node (max replicas per node limit exceed on 2 nodes)")
        );
    }

    #[test]
    fn reservations_count_against_node_resources() {
        // 1.5 CPUs each: two fit on the 4-CPU node, one on the 2-CPU node, the fourth waits.
        let mut state = cluster(
            &[("big", "a", 4, 8, "x86_64"), ("small", "a", 2, 8, "x86_64")],
            r#"{"Name":"s","TaskTemplate":{"Resources":{"Reservations":{"NanoCPUs":1500000000,"MemoryBytes":1073741824}}}}"#,
        );
        let (nodes, why) = place(&mut state, 4);
        let mut sorted = nodes.clone();
        sorted.sort();
        assert_eq!(sorted, vec!["big", "big", "small"]);
        assert_eq!(
            why.as_deref(),
            Some("no suitable node (insufficient resources on 2 nodes)")
        );
        // Memory too: 5 GiB each fits once per 8 GiB node.
        let mut state = cluster(
            &[("big", "a", 4, 8, "x86_64"), ("small", "a", 2, 8, "x86_64")],
            r#"{"Name":"s","TaskTemplate":{"Resources":{"Reservations":{"MemoryBytes":5368709120}}}}"#,
        );
        let (nodes, _) = place(&mut state, 3);
        assert_eq!(nodes.len(), 2);
    }

    #[test]
    fn images_for_another_architecture_wait_for_a_node_that_runs_them() {
        let mut state = cluster(
            &[("pi", "a", 4, 4, "aarch64"), ("pc", "a", 4, 4, "x86_64")],
            r#"{"Name":"s","TaskTemplate":{"Placement":{"Platforms":[{"OS":"linux","Architecture":"arm64"}]}}}"#,
        );
        let (nodes, _) = place(&mut state, 2);
        assert_eq!(nodes, vec!["pi", "pi"]);
        let mut state = cluster(
            &[("pc", "a", 4, 4, "x86_64")],
            r#"{"Name":"s","TaskTemplate":{"Placement":{"Platforms":[{"OS":"linux","Architecture":"arm64"}]}}}"#,
        );
        let (_, why) = place(&mut state, 1);
        assert_eq!(
            why.as_deref(),
            Some("no suitable node (unsupported platform on 1 node)")
        );
    }

    /// Records that `node`'s engine holds images with these `repo:tag` names.
    fn holds(state: &mut ClusterState, node: &str, tags: &[&str]) {
        let images = tags
            .iter()
            .enumerate()
            .map(|(k, tag)| shoal_api::images::NodeImage {
                id: format!("sha256:{}", k.to_string().repeat(64)),
                repo_tags: vec![tag.to_string()],
                ..Default::default()
            })
            .collect();
        state.node_images.insert(
            node.to_string(),
            crate::state::Versioned {
                obj: shoal_api::images::StoredNodeImages {
                    node: node.to_string(),
                    images,
                },
                version: 1,
            },
        );
    }

    /// A running task of another service on `node`, to make it busier.
    fn busy(state: &mut ClusterState, node: &str) {
        let mut t = StoredTask::default();
        t.task.id = Some(format!("busy-{node}-{}", state.tasks.len()));
        t.task.service_id = Some("other".into());
        t.task.node_id = Some(node.into());
        t.task.desired_state = Some(TaskState::RUNNING);
        t.task.status = Some(shoal_api::models::TaskStatus {
            state: Some(TaskState::RUNNING),
            ..Default::default()
        });
        state
            .tasks
            .push(crate::state::Versioned { obj: t, version: 1 });
    }

    /// Three equal nodes, node-2 alone holding the image (listed by its short name, asked for
    /// by its full one); `placement` is the service's Placement JSON. Each case runs on the
    /// indexed path (no demands) and on the scan (`MaxReplicas`, or reservations, send it
    /// there), which must agree.
    #[test]
    fn a_node_that_holds_the_image_wins_a_tie_and_nothing_more() {
        let three = [
            ("node-1", "a", 4, 4, "x86_64"),
            ("node-2", "b", 4, 4, "x86_64"),
            ("node-3", "c", 4, 4, "x86_64"),
        ];
        let spec = |placement: &str, extra: &str| {
            format!(
                r#"{{"Name":"s","TaskTemplate":{{"ContainerSpec":{{"Image":"docker.io/library/web:1"}},"Placement":{placement}{extra}}}}}"#
            )
        };
        for (path, extra_placement, extra) in [
            ("indexed", "", ""),
            ("scan (max per node)", r#","MaxReplicas":5"#, ""),
            (
                "scan (reservations)",
                "",
                r#","Resources":{"Reservations":{"NanoCPUs":1000000}}"#,
            ),
        ] {
            let mk = |constraints: &str| {
                let placement = format!(r#"{{"Constraints":[{constraints}]{extra_placement}}}"#);
                let mut state = cluster(&three, &spec(&placement, extra));
                holds(&mut state, "node-1", &["web:2", "db:1"]);
                holds(&mut state, "node-2", &["web:1"]);
                state
            };

            // One replica: all else equal, the node that need not pull.
            let mut state = mk("");
            let (nodes, why) = place(&mut state, 1);
            assert_eq!((nodes, why), (vec!["node-2".to_string()], None), "{path}");

            // Three replicas: spread still puts one on each node.
            let mut state = mk("");
            let (mut nodes, why) = place(&mut state, 3);
            nodes.sort();
            assert_eq!(why, None, "{path}");
            assert_eq!(nodes, ["node-1", "node-2", "node-3"], "{path}");

            // node-2 runs more tasks: the spread wins over the image.
            let mut state = mk("");
            busy(&mut state, "node-2");
            let (nodes, _) = place(&mut state, 1);
            assert_eq!(nodes, ["node-1"], "{path}");
            // ... and the second replica too, since node-2 is still the busiest overall.
            let (nodes, _) = place(&mut state, 1);
            assert_eq!(nodes, ["node-3"], "{path}");

            // A constraint that excludes node-2 still excludes it.
            let mut state = mk(r#""node.hostname!=node-2","node.id!=node-2""#);
            let (nodes, why) = place(&mut state, 2);
            assert_eq!(why, None, "{path}");
            assert!(!nodes.iter().any(|n| n == "node-2"), "{path}: {nodes:?}");
            let mut state = mk(r#""node.id==node-2""#);
            state.nodes[1].obj =
                node(r#"{"ID":"node-2","Spec":{"Role":"worker"},"Status":{"State":"down"}}"#);
            let (nodes, why) = place(&mut state, 1);
            assert!(nodes.is_empty(), "{path}: a down node takes nothing");
            assert!(why.is_some_and(|w| w.contains("not available")), "{path}");

            // No node holds it: the first node, as before.
            let mut state = mk("");
            state.node_images.clear();
            let (nodes, _) = place(&mut state, 1);
            assert_eq!(nodes, ["node-1"], "{path}");
        }
    }

    #[test]
    fn the_image_breaks_ties_between_spread_groups_and_never_overrides_a_platform() {
        // Two zones, one node each: the first task goes to the zone whose node holds the image.
        let mut state = cluster(
            &[("a1", "a", 4, 4, "x86_64"), ("b1", "b", 4, 4, "x86_64")],
            r#"{"Name":"s","TaskTemplate":{"ContainerSpec":{"Image":"web:1"},"Placement":{"Preferences":[{"Spread":{"SpreadDescriptor":"node.labels.zone"}}]}}}"#,
        );
        holds(&mut state, "b1", &["web:1"]);
        let (nodes, _) = place(&mut state, 1);
        assert_eq!(nodes, ["b1"]);
        // Zone b now has a task: the next goes to zone a, without the image.
        let (nodes, _) = place(&mut state, 1);
        assert_eq!(nodes, ["a1"]);

        // The image is on a node of another architecture: the platform filter still wins.
        let mut state = cluster(
            &[("pi", "a", 4, 4, "aarch64"), ("pc", "a", 4, 4, "x86_64")],
            r#"{"Name":"s","TaskTemplate":{"ContainerSpec":{"Image":"web:1"},"Placement":{"Platforms":[{"OS":"linux","Architecture":"amd64"}]}}}"#,
        );
        holds(&mut state, "pi", &["web:1"]);
        let (nodes, _) = place(&mut state, 2);
        assert_eq!(nodes, ["pc", "pc"]);

        // Max per node: once node-2 is full the rest go elsewhere.
        let mut state = cluster(
            &[("n1", "a", 4, 4, "x86_64"), ("n2", "a", 4, 4, "x86_64")],
            r#"{"Name":"s","TaskTemplate":{"ContainerSpec":{"Image":"web:1"},"Placement":{"MaxReplicas":1}}}"#,
        );
        holds(&mut state, "n2", &["web:1"]);
        let (nodes, why) = place(&mut state, 3);
        assert_eq!(nodes, ["n2", "n1"]);
        assert!(why.is_some_and(|w| w.contains("max replicas")));
    }

    #[test]
    fn tasks_of_one_service_with_different_images_share_its_spread() {
        // An update under way: a task of the old image and one of the new, each held by one node.
        let mut state = cluster(
            &[
                ("n1", "a", 4, 4, "x86_64"),
                ("n2", "a", 4, 4, "x86_64"),
                ("n3", "a", 4, 4, "x86_64"),
            ],
            r#"{"Name":"s","TaskTemplate":{"ContainerSpec":{"Image":"web:2"}}}"#,
        );
        holds(&mut state, "n2", &["web:1"]);
        holds(&mut state, "n3", &["web:2"]);
        let svc = state.services["s"].obj.clone();
        let mut old = crate::orchestrator::new_task(&svc, 1, None, vec![]);
        if let Some(c) = old
            .task
            .spec
            .as_mut()
            .and_then(|s| s.container_spec.as_mut())
        {
            c.image = Some("web:1".into());
        }
        let mut new = [0, 1, 2].map(|i| crate::orchestrator::new_task(&svc, i + 2, None, vec![]));
        let [a, b, c] = &mut new;
        let mut refs = vec![&mut old, a, b, c];
        assert_eq!(schedule(&state, &mut refs, crate::testkit::T0), 4);
        assert_eq!(old.node_id(), Some("n2"), "the old image's node");
        assert_eq!(new[0].node_id(), Some("n3"), "the new image's node");
        // Then the spread over the service's tasks, whatever their image: n1, then n3 (a tie
        // among n1..n3 at one task each, broken by the image).
        assert_eq!(new[1].node_id(), Some("n1"));
        assert_eq!(new[2].node_id(), Some("n3"));
    }
}
