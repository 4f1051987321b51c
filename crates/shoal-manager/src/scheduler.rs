//! Placement: which node runs a task. Pure: filters (availability, constraints, resources) then
//! spread (fewest tasks of the same service, then fewest tasks overall).

use crate::state::{node_schedulable, ClusterState};
use shoal_api::id;
use shoal_api::models::{Node, NodeSpecRoleEnum, TaskState};
use shoal_api::objects::{is_terminal, StoredService, StoredTask};
use std::collections::HashMap;

/// True if `node` satisfies every placement constraint of the service.
pub fn constraints_met(svc: &StoredService, node: &Node) -> bool {
    let constraints = svc
        .spec()
        .task_template
        .as_ref()
        .and_then(|t| t.placement.as_ref())
        .and_then(|p| p.constraints.clone())
        .unwrap_or_default();
    constraints.iter().all(|c| constraint_met(c, node))
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
    let spec = node.spec.clone().unwrap_or_default();
    let desc = node.description.clone().unwrap_or_default();
    let have: Option<String> = match key {
        "node.id" => node.id.clone(),
        "node.hostname" => desc.hostname.clone(),
        "node.role" => spec.role.map(|r| match r {
            NodeSpecRoleEnum::MANAGER => "manager".to_string(),
            _ => "worker".to_string(),
        }),
        "node.platform.os" => desc.platform.as_ref().and_then(|p| p.os.clone()),
        "node.platform.arch" => desc.platform.as_ref().and_then(|p| p.architecture.clone()),
        k if k.starts_with("node.labels.") => spec
            .labels
            .as_ref()
            .and_then(|l| l.get(&k["node.labels.".len()..]).cloned()),
        k if k.starts_with("engine.labels.") => desc
            .engine
            .as_ref()
            .and_then(|e| e.labels.as_ref())
            .and_then(|l| l.get(&k["engine.labels.".len()..]).cloned()),
        _ => None,
    };
    let matches = have.is_some_and(|h| h.eq_ignore_ascii_case(want));
    matches == equal
}

/// Assigns nodes to the tasks that need one; returns how many were placed.
pub fn schedule(state: &ClusterState, tasks: &mut [&mut StoredTask]) -> usize {
    // Load per node: total running-or-starting tasks, and per service.
    let mut load: HashMap<String, usize> = HashMap::new();
    let mut svc_load: HashMap<(String, String), usize> = HashMap::new();
    for t in &state.tasks {
        if let Some(n) = t.obj.node_id() {
            if t.obj.desired() == TaskState::RUNNING && !is_terminal(t.obj.state()) {
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
        let mut unavailable = 0;
        let mut constrained = 0;
        let mut best: Option<(&str, (usize, usize))> = None;
        for n in &state.nodes {
            let node_id = n.obj.id.as_deref().unwrap_or_default();
            if !node_schedulable(&n.obj) {
                unavailable += 1;
                continue;
            }
            if !constraints_met(&svc.obj, &n.obj) {
                constrained += 1;
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
        match best {
            Some((node, _)) => {
                let node = node.to_string();
                *load.entry(node.clone()).or_default() += 1;
                *svc_load
                    .entry((node.clone(), svc.obj.id().to_string()))
                    .or_default() += 1;
                assign(t, &node);
                placed += 1;
            }
            None => {
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
}
