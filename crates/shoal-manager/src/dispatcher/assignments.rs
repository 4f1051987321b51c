//! Assignments: what each node must run and route, computed from one shared view of the store
//! and streamed to its session. On each change (coalesced) only the nodes the change concerns
//! are recomputed, patched in place, and sent only if they differ.

use crate::db;
use crate::routes::{route_footprint, Routing};
use crate::state::{ClusterState, Delta, LiveState, SharedReader};
use base64::Engine as _;
use shoal_api::dispatch::{FilePayload, NetworkInfo, NodeAssignments};
use shoal_api::models::{Config, Secret};
use shoal_api::objects::{is_terminal, StoredTask};
use shoal_api::Role;
use shoal_control::allocator::{network_subnet, network_vni};
use shoal_store::Store;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Computes what `node_id` must run and route, from one snapshot.
pub fn assignments(store: &Store, state: &ClusterState, node_id: &str) -> NodeAssignments {
    let tasks = state
        .tasks
        .iter()
        .map(|t| &t.obj)
        .filter(|t| t.node_id() == Some(node_id));
    build(
        &mut Payloads::new(store),
        state,
        &Routing::new(state),
        node_id,
        tasks,
    )
}

/// Secret and config payloads read during one round of computing assignments, so that a
/// secret many nodes use is read and decoded once.
struct Payloads<'a> {
    store: &'a Store,
    secrets: HashMap<String, Option<FilePayload>>,
    configs: HashMap<String, Option<FilePayload>>,
}

impl<'a> Payloads<'a> {
    fn new(store: &'a Store) -> Self {
        Payloads {
            store,
            secrets: HashMap::new(),
            configs: HashMap::new(),
        }
    }

    fn secret(&mut self, id: &str) -> Option<FilePayload> {
        let store = self.store;
        cached(&mut self.secrets, id, || {
            let spec = db::get::<Secret>(store, id)?.obj.spec.unwrap_or_default();
            Some((spec.name, spec.data))
        })
    }

    fn config(&mut self, id: &str) -> Option<FilePayload> {
        let store = self.store;
        cached(&mut self.configs, id, || {
            let spec = db::get::<Config>(store, id)?.obj.spec.unwrap_or_default();
            Some((spec.name, spec.data))
        })
    }
}

/// A payload from the cache, or read once through `read` (name and base64 data).
fn cached(
    cache: &mut HashMap<String, Option<FilePayload>>,
    id: &str,
    read: impl FnOnce() -> Option<(Option<String>, Option<String>)>,
) -> Option<FilePayload> {
    cache
        .entry(id.to_string())
        .or_insert_with(|| {
            read().map(|(name, data)| FilePayload {
                id: id.to_string(),
                name: name.unwrap_or_default(),
                data: decode(data.as_deref()),
            })
        })
        .clone()
}

/// One node's assignments: `tasks` are the tasks assigned to it (any order).
fn build<'a>(
    payloads: &mut Payloads,
    state: &ClusterState,
    routing: &Routing,
    node_id: &str,
    tasks: impl Iterator<Item = &'a StoredTask>,
) -> NodeAssignments {
    let mut out = NodeAssignments {
        tasks: tasks.cloned().collect(),
        ..Default::default()
    };
    out.tasks.sort_by(|a, b| a.id().cmp(b.id()));
    fill(payloads, state, routing, node_id, &mut out);
    out
}

/// Brings everything but the task list up to date with `out.tasks`: the secrets and configs
/// their running tasks use, their networks, the routes on those networks and every published
/// port. Returns true if anything changed.
fn fill(
    payloads: &mut Payloads,
    state: &ClusterState,
    routing: &Routing,
    node_id: &str,
    out: &mut NodeAssignments,
) -> bool {
    let mut secret_ids = HashSet::new();
    let mut config_ids = HashSet::new();
    let mut volume_names: HashSet<String> = HashSet::new();
    let mut net_ids: BTreeMap<String, ()> = BTreeMap::new();
    for t in &out.tasks {
        let live = !is_terminal(t.state());
        if live && t.meant_to_run() {
            let cs = t.task.spec.as_ref().and_then(|s| s.container_spec.as_ref());
            for s in cs.and_then(|c| c.secrets.as_ref()).into_iter().flatten() {
                secret_ids.extend(s.secret_id.clone());
            }
            for c in cs.and_then(|c| c.configs.as_ref()).into_iter().flatten() {
                config_ids.extend(c.config_id.clone());
            }
            for m in cs.and_then(|c| c.mounts.as_ref()).into_iter().flatten() {
                if m.typ == Some(shoal_api::models::MountType::VOLUME) {
                    volume_names.extend(m.source.clone());
                }
            }
        }
        if live {
            for a in &t.networks_attachments {
                net_ids.insert(a.network.id.clone(), ());
            }
        }
    }
    let mut secrets: Vec<FilePayload> = secret_ids
        .iter()
        .filter_map(|id| payloads.secret(id))
        .collect();
    let mut configs: Vec<FilePayload> = config_ids
        .iter()
        .filter_map(|id| payloads.config(id))
        .collect();
    secrets.sort_by(|a, b| a.id.cmp(&b.id));
    configs.sort_by(|a, b| a.id.cmp(&b.id));
    // The routing mesh: every node answers published ports, so every node carries ingress.
    if let Some(ingress) = &routing.mesh {
        net_ids.insert(ingress.clone(), ());
    }
    let mut networks = Vec::new();
    for n in &state.networks {
        let Some(id) = n.obj.id.clone() else { continue };
        if !net_ids.contains_key(&id) {
            continue;
        }
        if let Some((subnet, gateway)) = network_subnet(&n.obj) {
            let peers = routing.peers(&id, node_id);
            networks.push(NetworkInfo {
                id,
                name: n.obj.name.clone().unwrap_or_default(),
                subnet,
                gateway,
                internal: n.obj.internal.unwrap_or(false),
                ingress: n.obj.ingress.unwrap_or(false),
                vni: network_vni(&n.obj),
                peers,
            });
        }
    }
    let mut routes = NodeAssignments::default();
    routing.for_node(node_id, &net_ids, &mut routes);
    let mut changed = false;
    // The node's role, so a promoted or demoted node starts or stops its manager.
    let (role, raft_id) = match state
        .nodes
        .iter()
        .find(|n| n.obj.id.as_deref() == Some(node_id))
    {
        Some(n)
            if n.obj.spec.as_ref().and_then(|s| s.role)
                == Some(shoal_api::models::NodeSpecRoleEnum::MANAGER) =>
        {
            let raft_id = db::get::<db::Member>(payloads.store, node_id)
                .map(|m| m.obj.raft_id)
                .unwrap_or(0);
            (Some(Role::Manager), raft_id)
        }
        Some(_) => (Some(Role::Worker), 0),
        None => (None, 0),
    };
    replace_if_changed(&mut out.role, role, &mut changed);
    replace_if_changed(&mut out.raft_id, raft_id, &mut changed);
    replace_if_changed(&mut out.secrets, secrets, &mut changed);
    replace_if_changed(&mut out.configs, configs, &mut changed);
    let volumes = if volume_names.is_empty() {
        Vec::new()
    } else {
        crate::volumes::payloads(payloads.store, &volume_names)
    };
    replace_if_changed(&mut out.volumes, volumes, &mut changed);
    replace_if_changed(&mut out.networks, networks, &mut changed);
    replace_if_changed(&mut out.services, routes.services, &mut changed);
    replace_if_changed(&mut out.published, routes.published, &mut changed);
    changed
}

fn replace_if_changed<T: PartialEq>(cur: &mut T, next: T, changed: &mut bool) {
    if *cur != next {
        *cur = next;
        *changed = true;
    }
}

/// Applies task changes to a node's sorted task list in place; true if it changed.
fn patch_tasks<'a>(
    tasks: &mut Vec<StoredTask>,
    changes: impl Iterator<Item = (&'a str, Option<&'a StoredTask>)>,
) -> bool {
    let mut changed = false;
    for (id, now) in changes {
        match (tasks.binary_search_by(|t| t.id().cmp(id)), now) {
            (Ok(i), Some(t)) => {
                if tasks[i] != *t {
                    tasks[i] = t.clone();
                    changed = true;
                }
            }
            (Ok(i), None) => {
                tasks.remove(i);
                changed = true;
            }
            (Err(i), Some(t)) => {
                tasks.insert(i, t.clone());
                changed = true;
            }
            (Err(_), None) => {}
        }
    }
    changed
}

fn decode(data: Option<&str>) -> Vec<u8> {
    data.and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
        .unwrap_or_default()
}

/// The assignment feed has stopped, so no session can be opened on it.
#[derive(Debug, thiserror::Error)]
#[error("the assignment feed has stopped (its manager is shutting down)")]
pub struct FeedStopped;

/// One node's session: where its assignments go.
struct FeedRequest {
    node_id: String,
    tx: watch::Sender<NodeAssignments>,
}

/// Serves every node's session from one view of the store: on each change (coalesced) it
/// recomputes the assignments of only the nodes the change concerns, from one snapshot, and
/// sends them only if they differ. With 1,000 nodes that is one decode of each changed object,
/// instead of a decode of the whole store per node per change.
#[derive(Clone)]
pub struct AssignmentFeed {
    sessions: mpsc::UnboundedSender<FeedRequest>,
}

impl AssignmentFeed {
    /// Starts serving; stops when `stop` is cancelled.
    pub fn spawn(view: SharedReader, stop: CancellationToken) -> AssignmentFeed {
        let (sessions, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_feeds(view, rx, stop));
        AssignmentFeed { sessions }
    }

    /// Opens a node's session: `tx` gets its assignments at once and whenever they change. A
    /// second session for the same node replaces the first.
    pub fn serve(
        &self,
        node_id: String,
        tx: watch::Sender<NodeAssignments>,
    ) -> Result<(), FeedStopped> {
        self.sessions
            .send(FeedRequest { node_id, tx })
            .map_err(|_| FeedStopped)
    }
}

/// What a refresh means for the sessions.
enum Dirty {
    /// The view was reloaded: rebuild every node's assignments.
    Everything,
    /// These nodes' tasks changed (task IDs per node); with `routes`, every node's routes,
    /// secrets, configs or networks may have changed too.
    Nodes {
        tasks: HashMap<String, Vec<String>>,
        routes: bool,
    },
}

/// The open feeds' state between changes.
struct Feeds {
    open: HashMap<String, watch::Sender<NodeAssignments>>,
    /// Nodes whose session has not had its first assignments yet.
    fresh: HashSet<String>,
    /// Task IDs per node.
    by_node: HashMap<String, HashSet<String>>,
    /// Routes as of the last change that touched them.
    routing: Option<Routing>,
}

impl Feeds {
    fn index(&mut self, state: &ClusterState) {
        self.by_node.clear();
        for t in &state.tasks {
            if let Some(n) = t.obj.node_id() {
                self.by_node
                    .entry(n.to_string())
                    .or_default()
                    .insert(t.obj.id().to_string());
            }
        }
    }

    /// Takes in what changed and says which nodes it concerns.
    fn absorb(&mut self, live: &LiveState, delta: Delta) -> Dirty {
        if delta.reloaded {
            self.index(live.state());
            self.routing = None;
            return Dirty::Everything;
        }
        // Node and member changes carry roles (and nodes' addresses) to every node.
        let mut routes = delta.services || delta.networks || delta.other || delta.nodes;
        if routes {
            self.routing = None;
        }
        let mut tasks: HashMap<String, Vec<String>> = HashMap::new();
        for c in &delta.tasks {
            let now = live.task(&c.id).filter(|_| c.exists).map(|t| &t.obj);
            let was = c.before.as_ref().and_then(|t| t.node_id());
            let is = now.and_then(|t| t.node_id());
            if let Some(n) = was {
                if let Some(ids) = self.by_node.get_mut(n) {
                    ids.remove(&c.id);
                }
                tasks.entry(n.to_string()).or_default().push(c.id.clone());
            }
            if let Some(n) = is {
                self.by_node
                    .entry(n.to_string())
                    .or_default()
                    .insert(c.id.clone());
                if was != is {
                    tasks.entry(n.to_string()).or_default().push(c.id.clone());
                }
            }
            if !routes {
                // Network attachments have no service, but their addresses are peers' endpoints.
                let routed = |t: Option<&StoredTask>| {
                    t.is_some_and(|t| {
                        t.is_attachment()
                            || self
                                .routing
                                .as_ref()
                                .is_none_or(|r| r.routed.contains(t.service_id()))
                    })
                };
                let moved = route_footprint(c.before.as_deref()) != route_footprint(now);
                if moved && (routed(c.before.as_deref()) || routed(now)) {
                    routes = true;
                    self.routing = None;
                }
            }
        }
        self.by_node.retain(|_, ids| !ids.is_empty());
        Dirty::Nodes { tasks, routes }
    }
}

async fn run_feeds(
    mut view: SharedReader,
    mut incoming: mpsc::UnboundedReceiver<FeedRequest>,
    stop: CancellationToken,
) {
    let store = view.store().clone();
    let mut s = Feeds {
        open: HashMap::new(),
        fresh: HashSet::new(),
        by_node: HashMap::new(),
        routing: None,
    };
    let mut accepting = true;
    let mut took = Duration::ZERO;
    loop {
        let (live, delta) = view.refresh().await;
        let started = Instant::now();
        let dirty = s.absorb(&live, delta);
        while let Ok(new) = incoming.try_recv() {
            s.fresh.insert(new.node_id.clone());
            s.open.insert(new.node_id, new.tx);
        }
        let state = live.state();
        let (mut computed, mut sent) = (0usize, 0usize);
        let mut payloads = Payloads::new(&store);
        for (node, tx) in &s.open {
            let rebuild = s.fresh.contains(node) || matches!(dirty, Dirty::Everything);
            let (changes, routes) = match &dirty {
                Dirty::Nodes { tasks, routes } => (tasks.get(node), *routes),
                Dirty::Everything => (None, true),
            };
            if !rebuild && changes.is_none() && !routes {
                continue;
            }
            computed += 1;
            let routing = s.routing.get_or_insert_with(|| Routing::new(state));
            if rebuild {
                let tasks = s
                    .by_node
                    .get(node)
                    .into_iter()
                    .flatten()
                    .filter_map(|id| live.task(id))
                    .map(|t| &t.obj);
                let next = build(&mut payloads, state, routing, node, tasks);
                // The first computation is always sent: the agent acts on nothing before it.
                if s.fresh.contains(node) {
                    tx.send_replace(next);
                    sent += 1;
                } else if tx.send_if_modified(|cur| {
                    let changed = *cur != next;
                    if changed {
                        *cur = next;
                    }
                    changed
                }) {
                    sent += 1;
                }
                continue;
            }
            // Patch in place: only changed tasks are compared and copied.
            let modified = tx.send_if_modified(|cur| {
                let ids = changes.map(Vec::as_slice).unwrap_or_default();
                let now = ids.iter().map(|id| {
                    let t = live
                        .task(id)
                        .map(|t| &t.obj)
                        .filter(|t| t.node_id() == Some(node.as_str()));
                    (id.as_str(), t)
                });
                let tasks_changed = patch_tasks(&mut cur.tasks, now);
                // Routes, secrets and networks follow from the tasks, or from a routing change.
                let rest_changed =
                    (tasks_changed || routes) && fill(&mut payloads, state, routing, node, cur);
                tasks_changed || rest_changed
            });
            if modified {
                sent += 1;
            }
        }
        s.fresh.clear();
        if computed > 0 {
            took = started.elapsed();
            tracing::debug!(computed, sent, ms = took.as_millis() as u64, "assignments");
        }
        s.open.retain(|_, tx| !tx.is_closed());
        drop(live);
        tokio::select! {
            _ = stop.cancelled() => return,
            new = incoming.recv(), if accepting => match new {
                Some(new) => {
                    s.fresh.insert(new.node_id.clone());
                    s.open.insert(new.node_id, new.tx);
                }
                None => accepting = false,
            },
            open = view.changed() => {
                // Coalesce bursts of changes into one pass.
                if !open || !crate::state::settle(took, &stop).await { return; }
            }
        }
    }
}

#[cfg(test)]
mod tests;
