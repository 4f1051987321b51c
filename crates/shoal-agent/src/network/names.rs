//! How shoal names the things it creates on a node. Names carry the node's tag or the network's
//! ID so that several shoal nodes can share one Docker Engine (and, in tests, one namespace).

/// Linux interface names are at most 15 bytes.
const IFNAMSIZ_MAX: usize = 15;

/// Prefix of every bridge shoal creates; nftables and iptables rules match on it.
pub const BRIDGE_PREFIX: &str = "shl-";
/// Prefix of the VXLAN device that carries a network to the other nodes.
pub const VXLAN_PREFIX: &str = "shx-";
/// UDP port of VXLAN (IANA's, as Swarm uses).
pub const VXLAN_PORT: u16 = 4789;
/// MTU of everything on an overlay: a 1500-byte underlay minus VXLAN's 50 bytes, as in Swarm.
pub const OVERLAY_MTU: u32 = 1450;

/// Prefix of the bridge-side end of a task's veth pair.
pub const VETH_HOST_PREFIX: &str = "shv-";
/// Prefix of the container-side end of a task's veth pair (Docker renames it to `ethN`).
pub const VETH_CONTAINER_PREFIX: &str = "shc-";

/// Keeps ASCII letters and digits of `s`, lowercased, at most `n` of them.
fn alnum(s: &str, n: usize) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .take(n)
        .collect()
}

/// The first 12 characters of the node ID, as Swarm shortens IDs.
pub fn node_tag(node_id: &str) -> String {
    alnum(node_id, 12)
}

/// The Docker network driver (and plugin socket) name of a node.
pub fn driver_name(node_id: &str) -> String {
    format!("shoal-{}", node_tag(node_id))
}

/// The bridge of a network: `shl-` and the first 10 characters of its ID.
pub fn bridge_name(network_id: &str) -> String {
    let name = format!("{BRIDGE_PREFIX}{}", alnum(network_id, 10));
    debug_assert!(name.len() <= IFNAMSIZ_MAX);
    name
}

/// The VXLAN device of a network: `shx-` and the first 10 characters of its ID.
pub fn vxlan_name(network_id: &str) -> String {
    format!("{VXLAN_PREFIX}{}", alnum(network_id, 10))
}

/// The MAC address of a task's interface, derived from its address as Docker does
/// (`02:42` + the IPv4 address): every node can install it without asking.
pub fn endpoint_mac(addr: std::net::Ipv4Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// The MAC address of a node's bridges (`02:53` + a hash of the node ID): other nodes know
/// it, which is how they tell a connection forwarded by that node (the routing mesh) and send
/// its replies back through it.
pub fn node_mac(node_id: &str) -> [u8; 6] {
    let h = fnv1a(node_id).to_be_bytes();
    [0x02, 0x53, h[0], h[1], h[2], h[3]]
}

/// FNV-1a of `s`: a stable, well-spread hash for names derived from IDs.
pub fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// A MAC address as nftables and `ip` print it.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The two ends of an endpoint's veth pair: (bridge side, container side).
pub fn veth_names(endpoint_id: &str) -> (String, String) {
    let id = alnum(endpoint_id, 10);
    (
        format!("{VETH_HOST_PREFIX}{id}"),
        format!("{VETH_CONTAINER_PREFIX}{id}"),
    )
}

/// The interface alias that marks a link as created by this node (so cleanup finds only ours).
pub fn link_owner_alias(node_tag: &str) -> String {
    format!("shoal:{node_tag}")
}

/// The Docker network a node attaches task containers to for a shoal network.
pub fn docker_network_name(node_tag: &str, network_name: &str) -> String {
    let name: String = network_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("shoal-{node_tag}-{name}")
}

/// The nftables table of a node (`ip shoal_<tag>`): deleting it removes all of the node's rules.
pub fn nft_table(node_tag: &str) -> String {
    format!("shoal_{node_tag}")
}

/// The comment on this node's iptables rules, so they can be found and removed.
pub fn iptables_comment(node_tag: &str) -> String {
    format!("shoal:{node_tag}")
}

/// Makes an ID usable inside an nftables chain name.
fn nft_ident(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The nftables chain that load-balances one service's VIP on one network.
pub fn service_chain(service_id: &str, network_id: &str) -> String {
    format!("svc_{}_{}", nft_ident(service_id), nft_ident(network_id))
}

/// The nftables chain that load-balances one published port.
pub fn published_chain(protocol: super::Protocol, port: u16) -> String {
    format!("pub_{}_{port}", protocol.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_ifnamsiz() {
        let long = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz";
        assert_eq!(bridge_name(long), "shl-0123456789");
        let (h, c) = veth_names(long);
        assert!(h.len() <= IFNAMSIZ_MAX && c.len() <= IFNAMSIZ_MAX);
        assert_ne!(h, c);
    }

    #[test]
    fn macs_are_unicast_locally_administered_and_distinct() {
        let t = endpoint_mac("10.0.1.5".parse().unwrap());
        assert_eq!(mac_string(&t), "02:42:0a:00:01:05");
        let a = node_mac("node-a");
        let b = node_mac("node-b");
        assert_ne!(a, b);
        for m in [t, a, b] {
            assert_eq!(m[0] & 0x03, 0x02, "not a locally administered unicast MAC");
        }
        assert_ne!(a[..2], t[..2], "node MACs must not collide with task MACs");
        assert_eq!(vxlan_name(&"x".repeat(30)).len(), 14);
    }

    #[test]
    fn driver_name_uses_first_12_of_node_id() {
        assert_eq!(
            driver_name("Abcdefghijklmnopqrstuvwxy"),
            "shoal-abcdefghijkl"
        );
    }

    #[test]
    fn docker_network_name_is_valid() {
        assert_eq!(docker_network_name("n1", "my net/x"), "shoal-n1-my_net_x");
    }

    #[test]
    fn chain_names_are_nft_identifiers() {
        assert_eq!(service_chain("s-1", "n.2"), "svc_s_1_n_2");
        assert_eq!(
            published_chain(super::super::Protocol::Udp, 53),
            "pub_udp_53"
        );
    }
}
