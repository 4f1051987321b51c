//! What the page shows, as one compact JSON document (the `view` of each server-sent event):
//! built by a pure function of the manager's decoded state, so it is table-tested without a
//! cluster. Field names are the page's own (snake case), not Docker's: the page reads Docker's
//! objects through `/api/docker` when it needs them whole.

use serde::Serialize;
use shoal_api::dispatch::NodeUsage;
use shoal_api::images::StoredNodeImages;
use shoal_api::models::{NodeSpecRoleEnum, TaskState};
use shoal_api::objects::{is_terminal, Mode};
use shoal_manager::state::ClusterState;
use std::collections::HashMap;

/// The whole page's data.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct View {
    /// The swarm.
    pub cluster: ClusterView,
    /// Nodes, sorted by host name.
    pub nodes: Vec<NodeView>,
    /// Services, sorted by name.
    pub services: Vec<ServiceView>,
    /// Tasks the page shows: those meant to run or not yet ended (history is left out).
    pub tasks: Vec<TaskView>,
    /// Floating addresses and their holders.
    pub floating: Vec<FloatingView>,
    /// Images and the nodes whose engine has each.
    pub images: Vec<ImageView>,
}

/// One image and where it is.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ImageView {
    /// Image ID (the same content has the same ID everywhere).
    pub id: String,
    /// Its `repo:tag` names on any node.
    pub tags: Vec<String>,
    /// `os/architecture[/variant]`.
    pub platform: String,
    /// Bytes.
    pub size: i64,
    /// Nodes (IDs) whose engine has it, sorted.
    pub nodes: Vec<String>,
}

/// The swarm as a whole.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClusterView {
    /// Swarm ID.
    pub id: String,
    /// Swarm name (Docker's is always "default").
    pub name: String,
    /// The raft leader's node ID, when one is known.
    pub leader: Option<String>,
    /// How many nodes are managers.
    pub managers: usize,
    /// When this view was made (RFC 3339), so the page can show its age.
    pub generated: String,
}

/// One node's column header.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeView {
    /// Node ID.
    pub id: String,
    /// Host name (the column's title).
    pub hostname: String,
    /// `manager` or `worker`.
    pub role: String,
    /// Whether it is the raft leader.
    pub leader: bool,
    /// `ready`, `down`, `unknown`, `disconnected`.
    pub state: String,
    /// `active`, `pause`, `drain`.
    pub availability: String,
    /// The address other nodes reach it at.
    pub addr: String,
    /// CPUs its engine reports.
    pub cpus: f64,
    /// Memory its engine reports, bytes.
    pub memory: i64,
    /// CPU busy, percent of all its CPUs, as it last reported (None: not reported here).
    pub cpu_used_percent: Option<f64>,
    /// Memory in use, bytes, as it last reported.
    pub memory_used: Option<u64>,
    /// CPUs reserved by the tasks meant to run on it.
    pub cpus_reserved: f64,
    /// Memory reserved by the tasks meant to run on it, bytes.
    pub memory_reserved: i64,
    /// Its engine's version.
    pub engine: String,
}

/// One service's row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceView {
    /// Service ID.
    pub id: String,
    /// Service name.
    pub name: String,
    /// The stack it belongs to (`com.docker.stack.namespace`).
    pub stack: Option<String>,
    /// `replicated`, `global`, `replicated-job`, `global-job`.
    pub mode: String,
    /// Tasks wanted: replicas, or eligible-node count for a global service (tasks meant to run).
    pub desired: u64,
    /// Tasks running now (and meant to).
    pub running: u64,
    /// The image of its task template.
    pub image: String,
    /// Published ports.
    pub ports: Vec<PortView>,
    /// A rolling update or rollback, while one is recorded.
    pub update: Option<UpdateView>,
    /// Why tasks of it wait (the scheduler's words), one per distinct reason.
    pub pending: Vec<String>,
}

/// One published port.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PortView {
    /// Port on every node (or on its node, mode host).
    pub published: i64,
    /// Port in the container.
    pub target: i64,
    /// `tcp`, `udp`, `sctp`.
    pub protocol: String,
    /// `ingress` or `host`.
    pub mode: String,
}

/// An update's state and message, as `docker service inspect` shows `UpdateStatus`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UpdateView {
    /// `updating`, `paused`, `completed`, `rollback_started`...
    pub state: String,
    /// Its message.
    pub message: String,
}

/// One task's card.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskView {
    /// Task ID.
    pub id: String,
    /// Its service's ID.
    pub service: String,
    /// Its slot (replicated) or 0 (global).
    pub slot: u64,
    /// Its node, once scheduled.
    pub node: Option<String>,
    /// Observed state.
    pub state: String,
    /// Desired state.
    pub desired: String,
    /// The last status message.
    pub message: String,
    /// The last error, if any.
    pub error: String,
    /// When it last changed (RFC 3339).
    pub updated: String,
}

/// One floating address.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FloatingView {
    /// `ADDR/PREFIX`.
    pub address: String,
    /// The holder's node ID.
    pub holder: Option<String>,
    /// The lease state as `shoal floating-ip ls` words it.
    pub lease: String,
}

/// What changed from one view to the next, for a page that has the first: everything but the
/// tasks whole (they are small), and the tasks that are new or changed and those that went.
/// With 1,000 tasks a view is about 300 KB and a scale's delta a few KB.
#[derive(Debug, Serialize, PartialEq)]
pub struct ViewDelta<'a> {
    /// The swarm.
    pub cluster: &'a ClusterView,
    /// Every node.
    pub nodes: &'a [NodeView],
    /// Every service.
    pub services: &'a [ServiceView],
    /// Tasks new or changed since the previous view.
    pub tasks_upsert: Vec<&'a TaskView>,
    /// IDs of tasks the previous view had and this one has not.
    pub tasks_remove: Vec<&'a str>,
    /// Every floating address.
    pub floating: &'a [FloatingView],
    /// Every image.
    pub images: &'a [ImageView],
}

/// The delta that turns `prev` into `next` on the page.
pub fn delta<'a>(prev: &'a View, next: &'a View) -> ViewDelta<'a> {
    let before: HashMap<&str, &TaskView> = prev.tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    let now: std::collections::HashSet<&str> = next.tasks.iter().map(|t| t.id.as_str()).collect();
    ViewDelta {
        cluster: &next.cluster,
        nodes: &next.nodes,
        services: &next.services,
        tasks_upsert: next
            .tasks
            .iter()
            .filter(|t| before.get(t.id.as_str()) != Some(t))
            .collect(),
        tasks_remove: prev
            .tasks
            .iter()
            .map(|t| t.id.as_str())
            .filter(|id| !now.contains(id))
            .collect(),
        floating: &next.floating,
        images: &next.images,
    }
}

/// Builds the page's view. `leader` is the raft leader's node ID; `floating` is what
/// `shoal floating-ip ls` answers (`Address`, `Holder` as a host name, `Lease`); `usage` each
/// node's last reported CPU and memory in use (the leader's; empty elsewhere).
pub fn build(
    state: &ClusterState,
    leader: Option<&str>,
    floating: &[serde_json::Value],
    usage: &HashMap<String, NodeUsage>,
    images: &[StoredNodeImages],
    generated: String,
) -> View {
    // A node that is not ready cannot report its tasks' end: their last state is stale.
    let gone: std::collections::HashSet<&str> = state
        .nodes
        .iter()
        .filter(|n| {
            n.obj.status.as_ref().and_then(|s| s.state) != Some(shoal_api::models::NodeState::READY)
        })
        .filter_map(|n| n.obj.id.as_deref())
        .collect();
    let mut reserved: HashMap<&str, (f64, i64)> = HashMap::new();
    let mut running: HashMap<&str, u64> = HashMap::new();
    let mut meant: HashMap<&str, u64> = HashMap::new();
    let mut pending: HashMap<&str, Vec<String>> = HashMap::new();
    let mut tasks = Vec::new();
    for t in &state.tasks {
        let t = &t.obj;
        if t.is_attachment() {
            continue;
        }
        let desired = t.desired();
        let observed = t.state();
        let runs = shoal_api::objects::runs(desired);
        if runs {
            *meant.entry(t.service_id()).or_default() += 1;
            if observed == TaskState::RUNNING {
                *running.entry(t.service_id()).or_default() += 1;
            }
            if let Some(n) = t.node_id() {
                let res = t
                    .task
                    .spec
                    .as_ref()
                    .and_then(|s| s.resources.as_ref())
                    .and_then(|r| r.reservations.as_ref());
                let e = reserved.entry(n).or_default();
                e.0 += res.and_then(|r| r.nano_cpus).unwrap_or(0) as f64 / 1e9;
                e.1 =
                    e.1.saturating_add(res.and_then(|r| r.memory_bytes).unwrap_or(0));
            }
        }
        if observed == TaskState::PENDING && runs {
            let why = t.task.status.as_ref().and_then(|s| s.err.clone());
            if let Some(why) = why.filter(|w| !w.is_empty()) {
                let list = pending.entry(t.service_id()).or_default();
                if !list.contains(&why) {
                    list.push(why);
                }
            }
        }
        // History (ended and not meant to run) is what `docker service ps` shows greyed out;
        // the page shows what runs or is on its way.
        // A task on its way out is shown until it ends, unless its node is gone.
        let node_gone = t.node_id().is_some_and(|n| gone.contains(n));
        if !runs && (is_terminal(observed) || node_gone) {
            continue;
        }
        let status = t.task.status.as_ref();
        tasks.push(TaskView {
            id: t.id().to_string(),
            service: t.service_id().to_string(),
            slot: t.slot(),
            node: t.node_id().filter(|n| !n.is_empty()).map(str::to_string),
            state: observed.to_string(),
            desired: desired.to_string(),
            message: status.and_then(|s| s.message.clone()).unwrap_or_default(),
            error: status.and_then(|s| s.err.clone()).unwrap_or_default(),
            updated: t.task.updated_at.clone().unwrap_or_default(),
        });
    }
    tasks.sort_by(|a, b| (&a.service, a.slot, &a.id).cmp(&(&b.service, b.slot, &b.id)));

    let mut nodes: Vec<NodeView> = state
        .nodes
        .iter()
        .map(|n| {
            let n = &n.obj;
            let id = n.id.clone().unwrap_or_default();
            let spec = n.spec.as_ref();
            let desc = n.description.as_ref();
            let res = desc.and_then(|d| d.resources.as_ref());
            let (cpus_reserved, memory_reserved) =
                reserved.get(id.as_str()).copied().unwrap_or_default();
            NodeView {
                hostname: desc
                    .and_then(|d| d.hostname.clone())
                    .unwrap_or_else(|| id.clone()),
                role: match spec.and_then(|s| s.role) {
                    Some(NodeSpecRoleEnum::MANAGER) => "manager",
                    _ => "worker",
                }
                .to_string(),
                leader: leader == Some(id.as_str()),
                state: n
                    .status
                    .as_ref()
                    .and_then(|s| s.state)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "unknown".into()),
                availability: spec
                    .and_then(|s| s.availability)
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "active".into()),
                addr: n
                    .status
                    .as_ref()
                    .and_then(|s| s.addr.clone())
                    .unwrap_or_default(),
                cpus: res.and_then(|r| r.nano_cpus).unwrap_or(0) as f64 / 1e9,
                memory: res.and_then(|r| r.memory_bytes).unwrap_or(0),
                cpu_used_percent: usage
                    .get(&id)
                    .map(|u| (u.cpu_percent * 10.0).round() / 10.0),
                memory_used: usage.get(&id).map(|u| u.memory_used),
                cpus_reserved,
                memory_reserved,
                engine: desc
                    .and_then(|d| d.engine.as_ref())
                    .and_then(|e| e.engine_version.clone())
                    .unwrap_or_default(),
                id,
            }
        })
        .collect();
    nodes.sort_by(|a, b| (&a.hostname, &a.id).cmp(&(&b.hostname, &b.id)));
    let managers = nodes.iter().filter(|n| n.role == "manager").count();

    let mut services: Vec<ServiceView> = state
        .services
        .values()
        .map(|s| {
            let s = &s.obj;
            let spec = s.spec();
            let (mode, desired) = match s.mode() {
                Mode::Replicated(n) => ("replicated", n),
                Mode::Global => ("global", meant.get(s.id()).copied().unwrap_or(0)),
                Mode::ReplicatedJob { .. } => {
                    ("replicated-job", meant.get(s.id()).copied().unwrap_or(0))
                }
                Mode::GlobalJob => ("global-job", meant.get(s.id()).copied().unwrap_or(0)),
            };
            let ports = s
                .service
                .endpoint
                .as_ref()
                .and_then(|e| e.ports.as_ref())
                .or_else(|| spec.endpoint_spec.as_ref().and_then(|e| e.ports.as_ref()))
                .map(|ps| {
                    ps.iter()
                        .map(|p| PortView {
                            published: p.published_port.unwrap_or(0),
                            target: p.target_port.unwrap_or(0),
                            protocol: p
                                .protocol
                                .map(|x| x.to_string())
                                .unwrap_or_else(|| "tcp".into()),
                            mode: p
                                .publish_mode
                                .map(|x| x.to_string())
                                .unwrap_or_else(|| "ingress".into()),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let update = s.service.update_status.as_ref().and_then(|u| {
                Some(UpdateView {
                    state: u.state?.to_string(),
                    message: u.message.clone().unwrap_or_default(),
                })
            });
            ServiceView {
                id: s.id().to_string(),
                name: s.name().to_string(),
                stack: spec
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("com.docker.stack.namespace"))
                    .cloned(),
                mode: mode.to_string(),
                desired,
                running: running.get(s.id()).copied().unwrap_or(0),
                image: spec
                    .task_template
                    .as_ref()
                    .and_then(|t| t.container_spec.as_ref())
                    .and_then(|c| c.image.clone())
                    .unwrap_or_default(),
                ports,
                update,
                pending: pending.remove(s.id()).unwrap_or_default(),
            }
        })
        .collect();
    services.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));

    let by_name: HashMap<&str, &str> = nodes
        .iter()
        .map(|n| (n.hostname.as_str(), n.id.as_str()))
        .collect();
    let floating = floating
        .iter()
        .map(|f| FloatingView {
            address: f["Address"].as_str().unwrap_or_default().to_string(),
            // `floating-ip ls` names the holder by host name; the page keys nodes by ID.
            holder: f["Holder"]
                .as_str()
                .map(|h| by_name.get(h).map_or(h, |id| *id).to_string()),
            lease: f["Lease"].as_str().unwrap_or_default().to_string(),
        })
        .collect();

    // Images by ID, from the nodes the state still has.
    let known: std::collections::HashSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    let mut by_id: std::collections::BTreeMap<&str, ImageView> = std::collections::BTreeMap::new();
    for per_node in images.iter().filter(|n| known.contains(n.node.as_str())) {
        for i in &per_node.images {
            let e = by_id.entry(i.id.as_str()).or_insert_with(|| ImageView {
                id: i.id.clone(),
                tags: Vec::new(),
                platform: [i.os.as_str(), i.architecture.as_str(), i.variant.as_str()]
                    .iter()
                    .filter(|p| !p.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join("/"),
                size: i.size,
                nodes: Vec::new(),
            });
            for t in &i.repo_tags {
                if !e.tags.contains(t) {
                    e.tags.push(t.clone());
                }
            }
            e.nodes.push(per_node.node.clone());
        }
    }
    let mut images: Vec<ImageView> = by_id.into_values().collect();
    for i in &mut images {
        i.tags.sort();
        i.nodes.sort();
    }
    images.sort_by(|a, b| (a.tags.first(), &a.id).cmp(&(b.tags.first(), &b.id)));

    let cluster = state.cluster.as_ref();
    View {
        cluster: ClusterView {
            id: cluster.and_then(|c| c.obj.id.clone()).unwrap_or_default(),
            name: cluster
                .and_then(|c| c.obj.spec.as_ref()?.name.clone())
                .unwrap_or_else(|| "default".into()),
            leader: leader.map(str::to_string),
            managers,
            generated,
        },
        nodes,
        services,
        tasks,
        floating,
        images,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shoal_manager::state::Versioned;

    fn v<T: serde::de::DeserializeOwned>(j: serde_json::Value) -> Versioned<T> {
        Versioned {
            obj: serde_json::from_value(j).unwrap(),
            version: 1,
        }
    }

    fn node(id: &str, host: &str, state: &str) -> serde_json::Value {
        json!({"ID": id, "Spec": {"Role": if id == "n1" {"manager"} else {"worker"}, "Availability": "active"},
               "Description": {"Hostname": host, "Resources": {"NanoCPUs": 2_000_000_000i64, "MemoryBytes": 1024}},
               "Status": {"State": state, "Addr": "10.0.0.1"}})
    }

    fn task(
        id: &str,
        slot: u64,
        node: &str,
        state: &str,
        desired: &str,
        err: &str,
    ) -> serde_json::Value {
        json!({"ID": id, "ServiceID": "s1", "Slot": slot, "NodeID": node, "DesiredState": desired,
               "Status": {"State": state, "Err": err}, "ShoalServiceName": "web"})
    }

    #[test]
    fn the_view_shows_what_runs_or_is_on_its_way_and_counts_as_the_cli_does() {
        let services = std::collections::BTreeMap::from([(
            "s1".to_string(),
            v(json!({"ID": "s1", "Spec": {"Name": "web",
                "Labels": {"com.docker.stack.namespace": "demo"},
                "Mode": {"Replicated": {"Replicas": 3}},
                "TaskTemplate": {"ContainerSpec": {"Image": "web:1"}},
                "EndpointSpec": {"Ports": [{"TargetPort": 80, "PublishedPort": 8080}]}}})),
        )]);
        let state = ClusterState {
            nodes: vec![
                v(node("n1", "alpha", "ready")),
                v(node("n2", "beta", "down")),
            ],
            services,
            tasks: vec![
                v(task("t-run", 1, "n1", "running", "running", "")),
                v(task(
                    "t-pend",
                    2,
                    "",
                    "pending",
                    "running",
                    "no suitable node (1 node down)",
                )),
                v(task(
                    "t-pend2",
                    3,
                    "",
                    "pending",
                    "running",
                    "no suitable node (1 node down)",
                )),
                // History: ended and not meant to run.
                v(task("t-old", 1, "n1", "complete", "shutdown", "")),
                // Stopping on a live node: shown until it ends.
                v(task("t-stop", 4, "n1", "running", "shutdown", "")),
                // On a down node, told to stop: it can never report its end; not shown.
                v(task("t-lost", 2, "n2", "running", "shutdown", "")),
            ],
            ..Default::default()
        };
        let usage = HashMap::from([(
            "n1".to_string(),
            NodeUsage {
                cpu_percent: 12.345,
                memory_used: 512,
                memory_total: 1024,
            },
        )]);
        let floating =
            [json!({"Address": "10.0.0.9/24", "Holder": "alpha", "Lease": "held (epoch 2)"})];
        let images = [
            StoredNodeImages {
                node: "n1".into(),
                images: vec![shoal_api::images::NodeImage {
                    id: "sha256:aa".into(),
                    repo_tags: vec!["web:1".into()],
                    os: "linux".into(),
                    architecture: "amd64".into(),
                    ..Default::default()
                }],
            },
            StoredNodeImages {
                node: "n2".into(),
                images: vec![shoal_api::images::NodeImage {
                    id: "sha256:aa".into(),
                    repo_tags: vec!["web:1".into(), "web:latest".into()],
                    ..Default::default()
                }],
            },
            // A node the cluster no longer has: not shown.
            StoredNodeImages {
                node: "gone".into(),
                images: vec![shoal_api::images::NodeImage {
                    id: "sha256:bb".into(),
                    ..Default::default()
                }],
            },
        ];
        let view = build(&state, Some("n1"), &floating, &usage, &images, "now".into());
        // A delta carries only the tasks that changed, and those that went.
        let mut next = view.clone();
        next.tasks.retain(|t| t.id != "t-stop");
        next.tasks[0].state = "failed".into();
        let d = delta(&view, &next);
        let up: Vec<&str> = d.tasks_upsert.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(up, ["t-run"]);
        assert_eq!(d.tasks_remove, ["t-stop"]);
        assert!(delta(&view, &view).tasks_upsert.is_empty());
        assert_eq!(view.images.len(), 1, "one image, wherever it is");
        assert_eq!(view.images[0].nodes, ["n1", "n2"]);
        assert_eq!(view.images[0].tags, ["web:1", "web:latest"]);
        assert_eq!(view.images[0].platform, "linux/amd64");

        let shown: Vec<&str> = view.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(shown, ["t-run", "t-pend", "t-pend2", "t-stop"]);
        let s = &view.services[0];
        assert_eq!((s.desired, s.running), (3, 1));
        assert_eq!(s.stack.as_deref(), Some("demo"));
        assert_eq!(s.image, "web:1");
        assert_eq!(s.ports[0].published, 8080);
        assert_eq!(
            s.pending,
            ["no suitable node (1 node down)"],
            "one line per reason"
        );
        assert_eq!(view.tasks[1].node, None, "pending tasks have no node");

        let names: Vec<&str> = view.nodes.iter().map(|n| n.hostname.as_str()).collect();
        assert_eq!(names, ["alpha", "beta"]);
        assert!(view.nodes[0].leader && !view.nodes[1].leader);
        assert_eq!(view.nodes[0].cpus, 2.0);
        assert_eq!(view.nodes[0].cpu_used_percent, Some(12.3));
        assert_eq!(view.nodes[1].cpu_used_percent, None, "beta never reported");
        assert_eq!(view.cluster.managers, 1);
        assert_eq!(
            view.floating[0].holder.as_deref(),
            Some("n1"),
            "holder by node ID"
        );
    }
}
