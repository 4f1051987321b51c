//! Load-balancer routes: the node-independent part of every node's routing, computed once from
//! a snapshot (service VIPs and running endpoints per network, published ports and their
//! targets, overlay peers). The dispatcher's assignments cut each node's share out of it.

use crate::db::Versioned;
use crate::state::ClusterState;
use shoal_api::dispatch::{
    NodeAssignments, OverlayPeer, PublishedPort, ServiceRoute, TaskEndpoint,
};
use shoal_api::models::{EndpointPortConfigPublishModeEnum, EndpointSpecModeEnum, TaskState};
use shoal_api::objects::{is_terminal, NetworkAttachment, StoredTask};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};

fn addr_of(cidr: &str) -> Option<Ipv4Addr> {
    cidr.split('/').next()?.parse().ok()
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
pub(crate) struct Routing {
    services: Vec<(Vec<ServiceRoute>, Vec<PortRouting>)>,
    /// Services whose running tasks appear in routes (they have networks or published ports).
    pub(crate) routed: HashSet<String>,
    /// Per network: (node, address) of every live task on it, sorted.
    endpoints: HashMap<String, Vec<(String, Ipv4Addr)>>,
    /// Where each node's VXLAN packets go (its address as the swarm knows it).
    node_addrs: BTreeMap<String, Ipv4Addr>,
    /// The ingress network, when some service publishes a port through the routing mesh.
    pub(crate) mesh: Option<String>,
}

impl Routing {
    /// Computes every service's routes from one snapshot.
    pub(crate) fn new(state: &ClusterState) -> Self {
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
            for (net_id, _, aliases) in shoal_control::allocator::service_networks(s, state) {
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
    pub(crate) fn peers(&self, net_id: &str, node_id: &str) -> Vec<OverlayPeer> {
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
    pub(crate) fn for_node(
        &self,
        node_id: &str,
        nets: &BTreeMap<String, ()>,
        out: &mut NodeAssignments,
    ) {
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
pub(crate) fn route_footprint(
    t: Option<&StoredTask>,
) -> Option<(bool, Option<&str>, &[NetworkAttachment])> {
    t.filter(|t| !is_terminal(t.state())).map(|t| {
        (
            t.state() == TaskState::RUNNING && shoal_api::objects::runs(t.desired()),
            t.node_id(),
            t.networks_attachments.as_slice(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db;
    use crate::dispatcher::fixtures::{attach, net, open_store, service, task};
    use shoal_store::Expect;

    #[tokio::test]
    async fn ports_lead_to_running_tasks_and_peers_to_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path()).await;
        let web = service(
            "web",
            serde_json::json!({"Spec": {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "x"}}},
                "Endpoint": {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"}],
                    "VirtualIPs": [{"NetworkID": "ingress", "Addr": "10.0.0.2/24"}]}}),
        );
        let hp = service(
            "hp",
            serde_json::json!({"Spec": {"Name": "hp", "TaskTemplate": {"ContainerSpec": {"Image": "x"}, "Networks": [{"Target": "app"}]}},
                "Endpoint": {"Ports": [{"Protocol": "udp", "TargetPort": 90, "PublishedPort": 9090, "PublishMode": "host"}],
                    "VirtualIPs": [{"NetworkID": "app", "Addr": "10.0.1.2/24"}]}}),
        );
        let placed = |id: &str, svc: &str, node: &str, state: TaskState, net: &str, addr: &str| {
            let mut t = task(id, node, None, state);
            t.task.service_id = Some(svc.into());
            t.networks_attachments.push(attach(net, addr));
            t
        };
        let mut ops = vec![
            db::put(&net("ingress", "10.0.0.0/24", true), Expect::Absent).unwrap(),
            db::put(&net("app", "10.0.1.0/24", false), Expect::Absent).unwrap(),
            db::put(&web, Expect::Absent).unwrap(),
            db::put(&hp, Expect::Absent).unwrap(),
        ];
        for t in [
            placed(
                "w1",
                "web",
                "n0",
                TaskState::RUNNING,
                "ingress",
                "10.0.0.5/24",
            ),
            placed(
                "w2",
                "web",
                "n1",
                TaskState::RUNNING,
                "ingress",
                "10.0.0.6/24",
            ),
            placed(
                "w3",
                "web",
                "n1",
                TaskState::ASSIGNED,
                "ingress",
                "10.0.0.7/24",
            ),
            placed(
                "w4",
                "web",
                "n1",
                TaskState::FAILED,
                "ingress",
                "10.0.0.8/24",
            ),
            placed("h1", "hp", "n0", TaskState::RUNNING, "app", "10.0.1.5/24"),
            placed("h2", "hp", "n1", TaskState::RUNNING, "app", "10.0.1.6/24"),
        ] {
            ops.push(db::put(&t, Expect::Absent).unwrap());
        }
        for i in 0..3 {
            let node: shoal_api::models::Node = serde_json::from_value(serde_json::json!({
                "ID": format!("n{i}"), "Status": {"State": "ready", "Addr": format!("192.0.2.{}", i + 1)}
            }))
            .unwrap();
            ops.push(db::put(&node, Expect::Absent).unwrap());
        }
        db::write(&store, ops).await.unwrap();
        let routing = Routing::new(&crate::state::load(&store));
        assert_eq!(routing.mesh.as_deref(), Some("ingress"));

        let nets = BTreeMap::from([("app".to_string(), ())]);
        let mut out = NodeAssignments::default();
        routing.for_node("n0", &nets, &mut out);
        let port = |p: u16| out.published.iter().find(|x| x.published == p).unwrap();
        let sock = |s: &str| s.parse::<SocketAddrV4>().unwrap();
        assert_eq!(
            port(8080).targets,
            vec![sock("10.0.0.5:80"), sock("10.0.0.6:80")],
            "the mesh leads to every running task, on any node, and to no other"
        );
        assert_eq!(
            port(9090).targets,
            vec![sock("10.0.1.5:90")],
            "a host-mode port leads only to the node's own task"
        );
        assert_eq!(port(9090).protocol, "udp");
        let routes: Vec<&str> = out.services.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(routes, ["hp"], "routes only on the node's networks");
        assert_eq!(out.services[0].vip, Some("10.0.1.2".parse().unwrap()));
        assert_eq!(out.services[0].tasks.len(), 2);

        // Ingress: every node with an address is a peer; endpoints are the live tasks.
        let peers = routing.peers("ingress", "n0");
        let ids: Vec<&str> = peers.iter().map(|p| p.node_id.as_str()).collect();
        assert_eq!(ids, ["n1", "n2"]);
        assert_eq!(
            peers[0].endpoints,
            vec![
                "10.0.0.6".parse::<Ipv4Addr>().unwrap(),
                "10.0.0.7".parse().unwrap()
            ],
            "a starting task is reachable before it runs; a failed one is not"
        );
        assert!(peers[1].endpoints.is_empty());
        // Other networks: only the nodes with live tasks on them.
        let ids: Vec<String> = routing
            .peers("app", "n1")
            .into_iter()
            .map(|p| p.node_id)
            .collect();
        assert_eq!(ids, ["n0"]);
        store.shutdown().await.unwrap();
    }
}
