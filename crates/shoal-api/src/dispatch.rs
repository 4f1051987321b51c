//! What a manager's dispatcher tells a node's agent, and what the agent reports back. Plain data, so
//! the same messages travel in-process today and over the node-to-node RPC later.

use crate::models::TaskStatus;
use crate::objects::StoredTask;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddrV4};

/// Everything one node needs to run its tasks and route to services.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeAssignments {
    /// Tasks assigned to the node whose containers must exist (running or being stopped).
    pub tasks: Vec<StoredTask>,
    /// Secret payloads the node's tasks use.
    pub secrets: Vec<FilePayload>,
    /// Config payloads the node's tasks use.
    pub configs: Vec<FilePayload>,
    /// Networks the node's tasks are attached to.
    pub networks: Vec<NetworkInfo>,
    /// Services reachable on those networks (DNS names, VIPs, task addresses).
    pub services: Vec<ServiceRoute>,
    /// Ports published on this node.
    pub published: Vec<PublishedPort>,
    /// The node's role as the swarm sees it (none while the node is unknown), so a promoted or
    /// demoted node starts or stops its manager.
    #[serde(default)]
    pub role: Option<crate::Role>,
    /// The node's raft id when it is a manager.
    #[serde(default)]
    pub raft_id: u64,
    /// Shared volumes the node's tasks mount (issue 19): the agent mounts each before the
    /// containers that use it are created.
    #[serde(default)]
    pub volumes: Vec<VolumePayload>,
}

/// A secret's or config's content, only ever sent to nodes that run a task using it.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FilePayload {
    /// Object ID.
    pub id: String,
    /// Object name.
    pub name: String,
    /// Raw content.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for FilePayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secret data, even in debug logs.
        f.debug_struct("FilePayload")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("data", &format_args!("<{} bytes>", self.data.len()))
            .finish()
    }
}

/// A shared volume as a node mounts it: its driver and options, and the values of its credential
/// options (an sshfs password, a Ceph key), only ever sent to nodes that run a task using it.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumePayload {
    /// The volume's name, which task mounts name as their source.
    pub name: String,
    /// `shoal`, or `local` with a network filesystem `type`.
    pub driver: String,
    /// The options without credentials.
    pub options: std::collections::BTreeMap<String, String>,
    /// Credential options by key, with their values.
    pub credentials: std::collections::BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for VolumePayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials never reach a log, even a debug one.
        f.debug_struct("VolumePayload")
            .field("name", &self.name)
            .field("driver", &self.driver)
            .field("options", &self.options)
            .field("credentials", &self.credentials.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A swarm network as a node realizes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// Network ID.
    pub id: String,
    /// Network name.
    pub name: String,
    /// Subnet, e.g. 10.0.1.0/24.
    pub subnet: ipnet_str::Ipv4Cidr,
    /// Gateway (the node's address on the network, also its DNS server).
    pub gateway: Ipv4Addr,
    /// No traffic leaves the network.
    pub internal: bool,
    /// The routing mesh's network.
    pub ingress: bool,
    /// VXLAN network identifier that carries the network between nodes.
    #[serde(default)]
    pub vni: u32,
    /// The other nodes that carry the network, with their tasks' addresses on it, so the node
    /// can reach them over VXLAN without flooding ARP.
    #[serde(default)]
    pub peers: Vec<OverlayPeer>,
}

/// Another node on an overlay network: where its VXLAN endpoint is and which addresses live there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayPeer {
    /// The node's ID (names its bridge's MAC address on every overlay).
    pub node_id: String,
    /// The node's address, where its VXLAN packets go (UDP 4789).
    pub addr: Ipv4Addr,
    /// Addresses of that node's live tasks on the network.
    pub endpoints: Vec<Ipv4Addr>,
}

/// How a service answers on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRoute {
    /// Service ID.
    pub service_id: String,
    /// Service name (its DNS name).
    pub name: String,
    /// Network this route is on.
    pub network_id: String,
    /// Extra DNS names.
    pub aliases: Vec<String>,
    /// Virtual IP (none in dnsrr mode).
    pub vip: Option<Ipv4Addr>,
    /// DNS answers task addresses instead of a VIP.
    pub dnsrr: bool,
    /// Running tasks' addresses on this network.
    pub tasks: Vec<TaskEndpoint>,
}

/// One task's address behind a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEndpoint {
    /// Task ID.
    pub task_id: String,
    /// Address on the route's network.
    pub addr: Ipv4Addr,
    /// Passing its health check (or having none).
    pub healthy: bool,
}

/// A published port and where it leads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Port on the node.
    pub published: u16,
    /// Task addresses and target ports.
    pub targets: Vec<SocketAddrV4>,
}

/// An agent's report of one task's observed status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatusReport {
    /// Task ID.
    pub task_id: String,
    /// New status.
    pub status: TaskStatus,
}

impl TaskStatusReport {
    /// A network attachment done with (its container is gone): the manager deletes it.
    pub fn attachment_released(task_id: &str, why: &str) -> Self {
        TaskStatusReport {
            task_id: task_id.to_string(),
            status: TaskStatus {
                state: Some(crate::models::TaskState::SHUTDOWN),
                message: Some(why.to_string()),
                timestamp: Some(crate::id::now()),
                ..Default::default()
            },
        }
    }
}

/// What a node sends its manager over the dispatcher session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    /// First message of a session: the node's current description (hostname, resources).
    Hello {
        /// The node's description, refreshed on every session.
        description: Option<Box<crate::models::NodeDescription>>,
        /// Its network interfaces and their addresses (loopback left out), refreshed on every
        /// session: where a floating address may go.
        #[serde(default)]
        interfaces: Vec<crate::floating::NodeInterface>,
    },
    /// Observed task states.
    Reports(Vec<TaskStatusReport>),
    /// Still here.
    Heartbeat,
    /// A plain container on this node wants an address on an attachable swarm network
    /// (`docker run --network <name>`): the leader stores a network-attachment task with this
    /// ID for the node, or answers [`ManagerMessage::Attached`] with the reason it cannot.
    Attach {
        /// ID the node chose for the attachment task (a repeat is harmless).
        task_id: String,
        /// The network's name or ID, as the user gave it.
        network: String,
        /// Extra DNS names of the container on that network.
        aliases: Vec<String>,
    },
    /// Log lines for a subscription the manager sent ([`ManagerMessage::LogSubscribe`]), or
    /// the news that the node has sent them all.
    Logs(crate::logs::LogBatch),
    /// A floating address's lease: renewals and releases (issue 20).
    Floating(FloatingUp),
    /// The node's interfaces changed since its `Hello` (an address added by its operator).
    Interfaces(Vec<crate::floating::NodeInterface>),
    /// The images the node's engine holds, whenever they change (and at each session's start).
    Images(Vec<crate::images::NodeImage>),
    /// Which nodes hold `image` (issue 22): asked when a task's image is neither on this node
    /// nor pullable; answered by [`ManagerMessage::ImageSources`].
    ImageSources {
        /// The task's image reference, as its spec names it.
        image: String,
    },
    /// A request of this node's registry (issue 22): tags, manifests, blob holders; answered
    /// by [`ManagerMessage::Registry`] with the same `seq`.
    Registry {
        /// Chosen by the node, echoed in the answer.
        seq: u64,
        /// The request.
        request: crate::registry::RegistryRequest,
    },
    /// The machine's CPU and memory in use, every few seconds: what the dashboard's node
    /// columns show (kept in the leader's memory, never written to raft).
    Usage(NodeUsage),
}

/// A node's load as its machine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct NodeUsage {
    /// CPU busy since the last report, percent of all CPUs (0 to 100).
    pub cpu_percent: f64,
    /// Memory in use (total less available), bytes.
    pub memory_used: u64,
    /// Memory in all, bytes.
    pub memory_total: u64,
}

/// What a holder of floating addresses tells the leader. The node is the session's (its
/// certificate's), never named in the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FloatingUp {
    /// "I renew `address` under `epoch`; request `seq`; I have (or have not) it on my
    /// interface now." The first renewal of a grant is its acceptance.
    Renew {
        /// The canonical `ADDR/PREFIX`.
        address: String,
        /// The grant's epoch.
        epoch: u64,
        /// Echoed in the answer, so the holder counts its lease from this renewal's send time.
        seq: u64,
        /// Whether the address is on the node's interface now.
        holding: bool,
    },
    /// "I removed `address` (epoch `epoch`)": the leader may grant it elsewhere at once.
    Release {
        /// The canonical `ADDR/PREFIX`.
        address: String,
        /// The grant's epoch.
        epoch: u64,
    },
}

/// What the leader tells a node about floating addresses (issue 20).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FloatingDown {
    /// The node holds `address` under `epoch` (committed in raft); it accepts by renewing.
    Grant {
        /// The canonical `ADDR/PREFIX`.
        address: String,
        /// The grant's epoch.
        epoch: u64,
        /// The interface to add it on; None: the one carrying the node's advertise address.
        interface: Option<String>,
    },
    /// The answer to a renewal: `ok` extends the lease from the renewal's send time; not `ok`:
    /// the grant is superseded, drop the address now.
    Renewed {
        /// The canonical `ADDR/PREFIX`.
        address: String,
        /// The renewed epoch.
        epoch: u64,
        /// The renewal's sequence number.
        seq: u64,
        /// Acknowledged.
        ok: bool,
    },
    /// The leader took the release of `address` under `epoch` (a node handing its addresses over
    /// before it stops waits for this, so the release is not lost with its session).
    Released {
        /// The canonical `ADDR/PREFIX`.
        address: String,
        /// The released epoch.
        epoch: u64,
    },
    /// Give the address up now (drained, no longer eligible, address removed): remove it, then
    /// release it.
    Revoke {
        /// The canonical `ADDR/PREFIX`.
        address: String,
        /// The grant's epoch.
        epoch: u64,
    },
}

/// Label on a plain container naming its network-attachment tasks (comma-separated), so the
/// node releases their addresses once the container is gone.
pub const ATTACHMENTS_LABEL: &str = "com.shoal.network.attachments";

/// What the leader sends a node over the dispatcher session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ManagerMessage {
    /// First message: how often to send heartbeats.
    Welcome {
        /// Heartbeat period in milliseconds (the swarm's `Dispatcher.HeartbeatPeriod`).
        heartbeat_ms: u64,
    },
    /// The node's complete assignments, sent whenever they change.
    Assignments(Box<NodeAssignments>),
    /// The managers' addresses, so the node can fail over to another one.
    Managers(Vec<String>),
    /// The answer to [`AgentMessage::Attach`]: stored (no error), or why not.
    Attached {
        /// The attachment task's ID.
        task_id: String,
        /// Why it was refused (unknown network, not attachable, no free address...).
        error: Option<String>,
    },
    /// The answer to [`AgentMessage::ImageSources`]: the ready nodes whose engines hold
    /// `image`, this node left out (empty when none does).
    ImageSources {
        /// The reference asked about.
        image: String,
        /// Where it can be fetched from.
        sources: Vec<crate::images::ImageSource>,
    },
    /// The answer to [`AgentMessage::Registry`].
    Registry {
        /// The request's `seq`.
        seq: u64,
        /// The answer.
        answer: crate::registry::RegistryAnswer,
    },
    /// Serve the logs of this node's tasks that the subscription selects, in
    /// [`AgentMessage::Logs`] batches.
    LogSubscribe(Box<crate::logs::LogSubscription>),
    /// The manager passed on `bytes` of a subscription's lines: the node may send that much
    /// more.
    LogCredit {
        /// The subscription.
        id: String,
        /// Bytes given back to its window.
        bytes: u64,
    },
    /// The subscription's client went away: stop reading its logs.
    LogClose {
        /// The subscription.
        id: String,
    },
    /// A floating address's lease: grants, answers to renewals, revocations (issue 20).
    Floating(FloatingDown),
    /// Still the leader, still here: sent every `SESSION_TICK`, so a node whose leader went
    /// silent (cut off, powered off: no FIN) moves to another manager within
    /// `SESSION_SILENCE` instead of waiting for TCP or HTTP/2 keepalives.
    Tick,
}

/// How often the leader ticks down every session.
pub const SESSION_TICK: std::time::Duration = std::time::Duration::from_millis(250);
/// A session the leader has been silent on this long is dead: the node tries another manager.
pub const SESSION_SILENCE: std::time::Duration = std::time::Duration::from_millis(1000);
/// The node says something at least this often (heartbeats), so the leader can tell a session
/// that went dead from a quiet one (`SESSION_SILENCE` on its side too).
pub const NODE_HEARTBEAT_MAX: std::time::Duration = std::time::Duration::from_millis(500);

/// IPv4 CIDR as a validated string type, so this crate needs no network library.
pub mod ipnet_str {
    use serde::{Deserialize, Serialize};
    use std::net::Ipv4Addr;

    /// An IPv4 network in CIDR form.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(try_from = "String", into = "String")]
    pub struct Ipv4Cidr {
        /// Network address.
        pub addr: Ipv4Addr,
        /// Prefix length.
        pub prefix: u8,
    }

    impl Ipv4Cidr {
        /// The network containing `addr` with this prefix (host bits cleared).
        pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
            if prefix > 32 {
                return None;
            }
            let mask = mask(prefix);
            Some(Self {
                addr: Ipv4Addr::from(u32::from(addr) & mask),
                prefix,
            })
        }
        /// True if `ip` is inside.
        pub fn contains(&self, ip: Ipv4Addr) -> bool {
            u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
        }
        /// The n-th address of the network.
        pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
            if u64::from(n) >= self.size() {
                return None;
            }
            Some(Ipv4Addr::from(u32::from(self.addr) + n))
        }
        /// Number of addresses.
        pub fn size(&self) -> u64 {
            1u64 << (32 - u32::from(self.prefix))
        }
        /// True if the two networks share any address.
        pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
            let p = self.prefix.min(other.prefix);
            let m = mask(p);
            u32::from(self.addr) & m == u32::from(other.addr) & m
        }
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    impl std::fmt::Display for Ipv4Cidr {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }

    /// Why a string is not an IPv4 network in CIDR form.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum CidrError {
        /// Not `a.b.c.d/n` with n at most 32.
        #[error("invalid CIDR address: {0}")]
        Malformed(String),
        /// An address inside the network rather than the network itself.
        #[error("invalid subnet {0}: it has host bits set")]
        HostBits(String),
    }

    impl std::str::FromStr for Ipv4Cidr {
        type Err = CidrError;
        fn from_str(s: &str) -> Result<Self, CidrError> {
            let malformed = || CidrError::Malformed(s.to_string());
            let (a, p) = s.split_once('/').ok_or_else(malformed)?;
            let addr: Ipv4Addr = a.parse().map_err(|_| malformed())?;
            let prefix: u8 = p.parse().map_err(|_| malformed())?;
            let net = Ipv4Cidr::new(addr, prefix).ok_or_else(malformed)?;
            if net.addr != addr {
                return Err(CidrError::HostBits(s.to_string()));
            }
            Ok(net)
        }
    }

    impl TryFrom<String> for Ipv4Cidr {
        type Error = CidrError;
        fn try_from(s: String) -> Result<Self, CidrError> {
            s.parse()
        }
    }

    impl From<Ipv4Cidr> for String {
        fn from(c: Ipv4Cidr) -> String {
            c.to_string()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn cidr_parsing_and_math() {
            let n: Ipv4Cidr = "10.0.1.0/24".parse().unwrap();
            assert!(n.contains("10.0.1.77".parse().unwrap()));
            assert!(!n.contains("10.0.2.1".parse().unwrap()));
            assert_eq!(n.nth(1), Some("10.0.1.1".parse().unwrap()));
            assert_eq!(n.nth(256), None);
            assert_eq!(
                "10.0.1.5/24".parse::<Ipv4Cidr>(),
                Err(CidrError::HostBits("10.0.1.5/24".into()))
            );
            assert_eq!(
                "10.0.1.0/33".parse::<Ipv4Cidr>(),
                Err(CidrError::Malformed("10.0.1.0/33".into()))
            );
            assert!("10.0.0.0/8".parse::<Ipv4Cidr>().unwrap().overlaps(&n));
            assert!(!"10.0.2.0/24".parse::<Ipv4Cidr>().unwrap().overlaps(&n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the dispatcher sends down a session, printed with `{:?}` (as a log line or a panic
    /// message would): the secret's name shows, its content does not, as text or as bytes.
    #[test]
    fn debug_output_of_assignments_never_shows_secret_data() {
        let data = b"hunter2-the-secret".to_vec();
        let payload = FilePayload {
            id: "s1".into(),
            name: "db_password".into(),
            data: data.clone(),
        };
        let a = NodeAssignments {
            secrets: vec![payload.clone()],
            configs: vec![payload],
            ..Default::default()
        };
        let as_bytes = format!("{data:?}");
        let as_bytes = as_bytes.trim_matches(['[', ']']);
        for printed in [
            format!("{a:?}"),
            format!("{a:#?}"),
            format!("{:?}", ManagerMessage::Assignments(Box::new(a.clone()))),
        ] {
            assert!(printed.contains("db_password"), "{printed}");
            assert!(
                !printed.contains("hunter2") && !printed.contains(as_bytes),
                "{printed}"
            );
        }
    }
}
