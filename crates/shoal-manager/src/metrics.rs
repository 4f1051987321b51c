//! The manager's Prometheus metrics (issue 21): what it measures as it works (API requests,
//! raft commits, scheduling, leader changes), and the cluster's state as gauges computed at each
//! scrape from the decoded view ([`cluster_families`]). The binary's `/metrics` listener encodes
//! them with the agent's.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use shoal_api::models::{NodeSpecRoleEnum, TaskState};
use shoal_api::objects::Mode;
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// Labels as name-value pairs.
pub type Labels = Vec<(String, String)>;
/// A histogram family (one constructor for all: latency buckets from 0.5 ms to about 16 s).
pub type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The manager's own instruments, shared by the handlers and loops that feed them.
pub struct ManagerMetrics {
    /// API requests by route template, method and status.
    pub api_requests: Family<Labels, Counter>,
    /// API request duration (to the response's head) by route template and method.
    pub api_duration: Histograms,
    /// Time from a task's creation to its assignment to a node.
    pub scheduling: Histogram,
    /// Raft leader changes this manager saw.
    pub leader_changes: Counter,
    /// Whether this manager leads now (1) or not (0).
    pub is_leader: Gauge,
    /// The raft term this manager is in.
    pub raft_term: Gauge,
}

/// The one set of instruments of this process.
pub static METRICS: LazyLock<ManagerMetrics> = LazyLock::new(|| ManagerMetrics {
    api_requests: Family::default(),
    api_duration: Family::new_with_constructor(latency),
    scheduling: latency(),
    leader_changes: Counter::default(),
    is_leader: Gauge::default(),
    raft_term: Gauge::default(),
});

/// Registers the manager's instruments (clones share the same values).
pub fn register(r: &mut Registry) {
    let m = &*METRICS;
    r.register(
        "shoal_api_requests",
        "Docker API requests served, by route, method and status",
        m.api_requests.clone(),
    );
    r.register(
        "shoal_api_request_duration_seconds",
        "Docker API request duration until the response head, by route and method",
        m.api_duration.clone(),
    );
    r.register(
        "shoal_scheduling_latency_seconds",
        "Time from a task's creation to its assignment to a node",
        m.scheduling.clone(),
    );
    r.register(
        "shoal_raft_leader_changes",
        "Raft leader changes seen by this manager",
        m.leader_changes.clone(),
    );
    r.register(
        "shoal_raft_is_leader",
        "1 while this manager is the raft leader",
        m.is_leader.clone(),
    );
    r.register(
        "shoal_raft_term",
        "The raft term this manager is in",
        m.raft_term.clone(),
    );
    r.register(
        "shoal_raft_commit_seconds",
        "Time for a write to be committed on a quorum and applied here",
        shoal_store::metrics::WRITE_SECONDS.clone(),
    );
}

/// Records one API request (called by the router's middleware).
pub fn observe_request(route: &str, method: &str, status: u16, seconds: f64) {
    let m = &*METRICS;
    m.api_requests
        .get_or_create(&vec![
            ("route".into(), route.into()),
            ("method".into(), method.into()),
            ("status".into(), status.to_string()),
        ])
        .inc();
    m.api_duration
        .get_or_create(&vec![
            ("route".into(), route.into()),
            ("method".into(), method.into()),
        ])
        .observe(seconds);
}

/// Follows raft's view of the leader: counts changes, sets `is_leader` and the term.
pub async fn follow_raft(store: shoal_store::Store, stop: tokio_util::sync::CancellationToken) {
    let mut metrics = store.raft().metrics();
    let mut last = None;
    loop {
        let (leader, term, me) = {
            let m = metrics.borrow_and_update();
            (m.current_leader, m.current_term, m.id)
        };
        if leader.is_some() && leader != last {
            if last.is_some() {
                METRICS.leader_changes.inc();
            }
            last = leader;
        }
        METRICS.is_leader.set(i64::from(leader == Some(me)));
        METRICS
            .raft_term
            .set(i64::try_from(term).unwrap_or(i64::MAX));
        tokio::select! {
            _ = stop.cancelled() => return,
            r = metrics.changed() => if r.is_err() { return },
        }
    }
}

/// The cluster as gauges, from `state` as it is now: nodes by role, state and availability;
/// tasks by service and state; desired and running replicas per service. Every manager
/// answers the same (its copy of the store), so scraping any one of them is enough.
pub fn cluster_families(r: &mut Registry, state: &shoal_manager_state::ClusterState) {
    let nodes: Family<Labels, Gauge> = Family::default();
    let mut node_counts: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    for n in &state.nodes {
        let n = &n.obj;
        let role = match n.spec.as_ref().and_then(|s| s.role) {
            Some(NodeSpecRoleEnum::MANAGER) => "manager",
            _ => "worker",
        };
        let st = n
            .status
            .as_ref()
            .and_then(|s| s.state)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".into());
        let av = n
            .spec
            .as_ref()
            .and_then(|s| s.availability)
            .map(|a| a.to_string())
            .unwrap_or_else(|| "active".into());
        *node_counts.entry((role.into(), st, av)).or_default() += 1;
    }
    for ((role, st, av), count) in node_counts {
        nodes
            .get_or_create(&vec![
                ("role".into(), role),
                ("state".into(), st),
                ("availability".into(), av),
            ])
            .set(count);
    }
    r.register(
        "shoal_nodes",
        "Nodes by role, state and availability",
        nodes,
    );

    let names: BTreeMap<&str, &str> = state
        .services
        .values()
        .map(|s| (s.obj.id(), s.obj.name()))
        .collect();
    let tasks: Family<Labels, Gauge> = Family::default();
    let mut task_counts: BTreeMap<(&str, String), i64> = BTreeMap::new();
    let mut running: BTreeMap<&str, i64> = BTreeMap::new();
    let mut meant: BTreeMap<&str, i64> = BTreeMap::new();
    for t in &state.tasks {
        let t = &t.obj;
        if t.is_attachment() {
            continue;
        }
        let Some(name) = names.get(t.service_id()) else {
            continue;
        };
        *task_counts
            .entry((name, t.state().to_string()))
            .or_default() += 1;
        if shoal_api::objects::runs(t.desired()) {
            *meant.entry(name).or_default() += 1;
            if t.state() == TaskState::RUNNING {
                *running.entry(name).or_default() += 1;
            }
        }
    }
    for ((service, st), count) in task_counts {
        tasks
            .get_or_create(&vec![
                ("service".into(), service.into()),
                ("state".into(), st),
            ])
            .set(count);
    }
    r.register("shoal_tasks", "Tasks by service and observed state", tasks);

    let desired: Family<Labels, Gauge> = Family::default();
    let run: Family<Labels, Gauge> = Family::default();
    for s in state.services.values() {
        let s = &s.obj;
        let label = vec![("service".into(), s.name().to_string())];
        let want = match s.mode() {
            Mode::Replicated(n) => i64::try_from(n).unwrap_or(i64::MAX),
            _ => meant.get(s.name()).copied().unwrap_or(0),
        };
        desired.get_or_create(&label).set(want);
        run.get_or_create(&label)
            .set(running.get(s.name()).copied().unwrap_or(0));
    }
    r.register(
        "shoal_service_replicas_desired",
        "Tasks a service wants: its replicas, or for global services and jobs the tasks meant to run",
        desired,
    );
    r.register(
        "shoal_service_replicas_running",
        "Tasks of a service running now and meant to",
        run,
    );

    // Where images are (issue 22): the index the scheduler and transfers read.
    let images: Family<Labels, Gauge> = Family::default();
    for n in &state.nodes {
        let id = n.obj.id.as_deref().unwrap_or_default();
        let name = n
            .obj
            .description
            .as_ref()
            .and_then(|d| d.hostname.as_deref())
            .unwrap_or(id);
        let count = state.node_images.get(id).map_or(0, |i| i.obj.images.len());
        images
            .get_or_create(&vec![("node".into(), name.to_string())])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    r.register(
        "shoal_node_images",
        "Images each node's engine holds, as the swarm's index knows them",
        images,
    );
}

use crate::state as shoal_manager_state;
