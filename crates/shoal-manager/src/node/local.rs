//! What this machine is, as the swarm sees it: its node object (hostname, platform, resources,
//! engine) and the addresses it can advertise. Read from the engine and the kernel; no traffic.

use crate::api::AppState;
use crate::node::Identity;
use shoal_api::models::{
    EngineDescription, EngineDescriptionPlugins, ManagerStatus, Node, NodeDescription, NodeSpec,
    NodeSpecAvailabilityEnum, NodeSpecRoleEnum, NodeState, NodeStatus, Platform, Reachability,
    ResourceObject,
};
use std::collections::HashMap;

/// The IPv4 address of the interface holding the default route, as Docker picks it; read from
/// the kernel and `ip`, no traffic sent.
pub fn local_ipv4() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let iface = routes
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[1] == "00000000")
        .map(|f| f[0].to_string())?;
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", &iface])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_string)
}

/// This machine's network interfaces and their addresses (`ip -j addr`), loopback left out:
/// what a node reports so that `shoal floating-ip add` can check an address against them.
pub fn interfaces() -> Vec<shoal_api::floating::NodeInterface> {
    let Ok(out) = std::process::Command::new("ip")
        .args(["-j", "addr", "show"])
        .output()
    else {
        return Vec::new();
    };
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    list.iter()
        .filter(|i| i["link_type"] != "loopback")
        .filter_map(|i| {
            let name = i["ifname"].as_str()?.to_string();
            let addresses = i["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| {
                    Some(format!(
                        "{}/{}",
                        a["local"].as_str()?,
                        a["prefixlen"].as_u64()?
                    ))
                })
                .collect();
            Some(shoal_api::floating::NodeInterface { name, addresses })
        })
        .collect()
}

/// The node object describing this machine.
pub async fn local_node(d: &AppState, identity: &Identity, now: &str) -> Node {
    let info = crate::api::system::engine_json(d, axum::http::Method::GET, "/info", None)
        .await
        .map(|(_, v)| v)
        .unwrap_or_default();
    let hostname = d
        .hostname
        .clone()
        .or_else(|| info["Name"].as_str().map(str::to_string))
        .unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .unwrap_or_default()
                .trim()
                .to_string()
        });
    let arch = info["Architecture"]
        .as_str()
        .unwrap_or(std::env::consts::ARCH)
        .to_string();
    let labels: HashMap<String, String> = info["Labels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            l.as_str()?
                .split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    Node {
        id: Some(identity.node_id.clone()),
        version: None,
        created_at: Some(now.to_string()),
        updated_at: Some(now.to_string()),
        spec: Some(NodeSpec {
            name: None,
            labels: Some(HashMap::new()),
            role: Some(NodeSpecRoleEnum::MANAGER),
            availability: Some(NodeSpecAvailabilityEnum::ACTIVE),
        }),
        description: Some(NodeDescription {
            hostname: Some(hostname),
            platform: Some(Platform {
                architecture: Some(arch),
                os: Some("linux".into()),
            }),
            resources: Some(ResourceObject {
                nano_cpus: info["NCPU"]
                    .as_i64()
                    .map(|n| n.saturating_mul(1_000_000_000)),
                memory_bytes: info["MemTotal"].as_i64(),
                generic_resources: None,
            }),
            engine: Some(EngineDescription {
                engine_version: info["ServerVersion"].as_str().map(str::to_string),
                labels: Some(labels),
                plugins: engine_plugins(&info),
            }),
            tls_info: None,
        }),
        status: Some(NodeStatus {
            state: Some(NodeState::READY),
            message: None,
            addr: Some(
                identity
                    .addr
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            ),
        }),
        manager_status: Some(ManagerStatus {
            leader: Some(true),
            reachability: Some(Reachability::REACHABLE),
            addr: Some(identity.addr.clone()),
        }),
    }
}

/// The engine's plugins as Docker's executor describes a node (`executor.Describe`): the
/// volume, network (with the built-in `overlay`), authorization and log plugins of its
/// `/info`, sorted by type and name, each once.
fn engine_plugins(info: &serde_json::Value) -> Option<Vec<EngineDescriptionPlugins>> {
    if info["Plugins"].is_null() {
        return None;
    }
    let names = |typ: &str| -> Vec<String> {
        info["Plugins"][typ]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect()
    };
    let mut network = vec!["overlay".to_string()];
    network.extend(names("Network"));
    let mut all: Vec<(String, String)> = [
        ("Volume", names("Volume")),
        ("Network", network),
        ("Authorization", names("Authorization")),
        ("Log", names("Log")),
    ]
    .into_iter()
    .flat_map(|(typ, list)| list.into_iter().map(move |n| (typ.to_string(), n)))
    .collect();
    all.sort();
    all.dedup();
    Some(
        all.into_iter()
            .map(|(typ, name)| EngineDescriptionPlugins {
                typ: Some(typ),
                name: Some(name),
            })
            .collect(),
    )
}

/// The address this host uses to reach `remote` (no packet is sent: a UDP connect only routes).
pub fn local_addr_towards(remote: &std::net::SocketAddr) -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind(("0.0.0.0", 0)).ok()?;
    s.connect(remote).ok()?;
    Some(s.local_addr().ok()?.ip())
}
