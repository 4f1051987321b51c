//! The node's nftables table: VIP load balancing, published ports, network isolation.
//!
//! The desired state is a [`Model`], a pure function of the local networks and the routing
//! table. [`diff_script`] turns the difference between the applied and the desired model into
//! one `nft -f` transaction that touches only what changed (one service's chain, one map
//! element); [`full_script`] rebuilds the whole table atomically (first start, or repair after a
//! failed diff). Rule layout, in the table `ip shoal_<node tag>`:
//!
//! - `prerouting`/`output` (nat): `ip daddr vmap @vips` sends a VIP's new connections to the
//!   service's chain, which DNATs with `numgen random mod N` over the healthy tasks; then
//!   `fib daddr type local` + `meta l4proto . th dport vmap @published` does the same for
//!   published ports (and marks the connection so isolation lets it cross networks).
//! - `postrouting` (nat): masquerade when a task reaches itself through a VIP (`@hairpin`), when
//!   the node itself opened a DNAT-ed connection into a bridge from a local address other than
//!   a VIP (127.0.0.1, its own address: a remote task's reply would not come back), and traffic
//!   leaving non-internal networks. A node calling a VIP has the VIP as source; it is not
//!   NAT-ed: the reply is sent back like a reply to a gateway address (below).
//! - `input`/`forward` (filter): refuse VIPs and published ports without healthy tasks; isolate
//!   networks from each other and from the outside.
//! - `mesh_mark` (filter, prerouting, before NAT): the return path of the routing mesh without
//!   SNAT. A connection that another node forwarded to a task here arrives with that node's
//!   bridge MAC as source (`@peer_ids` maps it to a mark kept in the connection); the task's
//!   replies get that mark back as packet mark, which policy routing (`mesh.rs`) sends back over
//!   VXLAN to the node that holds the connection's NAT state. Replies to a node's own gateway
//!   address (a connection the peer node itself opened) never reach routing, as that address is
//!   local here too: the table `bridge shoal_<node tag>` rewrites their destination MAC to the
//!   peer's bridge instead. The mark is cleared before a frame enters a VXLAN device (whose
//!   own packet would otherwise follow the policy route back into the bridge).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};

use super::names;
use super::{NetworkError, NetworkSpec, Protocol, RoutingTable};

/// Connection mark bit for connections that came in through a published port.
pub(crate) const PUBLISHED_MARK: u32 = 0x0010_0000;
/// Connection mark bits naming the peer node that forwarded a connection here (mesh return).
pub(crate) const PEER_MARK_MASK: u32 = 0x0000_ffff;

/// What the table should contain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Model {
    /// Bridge name -> the network's isolation parameters.
    pub networks: BTreeMap<String, NetRules>,
    /// Service chain name -> VIP and healthy backends.
    pub services: BTreeMap<String, ServiceLb>,
    /// (protocol, published port) -> targets.
    pub published: BTreeMap<(Protocol, u16), Vec<SocketAddrV4>>,
    /// Every backend address (a task reaching itself through a VIP must be masqueraded).
    pub hairpin: BTreeSet<Ipv4Addr>,
    /// Every VIP here. Every node of a network holds its VIPs, so when the node itself calls a
    /// VIP (the kernel then picks the VIP as source), a remote task's reply to it must be sent
    /// back to this node like a reply to the gateway address, not NAT-ed (NAT would have to
    /// find a free port per connection in one address pair and runs out under load).
    pub vip_addrs: BTreeSet<Ipv4Addr>,
    /// Peer node bridge MAC -> its mark (in `PEER_MARK_MASK`), for the mesh's return path.
    pub peers: BTreeMap<[u8; 6], u32>,
    /// This node's bridge MAC.
    pub node_mac: [u8; 6],
}

/// A network's isolation parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NetRules {
    pub subnet: ipnet::Ipv4Net,
    pub gateway: Ipv4Addr,
    pub internal: bool,
}

/// One service's VIP and its healthy task addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceLb {
    pub vip: Ipv4Addr,
    pub backends: Vec<Ipv4Addr>,
}

impl Model {
    /// The desired model for the networks present on this node and the routing table. Services
    /// of networks that are not local are left out: no local container could reach them.
    pub fn build<'a>(
        networks: impl IntoIterator<Item = &'a NetworkSpec>,
        table: &RoutingTable,
    ) -> Model {
        let mut m = Model::default();
        let mut local = BTreeSet::new();
        for n in networks {
            local.insert(n.id.clone());
            m.networks.insert(
                names::bridge_name(&n.id),
                NetRules {
                    subnet: n.subnet.trunc(),
                    gateway: n.gateway,
                    internal: n.internal,
                },
            );
        }
        let mut vips_taken = BTreeSet::new();
        for s in &table.services {
            let Some(vip) = s.vip else { continue };
            if s.dnsrr || !local.contains(&s.network_id) {
                continue;
            }
            if !vips_taken.insert(vip) {
                tracing::warn!(service = %s.name, %vip, "VIP already used by another service; ignored");
                continue;
            }
            let backends: BTreeSet<Ipv4Addr> = s
                .tasks
                .iter()
                .filter(|t| t.healthy)
                .map(|t| t.addr)
                .collect();
            m.hairpin.extend(backends.iter().copied());
            m.vip_addrs.insert(vip);
            m.services.insert(
                names::service_chain(&s.service_id, &s.network_id),
                ServiceLb {
                    vip,
                    backends: backends.into_iter().collect(),
                },
            );
        }
        for p in &table.published {
            let entry = m.published.entry((p.protocol, p.published)).or_default();
            entry.extend(p.targets.iter().copied());
        }
        for targets in m.published.values_mut() {
            targets.sort();
            targets.dedup();
            m.hairpin.extend(targets.iter().map(|t| *t.ip()));
        }
        let peer_nodes: BTreeSet<&str> = table
            .peers
            .iter()
            .filter(|(net, _)| local.contains(*net))
            .flat_map(|(_, ps)| ps.iter().map(|p| p.node_id.as_str()))
            .collect();
        m.peers = peer_marks(peer_nodes);
        m
    }
}

/// A mark per peer node, stable while the node stays a peer: a 16-bit hash of its ID, moved to
/// the next free value on a collision (peers in ID order, so every sync picks the same).
fn peer_marks<'a>(nodes: impl IntoIterator<Item = &'a str>) -> BTreeMap<[u8; 6], u32> {
    let mut used = BTreeSet::new();
    let mut out = BTreeMap::new();
    for n in nodes {
        let h = names::fnv1a(n);
        let mut mark = (h ^ (h >> 16)) & PEER_MARK_MASK;
        while mark == 0 || used.contains(&mark) {
            mark = (mark + 1) & PEER_MARK_MASK;
        }
        used.insert(mark);
        out.insert(names::node_mac(n), mark);
    }
    out
}

fn peer_elements(t: &str, m: &Model, out: &mut String) {
    for (mac, mark) in &m.peers {
        let mac = names::mac_string(mac);
        let _ = writeln!(
            out,
            "add element ip {t} peer_ids {{ {mac} : {mark:#010x} }}"
        );
        let _ = writeln!(
            out,
            "add element bridge {t} peer_macs {{ {mark:#010x} : {mac} }}"
        );
    }
}

/// The static part: sets, maps and base chains.
fn skeleton(t: &str, node_mac: &[u8; 6]) -> String {
    format!(
        r#"table bridge {t} {{
  map peer_macs {{ type mark : ether_addr; }}
  set gateways {{ type ipv4_addr; }}
  set vips {{ type ipv4_addr; }}
  chain mesh_return {{
    type filter hook prerouting priority 1; policy accept;
    meta mark and {pm:#010x} != 0 ether daddr {mac} ip daddr @gateways ether daddr set meta mark and {pm:#010x} map @peer_macs
    meta mark and {pm:#010x} != 0 ether daddr {mac} ip daddr @vips ether daddr set meta mark and {pm:#010x} map @peer_macs
  }}
  chain mesh_unmark {{
    type filter hook postrouting priority 0; policy accept;
    oifname "{vp}*" meta mark and {pm:#010x} != 0 meta mark set meta mark and {npm:#010x}
  }}
}}
table ip {t} {{
  map peer_ids {{ type ether_addr : mark; }}
  chain mesh_mark {{
    type filter hook prerouting priority -150; policy accept;
    ct state new ether saddr @peer_ids ct mark set ether saddr map @peer_ids
    ct direction reply ct mark and {pm:#010x} != 0 meta mark set ct mark and {pm:#010x}
  }}
  map vips {{ type ipv4_addr : verdict; }}
  set vips_down {{ type ipv4_addr; }}
  map published {{ type inet_proto . inet_service : verdict; }}
  set published_down {{ type inet_proto . inet_service; }}
  set hairpin {{ type ipv4_addr . ipv4_addr; }}
  set vip_addrs {{ type ipv4_addr; }}
  chain net_forward {{ }}
  chain net_input {{ }}
  chain net_postrouting {{ }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr vmap @vips
    fib daddr type local meta l4proto . th dport vmap @published
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    ip daddr vmap @vips
    fib daddr type local meta l4proto . th dport vmap @published
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ct status dnat ip saddr . ip daddr @hairpin masquerade
    ct status dnat oifname "{bp}*" ip saddr != @vip_addrs fib saddr type local masquerade
    jump net_postrouting
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    ct state established,related accept
    ip daddr @vips_down meta l4proto tcp reject with tcp reset
    ip daddr @vips_down reject
    fib daddr type local meta l4proto . th dport @published_down meta l4proto tcp reject with tcp reset
    fib daddr type local meta l4proto . th dport @published_down reject
    jump net_input
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    ct state established,related accept
    ct mark and {mark:#010x} == {mark:#010x} accept
    jump net_forward
  }}
}}
"#,
        bp = names::BRIDGE_PREFIX,
        mark = PUBLISHED_MARK,
        pm = PEER_MARK_MASK,
        npm = !PEER_MARK_MASK,
        vp = names::VXLAN_PREFIX,
        mac = names::mac_string(node_mac),
    )
}

/// Rules of the three per-network chains and the gateways set (flushed and refilled whenever
/// the networks change).
fn network_rules(t: &str, m: &Model, out: &mut String) {
    let bp = names::BRIDGE_PREFIX;
    for n in m.networks.values() {
        let _ = writeln!(out, "add element bridge {t} gateways {{ {} }}", n.gateway);
    }
    for (b, n) in &m.networks {
        let _ = writeln!(
            out,
            "add rule ip {t} net_forward iifname \"{b}\" oifname \"{b}\" accept"
        );
        let _ = writeln!(
            out,
            "add rule ip {t} net_forward iifname \"{b}\" oifname \"{bp}*\" drop"
        );
        if n.internal {
            let _ = writeln!(out, "add rule ip {t} net_forward iifname \"{b}\" drop");
        }
        let _ = writeln!(out, "add rule ip {t} net_forward oifname \"{b}\" drop");
        let _ = writeln!(
            out,
            "add rule ip {t} net_input iifname \"{b}\" ip daddr 127.0.0.0/8 drop"
        );
        let others: Vec<String> = m
            .networks
            .iter()
            .filter(|(ob, on)| *ob != b && on.subnet != n.subnet)
            .map(|(_, on)| on.subnet.to_string())
            .collect();
        if !others.is_empty() {
            let _ = writeln!(
                out,
                "add rule ip {t} net_input iifname \"{b}\" ip daddr {{ {} }} drop",
                others.join(", ")
            );
        }
        if !n.internal {
            let _ = writeln!(
                out,
                "add rule ip {t} net_postrouting ip saddr {} oifname != \"{b}\" masquerade",
                n.subnet
            );
        }
    }
}

/// A load-balanced chain reached through an element of a verdict map: a service's VIP or a
/// published port. Both are written and diffed alike; only their names and rules differ.
trait Balanced: PartialEq {
    /// What the model's map keys it by.
    type Key: Ord;
    /// The chain's name.
    fn chain(key: &Self::Key) -> String;
    /// The chain's rule (none without backends: the element then sits in the `_down` set).
    fn rule(&self, t: &str, key: &Self::Key, out: &mut String);
    /// The map element that sends traffic to the chain: (set, element).
    fn element(&self, key: &Self::Key) -> (&'static str, String);
    /// That element's key alone, as a delete names it: (set, key).
    fn element_key(&self, key: &Self::Key) -> (&'static str, String);
}

impl Balanced for ServiceLb {
    type Key = String;

    fn chain(chain: &String) -> String {
        chain.clone()
    }

    fn rule(&self, t: &str, chain: &String, out: &mut String) {
        if self.backends.is_empty() {
            return;
        }
        let elems: Vec<String> = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{i} : {a}"))
            .collect();
        let _ = writeln!(
            out,
            "add rule ip {t} {chain} dnat to numgen random mod {} map {{ {} }}",
            self.backends.len(),
            elems.join(", ")
        );
    }

    fn element(&self, chain: &String) -> (&'static str, String) {
        if self.backends.is_empty() {
            ("vips_down", self.vip.to_string())
        } else {
            ("vips", format!("{} : goto {chain}", self.vip))
        }
    }

    fn element_key(&self, _: &String) -> (&'static str, String) {
        if self.backends.is_empty() {
            ("vips_down", self.vip.to_string())
        } else {
            ("vips", self.vip.to_string())
        }
    }
}

impl Balanced for Vec<SocketAddrV4> {
    type Key = (Protocol, u16);

    fn chain(key: &(Protocol, u16)) -> String {
        names::published_chain(key.0, key.1)
    }

    fn rule(&self, t: &str, key: &(Protocol, u16), out: &mut String) {
        if self.is_empty() {
            return;
        }
        let chain = Self::chain(key);
        let elems: Vec<String> = self
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{i} : {} . {}", a.ip(), a.port()))
            .collect();
        let _ = writeln!(
            out,
            "add rule ip {t} {chain} ct mark set ct mark or {PUBLISHED_MARK:#010x} meta l4proto {} dnat ip to numgen random mod {} map {{ {} }}",
            key.0.as_str(),
            self.len(),
            elems.join(", ")
        );
    }

    fn element(&self, key: &(Protocol, u16)) -> (&'static str, String) {
        if self.is_empty() {
            ("published_down", format!("{} . {}", key.0.as_str(), key.1))
        } else {
            (
                "published",
                format!("{} . {} : goto {}", key.0.as_str(), key.1, Self::chain(key)),
            )
        }
    }

    fn element_key(&self, key: &(Protocol, u16)) -> (&'static str, String) {
        let set = if self.is_empty() {
            "published_down"
        } else {
            "published"
        };
        (set, format!("{} . {}", key.0.as_str(), key.1))
    }
}

/// Writes every chain of `map` with its rule and its element.
fn add_all<B: Balanced>(t: &str, map: &BTreeMap<B::Key, B>, out: &mut String) {
    for (key, b) in map {
        let _ = writeln!(out, "add chain ip {t} {}", B::chain(key));
        b.rule(t, key, out);
        let (set, elem) = b.element(key);
        let _ = writeln!(out, "add element ip {t} {set} {{ {elem} }}");
    }
}

/// The four phases of a diff script, in the order they run.
#[derive(Default)]
struct Phases {
    del_elems: String,
    chains: String,
    add_elems: String,
    del_chains: String,
}

/// Turns the chains of `old` into those of `new`: gone ones lose their element then their
/// chain, changed ones are flushed and rewritten (their element moved if it changed), new
/// ones are added.
fn diff_all<B: Balanced>(
    t: &str,
    old: &BTreeMap<B::Key, B>,
    new: &BTreeMap<B::Key, B>,
    p: &mut Phases,
) {
    for (key, o) in old {
        let chain = B::chain(key);
        match new.get(key) {
            None => {
                let (set, k) = o.element_key(key);
                let _ = writeln!(p.del_elems, "delete element ip {t} {set} {{ {k} }}");
                let _ = writeln!(p.del_chains, "delete chain ip {t} {chain}");
            }
            Some(n) if n != o => {
                let _ = writeln!(p.chains, "flush chain ip {t} {chain}");
                n.rule(t, key, &mut p.chains);
                if o.element(key) != n.element(key) {
                    let (set, k) = o.element_key(key);
                    let _ = writeln!(p.del_elems, "delete element ip {t} {set} {{ {k} }}");
                    let (set, elem) = n.element(key);
                    let _ = writeln!(p.add_elems, "add element ip {t} {set} {{ {elem} }}");
                }
            }
            Some(_) => {}
        }
    }
    let added = new.iter().filter(|(key, _)| !old.contains_key(key));
    for (key, n) in added {
        let _ = writeln!(p.chains, "add chain ip {t} {}", B::chain(key));
        n.rule(t, key, &mut p.chains);
        let (set, elem) = n.element(key);
        let _ = writeln!(p.add_elems, "add element ip {t} {set} {{ {elem} }}");
    }
}

/// Whether this namespace already has the node's table (a previous run of the daemon left it).
pub(crate) async fn table_exists(t: &str) -> bool {
    tokio::process::Command::new("nft")
        .args(["list", "table", "ip", t])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// A script that replaces the whole table with `m` in one transaction.
pub(crate) fn full_script(t: &str, m: &Model) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "table ip {t}\ndelete table ip {t}\ntable bridge {t}\ndelete table bridge {t}"
    );
    out.push_str(&skeleton(t, &m.node_mac));
    network_rules(t, m, &mut out);
    peer_elements(t, m, &mut out);
    add_all(t, &m.services, &mut out);
    add_all(t, &m.published, &mut out);
    for a in &m.hairpin {
        let _ = writeln!(out, "add element ip {t} hairpin {{ {a} . {a} }}");
    }
    for a in &m.vip_addrs {
        vip_addr_elements("add", t, *a, &mut out);
    }
    out
}

fn vip_addr_elements(op: &str, t: &str, a: Ipv4Addr, out: &mut String) {
    let _ = writeln!(out, "{op} element ip {t} vip_addrs {{ {a} }}");
    let _ = writeln!(out, "{op} element bridge {t} vips {{ {a} }}");
}

/// A script that turns the applied model `old` into `new`, touching only what differs; `None`
/// when nothing does.
pub(crate) fn diff_script(t: &str, old: &Model, new: &Model) -> Option<String> {
    // Phases keep one transaction valid: element deletions, then chain changes, then element
    // additions, then chain deletions (a chain must not be referenced when it goes).
    if old.node_mac != new.node_mac {
        return Some(full_script(t, new));
    }
    let mut p = Phases::default();

    if old.networks != new.networks {
        for c in ["net_forward", "net_input", "net_postrouting"] {
            let _ = writeln!(p.chains, "flush chain ip {t} {c}");
        }
        let _ = writeln!(p.chains, "flush set bridge {t} gateways");
        network_rules(t, new, &mut p.chains);
    }

    diff_all(t, &old.services, &new.services, &mut p);
    diff_all(t, &old.published, &new.published, &mut p);

    if old.peers != new.peers {
        let _ = writeln!(p.del_elems, "flush map ip {t} peer_ids");
        let _ = writeln!(p.del_elems, "flush map bridge {t} peer_macs");
        peer_elements(t, new, &mut p.add_elems);
    }

    for a in old.hairpin.difference(&new.hairpin) {
        let _ = writeln!(p.del_elems, "delete element ip {t} hairpin {{ {a} . {a} }}");
    }
    for a in new.hairpin.difference(&old.hairpin) {
        let _ = writeln!(p.add_elems, "add element ip {t} hairpin {{ {a} . {a} }}");
    }
    for a in old.vip_addrs.difference(&new.vip_addrs) {
        vip_addr_elements("delete", t, *a, &mut p.del_elems);
    }
    for a in new.vip_addrs.difference(&old.vip_addrs) {
        vip_addr_elements("add", t, *a, &mut p.add_elems);
    }

    let script = p.del_elems + &p.chains + &p.add_elems + &p.del_chains;
    (!script.is_empty()).then_some(script)
}

/// Runs `nft -f -` with `script` as one transaction.
pub(crate) async fn apply(op: &'static str, script: &str) -> Result<(), NetworkError> {
    tracing::debug!(op, script, "nft -f -");
    crate::nft_run::run_script(script)
        .await
        .map_err(|detail| NetworkError::Nft { op, detail })
}

/// Deletes the table if it exists.
pub(crate) async fn delete_table(t: &str) -> Result<(), NetworkError> {
    apply(
        "delete table",
        &format!("table ip {t}\ndelete table ip {t}\ntable bridge {t}\ndelete table bridge {t}\n"),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{MeshPort, ServiceRoute, TaskEndpoint};

    fn net(id: &str, subnet: &str, internal: bool) -> NetworkSpec {
        NetworkSpec {
            internal,
            ..NetworkSpec::local(id, id, subnet)
        }
    }

    fn svc(id: &str, net: &str, vip: &str, tasks: &[(&str, bool)]) -> ServiceRoute {
        ServiceRoute {
            service_id: id.into(),
            name: id.into(),
            network_id: net.into(),
            aliases: vec![],
            vip: Some(vip.parse().unwrap()),
            dnsrr: false,
            tasks: tasks
                .iter()
                .map(|(a, h)| TaskEndpoint {
                    task_id: a.to_string(),
                    addr: a.parse().unwrap(),
                    healthy: *h,
                })
                .collect(),
        }
    }

    /// Fails naming the line when `script` lacks any of `present` or holds any of `absent`.
    fn has(script: &str, present: &[&str], absent: &[&str]) {
        for p in present {
            assert!(script.contains(p), "missing {p:?} in:\n{script}");
        }
        for a in absent {
            assert!(!script.contains(a), "unexpected {a:?} in:\n{script}");
        }
    }

    /// Service `a` on network `n1` with one healthy task.
    fn one_task_service() -> ServiceRoute {
        svc("a", "n1", "10.0.0.100", &[("10.0.0.2", true)])
    }

    /// A routing table of `services` alone.
    fn routes(services: Vec<ServiceRoute>) -> RoutingTable {
        RoutingTable {
            services,
            ..Default::default()
        }
    }

    #[test]
    fn model_keeps_healthy_local_tasks_only() {
        let nets = [net("n1", "10.0.0.0/24", false)];
        let table = routes(vec![
            svc(
                "a",
                "n1",
                "10.0.0.100",
                &[("10.0.0.3", true), ("10.0.0.2", true), ("10.0.0.4", false)],
            ),
            svc("b", "n2", "10.0.1.100", &[("10.0.1.2", true)]),
        ]);
        let m = Model::build(&nets, &table);
        assert_eq!(m.services.len(), 1);
        let s = &m.services["svc_a_n1"];
        assert_eq!(
            s.backends,
            vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)]
        );
        assert_eq!(m.hairpin.len(), 2);
    }

    #[test]
    fn diff_touches_only_the_changed_service() {
        let nets = [net("n1", "10.0.0.0/24", false)];
        let mut table = RoutingTable {
            published: vec![MeshPort {
                protocol: Protocol::Tcp,
                published: 8080,
                targets: vec!["10.0.0.2:80".parse().unwrap()],
            }],
            ..routes(vec![
                svc(
                    "a",
                    "n1",
                    "10.0.0.100",
                    &[("10.0.0.2", true), ("10.0.0.3", true)],
                ),
                svc("b", "n1", "10.0.0.101", &[("10.0.0.4", true)]),
            ])
        };
        let old = Model::build(&nets, &table);
        table.services[0].tasks[1].healthy = false;
        let new = Model::build(&nets, &table);
        let script = diff_script("T", &old, &new).unwrap();

        has(
            &script,
            &[
                "flush chain ip T svc_a_n1",
                "numgen random mod 1 map { 0 : 10.0.0.2 }",
                "delete element ip T hairpin { 10.0.0.3 . 10.0.0.3 }",
            ],
            &["svc_b_n1", "net_forward", "pub_tcp_8080"],
        );
        assert_eq!(diff_script("T", &new, &new), None);
    }

    #[test]
    fn service_losing_all_tasks_moves_to_vips_down() {
        let nets = [net("n1", "10.0.0.0/24", false)];
        let mut table = routes(vec![one_task_service()]);
        let old = Model::build(&nets, &table);
        table.services[0].tasks.clear();
        let new = Model::build(&nets, &table);
        let script = diff_script("T", &old, &new).unwrap();
        let del = script
            .find("delete element ip T vips { 10.0.0.100 }")
            .unwrap();
        let add = script
            .find("add element ip T vips_down { 10.0.0.100 }")
            .unwrap();
        assert!(del < add, "{script}");
        // And back.
        let script = diff_script("T", &new, &old).unwrap();
        assert!(
            script.contains("add element ip T vips { 10.0.0.100 : goto svc_a_n1 }"),
            "{script}"
        );
    }

    #[test]
    fn removed_service_drops_element_before_chain() {
        let nets = [net("n1", "10.0.0.0/24", false)];
        let table = routes(vec![one_task_service()]);
        let old = Model::build(&nets, &table);
        let new = Model::build(&nets, &RoutingTable::default());
        let script = diff_script("T", &old, &new).unwrap();
        let del_elem = script.find("delete element ip T vips").unwrap();
        let del_chain = script.find("delete chain ip T svc_a_n1").unwrap();
        assert!(del_elem < del_chain, "{script}");
    }

    #[test]
    fn isolation_rules_name_every_bridge() {
        let nets = [
            net("n1", "10.0.0.0/24", false),
            net("n2", "10.0.1.0/24", true),
        ];
        let m = Model::build(&nets, &RoutingTable::default());
        let script = full_script("T", &m);
        has(
            &script,
            &[
                "iifname \"shl-n1\" oifname \"shl-*\" drop",
                "iifname \"shl-n2\" drop",
                "iifname \"shl-n1\" ip daddr { 10.0.1.0/24 } drop",
                "ip saddr 10.0.0.0/24 oifname != \"shl-n1\" masquerade",
            ],
            &["ip saddr 10.0.1.0/24 oifname"],
        );
    }

    #[test]
    fn published_port_is_written_and_diffed_like_a_service() {
        let nets = [net("n1", "10.0.0.0/24", false)];
        let port = |targets: &[&str]| MeshPort {
            protocol: Protocol::Tcp,
            published: 8080,
            targets: targets.iter().map(|a| a.parse().unwrap()).collect(),
        };
        let with = |p: Vec<MeshPort>| RoutingTable {
            published: p,
            ..routes(vec![])
        };
        let up = Model::build(&nets, &with(vec![port(&["10.0.0.2:80"])]));
        has(
            &full_script("T", &up),
            &[
                "add chain ip T pub_tcp_8080\nadd rule ip T pub_tcp_8080 ct mark set ct mark or 0x00100000 meta l4proto tcp dnat ip to numgen random mod 1 map { 0 : 10.0.0.2 . 80 }\nadd element ip T published { tcp . 8080 : goto pub_tcp_8080 }",
            ],
            &["add element ip T published_down"],
        );
        let down = Model::build(&nets, &with(vec![port(&[])]));
        assert_eq!(
            diff_script("T", &up, &down).as_deref(),
            Some("delete element ip T published { tcp . 8080 }\ndelete element ip T hairpin { 10.0.0.2 . 10.0.0.2 }\nflush chain ip T pub_tcp_8080\nadd element ip T published_down { tcp . 8080 }\n")
        );
        let gone = Model::build(&nets, &with(vec![]));
        assert_eq!(
            diff_script("T", &down, &gone).as_deref(),
            Some("delete element ip T published_down { tcp . 8080 }\ndelete chain ip T pub_tcp_8080\n")
        );
        let script = diff_script("T", &gone, &up).unwrap();
        has(
            &script,
            &[
                "add chain ip T pub_tcp_8080\nadd rule ip T pub_tcp_8080",
                "add element ip T published { tcp . 8080 : goto pub_tcp_8080 }",
            ],
            &[],
        );
    }
}
