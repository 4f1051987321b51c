//! The filters a node must pass to take a task, in Swarm's order (availability, constraints,
//! platform, per-node cap, resources), what a service asks of them ([`Demands`]), and the
//! scan of every node that services with such demands take ([`place_demanding`]).

use super::plural;
use crate::state::{node_schedulable, ClusterState};
use shoal_api::models::{Node, NodeSpecRoleEnum};
use shoal_api::objects::{StoredService, StoredTask};
use std::collections::HashMap;

/// True if `node` satisfies every placement constraint of the service, and holds every
/// node-local volume it mounts.
pub fn constraints_met(svc: &StoredService, node: &Node) -> bool {
    pins_met(svc, node)
        && svc
            .spec()
            .task_template
            .as_ref()
            .and_then(|t| t.placement.as_ref())
            .and_then(|p| p.constraints.as_ref())
            .is_none_or(|cs| cs.iter().all(|c| constraint_met(c, node)))
}

/// A node-local volume is on one node (named by ID or hostname): its tasks can run only there.
fn pins_met(svc: &StoredService, node: &Node) -> bool {
    let host = node
        .description
        .as_ref()
        .and_then(|d| d.hostname.as_deref());
    svc.volume_pins
        .iter()
        .all(|p| node.id.as_deref() == Some(p.node.as_str()) || host == Some(p.node.as_str()))
}

/// What `docker service ps` adds to a pending task's reason when a node-local volume pins it.
pub(super) fn pin_note(svc: &StoredService) -> Option<String> {
    let p = svc.volume_pins.first()?;
    Some(format!("volume {} lives on node {}", p.volume, p.node))
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

/// What a service asks of placement beyond constraints. Services asking none of it (most)
/// take the indexed path; the others a scan of every node per task, which these features need.
#[derive(Debug, Default)]
pub(super) struct Demands {
    /// `--replicas-max-per-node`.
    max_per_node: Option<usize>,
    /// `--reserve-cpu` in nano CPUs and `--reserve-memory` in bytes.
    pub(super) cpu: i64,
    pub(super) memory: i64,
    /// `--placement-pref spread=<label>`, outermost first: the label keys, as written.
    spread: Vec<String>,
    /// `Placement.Platforms` as (os, architecture), normalized.
    platforms: Vec<(String, String)>,
}

impl Demands {
    pub(super) fn of(svc: &StoredService) -> Option<Demands> {
        let t = svc.spec().task_template.as_ref()?;
        let p = t.placement.as_ref();
        let r = t.resources.as_ref().and_then(|r| r.reservations.as_ref());
        let d = Demands {
            max_per_node: p
                .and_then(|p| p.max_replicas)
                .filter(|m| *m > 0)
                .map(|m| m as usize),
            cpu: r.and_then(|r| r.nano_cpus).unwrap_or(0).max(0),
            memory: r.and_then(|r| r.memory_bytes).unwrap_or(0).max(0),
            spread: p
                .and_then(|p| p.preferences.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|pref| pref.spread.as_ref()?.spread_descriptor.clone())
                .collect(),
            platforms: p
                .and_then(|p| p.platforms.as_ref())
                .into_iter()
                .flatten()
                .map(|pl| {
                    (
                        pl.os.clone().unwrap_or_default().to_lowercase(),
                        normalize_arch(pl.architecture.as_deref().unwrap_or("")),
                    )
                })
                .collect(),
        };
        let any = d.max_per_node.is_some()
            || d.cpu > 0
            || d.memory > 0
            || !d.spread.is_empty()
            || !d.platforms.is_empty();
        any.then_some(d)
    }
}

/// Architecture names as Go spells them (`x86_64` is `amd64`), so a node's `uname -m` and an
/// image's platform compare.
fn normalize_arch(a: &str) -> String {
    match a.to_lowercase().as_str() {
        "x86_64" | "x86-64" => "amd64".into(),
        "aarch64" | "arm64/v8" => "arm64".into(),
        "armv7l" | "armhf" | "arm/v7" => "arm".into(),
        "i386" | "i686" => "386".into(),
        other => other.to_string(),
    }
}

/// True if the node's platform is one the service's images support (any, if none listed).
fn platform_ok(d: &Demands, node: &Node) -> bool {
    if d.platforms.is_empty() {
        return true;
    }
    let pl = node.description.as_ref().and_then(|d| d.platform.as_ref());
    let os = pl
        .and_then(|p| p.os.as_deref())
        .unwrap_or("")
        .to_lowercase();
    let arch = normalize_arch(pl.and_then(|p| p.architecture.as_deref()).unwrap_or(""));
    d.platforms
        .iter()
        .any(|(o, a)| (o.is_empty() || *o == os) && (a.is_empty() || *a == arch))
}

/// A node's value for a spread descriptor (`node.labels.zone`, `engine.labels.x`); nodes
/// without the label form a group of their own, as in Swarm.
fn spread_value<'a>(key: &str, node: &'a Node) -> &'a str {
    let labels = if let Some(k) = key.strip_prefix("node.labels.") {
        node.spec
            .as_ref()
            .and_then(|s| s.labels.as_ref())
            .and_then(|l| l.get(k))
    } else if let Some(k) = key.strip_prefix("engine.labels.") {
        node.description
            .as_ref()
            .and_then(|d| d.engine.as_ref())
            .and_then(|e| e.labels.as_ref())
            .and_then(|l| l.get(k))
    } else {
        None
    };
    labels.map(String::as_str).unwrap_or("")
}

/// A task's reservations (nano CPUs, bytes).
pub(super) fn reserved(t: &StoredTask) -> (i64, i64) {
    let r = t
        .task
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.reservations.as_ref());
    (
        r.and_then(|r| r.nano_cpus).unwrap_or(0).max(0),
        r.and_then(|r| r.memory_bytes).unwrap_or(0).max(0),
    )
}

/// A node's capacity (nano CPUs, bytes); unknown counts as unlimited.
fn capacity(n: &Node) -> (i64, i64) {
    let r = n.description.as_ref().and_then(|d| d.resources.as_ref());
    (
        r.and_then(|r| r.nano_cpus)
            .filter(|c| *c > 0)
            .unwrap_or(i64::MAX),
        r.and_then(|r| r.memory_bytes)
            .filter(|m| *m > 0)
            .unwrap_or(i64::MAX),
    )
}

/// Why no node fits a task: every node counted once, under the first filter (in Swarm's order)
/// that refused it, so `docker service ps` can say what to change.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Explain {
    /// Nodes down, paused or drained.
    pub unavailable: usize,
    /// Nodes failing a placement constraint.
    pub constrained: usize,
    /// Nodes of another OS or architecture than the service's platforms.
    pub platform: usize,
    /// Nodes already holding `--replicas-max-per-node` of the service's tasks.
    pub max_replicas: usize,
    /// Nodes without the CPU or memory the task reserves.
    pub resources: usize,
    /// Where a node-local volume pins the service, said first when nodes were refused.
    pub pinned: Option<String>,
}

impl Explain {
    /// Nodes counted.
    pub fn total(&self) -> usize {
        self.unavailable + self.constrained + self.platform + self.max_replicas + self.resources
    }

    /// The reason in Swarm's words, e.g. `no suitable node (insufficient resources on 2 nodes)`.
    pub fn message(&self) -> String {
        let mut why = Vec::new();
        let on = |n: usize| format!("{n} node{}", plural(n));
        if let Some(p) = self.pinned.as_ref().filter(|_| self.constrained > 0) {
            why.push(p.clone());
        }
        if self.unavailable > 0 {
            why.push(format!(
                "{} not available for new tasks",
                on(self.unavailable)
            ));
        }
        if self.constrained > 0 {
            why.push(format!(
                "scheduling constraints not satisfied on {}",
                on(self.constrained)
            ));
        }
        if self.platform > 0 {
            why.push(format!("unsupported platform on {}", on(self.platform)));
        }
        if self.max_replicas > 0 {
            why.push(format!(
                "max replicas per node limit exceed on {}",
                on(self.max_replicas)
            ));
        }
        if self.resources > 0 {
            why.push(format!("insufficient resources on {}", on(self.resources)));
        }
        format!("no suitable node ({})", why.join("; "))
    }
}

/// The slow path: the node for one task of a service with [`Demands`], or why there is none.
/// `mine` and `load` count tasks per node position, `used` reservations per node position,
/// `holds` says which nodes hold the task's image (a tie-break only).
pub(super) fn place_demanding(
    svc: &StoredService,
    d: &Demands,
    state: &ClusterState,
    mine: &[usize],
    load: &[usize],
    used: &[(i64, i64)],
    holds: &[bool],
) -> Result<usize, Explain> {
    let mut refused = Explain::default();
    let mut fits: Vec<usize> = Vec::new();
    for (pos, n) in state.nodes.iter().enumerate() {
        let n = &n.obj;
        let (cpu, mem) = capacity(n);
        let (cpu_used, mem_used) = used.get(pos).copied().unwrap_or((0, 0));
        if !node_schedulable(n) {
            refused.unavailable += 1;
        } else if !constraints_met(svc, n) {
            refused.constrained += 1;
        } else if !platform_ok(d, n) {
            refused.platform += 1;
        } else if d.max_per_node.is_some_and(|m| mine[pos] >= m) {
            refused.max_replicas += 1;
        } else if cpu_used.saturating_add(d.cpu) > cpu || mem_used.saturating_add(d.memory) > mem {
            refused.resources += 1;
        } else {
            fits.push(pos);
        }
    }
    // Among the nodes left: the fewest of the service's tasks, the fewest overall, then one
    // that holds the image, then the first.
    let key = |pos: usize| {
        (
            mine[pos],
            load[pos],
            !holds.get(pos).copied().unwrap_or(false),
            pos,
        )
    };
    // Spread preferences, outermost first: keep the group (by label value) holding the fewest
    // of the service's tasks among the nodes that fit; between groups holding as many, one
    // whose node of choice holds the image, then the first label value.
    for spread in &d.spread {
        let mut groups: HashMap<&str, (usize, Vec<usize>)> = HashMap::new();
        for &pos in &fits {
            let g = groups
                .entry(spread_value(spread, &state.nodes[pos].obj))
                .or_default();
            g.0 += mine[pos];
            g.1.push(pos);
        }
        if let Some((_, (_, members))) = groups.into_iter().min_by_key(|(label, (n, members))| {
            let lacks = members.iter().map(|&p| key(p)).min().map(|k| k.2);
            (*n, lacks, *label)
        }) {
            fits = members;
        }
    }
    refused.pinned = pin_note(svc);
    fits.into_iter().min_by_key(|&pos| key(pos)).ok_or(refused)
}
