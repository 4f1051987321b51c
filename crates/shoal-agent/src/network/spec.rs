//! The data the rest of the agent hands to the network module: what a network is and what the
//! routing picture (services, tasks, published ports) looks like. Plain data, no I/O.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

/// A swarm network as the allocator defined it; the same on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    /// Swarm network ID; names the bridge and keys the routing table.
    pub id: String,
    /// User-facing name; part of the Docker network name so `docker inspect` stays readable.
    pub name: String,
    /// The subnet task addresses and VIPs are allocated from.
    pub subnet: ipnet::Ipv4Net,
    /// The node's address on the network: bridge address, default route and DNS server of tasks.
    pub gateway: Ipv4Addr,
    /// No traffic leaves the network (no masquerade, no forwarding off the bridge, no upstream DNS).
    pub internal: bool,
    /// VXLAN ID that carries the network to other nodes; 0 keeps it on this node only.
    pub vni: u32,
    /// The routing mesh's network: replies of forwarded connections return through it.
    pub ingress: bool,
}

#[cfg(test)]
impl NetworkSpec {
    /// A network kept on this node (VNI 0) for unit tests, its gateway the subnet's first host.
    pub(crate) fn local(id: &str, name: &str, subnet: &str) -> NetworkSpec {
        let subnet: ipnet::Ipv4Net = subnet.parse().expect("test subnet");
        NetworkSpec {
            id: id.into(),
            name: name.into(),
            gateway: subnet.hosts().next().expect("subnet has hosts"),
            subnet,
            internal: false,
            vni: 0,
            ingress: false,
        }
    }
}

/// The whole routing picture of the cluster as this node should see it; replaced as a unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingTable {
    /// One entry per (service, network) attachment.
    pub services: Vec<ServiceRoute>,
    /// Ports published through the routing mesh.
    pub published: Vec<MeshPort>,
    /// Per network ID: the other nodes on it and their tasks' addresses.
    pub peers: BTreeMap<String, Vec<OverlayPeer>>,
}

/// A service as seen from one network, and one task's address on it: the dispatcher's own types,
/// so routes reach the network agent without conversion.
pub use shoal_api::dispatch::{OverlayPeer, ServiceRoute, TaskEndpoint};

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The keyword nftables and Docker use for the protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A port published on every local address of the node (ingress routing mesh).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshPort {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The port on the node's addresses.
    pub published: u16,
    /// Where connections go, chosen at random per connection; empty: refused.
    pub targets: Vec<SocketAddrV4>,
}
