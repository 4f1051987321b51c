//! How shoal names the things it creates on a node. Names carry the node's tag or the network's
//! ID so that several shoal nodes can share one Docker Engine (and, in tests, one namespace).

/// Linux interface names are at most 15 bytes.
const IFNAMSIZ_MAX: usize = 15;

/// Prefix of every bridge shoal creates; nftables and iptables rules match on it.
pub const BRIDGE_PREFIX: &str = "shl-";
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
