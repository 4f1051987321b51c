//! [`NetworkAgent`]: ties bridges, the Docker plugin, DNS servers and the nftables table
//! together and keeps them equal to (local networks, routing table).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};

use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest, NetworkDisconnectRequest};
use tokio::sync::Mutex;

use super::dns::{DnsServer, Records};
use super::ipam::{Pools, OPT_IPAM_GATEWAY, OPT_IPAM_NETWORK};
use super::netlink::{self, Links};
use super::nft::{self, Model};
use super::plugin::{
    PluginNet, PluginServer, PluginState, OPT_BRIDGE, OPT_GATEWAY, OPT_NETWORK_ID,
};
use super::{iptables, mesh, names, NetworkError, NetworkSpec, OverlayPeer, RoutingTable};

/// Label on Docker networks naming the shoal node that made them.
const LABEL_NODE: &str = "com.shoal.node.id";
/// Label on Docker networks naming the shoal network behind them.
const LABEL_NETWORK: &str = "com.shoal.network.id";

/// What the network agent needs from the node.
pub struct NetworkConfig {
    /// This node's ID; names the driver, the nftables table and marks what the node created.
    pub node_id: String,
    /// The node's Docker Engine, which hosts the task containers.
    pub docker: bollard::Docker,
    /// Where Docker looks for legacy plugin sockets (`/run/docker/plugins`).
    pub plugin_dir: PathBuf,
    /// Where names that are not services go (the node's `/etc/resolv.conf` servers).
    pub upstream_dns: Vec<SocketAddr>,
    /// The engine's API socket, whose listener tells which dockerd (and so which network
    /// namespace) hosts the containers; `None`: the host's `/run/docker.pid`.
    pub engine_socket: Option<PathBuf>,
}

/// The network side of one node; cheap to clone, all clones share one state.
#[derive(Clone)]
pub struct NetworkAgent {
    inner: Arc<AgentState>,
}

struct AgentState {
    node_id: String,
    /// MAC address of every bridge of this node (see `names::node_mac`).
    node_mac: [u8; 6],
    driver: String,
    table: String,
    link_alias: String,
    iptables_comment: String,
    upstream: Vec<SocketAddr>,
    host_search: Vec<String>,
    docker: bollard::Docker,
    links: Links,
    plugin_state: Arc<PluginState>,
    plugin: Mutex<Option<PluginServer>>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    networks: BTreeMap<String, LocalNet>,
    table: RoutingTable,
    /// What the nftables table holds; `None` when unknown (rebuild it whole next time).
    applied: Option<Model>,
    /// Search domains of task containers, besides the host's (see `set_search_domains`).
    extra_search: Vec<String>,
    /// The routing mesh's return path as last applied.
    mesh: mesh::ReturnPath,
    /// False until the first sync has replaced whatever return path a previous run left.
    mesh_known: bool,
    /// False until the first routing table arrives: a network set up before it (the worker
    /// ensures networks first) must not replace what a previous run left with an empty picture.
    routed: bool,
}

impl State {
    fn search(&self, host: &[String]) -> Vec<String> {
        let mut all: Vec<String> = host.iter().chain(&self.extra_search).cloned().collect();
        all.sort();
        all.dedup();
        all
    }
}

struct LocalNet {
    spec: NetworkSpec,
    bridge: String,
    bridge_index: u32,
    /// The VXLAN device's index (none for a network kept on this node, VNI 0).
    vxlan_index: Option<u32>,
    /// The peers last written to the VXLAN device's tables.
    peers_applied: Option<Vec<OverlayPeer>>,
    docker_name: String,
    docker_id: String,
    dns: DnsServer,
}

/// Search domains of the node (Docker copies them into containers' resolv.conf).
fn host_search_domains() -> Vec<String> {
    let Ok(text) = std::fs::read_to_string("/etc/resolv.conf") else {
        return vec![];
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let Some("search" | "domain") = words.next() {
            out.extend(words.map(str::to_string));
        }
    }
    out
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl NetworkAgent {
    /// Starts the Docker network plugin (legacy plugin socket) for this node and resets the
    /// node's nftables table to an empty, valid state.
    pub async fn start(cfg: NetworkConfig) -> Result<NetworkAgent, NetworkError> {
        let tag = names::node_tag(&cfg.node_id);
        if tag.is_empty() {
            return Err(NetworkError::invalid("node id", "has no letters or digits"));
        }
        let driver = names::driver_name(&cfg.node_id);
        let table = names::nft_table(&tag);
        let links = Links::connect()?;
        if !netlink::br_netfilter_loaded() {
            return Err(NetworkError::invalid(
                "host",
                "br_netfilter is not loaded (modprobe br_netfilter): VIP replies on one bridge would bypass conntrack",
            ));
        }
        let dockerd_pid = netlink::dockerd_pid_in_other_netns(cfg.engine_socket.as_deref());
        if let Some(pid) = dockerd_pid {
            tracing::info!(
                pid,
                "dockerd runs in another network namespace; veths will be moved there"
            );
        }
        // A restarted daemon keeps the table and the mesh's return path it left, so VIPs and
        // published ports go on answering until the first assignments arrive; that first sync
        // replaces both whole (`applied: None`, `mesh_known: false`).
        let empty = Model {
            node_mac: names::node_mac(&cfg.node_id),
            ..Model::default()
        };
        let applied = if nft::table_exists(&table).await {
            tracing::info!(%table, "keeping the nftables table until the first assignments");
            None
        } else {
            nft::apply("create table", &nft::full_script(&table, &empty)).await?;
            Some(empty)
        };
        let plugin_state = Arc::new(PluginState {
            links: links.clone(),
            docker: cfg.docker.clone(),
            alias: names::link_owner_alias(&tag),
            dockerd_pid,
            networks: StdMutex::new(HashMap::new()),
            pools: StdMutex::new(Pools::default()),
        });
        let plugin = PluginServer::start(&cfg.plugin_dir, &driver, plugin_state.clone()).await?;
        tracing::info!(%driver, %table, "network agent started");
        Ok(NetworkAgent {
            inner: Arc::new(AgentState {
                node_mac: names::node_mac(&cfg.node_id),
                node_id: cfg.node_id,
                driver,
                table,
                link_alias: names::link_owner_alias(&tag),
                iptables_comment: names::iptables_comment(&tag),
                upstream: cfg.upstream_dns,
                host_search: host_search_domains(),
                docker: cfg.docker,
                links,
                plugin_state,
                plugin: Mutex::new(Some(plugin)),
                state: Mutex::new(State {
                    applied,
                    ..State::default()
                }),
            }),
        })
    }

    /// Driver name Docker knows this node's plugin by: "shoal-" + first 12 chars of node id.
    pub fn driver_name(&self) -> String {
        self.inner.driver.clone()
    }

    /// Makes `net` usable on this node (bridge, DNS server on the gateway, a Docker network of
    /// our driver); idempotent; returns the Docker network name to attach containers to.
    pub async fn ensure_network(&self, net: &NetworkSpec) -> Result<String, NetworkError> {
        validate(net)?;
        let inner = &self.inner;
        let mut st = inner.state.lock().await;
        if let Some(local) = st.networks.get(&net.id) {
            if local.spec == *net {
                return Ok(local.docker_name.clone());
            }
            return Err(NetworkError::invalid(
                format!("network {} ({})", net.name, net.id),
                "already set up on this node with a different spec; remove it first",
            ));
        }
        let bridge = names::bridge_name(&net.id);
        if let Some(other) = st.networks.values().find(|n| n.bridge == bridge) {
            return Err(NetworkError::invalid(
                format!("network {} ({})", net.name, net.id),
                format!(
                    "bridge name {bridge} already used by network {}",
                    other.spec.id
                ),
            ));
        }
        let bridge_index = inner
            .links
            .ensure_bridge(
                &bridge,
                &inner.link_alias,
                net.gateway,
                net.subnet.prefix_len(),
            )
            .await?;
        // Other nodes know this MAC: it tells them which node forwarded a connection.
        inner
            .links
            .set_mac(bridge_index, &bridge, inner.node_mac)
            .await?;
        let vxlan_index = if net.vni == 0 {
            None
        } else {
            Some(
                inner
                    .links
                    .ensure_vxlan(
                        &names::vxlan_name(&net.id),
                        &inner.link_alias,
                        net.vni,
                        bridge_index,
                        names::OVERLAY_MTU,
                    )
                    .await?,
            )
        };
        // Lets DNAT-ed connections from 127.0.0.1 (curl localhost:<published>) leave via the bridge.
        netlink::set_link_sysctl(&bridge, "route_localnet", "1")?;
        iptables::allow_bridge(&bridge, &inner.iptables_comment).await?;
        let dns = DnsServer::start(
            &net.name,
            net.gateway,
            Records::build(net, &st.table, &st.search(&inner.host_search)),
            inner.upstream.clone(),
        )
        .await?;
        let docker_name = names::docker_network_name(&names::node_tag(&inner.node_id), &net.name);
        let docker_id = self
            .ensure_docker_network(net, &docker_name, &bridge)
            .await?;
        inner.plugin_state.register(
            &docker_id,
            PluginNet {
                bridge: bridge.clone(),
                gateway: net.gateway,
            },
        );
        st.networks.insert(
            net.id.clone(),
            LocalNet {
                spec: net.clone(),
                bridge: bridge.clone(),
                bridge_index,
                vxlan_index,
                peers_applied: None,
                docker_name: docker_name.clone(),
                docker_id,
                dns,
            },
        );
        self.sync(&mut st).await?;
        tracing::info!(network = %net.name, id = %net.id, %bridge, %docker_name, "network ready");
        Ok(docker_name)
    }

    async fn ensure_docker_network(
        &self,
        net: &NetworkSpec,
        name: &str,
        bridge: &str,
    ) -> Result<String, NetworkError> {
        let inner = &self.inner;
        match inner.docker.inspect_network(name, None).await {
            Ok(existing) => {
                let labels = existing.labels.unwrap_or_default();
                let ours = existing.driver.as_deref() == Some(inner.driver.as_str())
                    && labels.get(LABEL_NETWORK).map(String::as_str) == Some(net.id.as_str());
                let id = existing.id.unwrap_or_default();
                if ours && !id.is_empty() {
                    tracing::debug!(docker_network = name, "adopting existing Docker network");
                    return Ok(id);
                }
                return Err(NetworkError::invalid(
                    format!("Docker network {name}"),
                    "exists but was not made by this node for this network",
                ));
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(NetworkError::docker("inspect network", name, e)),
        }
        let options = HashMap::from([
            (OPT_NETWORK_ID.to_string(), net.id.clone()),
            (OPT_BRIDGE.to_string(), bridge.to_string()),
            (OPT_GATEWAY.to_string(), net.gateway.to_string()),
        ]);
        let labels = HashMap::from([
            (LABEL_NODE.to_string(), inner.node_id.clone()),
            (LABEL_NETWORK.to_string(), net.id.clone()),
        ]);
        let req = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some(inner.driver.clone()),
            // Our plugin as IPAM driver: Docker's default IPAM refuses overlapping subnets, and
            // every node sharing this engine creates a network with the same subnet.
            ipam: Some(Ipam {
                driver: Some(inner.driver.clone()),
                config: Some(vec![IpamConfig {
                    subnet: Some(net.subnet.trunc().to_string()),
                    gateway: Some(net.gateway.to_string()),
                    ..IpamConfig::default()
                }]),
                options: Some(HashMap::from([
                    (OPT_IPAM_NETWORK.to_string(), net.id.clone()),
                    (OPT_IPAM_GATEWAY.to_string(), net.gateway.to_string()),
                ])),
            }),
            options: Some(options),
            labels: Some(labels),
            ..NetworkCreateRequest::default()
        };
        let resp = inner
            .docker
            .create_network(req)
            .await
            .map_err(|e| NetworkError::docker("create network", name, e))?;
        Ok(resp.id)
    }

    /// Tears `network_id` down on this node: its Docker network (containers must be gone),
    /// DNS server, bridge, iptables rules and nftables rules; idempotent.
    pub async fn remove_network(&self, network_id: &str) -> Result<(), NetworkError> {
        let inner = &self.inner;
        let mut st = inner.state.lock().await;
        if let Some(local) = st.networks.remove(network_id) {
            match inner.docker.remove_network(&local.docker_id).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    let err = NetworkError::docker("remove network", &local.docker_name, e);
                    st.networks.insert(network_id.to_string(), local);
                    return Err(err);
                }
            }
            tracing::info!(network = %local.spec.name, id = %network_id, "network removed");
            drop(local);
            self.sync(&mut st).await?;
        }
        // The devices and rules go by name, so a retry after a failure here still removes them.
        let bridge = names::bridge_name(network_id);
        inner
            .links
            .delete_link(&names::vxlan_name(network_id))
            .await?;
        inner.links.delete_link(&bridge).await?;
        iptables::remove_rules(&inner.iptables_comment, Some(&bridge)).await?;
        Ok(())
    }

    /// Replaces the routing picture (DNS records, VIP load-balancing, published ports) with
    /// `table`, applied as a diff.
    pub async fn apply_routing(&self, table: &RoutingTable) -> Result<(), NetworkError> {
        let mut st = self.inner.state.lock().await;
        st.table = table.clone();
        st.routed = true;
        self.sync(&mut st).await
    }

    /// Declares the DNS search domains task containers use (`DNSConfig.Search` of services),
    /// besides the node's own. Docker's resolver stops forwarding single-label names once a
    /// container sets `ndots` explicitly and sends `<service>.<search domain>` instead; the DNS
    /// servers answer such names only for these domains, so real names are never shadowed.
    pub async fn set_search_domains(&self, domains: &[String]) -> Result<(), NetworkError> {
        let mut st = self.inner.state.lock().await;
        st.extra_search = domains
            .iter()
            .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        self.sync(&mut st).await
    }

    /// Brings nftables, VIP addresses and DNS records in line with (networks, table).
    async fn sync(&self, st: &mut State) -> Result<(), NetworkError> {
        if !st.routed {
            return Ok(());
        }
        let inner = &self.inner;
        let mut desired = Model::build(st.networks.values().map(|n| &n.spec), &st.table);
        desired.node_mac = inner.node_mac;
        // The mesh's return path follows the same peers; taken before the model is stored.
        let want = mesh::ReturnPath {
            bridge: st
                .networks
                .values()
                .find(|n| n.spec.ingress)
                .map(|n| n.bridge.clone()),
            peers: desired.peers.clone(),
        };
        let script = match &st.applied {
            Some(old) => nft::diff_script(&inner.table, old, &desired),
            None => Some(nft::full_script(&inner.table, &desired)),
        };
        let mut first_err = None;
        if let Some(script) = script {
            if let Err(e) = nft::apply("apply routing", &script).await {
                tracing::warn!(error = %e, "incremental nftables update failed; rebuilding the table");
                st.applied = None;
                let full = nft::full_script(&inner.table, &desired);
                match nft::apply("rebuild table", &full).await {
                    Ok(()) => st.applied = Some(desired),
                    // DNS and VIP addresses below do not depend on nftables: keep them current,
                    // and rebuild the table on the next sync.
                    Err(e) => {
                        tracing::error!(error = %e, "rebuilding the nftables table failed");
                        first_err = Some(e);
                    }
                }
            } else {
                st.applied = Some(desired);
            }
        } else {
            st.applied = Some(desired);
        }
        if !st.mesh_known {
            match mesh::clear().await {
                Ok(()) => st.mesh_known = true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot clear the routing mesh's old return path");
                    first_err.get_or_insert(e);
                }
            }
        }
        match mesh::apply(&st.mesh, &want).await {
            Ok(()) => st.mesh = want,
            Err(e) => {
                tracing::warn!(error = %e, "cannot update the routing mesh's return path");
                st.mesh = mesh::ReturnPath::default();
                let _ = mesh::clear().await;
                first_err.get_or_insert(e);
            }
        }

        let search = st.search(&inner.host_search);
        let State {
            networks, table, ..
        } = st;
        for local in networks.values_mut() {
            local
                .dns
                .update(Records::build(&local.spec, table, &search));
            if let Err(e) = self.sync_vips(local, table).await {
                tracing::warn!(network = %local.spec.name, error = %e, "cannot update VIP addresses");
                first_err.get_or_insert(e);
            }
            let peers = table.peers.get(&local.spec.id).cloned().unwrap_or_default();
            if local.peers_applied.as_ref() != Some(&peers) {
                match self.sync_overlay(local, &peers).await {
                    Ok(()) => local.peers_applied = Some(peers),
                    Err(e) => {
                        tracing::warn!(network = %local.spec.name, error = %e, "cannot update VXLAN peers");
                        local.peers_applied = None;
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Points the network's VXLAN device at the other nodes: each peer's bridge MAC and each of
    /// its tasks' MACs go to that node's address, and each task address resolves to its MAC
    /// locally (the device answers ARP, so nothing is flooded between nodes).
    async fn sync_overlay(
        &self,
        local: &LocalNet,
        peers: &[OverlayPeer],
    ) -> Result<(), NetworkError> {
        let Some(vx) = local.vxlan_index else {
            return Ok(());
        };
        let links = &self.inner.links;
        let mut want_fdb: BTreeMap<[u8; 6], Ipv4Addr> = BTreeMap::new();
        let mut want_neigh: BTreeMap<Ipv4Addr, [u8; 6]> = BTreeMap::new();
        for p in peers {
            want_fdb.insert(names::node_mac(&p.node_id), p.addr);
            for e in &p.endpoints {
                let mac = names::endpoint_mac(*e);
                want_fdb.insert(mac, p.addr);
                want_neigh.insert(*e, mac);
            }
        }
        let have_fdb: BTreeMap<[u8; 6], Ipv4Addr> =
            links.vxlan_fdb(vx).await?.into_iter().collect();
        let have_neigh: BTreeMap<Ipv4Addr, [u8; 6]> =
            links.static_neighbours(vx).await?.into_iter().collect();
        for (addr, _) in have_neigh
            .iter()
            .filter(|(a, _)| !want_neigh.contains_key(*a))
        {
            links.neigh_del(vx, *addr).await?;
        }
        for (mac, dst) in have_fdb.iter().filter(|(m, _)| !want_fdb.contains_key(*m)) {
            links.fdb_del(vx, *mac, *dst).await?;
        }
        for (mac, dst) in &want_fdb {
            if have_fdb.get(mac) != Some(dst) {
                links.fdb_set(vx, *mac, *dst).await?;
            }
        }
        for (addr, mac) in &want_neigh {
            if have_neigh.get(addr) != Some(mac) {
                links.neigh_set(vx, *addr, *mac).await?;
            }
        }
        tracing::debug!(network = %local.spec.name, peers = peers.len(), fdb = want_fdb.len(), "VXLAN peers updated");
        Ok(())
    }

    /// Puts each VIP of the network on its bridge as a /32, so the node answers ARP for it.
    async fn sync_vips(&self, local: &LocalNet, table: &RoutingTable) -> Result<(), NetworkError> {
        let want: BTreeSet<Ipv4Addr> = table
            .services
            .iter()
            .filter(|s| s.network_id == local.spec.id && !s.dnsrr)
            .filter_map(|s| s.vip)
            .filter(|v| *v != local.spec.gateway)
            .collect();
        let have: BTreeSet<Ipv4Addr> = self
            .inner
            .links
            .addresses(local.bridge_index, &local.bridge)
            .await?
            .into_iter()
            .filter(|(a, p)| *p == 32 && *a != local.spec.gateway)
            .map(|(a, _)| a)
            .collect();
        for v in want.difference(&have) {
            self.inner
                .links
                .add_address(local.bridge_index, &local.bridge, *v, 32)
                .await?;
        }
        for v in have.difference(&want) {
            self.inner
                .links
                .del_address(local.bridge_index, &local.bridge, *v, 32)
                .await?;
        }
        Ok(())
    }

    /// Removes everything this node created (bridges, docker networks of our driver, nft table,
    /// DNS servers, plugin socket). Best effort: goes on after errors and returns the first.
    pub async fn cleanup(&self) -> Result<(), NetworkError> {
        let inner = &self.inner;
        let mut st = inner.state.lock().await;
        let mut first_err: Option<NetworkError> = None;
        let mut note = |r: Result<(), NetworkError>| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "cleanup step failed");
                first_err.get_or_insert(e);
            }
        };

        // Docker networks first: Docker calls the plugin while tearing their endpoints down.
        note(self.remove_docker_networks().await);
        st.networks.clear(); // stops the DNS servers
        st.table = RoutingTable::default();
        st.applied = None;
        if let Some(mut plugin) = inner.plugin.lock().await.take() {
            note(plugin.stop().await);
        }
        match inner.links.links_with_alias(&inner.link_alias).await {
            Ok(links) => {
                for l in links {
                    note(inner.links.delete_link(&l).await);
                }
            }
            Err(e) => note(Err(e)),
        }
        note(nft::delete_table(&inner.table).await);
        note(mesh::clear().await);
        st.mesh = mesh::ReturnPath::default();
        note(iptables::remove_rules(&inner.iptables_comment, None).await);
        tracing::info!(driver = %inner.driver, "network agent cleaned up");
        first_err.map_or(Ok(()), Err)
    }

    /// Removes every Docker network of our driver, disconnecting containers still on them.
    async fn remove_docker_networks(&self) -> Result<(), NetworkError> {
        let inner = &self.inner;
        let filters = HashMap::from([("driver".to_string(), vec![inner.driver.clone()])]);
        let list = inner
            .docker
            .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|e| NetworkError::docker("list networks of driver", &inner.driver, e))?;
        let mut first_err = None;
        for n in list {
            let Some(id) = n.id else { continue };
            if n.driver.as_deref() != Some(inner.driver.as_str()) {
                continue;
            }
            if let Ok(detail) = inner.docker.inspect_network(&id, None).await {
                for container in detail.containers.unwrap_or_default().into_keys() {
                    let req = NetworkDisconnectRequest {
                        container: container.clone(),
                        force: Some(true),
                    };
                    if let Err(e) = inner.docker.disconnect_network(&id, req).await {
                        tracing::warn!(network = %id, %container, error = %e, "cannot disconnect container");
                    }
                }
            }
            match inner.docker.remove_network(&id).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    first_err.get_or_insert(NetworkError::docker(
                        "remove network",
                        n.name.unwrap_or(id),
                        e,
                    ));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn validate(net: &NetworkSpec) -> Result<(), NetworkError> {
    let what = || format!("network {} ({})", net.name, net.id);
    if net.id.chars().filter(char::is_ascii_alphanumeric).count() == 0 {
        return Err(NetworkError::invalid(what(), "id has no letters or digits"));
    }
    if !net.subnet.contains(&net.gateway)
        || net.gateway == net.subnet.network()
        || net.gateway == net.subnet.broadcast()
    {
        return Err(NetworkError::invalid(
            what(),
            format!("gateway {} is not a host of {}", net.gateway, net.subnet),
        ));
    }
    if net.vni >= 1 << 24 {
        return Err(NetworkError::invalid(
            what(),
            format!("VXLAN ID {} does not fit in 24 bits", net.vni),
        ));
    }
    if net.subnet.prefix_len() > 30 {
        return Err(NetworkError::invalid(
            what(),
            format!("subnet {} is too small", net.subnet),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_is_clone_send_sync() {
        fn check<T: Clone + Send + Sync + 'static>() {}
        check::<NetworkAgent>();
    }

    #[test]
    fn specs_are_validated() {
        let mut n = NetworkSpec::local("abc", "n", "10.0.0.0/24");
        assert!(validate(&n).is_ok());
        n.gateway = "10.0.1.1".parse().unwrap();
        assert!(validate(&n).is_err());
        n.gateway = "10.0.0.0".parse().unwrap();
        assert!(validate(&n).is_err());
        n.gateway = "10.0.0.1".parse().unwrap();
        n.id = "--".into();
        assert!(validate(&n).is_err());
    }
}
