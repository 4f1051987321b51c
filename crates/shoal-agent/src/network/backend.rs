//! The worker's view of node networking, implemented by [`NetworkAgent`].

use super::{
    MeshPort, NetworkAgent, NetworkError, NetworkSpec, Protocol, RoutingTable, ServiceRoute,
    TaskEndpoint,
};
use crate::worker::NetworkBackend;
use futures::future::BoxFuture;
use shoal_api::dispatch::{NetworkInfo, NodeAssignments};

fn spec(n: &NetworkInfo) -> Result<NetworkSpec, NetworkError> {
    let subnet = ipnet::Ipv4Net::new(n.subnet.addr, n.subnet.prefix).map_err(|e| {
        NetworkError::invalid(
            format!("network {}", n.name),
            format!("subnet {}: {e}", n.subnet),
        )
    })?;
    Ok(NetworkSpec {
        id: n.id.clone(),
        name: n.name.clone(),
        subnet,
        gateway: n.gateway,
        internal: n.internal,
        vni: n.vni,
        ingress: n.ingress,
    })
}

/// The routing picture the dispatcher computed, in the network agent's terms.
pub fn routing_table(a: &NodeAssignments) -> RoutingTable {
    RoutingTable {
        services: a
            .services
            .iter()
            .map(|s| ServiceRoute {
                service_id: s.service_id.clone(),
                name: s.name.clone(),
                network_id: s.network_id.clone(),
                aliases: s.aliases.clone(),
                vip: s.vip,
                dnsrr: s.dnsrr,
                tasks: s
                    .tasks
                    .iter()
                    .map(|t| TaskEndpoint {
                        task_id: t.task_id.clone(),
                        addr: t.addr,
                        healthy: t.healthy,
                    })
                    .collect(),
            })
            .collect(),
        published: a
            .published
            .iter()
            .map(|p| MeshPort {
                protocol: if p.protocol == "udp" {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                },
                published: p.published,
                targets: p.targets.clone(),
            })
            .collect(),
        peers: a
            .networks
            .iter()
            .map(|n| (n.id.clone(), n.peers.clone()))
            .collect(),
    }
}

impl NetworkBackend for NetworkAgent {
    fn ensure(&self, net: &NetworkInfo) -> BoxFuture<'_, Result<String, NetworkError>> {
        let s = spec(net);
        Box::pin(async move { self.ensure_network(&s?).await })
    }

    fn route(&self, a: &NodeAssignments) -> BoxFuture<'_, Result<(), NetworkError>> {
        let table = routing_table(a);
        Box::pin(async move { self.apply_routing(&table).await })
    }

    fn remove(&self, network_id: &str) -> BoxFuture<'_, Result<(), NetworkError>> {
        let id = network_id.to_string();
        Box::pin(async move { self.remove_network(&id).await })
    }

    fn cleanup(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = NetworkAgent::cleanup(self).await {
                tracing::warn!(error = %e, "network cleanup");
            }
        })
    }
}
