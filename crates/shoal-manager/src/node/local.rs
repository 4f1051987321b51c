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

/// Reads this machine's CPU and memory in use from `/proc`: CPU as the busy share of the time
/// since the previous sample (so the first sample has none).
#[derive(Default)]
pub struct UsageSampler {
    last: Option<(u64, u64)>,
}

impl UsageSampler {
    /// The usage since the last call; None on the first call or where `/proc` is unreadable.
    pub fn sample(&mut self) -> Option<shoal_api::dispatch::NodeUsage> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let now = cpu_times(&stat)?;
        let before = self.last.replace(now);
        let (busy0, total0) = before?;
        let (busy, total) = now;
        let spent = total.checked_sub(total0).filter(|t| *t > 0)?;
        let cpu_percent = busy.saturating_sub(busy0) as f64 * 100.0 / spent as f64;
        let (memory_total, memory_used) = memory(&meminfo)?;
        Some(shoal_api::dispatch::NodeUsage {
            cpu_percent: cpu_percent.clamp(0.0, 100.0),
            memory_used,
            memory_total,
        })
    }
}

/// (busy, total) jiffies of all CPUs from `/proc/stat`'s first line.
fn cpu_times(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let total: u64 = v.iter().take(8).fold(0u64, |a, x| a.saturating_add(*x));
    let idle = v.get(3)?.saturating_add(*v.get(4).unwrap_or(&0));
    Some((total.saturating_sub(idle), total))
}

/// (total, used) bytes from `/proc/meminfo`: used is total less available.
fn memory(meminfo: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        meminfo.lines().find_map(|l| {
            let kb = l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim();
            kb.parse::<u64>().ok().map(|k| k.saturating_mul(1024))
        })
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    Some((total, total.saturating_sub(available)))
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

#[cfg(test)]
mod usage_tests {
    use super::*;

    #[test]
    fn cpu_and_memory_are_read_from_proc_s_formats() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(cpu_times(stat), Some((150, 1000)));
        assert_eq!(cpu_times("intr 1 2"), None);
        let meminfo = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n";
        assert_eq!(memory(meminfo), Some((1_024_000, 768_000)));
        let mut s = UsageSampler::default();
        assert!(s.sample().is_none(), "the first sample has no interval");
        // The next sample with time elapsed on the CPUs' clock (jiffies tick every 1-10 ms).
        let started = std::time::Instant::now();
        let u = loop {
            if let Some(u) = s.sample() {
                break u;
            }
            assert!(started.elapsed().as_secs() < 5, "no CPU time passed in 5 s");
            std::thread::yield_now();
        };
        assert!((0.0..=100.0).contains(&u.cpu_percent));
        assert!(u.memory_used <= u.memory_total && u.memory_total > 0);
    }
}
