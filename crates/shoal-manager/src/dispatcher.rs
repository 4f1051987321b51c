//! The dispatcher: turns the store into each node's assignments, and agents' status reports into
//! store writes. In-process today; the node-to-node RPC carries the same messages later.

use crate::allocator::{network_subnet, network_vni};
use crate::db::{self, Versioned};
use crate::state::{ClusterState, Delta, LiveState, SharedReader, SharedState};
use base64::Engine as _;
use shoal_api::dispatch::{
    FilePayload, NetworkInfo, NodeAssignments, OverlayPeer, PublishedPort, ServiceRoute,
    TaskEndpoint, TaskStatusReport,
};
use shoal_api::models::{
    Config, EndpointPortConfigPublishModeEnum, EndpointSpecModeEnum, Secret, TaskState,
};
use shoal_api::objects::{is_terminal, state_rank, NetworkAttachment, StoredTask};
use shoal_store::{Expect, Store};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

fn addr_of(cidr: &str) -> Option<Ipv4Addr> {
    cidr.split('/').next()?.parse().ok()
}

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
            ("manager".to_string(), raft_id)
        }
        Some(_) => ("worker".to_string(), 0),
        None => (String::new(), 0),
    };
    replace_if_changed(&mut out.role, role, &mut changed);
    replace_if_changed(&mut out.raft_id, raft_id, &mut changed);
    replace_if_changed(&mut out.secrets, secrets, &mut changed);
    replace_if_changed(&mut out.configs, configs, &mut changed);
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

/// A published port of a service, with every running task it may lead to.
struct PortRouting {
    protocol: String,
    published: u16,
    /// Host mode: each node reaches only its own tasks.
    host: bool,
    /// (task's node, address and target port), sorted by address.
    targets: Vec<(Option<String>, SocketAddrV4)>,
}

/// The node-independent part of every node's routes, computed once from a snapshot: per service
/// (by ID), its route on each of its networks and its published ports.
struct Routing {
    services: Vec<(Vec<ServiceRoute>, Vec<PortRouting>)>,
    /// Services whose running tasks appear in routes (they have networks or published ports).
    routed: HashSet<String>,
    /// Per network: (node, address) of every live task on it, sorted.
    endpoints: HashMap<String, Vec<(String, Ipv4Addr)>>,
    /// Where each node's VXLAN packets go (its address as the swarm knows it).
    node_addrs: BTreeMap<String, Ipv4Addr>,
    /// The ingress network, when some service publishes a port through the routing mesh.
    mesh: Option<String>,
}

impl Routing {
    fn new(state: &ClusterState) -> Self {
        let mut running: HashMap<&str, Vec<&StoredTask>> = HashMap::new();
        for t in &state.tasks {
            if t.obj.state() == TaskState::RUNNING && shoal_api::objects::runs(t.obj.desired()) {
                running.entry(t.obj.service_id()).or_default().push(&t.obj);
            }
        }
        // As a fresh load lists them: by task ID.
        for tasks in running.values_mut() {
            tasks.sort_by(|a, b| a.id().cmp(b.id()));
        }
        let ingress: HashSet<&str> = state
            .networks
            .iter()
            .filter(|n| n.obj.ingress == Some(true))
            .filter_map(|n| n.obj.id.as_deref())
            .collect();
        let mut services: Vec<&Versioned<shoal_api::objects::StoredService>> =
            state.services.values().collect();
        services.sort_by(|a, b| a.obj.id().cmp(b.obj.id()));
        let mut endpoints: HashMap<String, Vec<(String, Ipv4Addr)>> = HashMap::new();
        for t in &state.tasks {
            let t = &t.obj;
            let (Some(node), false) = (t.node_id(), is_terminal(t.state())) else {
                continue;
            };
            for a in &t.networks_attachments {
                if let Some(addr) = a.addresses.first().and_then(|c| addr_of(c)) {
                    endpoints
                        .entry(a.network.id.clone())
                        .or_default()
                        .push((node.to_string(), addr));
                }
            }
        }
        for list in endpoints.values_mut() {
            list.sort();
        }
        let node_addrs = state
            .nodes
            .iter()
            .filter_map(|n| {
                let addr = n.obj.status.as_ref()?.addr.as_deref()?.parse().ok()?;
                Some((n.obj.id.clone()?, addr))
            })
            .collect();
        let mut out = Routing {
            services: Vec::with_capacity(services.len()),
            routed: HashSet::new(),
            endpoints,
            node_addrs,
            mesh: None,
        };
        let mut mesh = false;
        for svc in services {
            let s = &svc.obj;
            let tasks = running.get(s.id()).map(Vec::as_slice).unwrap_or_default();
            let dnsrr = s.spec().endpoint_spec.as_ref().and_then(|e| e.mode)
                == Some(EndpointSpecModeEnum::DNSRR);
            let vips: HashMap<String, Ipv4Addr> = s
                .service
                .endpoint
                .iter()
                .flat_map(|e| e.virtual_ips.iter().flatten())
                .filter_map(|v| Some((v.network_id.clone()?, addr_of(v.addr.as_deref()?)?)))
                .collect();
            let mut routes = Vec::new();
            for (net_id, _, aliases) in crate::allocator::service_networks(s, state) {
                let endpoints: Vec<TaskEndpoint> = tasks
                    .iter()
                    .filter_map(|t| {
                        let a = t
                            .networks_attachments
                            .iter()
                            .find(|a| a.network.id == net_id)?;
                        Some(TaskEndpoint {
                            task_id: t.id().to_string(),
                            addr: addr_of(a.addresses.first()?)?,
                            healthy: true,
                        })
                    })
                    .collect();
                routes.push(ServiceRoute {
                    service_id: s.id().to_string(),
                    name: s.name().to_string(),
                    vip: if dnsrr {
                        None
                    } else {
                        vips.get(&net_id).copied()
                    },
                    network_id: net_id,
                    aliases,
                    dnsrr,
                    tasks: endpoints,
                });
            }
            let mut ports = Vec::new();
            for p in s
                .service
                .endpoint
                .iter()
                .flat_map(|e| e.ports.iter().flatten())
            {
                let (Some(published), Some(target)) = (p.published_port, p.target_port) else {
                    continue;
                };
                if published <= 0 {
                    continue;
                }
                let mut targets: Vec<(Option<String>, SocketAddrV4)> = tasks
                    .iter()
                    .filter_map(|t| {
                        let a = t
                            .networks_attachments
                            .iter()
                            .find(|a| ingress.contains(a.network.id.as_str()))
                            .or_else(|| t.networks_attachments.first())?;
                        let addr = SocketAddrV4::new(addr_of(a.addresses.first()?)?, target as u16);
                        Some((t.node_id().map(str::to_string), addr))
                    })
                    .collect();
                targets.sort_by_key(|(_, a)| *a);
                let host = p.publish_mode == Some(EndpointPortConfigPublishModeEnum::HOST);
                mesh |= !host;
                ports.push(PortRouting {
                    protocol: p
                        .protocol
                        .map(|p| p.to_string())
                        .filter(|p| !p.is_empty())
                        .unwrap_or_else(|| "tcp".into()),
                    published: published as u16,
                    host,
                    targets,
                });
            }
            if !routes.is_empty() || !ports.is_empty() {
                out.routed.insert(s.id().to_string());
            }
            out.services.push((routes, ports));
        }
        if mesh {
            out.mesh = state
                .networks
                .iter()
                .find(|n| n.obj.ingress == Some(true))
                .and_then(|n| n.obj.id.clone());
        }
        out
    }

    /// The other nodes on network `net_id` as `node_id` must know them: those with live tasks
    /// on it, and on ingress (the mesh) every node, since any node may forward to any task.
    fn peers(&self, net_id: &str, node_id: &str) -> Vec<OverlayPeer> {
        let mut by_node: BTreeMap<&str, Vec<Ipv4Addr>> = BTreeMap::new();
        if self.mesh.as_deref() == Some(net_id) {
            for n in self.node_addrs.keys() {
                by_node.entry(n.as_str()).or_default();
            }
        }
        for (n, addr) in self.endpoints.get(net_id).into_iter().flatten() {
            by_node.entry(n.as_str()).or_default().push(*addr);
        }
        by_node
            .into_iter()
            .filter(|(n, _)| *n != node_id)
            .filter_map(|(n, endpoints)| {
                Some(OverlayPeer {
                    node_id: n.to_string(),
                    addr: *self.node_addrs.get(n)?,
                    endpoints,
                })
            })
            .collect()
    }

    /// Adds the routes a node on networks `nets` gets, and every published port.
    fn for_node(&self, node_id: &str, nets: &BTreeMap<String, ()>, out: &mut NodeAssignments) {
        for (routes, ports) in &self.services {
            out.services.extend(
                routes
                    .iter()
                    .filter(|r| nets.contains_key(&r.network_id))
                    .cloned(),
            );
            for p in ports {
                out.published.push(PublishedPort {
                    protocol: p.protocol.clone(),
                    published: p.published,
                    targets: p
                        .targets
                        .iter()
                        .filter(|(n, _)| !p.host || n.as_deref() == Some(node_id))
                        .map(|(_, a)| *a)
                        .collect(),
                });
            }
        }
    }
}

/// What about a task routes and overlay peers depend on: whether it is running (routes list only
/// running tasks), where it is and its addresses, while it is live (overlay peers list every
/// live task, so a starting task is reachable before it runs). A change elsewhere leaves every
/// route alone.
fn route_footprint(t: Option<&StoredTask>) -> Option<(bool, Option<&str>, &[NetworkAttachment])> {
    t.filter(|t| !is_terminal(t.state())).map(|t| {
        (
            t.state() == TaskState::RUNNING && shoal_api::objects::runs(t.desired()),
            t.node_id(),
            t.networks_attachments.as_slice(),
        )
    })
}

/// The dispatcher has stopped (its manager is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the dispatcher has stopped")]
pub struct Stopped;

/// One node's session: where its assignments go.
struct Session {
    node_id: String,
    tx: watch::Sender<NodeAssignments>,
}

/// Serves every node's session from one view of the store: on each change (coalesced) it
/// recomputes the assignments of only the nodes the change concerns, from one snapshot, and
/// sends them only if they differ. With 1,000 nodes that is one decode of each changed object,
/// instead of a decode of the whole store per node per change.
#[derive(Clone)]
pub struct Dispatcher {
    sessions: mpsc::UnboundedSender<Session>,
}

impl Dispatcher {
    /// Starts serving; stops when `stop` is cancelled.
    pub fn spawn(store: Store, stop: CancellationToken) -> Dispatcher {
        Self::spawn_shared(SharedState::new(store).reader(), stop)
    }

    /// [`Dispatcher::spawn`] on a view shared with other loops (the control loop), so each
    /// change is decoded once.
    pub fn spawn_shared(view: SharedReader, stop: CancellationToken) -> Dispatcher {
        let (sessions, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_sessions(view, rx, stop));
        Dispatcher { sessions }
    }

    /// Opens a node's session: `tx` gets its assignments at once and whenever they change. A
    /// second session for the same node replaces the first.
    pub fn serve(
        &self,
        node_id: String,
        tx: watch::Sender<NodeAssignments>,
    ) -> Result<(), Stopped> {
        self.sessions
            .send(Session { node_id, tx })
            .map_err(|_| Stopped)
    }
}

/// Publishes assignments for one node whenever they change, until cancelled.
pub async fn serve_node(
    store: Store,
    node_id: String,
    tx: watch::Sender<NodeAssignments>,
    stop: CancellationToken,
) {
    let (sessions, rx) = mpsc::unbounded_channel();
    // The receiver is right here: this cannot fail.
    let _ = sessions.send(Session { node_id, tx });
    run_sessions(SharedState::new(store).reader(), rx, stop).await;
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

/// The sessions' state between changes.
struct Sessions {
    open: HashMap<String, watch::Sender<NodeAssignments>>,
    /// Nodes whose session has not had its first assignments yet.
    fresh: HashSet<String>,
    /// Task IDs per node.
    by_node: HashMap<String, HashSet<String>>,
    /// Routes as of the last change that touched them.
    routing: Option<Routing>,
}

impl Sessions {
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

async fn run_sessions(
    mut view: SharedReader,
    mut incoming: mpsc::UnboundedReceiver<Session>,
    stop: CancellationToken,
) {
    let store = view.store().clone();
    let mut s = Sessions {
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
                if !open { return; }
                // Coalesce bursts of changes; longer when computing takes long (many nodes).
                let settle = took.clamp(Duration::from_millis(5), Duration::from_millis(250));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(settle) => {}
                }
            }
        }
    }
}

/// Host-mode ports of a service: a running task shows them in `docker service ps`.
fn host_ports(store: &Store, service_id: &str) -> Option<shoal_api::models::PortStatus> {
    let svc = db::get::<shoal_api::objects::StoredService>(store, service_id)?;
    let ports: Vec<_> = svc
        .obj
        .service
        .endpoint
        .iter()
        .flat_map(|e| e.ports.iter().flatten())
        .filter(|p| p.publish_mode == Some(EndpointPortConfigPublishModeEnum::HOST))
        .cloned()
        .collect();
    (!ports.is_empty()).then_some(shoal_api::models::PortStatus { ports: Some(ports) })
}

/// Status reports written per store write at most; more are split into batches written together.
const MAX_REPORTS_PER_WRITE: usize = 4096;

/// Writes agents' status reports, batching what arrives together into one store write.
///
/// Group commit: the first report after a quiet spell waits 10 ms for its companions; while a
/// write is in flight, newer reports keep arriving and go out together as soon as it ends (only
/// the newest report per task is kept). So the batch grows with the load instead of being capped
/// by the channel's capacity. Reading the tasks and encoding the writes runs off the async
/// threads, so raft and the other loops keep moving meanwhile.
pub async fn collect_reports(
    store: Store,
    mut rx: mpsc::Receiver<Vec<TaskStatusReport>>,
    stop: CancellationToken,
) {
    type Writing = std::pin::Pin<Box<dyn std::future::Future<Output = Written> + Send>>;
    let mut pending: HashMap<String, TaskStatusReport> = HashMap::new();
    let mut idle: Option<Written> = Some(Written::default());
    let mut writing: Option<Writing> = None;
    let mut open = true;
    loop {
        if !pending.is_empty() {
            if let Some(written) = idle.take() {
                writing = Some(Box::pin(write_reports(
                    store.clone(),
                    std::mem::take(&mut pending),
                    written,
                )));
            }
        }
        if !open && writing.is_none() {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            r = rx.recv(), if open => match r {
                Some(reports) => {
                    let quiet = writing.is_none() && pending.is_empty();
                    // Keep only the newest report per task.
                    for r in reports {
                        pending.insert(r.task_id.clone(), r);
                    }
                    if quiet {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                        }
                    }
                    while let Ok(more) = rx.try_recv() {
                        for r in more {
                            pending.insert(r.task_id.clone(), r);
                        }
                    }
                }
                None => open = false,
            },
            done = async {
                match writing.as_mut() {
                    Some(w) => w.await,
                    None => std::future::pending().await,
                }
            }, if writing.is_some() => {
                writing = None;
                idle = Some(done);
            }
        }
    }
}

/// What a report says about its task, as far as deciding whether it changes anything goes.
#[derive(Debug, Clone, PartialEq)]
struct Reported {
    state: Option<TaskState>,
    container: Option<shoal_api::models::ContainerStatus>,
    err: Option<String>,
}

impl Reported {
    fn of(r: &TaskStatusReport) -> Self {
        Reported {
            state: r.status.state,
            container: r.status.container_status.clone(),
            err: r.status.err.clone(),
        }
    }
}

/// The last report stored (or found already stored) per task. Observed state only moves
/// forward, so the store holds that status or a newer one: the same report again would be
/// refused after reading the task, and is skipped without reading it. Agents resend what they
/// have not seen stored yet, so under load many reports are such repeats.
#[derive(Default)]
struct Written {
    last: HashMap<String, Reported>,
}

impl Written {
    /// Forgets everything beyond this many tasks (deleted tasks are never pruned one by one).
    const MAX: usize = 1 << 20;

    fn repeats(&self, r: &TaskStatusReport) -> bool {
        self.last.get(&r.task_id) == Some(&Reported::of(r))
    }
}

/// Writes one batch of reports (several store writes if it is large), each retried on conflict.
async fn write_reports(
    store: Store,
    latest: HashMap<String, TaskStatusReport>,
    mut written: Written,
) -> Written {
    let mut chunks: Vec<Vec<TaskStatusReport>> = Vec::new();
    for r in latest.into_values().filter(|r| !written.repeats(r)) {
        match chunks.last_mut() {
            Some(c) if c.len() < MAX_REPORTS_PER_WRITE => c.push(r),
            _ => chunks.push(vec![r]),
        }
    }
    let done = futures::future::join_all(
        chunks
            .into_iter()
            .map(|c| write_report_chunk(store.clone(), Arc::new(c))),
    )
    .await;
    if written.last.len() > Written::MAX {
        written.last.clear();
    }
    for chunk in done.into_iter().flatten() {
        for r in chunk.iter() {
            written.last.insert(r.task_id.clone(), Reported::of(r));
        }
    }
    written
}

/// Writes one chunk; returns it if it is now stored (or was already), `None` if it gave up.
async fn write_report_chunk(
    store: Store,
    reports: Arc<Vec<TaskStatusReport>>,
) -> Option<Arc<Vec<TaskStatusReport>>> {
    for attempt in 0..5 {
        let started = Instant::now();
        let (s, r) = (store.clone(), reports.clone());
        let ops = match tokio::task::spawn_blocking(move || status_ops(&s, &r)).await {
            Ok(ops) => ops,
            Err(e) => {
                tracing::error!(error = %e, "building status writes failed");
                return None;
            }
        };
        if ops.is_empty() {
            return Some(reports);
        }
        let (n, built) = (ops.len(), started.elapsed());
        let result = db::write(&store, ops).await;
        tracing::debug!(
            reports = reports.len(),
            ops = n,
            build_ms = built.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "status reports written"
        );
        match result {
            Ok(_) => return Some(reports),
            Err(e) => {
                tracing::debug!(attempt, error = %e, "status batch conflicted; retrying");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    None
}

/// The writes that store `reports`: each task with its new status, unless the report is older
/// than (or the same as) what is stored.
fn status_ops(store: &Store, reports: &[TaskStatusReport]) -> Vec<shoal_store::Op> {
    let mut ops = Vec::new();
    // Each service's host ports, read once rather than per running task.
    let mut ports: HashMap<String, Option<shoal_api::models::PortStatus>> = HashMap::new();
    for r in reports {
        let Some(t) = db::get::<StoredTask>(store, &r.task_id) else {
            continue;
        };
        let new_state = r.status.state.unwrap_or(TaskState::NEW);
        let cur = t.obj.state();
        // Observed state only moves forward (a late report never undoes a newer one).
        if state_rank(new_state) < state_rank(cur)
            || (new_state == cur
                && t.obj
                    .task
                    .status
                    .as_ref()
                    .and_then(|s| s.container_status.as_ref())
                    == r.status.container_status.as_ref()
                && t.obj.task.status.as_ref().and_then(|s| s.err.as_ref()) == r.status.err.as_ref())
        {
            continue;
        }
        let mut task = t.obj;
        let mut status = r.status.clone();
        if new_state == TaskState::RUNNING && cur != TaskState::RUNNING {
            task.running_at = Some(shoal_api::id::now());
        }
        if new_state == TaskState::RUNNING {
            status.port_status = ports
                .entry(task.service_id().to_string())
                .or_insert_with(|| host_ports(store, task.service_id()))
                .clone();
        }
        task.task.status = Some(status);
        task.task.updated_at = Some(shoal_api::id::now());
        match db::put(&task, Expect::Version(t.version)) {
            Ok(op) => ops.push(op),
            Err(e) => tracing::error!(task = %r.task_id, error = %e, "cannot encode task status"),
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::models::{Secret, SecretSpec, ServiceSpec, TaskStatus};
    use shoal_api::objects::StoredService;
    use shoal_store::StoreOptions;

    fn task(id: &str, node: &str, secret: Option<&str>, state: TaskState) -> StoredTask {
        let spec: shoal_api::models::TaskSpec = serde_json::from_value(serde_json::json!({
            "ContainerSpec": {"Image": "x", "Secrets": secret.map(|s| vec![serde_json::json!({"SecretID": s, "SecretName": s, "File": {"Name": s}})]).unwrap_or_default()}
        }))
        .unwrap();
        let mut t = StoredTask::default();
        t.task.id = Some(id.into());
        t.task.service_id = Some("svc".into());
        t.task.node_id = Some(node.into());
        t.task.spec = Some(spec);
        t.task.desired_state = Some(TaskState::RUNNING);
        t.task.status = Some(TaskStatus {
            state: Some(state),
            ..Default::default()
        });
        t
    }

    #[tokio::test]
    async fn secrets_go_only_to_nodes_running_a_task_that_uses_them() {
        let dir = std::env::temp_dir().join(format!("shoal-dispatch-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(StoreOptions {
            dir: dir.clone(),
            raft_node_id: 1,
            raft_addr: "127.0.0.1:2377".into(),
            bootstrap: true,
            transport: None,
        })
        .await
        .unwrap();
        let secret = Secret {
            id: Some("sec".into()),
            spec: Some(SecretSpec {
                name: Some("pw".into()),
                data: Some("aHVudGVyMg==".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut svc = StoredService::default();
        svc.service.id = Some("svc".into());
        svc.service.spec = Some(ServiceSpec {
            name: Some("app".into()),
            ..Default::default()
        });
        let ops = vec![
            db::put(&secret, Expect::Absent).unwrap(),
            db::put(&svc, Expect::Absent).unwrap(),
            db::put(
                &task("t-a", "node-a", Some("sec"), TaskState::RUNNING),
                Expect::Absent,
            )
            .unwrap(),
            db::put(
                &task("t-b", "node-b", None, TaskState::RUNNING),
                Expect::Absent,
            )
            .unwrap(),
            db::put(
                &task("t-c", "node-c", Some("sec"), TaskState::FAILED),
                Expect::Absent,
            )
            .unwrap(),
        ];
        db::write(&store, ops).await.unwrap();
        let state = crate::state::load(&store);
        let a = assignments(&store, &state, "node-a");
        assert_eq!(a.tasks.len(), 1);
        assert_eq!(a.secrets.len(), 1);
        assert_eq!(a.secrets[0].data, b"hunter2");
        let b = assignments(&store, &state, "node-b");
        assert_eq!(b.tasks.len(), 1);
        assert!(
            b.secrets.is_empty(),
            "a node without a task using the secret got it"
        );
        let c = assignments(&store, &state, "node-c");
        assert_eq!(
            c.tasks.len(),
            1,
            "a stopped task stays assigned (its container is kept as history)"
        );
        assert!(
            c.secrets.is_empty(),
            "a node whose task has stopped still gets the secret"
        );
        assert!(
            !format!("{a:?}").contains("hunter2"),
            "secret data in Debug output"
        );
        store.shutdown().await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The dispatcher's computation before issue 4 (a scan of every task per node), kept to
    /// check that the shared, incremental computation sends exactly the same.
    mod reference {
        use super::super::*;

        pub fn assignments(store: &Store, state: &ClusterState, node_id: &str) -> NodeAssignments {
            let mut out = NodeAssignments::default();
            let mut secret_ids = HashSet::new();
            let mut config_ids = HashSet::new();
            let mut net_ids: BTreeMap<String, ()> = BTreeMap::new();
            for t in &state.tasks {
                if t.obj.node_id() != Some(node_id) {
                    continue;
                }
                let live = !is_terminal(t.obj.state());
                if live && t.obj.meant_to_run() {
                    let cs = t
                        .obj
                        .task
                        .spec
                        .as_ref()
                        .and_then(|s| s.container_spec.as_ref());
                    for s in cs.and_then(|c| c.secrets.as_ref()).into_iter().flatten() {
                        secret_ids.extend(s.secret_id.clone());
                    }
                    for c in cs.and_then(|c| c.configs.as_ref()).into_iter().flatten() {
                        config_ids.extend(c.config_id.clone());
                    }
                }
                if live {
                    for a in &t.obj.networks_attachments {
                        net_ids.insert(a.network.id.clone(), ());
                    }
                }
                out.tasks.push(t.obj.clone());
            }
            out.tasks.sort_by(|a, b| a.id().cmp(b.id()));
            for id in secret_ids {
                if let Some(s) = db::get::<Secret>(store, &id) {
                    let spec = s.obj.spec.unwrap_or_default();
                    out.secrets.push(FilePayload {
                        id,
                        name: spec.name.unwrap_or_default(),
                        data: decode(spec.data.as_deref()),
                    });
                }
            }
            for id in config_ids {
                if let Some(c) = db::get::<Config>(store, &id) {
                    let spec = c.obj.spec.unwrap_or_default();
                    out.configs.push(FilePayload {
                        id,
                        name: spec.name.unwrap_or_default(),
                        data: decode(spec.data.as_deref()),
                    });
                }
            }
            out.secrets.sort_by(|a, b| a.id.cmp(&b.id));
            out.configs.sort_by(|a, b| a.id.cmp(&b.id));
            let mesh = state.services.values().any(|s| {
                s.obj
                    .service
                    .endpoint
                    .iter()
                    .flat_map(|e| e.ports.iter().flatten())
                    .any(|p| {
                        p.published_port.unwrap_or(0) > 0
                            && p.publish_mode != Some(EndpointPortConfigPublishModeEnum::HOST)
                    })
            });
            for n in &state.networks {
                if let (true, Some(true), Some(id)) = (mesh, n.obj.ingress, n.obj.id.clone()) {
                    net_ids.insert(id, ());
                }
            }
            for n in &state.networks {
                let Some(id) = n.obj.id.clone() else { continue };
                let carried_by_all = mesh && n.obj.ingress == Some(true);
                if !net_ids.contains_key(&id) {
                    continue;
                }
                let mut by_node: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
                if carried_by_all {
                    for node in &state.nodes {
                        let has_addr = node.obj.status.as_ref().and_then(|s| s.addr.as_ref());
                        if let (Some(nid), Some(_)) = (node.obj.id.clone(), has_addr) {
                            by_node.entry(nid).or_default();
                        }
                    }
                }
                for t in &state.tasks {
                    let (Some(node), false) = (t.obj.node_id(), is_terminal(t.obj.state())) else {
                        continue;
                    };
                    for a in t
                        .obj
                        .networks_attachments
                        .iter()
                        .filter(|a| a.network.id == id)
                    {
                        if let Some(addr) = a.addresses.first().and_then(|c| addr_of(c)) {
                            by_node.entry(node.to_string()).or_default().push(addr);
                        }
                    }
                }
                let peers = by_node
                    .into_iter()
                    .filter(|(n, _)| n != node_id)
                    .filter_map(|(n, mut endpoints)| {
                        let addr = state
                            .nodes
                            .iter()
                            .find(|x| x.obj.id.as_deref() == Some(n.as_str()))?
                            .obj
                            .status
                            .as_ref()?
                            .addr
                            .as_deref()?
                            .parse()
                            .ok()?;
                        endpoints.sort();
                        Some(OverlayPeer {
                            node_id: n,
                            addr,
                            endpoints,
                        })
                    })
                    .collect();
                if let Some((subnet, gateway)) = network_subnet(&n.obj) {
                    out.networks.push(NetworkInfo {
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
            routes(state, node_id, &net_ids, &mut out);
            // Roles came with issue 4; these tests have no managers (raft id 0).
            if let Some(n) = state
                .nodes
                .iter()
                .find(|n| n.obj.id.as_deref() == Some(node_id))
            {
                let manager = n.obj.spec.as_ref().and_then(|s| s.role)
                    == Some(shoal_api::models::NodeSpecRoleEnum::MANAGER);
                out.role = if manager { "manager" } else { "worker" }.into();
            }
            out
        }

        fn decode(data: Option<&str>) -> Vec<u8> {
            data.and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
                .unwrap_or_default()
        }

        fn routes(
            state: &ClusterState,
            node_id: &str,
            nets: &BTreeMap<String, ()>,
            out: &mut NodeAssignments,
        ) {
            let mut running: HashMap<&str, Vec<&StoredTask>> = HashMap::new();
            for t in &state.tasks {
                if t.obj.state() == TaskState::RUNNING && shoal_api::objects::runs(t.obj.desired())
                {
                    running.entry(t.obj.service_id()).or_default().push(&t.obj);
                }
            }
            let mut services: Vec<&Versioned<shoal_api::objects::StoredService>> =
                state.services.values().collect();
            services.sort_by(|a, b| a.obj.id().cmp(b.obj.id()));
            for svc in services {
                let s = &svc.obj;
                let tasks = running.get(s.id()).cloned().unwrap_or_default();
                let dnsrr = s.spec().endpoint_spec.as_ref().and_then(|e| e.mode)
                    == Some(EndpointSpecModeEnum::DNSRR);
                let vips: HashMap<String, Ipv4Addr> = s
                    .service
                    .endpoint
                    .iter()
                    .flat_map(|e| e.virtual_ips.iter().flatten())
                    .filter_map(|v| Some((v.network_id.clone()?, addr_of(v.addr.as_deref()?)?)))
                    .collect();
                for net in crate::allocator::service_networks(s, state) {
                    let (net_id, _, aliases) = net;
                    if !nets.contains_key(&net_id) {
                        continue;
                    }
                    let endpoints: Vec<TaskEndpoint> = tasks
                        .iter()
                        .filter_map(|t| {
                            let a = t
                                .networks_attachments
                                .iter()
                                .find(|a| a.network.id == net_id)?;
                            Some(TaskEndpoint {
                                task_id: t.id().to_string(),
                                addr: addr_of(a.addresses.first()?)?,
                                healthy: true,
                            })
                        })
                        .collect();
                    out.services.push(ServiceRoute {
                        service_id: s.id().to_string(),
                        name: s.name().to_string(),
                        network_id: net_id.clone(),
                        aliases,
                        vip: if dnsrr {
                            None
                        } else {
                            vips.get(&net_id).copied()
                        },
                        dnsrr,
                        tasks: endpoints,
                    });
                }
                for p in s
                    .service
                    .endpoint
                    .iter()
                    .flat_map(|e| e.ports.iter().flatten())
                {
                    let (Some(published), Some(target)) = (p.published_port, p.target_port) else {
                        continue;
                    };
                    if published <= 0 {
                        continue;
                    }
                    let host = p.publish_mode == Some(EndpointPortConfigPublishModeEnum::HOST);
                    let mut targets: Vec<SocketAddrV4> = tasks
                        .iter()
                        .filter(|t| !host || t.node_id() == Some(node_id))
                        .filter_map(|t| {
                            let a = t
                                .networks_attachments
                                .iter()
                                .find(|a| {
                                    state.networks.iter().any(|n| {
                                        n.obj.id.as_deref() == Some(&a.network.id)
                                            && n.obj.ingress == Some(true)
                                    })
                                })
                                .or_else(|| t.networks_attachments.first())?;
                            Some(SocketAddrV4::new(
                                addr_of(a.addresses.first()?)?,
                                target as u16,
                            ))
                        })
                        .collect();
                    targets.sort();
                    out.published.push(PublishedPort {
                        protocol: p
                            .protocol
                            .map(|p| p.to_string())
                            .filter(|p| !p.is_empty())
                            .unwrap_or_else(|| "tcp".into()),
                        published: published as u16,
                        targets,
                    });
                }
            }
        }
    }

    async fn open_store(dir: &std::path::Path) -> Store {
        Store::open(StoreOptions {
            dir: dir.to_path_buf(),
            raft_node_id: 1,
            raft_addr: "127.0.0.1:2377".into(),
            bootstrap: true,
            transport: None,
        })
        .await
        .unwrap()
    }

    fn service(id: &str, json: serde_json::Value) -> StoredService {
        let mut svc: StoredService = serde_json::from_value(json).unwrap();
        svc.service.id = Some(id.into());
        svc
    }

    fn attach(net: &str, addr: &str) -> NetworkAttachment {
        NetworkAttachment {
            network: shoal_api::objects::AttachedNetwork {
                id: net.into(),
                spec: Default::default(),
            },
            addresses: vec![addr.into()],
            aliases: vec![],
        }
    }

    /// Waits until every session holds what the old computation gives for the store's state.
    async fn settled(
        store: &Store,
        sessions: &[(String, watch::Receiver<NodeAssignments>)],
        step: usize,
    ) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let state = crate::state::load(store);
            let wrong: Vec<&str> = sessions
                .iter()
                .filter(|(n, rx)| *rx.borrow() != reference::assignments(store, &state, n))
                .map(|(n, _)| n.as_str())
                .collect();
            if wrong.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let (n, rx) = sessions.iter().find(|(n, _)| n == wrong[0]).unwrap();
                assert_eq!(
                    *rx.borrow(),
                    reference::assignments(store, &state, n),
                    "step {step}: node {n}"
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn shared_sessions_send_what_a_full_recomputation_gives() {
        use rand::Rng;
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path()).await;
        let net = |id: &str, subnet: &str, ingress: bool| -> shoal_api::models::Network {
            serde_json::from_value(serde_json::json!({
                "Id": id, "Name": id, "Ingress": ingress,
                "IPAM": {"Config": [{"Subnet": subnet}]}
            }))
            .unwrap()
        };
        let secret = Secret {
            id: Some("sec".into()),
            spec: Some(SecretSpec {
                name: Some("pw".into()),
                data: Some("aHVudGVyMg==".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let services = [
            service(
                "s0",
                serde_json::json!({"Spec": {"Name": "plain",
                "TaskTemplate": {"ContainerSpec": {"Image": "x"}}}}),
            ),
            service(
                "s1",
                serde_json::json!({"Spec": {"Name": "app",
                "TaskTemplate": {"ContainerSpec": {"Image": "x"}, "Networks": [{"Target": "app", "Aliases": ["a1"]}]}},
                "Endpoint": {"VirtualIPs": [{"NetworkID": "app", "Addr": "10.0.1.2/24"}]}}),
            ),
            service(
                "s2",
                serde_json::json!({"Spec": {"Name": "web",
                "TaskTemplate": {"ContainerSpec": {"Image": "x"}},
                "EndpointSpec": {"Ports": [{"TargetPort": 80, "PublishedPort": 8080}]}},
                "Endpoint": {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"}],
                    "VirtualIPs": [{"NetworkID": "ingress", "Addr": "10.0.0.2/24"}]}}),
            ),
            service(
                "s3",
                serde_json::json!({"Spec": {"Name": "hostport",
                "TaskTemplate": {"ContainerSpec": {"Image": "x"}, "Networks": [{"Target": "app"}]},
                "EndpointSpec": {"Mode": "dnsrr", "Ports": [{"TargetPort": 90, "PublishedPort": 9090, "PublishMode": "host"}]}},
                "Endpoint": {"Ports": [{"Protocol": "udp", "TargetPort": 90, "PublishedPort": 9090, "PublishMode": "host"}]}}),
            ),
        ];
        let mut ops = vec![
            db::put(&net("ingress", "10.0.0.0/24", true), Expect::Absent).unwrap(),
            db::put(&net("app", "10.0.1.0/24", false), Expect::Absent).unwrap(),
            db::put(&secret, Expect::Absent).unwrap(),
        ];
        for svc in &services {
            ops.push(db::put(svc, Expect::Absent).unwrap());
        }
        // Nodes with addresses, so overlay peers are compared too (n4 has none: no peer).
        for i in 0..4 {
            let node: shoal_api::models::Node = serde_json::from_value(serde_json::json!({
                "ID": format!("n{i}"), "Status": {"State": "ready", "Addr": format!("192.0.2.{}", i + 1)}
            }))
            .unwrap();
            ops.push(db::put(&node, Expect::Absent).unwrap());
        }
        db::write(&store, ops).await.unwrap();

        let stop = CancellationToken::new();
        let d = Dispatcher::spawn(store.clone(), stop.clone());
        let mut sessions = Vec::new();
        for i in 0..4 {
            let (tx, rx) = watch::channel(NodeAssignments::default());
            d.serve(format!("n{i}"), tx).unwrap();
            sessions.push((format!("n{i}"), rx));
        }
        settled(&store, &sessions, 0).await;

        let mut rng = rand::rng();
        let states = [
            TaskState::NEW,
            TaskState::ASSIGNED,
            TaskState::PREPARING,
            TaskState::RUNNING,
            TaskState::RUNNING,
            TaskState::FAILED,
            TaskState::SHUTDOWN,
        ];
        for step in 1..=80 {
            let existing: Vec<Versioned<StoredTask>> = db::list(&store);
            let mut ops = Vec::new();
            for _ in 0..rng.random_range(1..4) {
                let pick = rng.random_range(0..10);
                if pick < 2 && !existing.is_empty() {
                    let t = &existing[rng.random_range(0..existing.len())];
                    if !ops
                        .iter()
                        .any(|o: &shoal_store::Op| o.key().1 == t.obj.id())
                    {
                        ops.push(db::delete::<StoredTask>(t.obj.id(), Expect::Any));
                    }
                    continue;
                }
                let mut t = if pick < 6 && !existing.is_empty() {
                    let t = &existing[rng.random_range(0..existing.len())];
                    if ops
                        .iter()
                        .any(|o: &shoal_store::Op| o.key().1 == t.obj.id())
                    {
                        continue;
                    }
                    t.obj.clone()
                } else if rng.random_bool(0.2) {
                    // A plain container's network attachment: no service, a peer's endpoint.
                    let id = format!("a{step}-{}", ops.len());
                    let mut t = task(&id, "n0", None, TaskState::NEW);
                    t.task.spec = Some(shoal_api::models::TaskSpec {
                        network_attachment_spec: Some(Default::default()),
                        ..Default::default()
                    });
                    let host = 3 + rng.random_range(0..200);
                    t.networks_attachments
                        .push(attach("app", &format!("10.0.1.{host}/24")));
                    t
                } else {
                    let svc = &services[rng.random_range(0..services.len())];
                    let id = format!("t{step}-{}", ops.len());
                    let mut t = task(
                        &id,
                        "n0",
                        rng.random_bool(0.3).then_some("sec"),
                        TaskState::NEW,
                    );
                    t.task.service_id = Some(svc.id().to_string());
                    let host = 3 + rng.random_range(0..200);
                    for (net, _, _) in
                        crate::allocator::service_networks(svc, &crate::state::load(&store))
                    {
                        let subnet = if net == "ingress" { 0 } else { 1 };
                        t.networks_attachments
                            .push(attach(&net, &format!("10.0.{subnet}.{host}/24")));
                    }
                    t
                };
                t.task.node_id =
                    (!rng.random_bool(0.1)).then(|| format!("n{}", rng.random_range(0..5)));
                t.task.desired_state = Some(if rng.random_bool(0.8) {
                    TaskState::RUNNING
                } else {
                    TaskState::SHUTDOWN
                });
                t.task.status.get_or_insert_with(Default::default).state =
                    Some(states[rng.random_range(0..states.len())]);
                ops.push(db::put(&t, Expect::Any).unwrap());
            }
            if rng.random_bool(0.05) {
                let mut s = db::get::<StoredService>(&store, "s1").unwrap().obj;
                let vip = format!("10.0.1.{}/24", 2 + step);
                s.service.endpoint = Some(
                    serde_json::from_value(
                        serde_json::json!({"VirtualIPs": [{"NetworkID": "app", "Addr": vip}]}),
                    )
                    .unwrap(),
                );
                ops.push(db::put(&s, Expect::Any).unwrap());
            }
            db::write(&store, ops).await.unwrap();
            settled(&store, &sessions, step).await;
        }
        stop.cancel();
        store.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn only_the_nodes_a_change_concerns_are_sent_anything() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path()).await;
        let mut svc = StoredService::default();
        svc.service.id = Some("svc".into());
        svc.service.spec = Some(ServiceSpec {
            name: Some("app".into()),
            ..Default::default()
        });
        db::write(
            &store,
            vec![
                db::put(&svc, Expect::Absent).unwrap(),
                db::put(
                    &task("t-a", "node-a", None, TaskState::ASSIGNED),
                    Expect::Absent,
                )
                .unwrap(),
                db::put(
                    &task("t-b", "node-b", None, TaskState::ASSIGNED),
                    Expect::Absent,
                )
                .unwrap(),
            ],
        )
        .await
        .unwrap();
        let stop = CancellationToken::new();
        let d = Dispatcher::spawn(store.clone(), stop.clone());
        let (atx, mut arx) = watch::channel(NodeAssignments::default());
        let (btx, mut brx) = watch::channel(NodeAssignments::default());
        d.serve("node-a".into(), atx).unwrap();
        d.serve("node-b".into(), btx).unwrap();
        arx.changed().await.unwrap();
        brx.changed().await.unwrap();
        assert_eq!(arx.borrow_and_update().tasks.len(), 1);
        assert_eq!(brx.borrow_and_update().tasks.len(), 1);

        let cur = db::get::<StoredTask>(&store, "t-a").unwrap();
        let mut running = cur.obj.clone();
        running
            .task
            .status
            .get_or_insert_with(Default::default)
            .state = Some(TaskState::RUNNING);
        db::write(
            &store,
            vec![db::put(&running, Expect::Version(cur.version)).unwrap()],
        )
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(5), arx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(arx.borrow().tasks[0].state(), TaskState::RUNNING);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !brx.has_changed().unwrap(),
            "a node none of whose tasks changed was sent its assignments again"
        );
        stop.cancel();
        store.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn reports_are_stored_newest_first_and_in_batches_of_any_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path()).await;
        let svc = service(
            "svc",
            serde_json::json!({"Spec": {"Name": "app"},
                "Endpoint": {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"}]}}),
        );
        let mut ops = vec![db::put(&svc, Expect::Absent).unwrap()];
        let n = MAX_REPORTS_PER_WRITE + 100;
        for i in 0..n {
            let t = task(&format!("t{i}"), "node-a", None, TaskState::ASSIGNED);
            ops.push(db::put(&t, Expect::Absent).unwrap());
        }
        db::write(&store, ops).await.unwrap();
        let (tx, rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let collector = tokio::spawn(collect_reports(store.clone(), rx, stop.clone()));
        let report = |id: &str, state: TaskState| TaskStatusReport {
            task_id: id.into(),
            status: TaskStatus {
                state: Some(state),
                ..Default::default()
            },
        };
        let stored = |id: &str| db::get::<StoredTask>(&store, id).unwrap().obj;
        let wait_for = |id: String, want: TaskState| {
            let store = store.clone();
            async move {
                for _ in 0..500 {
                    if db::get::<StoredTask>(&store, &id).unwrap().obj.state() == want {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("{id} never reached {want:?}");
            }
        };

        tx.send(vec![report("t0", TaskState::PREPARING)])
            .await
            .unwrap();
        tx.send(vec![report("t0", TaskState::RUNNING)])
            .await
            .unwrap();
        wait_for("t0".into(), TaskState::RUNNING).await;
        let ports = stored("t0").task.status.and_then(|s| s.port_status);
        assert_eq!(
            ports.and_then(|p| p.ports).map(|p| p.len()),
            Some(1),
            "a running task shows its service's host-mode ports"
        );
        tx.send(vec![report("t0", TaskState::STARTING)])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            stored("t0").state(),
            TaskState::RUNNING,
            "a late report undid a newer state"
        );

        // More reports than one write takes, many of them in one message.
        let all: Vec<TaskStatusReport> = (1..n)
            .map(|i| report(&format!("t{i}"), TaskState::RUNNING))
            .collect();
        for chunk in all.chunks(1000) {
            tx.send(chunk.to_vec()).await.unwrap();
        }
        wait_for(format!("t{}", n - 1), TaskState::RUNNING).await;
        for i in 1..n {
            wait_for(format!("t{i}"), TaskState::RUNNING).await;
        }
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), collector)
            .await
            .unwrap()
            .unwrap();
        stop.cancel();
        store.shutdown().await.unwrap();
    }
}
