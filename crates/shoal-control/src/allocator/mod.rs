//! Addresses: the subnet and VXLAN ID of each swarm network, service VIPs and published ports
//! ([`endpoint`]), and task addresses ([`tasks`]). Pure functions over what the store already
//! holds, so a restart recomputes the same picture: nothing about allocation is kept elsewhere.

pub mod endpoint;
pub mod tasks;

pub use endpoint::endpoint;
pub use tasks::allocate;

use crate::state::ClusterState;
use shoal_api::dispatch::ipnet_str::Ipv4Cidr;
use shoal_api::models::{EndpointPortConfigPublishModeEnum, IpamConfig, Network};
use shoal_api::objects::{
    AttachedNetwork, AttachedNetworkSpec, NetworkAttachment, StoredService, StoredTask,
};
use shoal_api::ApiError;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

/// The subnet and gateway of a swarm network.
pub fn network_subnet(n: &Network) -> Option<(Ipv4Cidr, Ipv4Addr)> {
    let cfg = n.ipam.as_ref()?.config.as_ref()?.first()?;
    let subnet: Ipv4Cidr = cfg.subnet.as_deref()?.parse().ok()?;
    let gateway = cfg
        .gateway
        .as_deref()
        .and_then(|g| g.parse().ok())
        .or_else(|| subnet.nth(1))?;
    Some((subnet, gateway))
}

/// Docker's driver option holding an overlay network's VXLAN ID.
pub const VNI_OPTION: &str = "com.docker.network.driver.overlay.vxlanid_list";
/// The ingress network's VXLAN ID, as in Swarm.
pub const INGRESS_VNI: u32 = 4096;
/// The first VXLAN ID user networks get (the one after the ingress network's).
pub const FIRST_VNI: u32 = INGRESS_VNI + 1;

/// The VXLAN ID of a swarm network: the one recorded at creation, or for a network stored
/// without one, a stable ID derived from its ID (above the range creation hands out).
pub fn network_vni(n: &Network) -> u32 {
    if let Some(v) = n
        .options
        .as_ref()
        .and_then(|o| o.get(VNI_OPTION))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|v| *v > 0 && *v < (1 << 24))
    {
        return v;
    }
    let id = n.id.as_deref().unwrap_or_default();
    // FNV-1a, folded into the upper half of the 24-bit VNI space.
    let h = id.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    });
    (1 << 23) | (h & 0x7f_ffff)
}

/// The lowest VXLAN ID no network uses yet.
pub fn free_vni(state: &ClusterState) -> u32 {
    let used: HashSet<u32> = state.networks.iter().map(|n| network_vni(&n.obj)).collect();
    (FIRST_VNI..)
        .find(|v| !used.contains(v))
        .unwrap_or(FIRST_VNI)
}

/// Addresses in use on each network: gateways, VIPs and task addresses.
#[derive(Debug, Default)]
pub struct Ipam {
    used: HashMap<String, HashSet<Ipv4Addr>>,
    nets: HashMap<String, (Ipv4Cidr, Ipv4Addr)>,
}

fn addr_of(cidr: &str) -> Option<Ipv4Addr> {
    cidr.split('/').next()?.parse().ok()
}

impl Ipam {
    /// Builds the picture from the store snapshot.
    pub fn from_state(state: &ClusterState) -> Self {
        let mut ipam = Ipam::default();
        for n in &state.networks {
            if let (Some(id), Some(sg)) = (n.obj.id.clone(), network_subnet(&n.obj)) {
                ipam.used.entry(id.clone()).or_default().insert(sg.1);
                ipam.nets.insert(id, sg);
            }
        }
        for s in state.services.values() {
            for vip in s
                .obj
                .service
                .endpoint
                .iter()
                .flat_map(|e| e.virtual_ips.iter().flatten())
            {
                if let (Some(net), Some(a)) = (
                    vip.network_id.as_deref(),
                    vip.addr.as_deref().and_then(addr_of),
                ) {
                    ipam.used.entry(net.to_string()).or_default().insert(a);
                }
            }
        }
        for t in &state.tasks {
            ipam.note_task(&t.obj);
        }
        ipam
    }

    /// Marks a task's addresses as used.
    pub fn note_task(&mut self, t: &StoredTask) {
        for a in &t.networks_attachments {
            for addr in a.addresses.iter().filter_map(|c| addr_of(c)) {
                self.used
                    .entry(a.network.id.clone())
                    .or_default()
                    .insert(addr);
            }
        }
    }

    /// Takes the lowest free address of a network, in CIDR form.
    pub fn allocate(&mut self, network_id: &str) -> Result<String, ApiError> {
        let (subnet, _) = *self
            .nets
            .get(network_id)
            .ok_or_else(|| ApiError::not_found(format!("network {network_id} not found")))?;
        let used = self.used.entry(network_id.to_string()).or_default();
        // Skip the network address and the broadcast address.
        for n in 2..subnet.size().saturating_sub(1) as u32 {
            if let Some(ip) = subnet.nth(n) {
                if used.insert(ip) {
                    return Ok(format!("{ip}/{}", subnet.prefix));
                }
            }
        }
        Err(ApiError::invalid_arg(format!(
            "could not allocate an address on network {network_id}: subnet {subnet} is full"
        )))
    }
}

/// The networks a service's tasks attach to: its own, plus ingress when it publishes through the mesh.
pub fn service_networks(
    svc: &StoredService,
    state: &ClusterState,
) -> Vec<(String, String, Vec<String>)> {
    let spec = svc.spec();
    let mut out: Vec<(String, String, Vec<String>)> = Vec::new();
    let configs = spec
        .task_template
        .as_ref()
        .and_then(|t| t.networks.clone())
        .or_else(|| spec.networks.clone())
        .unwrap_or_default();
    for c in configs {
        let target = c.target.unwrap_or_default();
        if let Some(n) = state
            .networks
            .iter()
            .find(|n| n.obj.id.as_deref() == Some(target.as_str()))
        {
            out.push((
                target,
                n.obj.name.clone().unwrap_or_default(),
                c.aliases.unwrap_or_default(),
            ));
        }
    }
    let mesh = spec
        .endpoint_spec
        .as_ref()
        .and_then(|e| e.ports.as_ref())
        .is_some_and(|ps| {
            ps.iter()
                .any(|p| p.publish_mode != Some(EndpointPortConfigPublishModeEnum::HOST))
        });
    if mesh {
        if let Some(ingress) = state.networks.iter().find(|n| n.obj.ingress == Some(true)) {
            let id = ingress.obj.id.clone().unwrap_or_default();
            if !out.iter().any(|(n, _, _)| *n == id) {
                out.push((id, ingress.obj.name.clone().unwrap_or_default(), vec![]));
            }
        }
    }
    out
}

/// Gives a new task an address on each of its service's networks.
pub fn attach_task(
    t: &mut StoredTask,
    state: &ClusterState,
    ipam: &mut Ipam,
) -> Result<(), ApiError> {
    let Some(svc) = state.services.get(t.service_id()) else {
        return Ok(());
    };
    let mut attachments = Vec::new();
    for (id, name, aliases) in service_networks(&svc.obj, state) {
        let addr = ipam.allocate(&id)?;
        attachments.push(NetworkAttachment {
            network: AttachedNetwork {
                id,
                spec: AttachedNetworkSpec { name },
            },
            addresses: vec![addr],
            aliases,
        });
    }
    t.networks_attachments = attachments;
    Ok(())
}

/// The lowest free /24 in 10.0.0.0/8: one no swarm network, host route or reserved range
/// (loopback, link-local) overlaps, so an automatic pick never lands where
/// [`check_subnet`] would refuse it.
pub fn free_subnet(state: &ClusterState, routes: &[HostRoute]) -> Option<Ipv4Cidr> {
    let taken: Vec<Ipv4Cidr> = state
        .networks
        .iter()
        .filter_map(|n| network_subnet(&n.obj).map(|s| s.0))
        .chain(routes.iter().map(|r| r.dest))
        .collect();
    (0u32..65536).find_map(|i| {
        let c = Ipv4Cidr::new(Ipv4Addr::from(0x0A00_0000u32 + (i << 8)), 24)?;
        (!taken.iter().any(|t| t.overlaps(&c))).then_some(c)
    })
}

/// A route of the host the manager runs on (an I/O fact the API reads and passes in): an
/// overlay whose subnet overlaps it would shadow or be shadowed by that network on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoute {
    /// Where the route leads.
    pub dest: Ipv4Cidr,
    /// The device it leaves through, to name it in the refusal.
    pub device: String,
}

/// Prefix of the bridges the agent makes for overlay networks (`shl-<net id 10>`): routes on
/// them are shoal's own networks, already checked against the store.
const OWN_BRIDGE_PREFIX: &str = "shl-";

/// Reads `/proc/net/route` text (addresses in the kernel's byte order, printed as hex):
/// every route but default ones (which cover everything) and shoal's own bridges.
pub fn parse_proc_net_route(text: &str) -> Vec<HostRoute> {
    let hex = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(u32::from_be)
            .map(Ipv4Addr::from)
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (device, dest, mask) = (*f.first()?, hex(f.get(1)?)?, hex(f.get(7)?)?);
            let prefix = u8::try_from(u32::from(mask).leading_ones()).ok()?;
            if prefix == 0 || device.starts_with(OWN_BRIDGE_PREFIX) {
                return None;
            }
            Some(HostRoute {
                dest: Ipv4Cidr::new(dest, prefix)?,
                device: device.to_string(),
            })
        })
        .collect()
}

/// Ranges no overlay may use, whatever the host: the kernel treats them specially.
fn reserved() -> [(Ipv4Cidr, &'static str); 2] {
    [
        (
            Ipv4Cidr {
                addr: Ipv4Addr::new(127, 0, 0, 0),
                prefix: 8,
            },
            "the loopback range",
        ),
        (
            Ipv4Cidr {
                addr: Ipv4Addr::new(169, 254, 0, 0),
                prefix: 16,
            },
            "the link-local range",
        ),
    ]
}

/// Refuses an overlay subnet (or address pool, `field` says which) that overlaps loopback,
/// link-local or one of `routes`: containers on it could not reach that network, and the host
/// would route the overlay's traffic astray. Routes are the manager's own (what it can see);
/// other nodes' routes are not known here.
pub fn check_subnet(field: &str, subnet: &Ipv4Cidr, routes: &[HostRoute]) -> Result<(), ApiError> {
    if let Some((r, what)) = reserved().into_iter().find(|(r, _)| r.overlaps(subnet)) {
        return Err(ApiError::invalid_arg(format!(
            "{field}: {subnet} overlaps {r}, {what}, which overlay networks may not use"
        )));
    }
    if let Some(r) = routes.iter().find(|r| r.dest.overlaps(subnet)) {
        return Err(ApiError::invalid_arg(format!(
            "{field}: {subnet} overlaps the manager host's route to {} (dev {}); pick a subnet outside the host's networks",
            r.dest, r.device
        )));
    }
    Ok(())
}

/// A swarm overlay network as the store keeps it, with Docker's defaults: not internal, not
/// attachable, not the ingress, no options or labels. `networks create` and
/// [`ingress_network`] both start from it.
pub fn overlay_network(
    name: &str,
    id: &str,
    created: String,
    subnet: &str,
    gateway: &str,
) -> Network {
    Network {
        name: Some(name.to_string()),
        id: Some(id.to_string()),
        created: Some(created),
        scope: Some("swarm".into()),
        driver: Some("overlay".into()),
        enable_ipv4: Some(true),
        enable_ipv6: Some(false),
        ipam: Some(shoal_api::models::Ipam {
            driver: Some("default".into()),
            config: Some(vec![IpamConfig {
                subnet: Some(subnet.to_string()),
                gateway: Some(gateway.to_string()),
                ..Default::default()
            }]),
            options: None,
        }),
        internal: Some(false),
        attachable: Some(false),
        ingress: Some(false),
        options: Some(HashMap::new()),
        labels: Some(HashMap::new()),
        ..Default::default()
    }
}

/// The ingress network `swarm init` creates: the routing mesh's overlay, 10.0.0.0/24 with Swarm's
/// VXLAN ID.
pub fn ingress_network(id: &str, created: String) -> Network {
    Network {
        ingress: Some(true),
        options: Some(HashMap::from([(
            VNI_OPTION.to_string(),
            INGRESS_VNI.to_string(),
        )])),
        ..overlay_network("ingress", id, created, "10.0.0.0/24", "10.0.0.1")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn subnets_on_the_host_loopback_or_link_local_are_refused() {
        // eth0 default, docker0 172.17.0.0/16, eth0 192.0.2.0/24, a shoal bridge's 10.0.1.0/24.
        let text =
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            shl-abc\t0001000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let routes = super::parse_proc_net_route(text);
        let dests: Vec<String> = routes
            .iter()
            .map(|r| format!("{} {}", r.dest, r.device))
            .collect();
        assert_eq!(dests, ["172.17.0.0/16 docker0", "192.0.2.0/24 eth0"]);
        let check = |s: &str| {
            super::check_subnet("Subnet", &s.parse().unwrap(), &routes).map_err(|e| e.message)
        };
        check("10.0.1.0/24").unwrap();
        check("172.18.0.0/16").unwrap();
        let e = check("172.17.5.0/24").unwrap_err();
        assert!(e.contains("Subnet: 172.17.5.0/24 overlaps the manager host's route to 172.17.0.0/16 (dev docker0)"), "{e}");
        assert!(check("172.0.0.0/8").unwrap_err().contains("172.17.0.0/16"));
        let e = check("127.0.0.0/24").unwrap_err();
        assert!(
            e.contains("Subnet: 127.0.0.0/24 overlaps 127.0.0.0/8, the loopback range"),
            "{e}"
        );
        assert!(check("169.254.3.0/24").unwrap_err().contains("link-local"));
        assert!(check("0.0.0.0/0").unwrap_err().contains("loopback"));
        // Garbage lines are skipped, not a panic.
        assert!(super::parse_proc_net_route("x\nonly-a-device\neth0 zz 0 0 0 0 0 qq").is_empty());
    }

    #[test]
    fn automatic_subnets_avoid_host_routes() {
        let state = crate::ClusterState::default();
        let routes = [super::HostRoute {
            dest: "10.0.0.0/23".parse().unwrap(),
            device: "eth1".into(),
        }];
        assert_eq!(
            super::free_subnet(&state, &routes).unwrap().to_string(),
            "10.0.2.0/24"
        );
        assert_eq!(
            super::free_subnet(&state, &[]).unwrap().to_string(),
            "10.0.0.0/24"
        );
    }

    use super::*;
    use crate::state::Versioned;

    fn net(id: &str, subnet: &str) -> Versioned<Network> {
        let n: Network = serde_json::from_str(&format!(
            r#"{{"Id":"{id}","Name":"{id}","IPAM":{{"Config":[{{"Subnet":"{subnet}"}}]}}}}"#
        ))
        .unwrap();
        Versioned { obj: n, version: 1 }
    }

    #[test]
    fn allocates_lowest_free_skipping_gateway() {
        let state = ClusterState {
            networks: vec![net("a", "10.0.5.0/30")],
            ..Default::default()
        };
        let mut ipam = Ipam::from_state(&state);
        assert_eq!(ipam.allocate("a").unwrap(), "10.0.5.2/30");
        assert!(
            ipam.allocate("a").is_err(),
            "a /30 has one usable address after the gateway"
        );
    }

    #[test]
    fn subnets_do_not_overlap() {
        let state = ClusterState {
            networks: vec![net("i", "10.0.0.0/24"), net("b", "10.0.1.0/24")],
            ..Default::default()
        };
        assert_eq!(free_subnet(&state, &[]).unwrap().to_string(), "10.0.2.0/24");
    }
}
