//! Placement: which node runs a task. Pure: filters (availability, constraints, resources) then
//! spread (fewest tasks of the same service, then fewest tasks overall).

use crate::state::{node_schedulable, ClusterState};
use shoal_api::id;
use shoal_api::models::{Node, NodeSpecRoleEnum, TaskState};
use shoal_api::objects::{is_terminal, StoredService, StoredTask};
use std::collections::{BTreeSet, HashMap};

/// True if `node` satisfies every placement constraint of the service.
pub fn constraints_met(svc: &StoredService, node: &Node) -> bool {
    svc.spec()
        .task_template
        .as_ref()
        .and_then(|t| t.placement.as_ref())
        .and_then(|p| p.constraints.as_ref())
        .is_none_or(|cs| cs.iter().all(|c| constraint_met(c, node)))
}

/// Evaluates one `key==value` / `key!=value` constraint against a node.
pub fn constraint_met(c: &str, node: &Node) -> bool {
    let (key, want, equal) = if let Some((k, v)) = c.split_once("!=") {
        (k.trim(), v.trim(), false)
    } else if let Some((k, v)) = c.split_once("==") {
        (k.trim(), v.trim(), true)
    } else {
        return false;
    };
    let spec = node.spec.as_ref();
    let desc = node.description.as_ref();
    let have: Option<&str> = match key {
        "node.id" => node.id.as_deref(),
        "node.hostname" => desc.and_then(|d| d.hostname.as_deref()),
        "node.role" => spec.and_then(|s| s.role).map(|r| match r {
            NodeSpecRoleEnum::MANAGER => "manager",
            _ => "worker",
        }),
        "node.platform.os" => desc
            .and_then(|d| d.platform.as_ref())
            .and_then(|p| p.os.as_deref()),
        "node.platform.arch" => desc
            .and_then(|d| d.platform.as_ref())
            .and_then(|p| p.architecture.as_deref()),
        k if k.starts_with("node.labels.") => spec
            .and_then(|s| s.labels.as_ref())
            .and_then(|l| l.get(&k["node.labels.".len()..]))
            .map(String::as_str),
        k if k.starts_with("engine.labels.") => desc
            .and_then(|d| d.engine.as_ref())
            .and_then(|e| e.labels.as_ref())
            .and_then(|l| l.get(&k["engine.labels.".len()..]))
            .map(String::as_str),
        _ => None,
    };
    let matches = have.is_some_and(|h| h.eq_ignore_ascii_case(want));
    matches == equal
}

/// Where one service's tasks may go during a [`schedule`] call.
struct Candidates {
    /// Eligible nodes ordered by (tasks of this service, tasks overall, position in the node
    /// list). The overall count of an entry may be stale (another service placed a task on the
    /// node since): counts only grow, so a stale entry sorts too early and is fixed when it
    /// reaches the front.
    order: BTreeSet<(usize, usize, usize)>,
    /// Tasks of this service per node position.
    mine: Vec<usize>,
    /// Nodes not available for new tasks, and nodes failing the constraints (for the message).
    unavailable: usize,
    constrained: usize,
}

impl Candidates {
    fn new(svc: &StoredService, state: &ClusterState, mine: Vec<usize>, load: &[usize]) -> Self {
        let mut c = Candidates {
            order: BTreeSet::new(),
            mine,
            unavailable: 0,
            constrained: 0,
        };
        for (pos, n) in state.nodes.iter().enumerate() {
            if !node_schedulable(&n.obj) {
                c.unavailable += 1;
            } else if !constraints_met(svc, &n.obj) {
                c.constrained += 1;
            } else {
                c.order.insert((c.mine[pos], load[pos], pos));
            }
        }
        c
    }

    /// The eligible node with the fewest tasks of this service, then the fewest overall, then
    /// the first in the node list: the node a scan over every node would pick.
    fn best(&mut self, load: &[usize]) -> Option<usize> {
        loop {
            let first = *self.order.first()?;
            let (_, seen, pos) = first;
            if seen == load[pos] {
                return Some(pos);
            }
            self.order.remove(&first);
            self.order.insert((self.mine[pos], load[pos], pos));
        }
    }

    /// Records a task of this service placed on `pos` (whose overall count is already raised).
    fn placed(&mut self, pos: usize, old_load: usize, load: &[usize]) {
        self.order.remove(&(self.mine[pos], old_load, pos));
        self.mine[pos] += 1;
        self.order.insert((self.mine[pos], load[pos], pos));
    }
}

/// Assigns nodes to the tasks that need one; returns how many were placed.
///
/// Spread: the eligible node with the fewest running-or-starting tasks of the same service,
/// then the fewest overall, then the first in node order. Counts are taken once per call and
/// kept up to date as tasks are placed, so a call costs O(tasks + placements x log nodes)
/// rather than O(placements x nodes).
pub fn schedule(state: &ClusterState, tasks: &mut [&mut StoredTask]) -> usize {
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
    let mut load = vec![0usize; state.nodes.len()];
    for t in &state.tasks {
        let Some(&pos) = t.obj.node_id().and_then(|n| pos_of.get(n)) else {
            continue;
        };
        if t.obj.meant_to_run() && !is_terminal(t.obj.state()) {
            load[pos] += 1;
            if let Some(m) = mine.get_mut(t.obj.service_id()) {
                m[pos] += 1;
            }
        }
    }
    let mut candidates: HashMap<String, Candidates> = HashMap::new();
    let mut placed = 0;
    for t in tasks.iter_mut() {
        let Some(svc) = state.services.get(t.service_id()) else {
            continue;
        };
        if let Some(node) = t.node_id().map(str::to_string) {
            assign(t, &node);
            placed += 1;
            continue;
        }
        let sid = svc.obj.id();
        let c = candidates.entry(sid.to_string()).or_insert_with(|| {
            let counts = mine
                .remove(sid)
                .unwrap_or_else(|| vec![0; state.nodes.len()]);
            Candidates::new(&svc.obj, state, counts, &load)
        });
        match c.best(&load) {
            Some(pos) => {
                let old = load[pos];
                load[pos] += 1;
                c.placed(pos, old, &load);
                let node = state.nodes[pos].obj.id.as_deref().unwrap_or_default();
                assign(t, node);
                placed += 1;
            }
            None => {
                let (unavailable, constrained) = (c.unavailable, c.constrained);
                let mut why = Vec::new();
                if unavailable > 0 {
                    why.push(format!(
                        "{unavailable} node{} not available for new tasks",
                        plural(unavailable)
                    ));
                }
                if constrained > 0 {
                    why.push(format!(
                        "scheduling constraints not satisfied on {constrained} node{}",
                        plural(constrained)
                    ));
                }
                let err = format!("no suitable node ({})", why.join("; "));
                let status = t.task.status.get_or_insert_with(Default::default);
                if status.state != Some(TaskState::PENDING) || status.err.as_deref() != Some(&err) {
                    status.state = Some(TaskState::PENDING);
                    status.message = Some("pending task scheduling".into());
                    status.err = Some(err);
                    status.timestamp = Some(id::now());
                }
            }
        }
    }
    placed
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn assign(t: &mut StoredTask, node: &str) {
    t.task.node_id = Some(node.to_string());
    let status = t.task.status.get_or_insert_with(Default::default);
    status.state = Some(TaskState::ASSIGNED);
    status.message = Some("scheduler assigned task to node".into());
    status.err = None;
    status.timestamp = Some(id::now());
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The scheduler before issue 4: a scan of every node for every task. Kept to check that
    /// the indexed version decides exactly the same.
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
                assign(t, &node);
                placed += 1;
                continue;
            }
            let mut best: Option<(&str, (usize, usize))> = None;
            for n in &state.nodes {
                let node_id = n.obj.id.as_deref().unwrap_or_default();
                if !node_schedulable(&n.obj) || !constraints_met(&svc.obj, &n.obj) {
                    continue;
                }
                let score = (
                    svc_load
                        .get(&(node_id.to_string(), svc.obj.id().to_string()))
                        .copied()
                        .unwrap_or(0),
                    load.get(node_id).copied().unwrap_or(0),
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
                assign(t, &node);
                placed += 1;
            }
        }
        placed
    }

    #[test]
    fn indexed_spread_decides_as_a_scan_of_every_node() {
        use crate::db::Versioned;
        use rand::Rng;
        let mut rng = rand::rng();
        for round in 0..200 {
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
            let services = state.services.len();
            let mk = |rng: &mut rand::rngs::ThreadRng, id: String, node: Option<String>| {
                let mut t = StoredTask::default();
                t.task.id = Some(id);
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
            let placed = schedule(&state, &mut ra);
            assert_eq!(placed, reference(&state, &mut rb), "round {round}");
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x.node_id(), y.node_id(), "round {round}, task {}", x.id());
                if x.node_id().is_none() && state.services.contains_key(x.service_id()) {
                    assert_eq!(x.state(), TaskState::PENDING, "round {round}");
                }
            }
        }
    }

    #[test]
    fn pending_reason_counts_unavailable_and_constrained_nodes() {
        use crate::db::Versioned;
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
        assert_eq!(schedule(&state, &mut [&mut t]), 0);
        assert_eq!(t.state(), TaskState::PENDING);
        assert_eq!(
            t.task.status.as_ref().and_then(|s| s.err.as_deref()),
            Some("no suitable node (1 node not available for new tasks; scheduling constraints not satisfied on 2 nodes)")
        );
    }
}
