//! Floating addresses (issue 20), the pure part: what `shoal floating-ip add ADDR/PREFIX
//! [--interface NAME] [--constraint EXPR]...` asks for, checked before anything is stored, and
//! the stored object. Which node holds an address is decided elsewhere (the lease logic,
//! `shoal_control::vip`); this module only says what a valid request is.
//!
//! Decisions: the address is stored in canonical form (`10.0.0.9/24`, IPv6 compressed and
//! lowercase) and is the object's ID, so a duplicate is the same key whatever its spelling. A
//! host address (`/32`, `/128`) is allowed: it is added with that prefix and answers ARP/NDP all
//! the same. Network and broadcast addresses of the prefix, loopback, link-local, multicast and
//! unspecified addresses are refused: no client could reach them through a router. Constraints
//! use the placement syntax (`node.role==manager`, `node.labels.edge==true`, `!=`); a constraint
//! no node meets is accepted (the address shows "no eligible node").

use crate::error::ApiError;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest interface name Linux takes (`IFNAMSIZ` - 1).
pub const MAX_INTERFACE_LEN: usize = 15;
/// Most constraints one address may carry (more is a mistake, and each is evaluated per node).
pub const MAX_CONSTRAINTS: usize = 32;

/// What a user asks for (`POST /shoal/v1/floating-ips`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct FloatingIpSpec {
    /// `ADDR/PREFIX`, IPv4 or IPv6.
    pub address: String,
    /// The interface to add it on; absent: the one carrying the node's advertise address.
    pub interface: Option<String>,
    /// Placement constraints a node must meet to hold it.
    pub constraints: Vec<String>,
}

/// A floating address as the store keeps it: the checked spec, keyed by its canonical address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StoredFloatingIp {
    /// The canonical `ADDR/PREFIX` (also the key).
    pub address: String,
    /// The interface, if one was given.
    #[serde(default)]
    pub interface: Option<String>,
    /// Placement constraints.
    #[serde(default)]
    pub constraints: Vec<String>,
    /// When it was added (RFC 3339).
    pub created_at: String,
}

/// Who holds a floating address: the lease's raft record, written only by the leader (a
/// compare-and-set on the previous record), kept while the address is configured and until every
/// lease under it has surely run out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StoredFloatingGrant {
    /// The canonical `ADDR/PREFIX` (also the key).
    pub address: String,
    /// The node granted the address (its ID).
    pub node: String,
    /// Counts up per address: a holder's renewals name the epoch they renew.
    pub epoch: u64,
    /// When the grant was written (RFC 3339), for `shoal floating-ip ls`.
    pub since: String,
}

/// One network interface of a node and its addresses, as the node reports it at each session:
/// `shoal floating-ip add` checks an address against the interfaces of the nodes that may hold
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeInterface {
    /// The interface's name (`eth0`).
    pub name: String,
    /// Its addresses, `ADDR/PREFIX`.
    pub addresses: Vec<String>,
}

/// A node's interfaces as the store keeps them (kind `nodeinterfaces`, keyed by node ID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StoredNodeInterfaces {
    /// The node's ID.
    pub node: String,
    /// Its interfaces, loopback left out.
    pub interfaces: Vec<NodeInterface>,
}

/// Whether `ip` lies in the subnet of the interface address `cidr` (`ADDR/PREFIX`).
pub fn in_subnet(ip: IpAddr, cidr: &str) -> bool {
    let Some((a, p)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(a), Ok(p)) = (a.parse::<IpAddr>(), p.parse::<u32>()) else {
        return false;
    };
    match (ip, a) {
        (IpAddr::V4(x), IpAddr::V4(y)) if p <= 32 => {
            let mask = u32::MAX.checked_shl(32 - p).unwrap_or(0);
            u32::from(x) & mask == u32::from(y) & mask
        }
        (IpAddr::V6(x), IpAddr::V6(y)) if p <= 128 => {
            let mask = u128::MAX.checked_shl(128 - p).unwrap_or(0);
            u128::from(x) & mask == u128::from(y) & mask
        }
        _ => false,
    }
}

/// An address and its prefix length, parsed and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address itself (not the network's).
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn invalid(field: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(format!("{field}: {why}"))
}

/// Parses `ADDR/PREFIX` and refuses addresses no client could reach through a router.
pub fn parse_address(s: &str) -> Result<Cidr, ApiError> {
    let shown: String = s.chars().take(64).collect();
    let (a, p) = s.split_once('/').ok_or_else(|| {
        invalid(
            "Address",
            format!("{shown:?} is not ADDR/PREFIX (e.g. 192.168.1.250/24 or fd00::250/64)"),
        )
    })?;
    let addr: IpAddr = a
        .parse()
        .map_err(|_| invalid("Address", format!("{a:?} is not an IPv4 or IPv6 address")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = p
        .parse()
        .ok()
        .filter(|n| *n <= max)
        .ok_or_else(|| invalid("Address", format!("prefix {p:?} is not 0 to {max}")))?;
    let why = match addr {
        IpAddr::V4(v4) => v4_refusal(v4, prefix),
        IpAddr::V6(v6) => v6_refusal(v6),
    };
    if let Some(why) = why {
        return Err(invalid("Address", format!("{addr} is {why}")));
    }
    Ok(Cidr { addr, prefix })
}

fn v4_refusal(a: Ipv4Addr, prefix: u8) -> Option<&'static str> {
    if a.is_unspecified() {
        return Some("the unspecified address");
    }
    if a.is_loopback() {
        return Some("a loopback address");
    }
    if a.is_link_local() {
        return Some("a link-local address");
    }
    if a.is_multicast() || a.is_broadcast() {
        return Some("a multicast or broadcast address");
    }
    if prefix <= 30 {
        let bits = u32::from(a);
        let host_mask = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
        if bits & host_mask == 0 {
            return Some("the network address of its prefix");
        }
        if bits & host_mask == host_mask {
            return Some("the broadcast address of its prefix");
        }
    }
    None
}

fn v6_refusal(a: Ipv6Addr) -> Option<&'static str> {
    if a.is_unspecified() {
        return Some("the unspecified address");
    }
    if a.is_loopback() {
        return Some("a loopback address");
    }
    if a.is_multicast() {
        return Some("a multicast address");
    }
    // fe80::/10: only on one link, never routed to.
    if (a.segments()[0] & 0xffc0) == 0xfe80 {
        return Some("a link-local address");
    }
    None
}

/// A Linux interface name: 1 to 15 bytes, no `/`, no whitespace, not `.` or `..`.
pub fn check_interface(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_INTERFACE_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        let shown: String = name.chars().take(32).collect();
        Err(invalid(
            "Interface",
            format!("{shown:?} is not an interface name (1 to {MAX_INTERFACE_LEN} characters, no '/', ':' or spaces)"),
        ))
    }
}

/// A placement constraint in Swarm's syntax: `KEY==VALUE` or `KEY!=VALUE`, the key one that
/// placement reads.
pub fn check_constraint(c: &str) -> Result<(), ApiError> {
    let shown: String = c.chars().take(100).collect();
    let (key, value) = c
        .split_once("!=")
        .or_else(|| c.split_once("=="))
        .ok_or_else(|| {
            invalid(
                "Constraints",
                format!("{shown:?} is not KEY==VALUE or KEY!=VALUE"),
            )
        })?;
    let key = key.trim();
    let known = matches!(
        key,
        "node.id" | "node.hostname" | "node.role" | "node.platform.os" | "node.platform.arch"
    ) || key
        .strip_prefix("node.labels.")
        .or_else(|| key.strip_prefix("engine.labels."))
        .is_some_and(|l| !l.is_empty());
    if !known {
        return Err(invalid(
            "Constraints",
            format!("{shown:?}: unknown key {key:?} (node.id, node.hostname, node.role, node.platform.os, node.platform.arch, node.labels.*, engine.labels.*)"),
        ));
    }
    if value.trim().is_empty() {
        return Err(invalid("Constraints", format!("{shown:?}: no value")));
    }
    Ok(())
}

/// Checks a request and gives the object to store (its address canonical).
pub fn check(spec: &FloatingIpSpec, now: &str) -> Result<StoredFloatingIp, ApiError> {
    let cidr = parse_address(&spec.address)?;
    if let Some(i) = &spec.interface {
        check_interface(i)?;
    }
    if spec.constraints.len() > MAX_CONSTRAINTS {
        return Err(invalid(
            "Constraints",
            format!(
                "{} constraints; at most {MAX_CONSTRAINTS}",
                spec.constraints.len()
            ),
        ));
    }
    for c in &spec.constraints {
        check_constraint(c)?;
    }
    Ok(StoredFloatingIp {
        address: cidr.to_string(),
        interface: spec.interface.clone(),
        constraints: spec.constraints.clone(),
        created_at: now.to_string(),
    })
}

#[cfg(test)]
mod subnet_tests {
    use super::in_subnet;

    #[test]
    fn subnets_hold_their_addresses_only() {
        let ip = |s: &str| s.parse().unwrap();
        assert!(in_subnet(ip("10.99.0.200"), "10.99.0.1/24"));
        assert!(!in_subnet(ip("10.99.1.200"), "10.99.0.1/24"));
        assert!(in_subnet(ip("10.99.1.200"), "10.99.0.1/0"));
        assert!(!in_subnet(ip("10.99.0.2"), "10.99.0.1/32"));
        assert!(in_subnet(ip("fd00:99::200"), "fd00:99::1/64"));
        assert!(!in_subnet(ip("fd00:98::200"), "fd00:99::1/64"));
        assert!(!in_subnet(ip("10.99.0.200"), "fd00:99::1/64"));
        assert!(!in_subnet(ip("10.99.0.200"), "10.99.0.1/33"));
        assert!(!in_subnet(ip("10.99.0.200"), "garbage"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(addr: &str) -> FloatingIpSpec {
        FloatingIpSpec {
            address: addr.into(),
            ..Default::default()
        }
    }

    #[test]
    fn accepted_addresses_are_stored_in_canonical_form() {
        for (given, stored) in [
            ("192.168.1.250/24", "192.168.1.250/24"),
            ("10.0.0.9/32", "10.0.0.9/32"),
            ("10.0.0.1/31", "10.0.0.1/31"),
            ("FD00:0:0::250/64", "fd00::250/64"),
            ("2001:db8::1/128", "2001:db8::1/128"),
        ] {
            let s = check(&spec(given), "t").unwrap();
            assert_eq!(s.address, stored, "{given}");
        }
    }

    #[test]
    fn refusals_name_the_field_and_the_problem() {
        for (addr, words) in [
            ("192.168.1.250", vec!["Address", "ADDR/PREFIX"]),
            ("192.168.1.300/24", vec!["Address", "not an IPv4 or IPv6"]),
            ("10.0.0.9/33", vec!["Address", "prefix", "0 to 32"]),
            ("fd00::1/129", vec!["Address", "0 to 128"]),
            ("10.0.0.0/24", vec!["network address"]),
            ("10.0.0.255/24", vec!["broadcast address"]),
            ("127.0.0.5/8", vec!["loopback"]),
            ("169.254.1.1/16", vec!["link-local"]),
            ("fe80::1/64", vec!["link-local"]),
            ("224.0.0.5/24", vec!["multicast"]),
            ("0.0.0.0/0", vec!["unspecified"]),
            ("::/0", vec!["unspecified"]),
            ("ff02::1/64", vec!["multicast"]),
        ] {
            let e = check(&spec(addr), "t").unwrap_err();
            assert_eq!(e.status, 400, "{addr}");
            for w in words {
                assert!(e.message.contains(w), "{addr}: {}", e.message);
            }
        }
        let mut s = spec("10.0.0.9/24");
        for bad in ["", "eth0/1", "a very long name x", "eth 0", "eth0:1", ".."] {
            s.interface = Some(bad.into());
            let e = check(&s, "t").unwrap_err();
            assert!(e.message.starts_with("Interface:"), "{bad}: {}", e.message);
        }
        s.interface = Some("enp0s3".into());
        assert!(check(&s, "t").is_ok());
        for bad in [
            "node.role",
            "node.colour==red",
            "node.labels.==x",
            "node.role==",
        ] {
            s.constraints = vec![bad.into()];
            let e = check(&s, "t").unwrap_err();
            assert!(
                e.message.starts_with("Constraints:"),
                "{bad}: {}",
                e.message
            );
        }
        s.constraints = vec![
            "node.role==manager".into(),
            "node.labels.edge==true".into(),
            "node.hostname!=node-3".into(),
        ];
        assert!(check(&s, "t").is_ok());
        s.constraints = vec!["node.role==manager".into(); MAX_CONSTRAINTS + 1];
        assert!(check(&s, "t").is_err());
    }

    #[test]
    fn no_string_panics_the_parser() {
        for s in [
            "/",
            "//",
            "1/",
            "/1",
            "1.2.3.4/-1",
            "1.2.3.4/999999999999",
            "::/",
            "\u{0}/\u{0}",
            "1.2.3.4/0",
            "255.255.255.255/32",
        ] {
            let _ = parse_address(s);
        }
        // /0 makes every address the network's or the broadcast's but one: no shift overflow.
        assert!(parse_address("1.2.3.4/0").is_ok());
    }
}
