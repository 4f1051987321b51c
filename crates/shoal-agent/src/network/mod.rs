//! Node-side networking of shoal's swarm networks.
//!
//! For each network with a task on this node: a Linux bridge (`shl-<id>`) holding the gateway
//! address and the services' VIPs, a VXLAN device (`shx-<id>`) that extends the bridge to the
//! other nodes on the network, a Docker network of this node's plugin driver whose containers
//! get veth ports on that bridge, and a DNS server on the gateway. One nftables table per node
//! load-balances VIPs and published ports and isolates networks. See ARCHITECTURE.md,
//! "Networking", for the decisions and what was verified on Docker 20.10.

mod agent;
mod backend;
mod dns;
mod error;
mod ipam;
mod iptables;
mod mesh;
mod names;
mod netlink;
mod nft;
mod plugin;
mod spec;

pub use agent::{NetworkAgent, NetworkConfig};
pub use backend::routing_table;
pub use error::NetworkError;
pub use spec::{
    MeshPort, NetworkSpec, OverlayPeer, Protocol, RoutingTable, ServiceRoute, TaskEndpoint,
};
